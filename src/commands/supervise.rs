//! `lockwrap run` and `lockwrap execute`: hold the lock, run the command, and make sure the
//! command is dead before anyone else can hold the lock (README, "The supervisor"; docs/timing.md).
//!
//! States: waiting → holding+running → (child exited | lock lost | stop signal) → released.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::acquire;
use super::policy::{self, Action, Phase};
use crate::backend::{Acquired, HeldLock, LockBackend, LockInfo, LossReason};
use crate::config::Supervised;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Event, EventContext, Hooks};
use crate::locks::LockManager;
use crate::supervisor::{
    Child, CommandSpec, ExitStatus, ProcessControl, Signal, SpawnError, StdinMode, Stopped, Tree,
};
use crate::telemetry::Telemetry;

/// The outcome when the lock is taken and the wait gave up: the documented 100 / 5, or the
/// code `--locked-exit-code` chose (a skipped CronJob run that should not count as failed).
fn gave_up(config: &Supervised, error: Error) -> Outcome {
    match config.supervision.locked_exit_code {
        Some(code) => Outcome::GaveUp { error, code },
        None => Outcome::Failed(error),
    }
}

/// Starts the optional HTTP server and status file shared by run and sidecar.
pub async fn start_reporting(config: &Supervised, telemetry: &Arc<Telemetry>) -> Result<()> {
    if let Some(addr) = config.supervision.http_addr {
        crate::http::serve(addr, telemetry.clone(), config.supervision.ready_always).await?;
    }
    if let Some(path) = &config.supervision.status_file {
        crate::http::spawn_status_file(path.clone(), telemetry)?;
    }
    Ok(())
}

pub async fn run<B: LockBackend>(
    config: &Supervised,
    manager: &LockManager<B>,
    mut process: ProcessControl,
    telemetry: Arc<Telemetry>,
) -> Result<Outcome> {
    // A typo in the command must not take the lock from a healthy standby set.
    check_program(config)?;
    acquire::warn_accepted_risks(&config.lock.request);
    start_reporting(config, &telemetry).await?;
    let hooks = Hooks::new(
        config.lock.hooks.clone(),
        process.spawner(),
        config.lock.hook_timeout,
    );
    let observer = AcquireHooks {
        hooks: hooks.clone(),
    };
    let started = Instant::now();
    tracing::info!(event = "waiting", "waiting for the lock");
    let (result, signal) = acquire::campaign(
        manager,
        &config.lock.request,
        &observer,
        &mut process.signals,
        &telemetry,
        acquire::OnUnreachable::RetryAfterFirstAnswer,
    )
    .await;
    let acquired = match result {
        // The wait itself can give up with the error that names the holder (`waiting`).
        Err(err) if matches!(err.kind, ErrorKind::Timeout | ErrorKind::Locked) => {
            return Ok(gave_up(config, err))
        }
        other => other?,
    };
    let mut lease = match acquired {
        Acquired::Held(lease) => lease,
        Acquired::Locked(holder) => {
            let who = holder
                .map(|h| format!(" (held by {})", h.holder_summary()))
                .unwrap_or_default();
            return Ok(gave_up(
                config,
                Error::new(
                    ErrorKind::Locked,
                    format!("lock {} is taken{who}", config.lock.request.key),
                ),
            ));
        }
        Acquired::TimedOut => {
            return Ok(gave_up(
                config,
                Error::new(
                    ErrorKind::Timeout,
                    format!("timed out waiting for lock {}", config.lock.request.key),
                ),
            ))
        }
        Acquired::Cancelled => {
            return Ok(Outcome::Interrupted(
                signal.map(|s| s.number()).unwrap_or(15),
            ))
        }
    };
    // A wrapper frozen between the acquisition and here must not start anything late.
    if let Some(reason) = crate::locks::lost_already(&mut lease).await {
        let _ = lease.release().await;
        return Ok(Outcome::Failed(Error::new(
            ErrorKind::LockLost,
            format!(
                "lock {} lost before the command started ({reason})",
                config.lock.request.key
            ),
        )));
    }
    let ctx = acquire::record_acquired(&telemetry, &lease, started.elapsed());
    // Hooks run beside the command: the command's start must not wait on them.
    let mut acquired_hooks = Some(hooks.fire_detached(Event::Acquired, &ctx));

    let spec = command_spec(config, lease.info());
    let end = match process.spawner().spawn(&spec) {
        Ok(child) => {
            tracing::info!(
                event = "started",
                pid = child.pid.as_raw(),
                "command started"
            );
            hold(
                config,
                &mut lease,
                child,
                &mut process,
                &hooks,
                &ctx,
                &telemetry,
            )
            .await
        }
        Err(err) => {
            // No command, so nothing stops the on-acquired hooks: they end (or time out) before
            // the release, never beside another holder.
            if let Some(running) = acquired_hooks.take() {
                let _ = running.await;
            }
            HoldEnd::NotStarted(err)
        }
    };
    let outcome = conclude(config, lease, end, &hooks, &ctx, &telemetry).await;
    if let Some(running) = acquired_hooks {
        let _ = running.await;
    }
    Ok(outcome)
}

/// How a hold ended. [`hold`] only stops the command; [`conclude`] is the one place that
/// releases, runs the closing hooks, updates telemetry and picks the outcome.
///
/// `tree_gone` says whether nothing of the command's tree was left when `hold` returned (see
/// `Child::stop_leftovers`): when false, a process survived SIGKILL and the release must not be
/// reported as clean.
enum HoldEnd {
    /// The command ended on its own, or after a forwarded stop signal.
    Exited { status: ExitStatus, tree_gone: bool },
    /// The lock was lost and the command was stopped; the lost hooks were started at the loss.
    Lost {
        reason: LossReason,
        status: ExitStatus,
        hooks: tokio::task::JoinHandle<()>,
        tree_gone: bool,
    },
    /// The command could not be started.
    NotStarted(SpawnError),
}

/// Releases the lock (and destroys the session), runs the hooks that close the hold, records
/// it, and turns it into the outcome.
async fn conclude(
    config: &Supervised,
    mut lease: impl HeldLock,
    end: HoldEnd,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
) -> Outcome {
    if let HoldEnd::Exited { status, .. } | HoldEnd::Lost { status, .. } = &end {
        telemetry.child_exited(status.code());
    }
    if !matches!(end, HoldEnd::Lost { .. }) {
        // (A loss was recorded at the moment it happened, by `hold`.)
        telemetry.not_leader(false);
    }
    if let HoldEnd::Exited {
        tree_gone: false, ..
    }
    | HoldEnd::Lost {
        tree_gone: false, ..
    } = &end
    {
        tracing::error!(
            "a process of the command survived SIGKILL; releasing the lock without the clean \
             marker, so the next holder waits its takeover delay"
        );
        lease.set_release_clean(false);
    }
    if let Err(err) = lease.release().await {
        tracing::warn!(%err, "releasing the lock failed; the session was destroyed");
    }
    match end {
        HoldEnd::Exited { status, .. } => {
            hooks.fire(Event::Released, ctx).await;
            Outcome::Child(status.code())
        }
        HoldEnd::NotStarted(err) => {
            hooks.fire(Event::Released, ctx).await;
            let kind = if err.exit_code() == 127 {
                ErrorKind::CommandNotFound
            } else {
                ErrorKind::NotExecutable
            };
            Outcome::Failed(Error::new(kind, err.to_string()))
        }
        HoldEnd::Lost {
            reason,
            status,
            hooks: lost_hooks,
            ..
        } => {
            let _ = tokio::time::timeout(config.lock.hook_timeout, lost_hooks).await;
            Outcome::Failed(Error::new(
                ErrorKind::LockLost,
                format!(
                    "lock {} lost ({reason}); the command was stopped ({})",
                    ctx.key,
                    describe(status)
                ),
            ))
        }
    }
}

/// The loop while the command runs: returns when it exits, the lock is lost (the command is
/// stopped first), or lockwrap is told to stop. Releases nothing: that is [`conclude`]'s job.
async fn hold(
    config: &Supervised,
    lease: &mut impl HeldLock,
    mut child: Child,
    process: &mut ProcessControl,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
) -> HoldEnd {
    let grace = config.lock.request.hold.kill_grace;
    let guardian = process.guardian();
    if let Some(pgid) = child.pgid() {
        guardian.watch_pgid(pgid);
    }
    // The guardian stops the command's tree if the deadline passes while this wrapper cannot.
    let following = lease
        .stop_deadline()
        .map(|deadlines| guardian.follow(deadlines, grace));
    let end = hold_until_end(lease, &mut child, process, hooks, ctx, telemetry, grace).await;
    if let Some(task) = following {
        task.abort();
    }
    // The command's tree is stopped (or proved unkillable): nothing is left for the guardian.
    guardian.disarm();
    end
}

/// [`hold`]'s loop, between telling the guardian which group to watch and disarming it.
async fn hold_until_end(
    lease: &mut impl HeldLock,
    child: &mut Child,
    process: &mut ProcessControl,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
    grace: Duration,
) -> HoldEnd {
    loop {
        tokio::select! {
            status = child.wait() => {
                tracing::info!(event = "exited", code = status.code(), "command exited");
                // Nothing of the command may outlive the lock.
                let tree_gone = child.stop_leftovers(grace).await;
                return HoldEnd::Exited { status, tree_gone };
            }
            reason = lease.lost() => {
                // A wrapper that stalls mid-stop still loses its command: the renew deadline the
                // guardian holds may be far off (a key delete, a holder change).
                process.guardian().stopping(grace);
                // The on-lost hooks start as the command is being stopped, not after.
                let lost_hooks = hooks.fire_detached(Event::Lost, &EventContext {
                    detail: Some(reason.to_string()),
                    ..ctx.clone()
                });
                // Readiness and /leader flip at the loss, while the command is being stopped.
                telemetry.not_leader(true);
                telemetry.lost_because(&reason);
                tracing::warn!(event = "lost", %reason, grace = ?grace, "lock lost: stopping the command");
                let Stopped { status, tree_gone } = child.stop(grace).await;
                return HoldEnd::Lost { reason, status, hooks: lost_hooks, tree_gone };
            }
            Some(signal) = process.signals.recv() => match policy::on_signal(signal, Phase::Supervising) {
                Action::ForwardAndStop => {
                    forward(child, signal);
                    // The group had the forwarded signal; the rest of the tree gets TERM now.
                    let Stopped { status, tree_gone } = child.stop_after(None, grace).await;
                    return HoldEnd::Exited { status, tree_gone };
                }
                Action::Forward => forward(child, signal),
                Action::Stop | Action::Ignore => {}
            },
        }
    }
}

fn forward(child: &Child, signal: Signal) {
    tracing::debug!(signal = signal.name(), "forwarding signal to the command");
    if let Err(err) = child.signal_group(signal) {
        tracing::debug!(signal = signal.name(), %err, "could not forward signal");
    }
}

fn command_spec(config: &Supervised, info: &LockInfo) -> CommandSpec {
    let (program, args): (OsString, Vec<OsString>) = if config.supervision.shell {
        let joined = config
            .supervision
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        ("/bin/sh".into(), vec!["-c".into(), joined.into()])
    } else {
        let mut parts = config.supervision.command.clone().into_iter();
        (parts.next().unwrap_or_default(), parts.collect())
    };
    CommandSpec {
        program,
        args,
        env: vec![
            ("CONSUL_LOCK_HELD".into(), "true".into()),
            (
                "LOCKWRAP_KEY".into(),
                config.lock.request.key.clone().into(),
            ),
            (
                "LOCKWRAP_SESSION".into(),
                info.session.clone().unwrap_or_default().into(),
            ),
            (
                "LOCKWRAP_FENCING_TOKEN".into(),
                info.fencing_token.unwrap_or_default().to_string().into(),
            ),
        ],
        stdin: StdinMode::Inherit,
        stdout_to_stderr: false,
        own_process_group: true,
        tree: Tree::Command,
    }
}

/// Finds the program the way exec will (PATH search for bare names) and checks it can run:
/// 127 when missing, 126 when not an executable file, before anything touches Consul.
fn check_program(config: &Supervised) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let program: &std::path::Path = if config.supervision.shell {
        std::path::Path::new("/bin/sh")
    } else {
        match config.supervision.command.first() {
            Some(p) => std::path::Path::new(p),
            None => return Ok(()),
        }
    };
    let shown = program.display().to_string();
    let candidates: Vec<std::path::PathBuf> = if shown.contains('/') {
        vec![program.to_path_buf()]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found_unusable = None;
    for candidate in &candidates {
        let Ok(meta) = std::fs::metadata(candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(());
        }
        found_unusable.get_or_insert((candidate.clone(), meta.is_dir()));
    }
    Err(match found_unusable {
        Some((path, true)) => Error::new(
            ErrorKind::NotExecutable,
            format!("command not executable: {} is a directory", path.display()),
        ),
        Some((path, false)) => Error::new(
            ErrorKind::NotExecutable,
            format!(
                "command not executable: {} (no execute permission)",
                path.display()
            ),
        ),
        None => Error::new(
            ErrorKind::CommandNotFound,
            format!("command not found: {shown}"),
        ),
    })
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exit code {code}"),
        ExitStatus::Signaled(sig) => format!("killed by signal {sig}"),
    }
}
