//! `lockwrap run` and `lockwrap execute`: hold the lock, run the command, and make sure the
//! command is dead before anyone else can hold the lock (README, "The supervisor"; docs/timing.md).
//!
//! States: waiting → holding+running → (child exited | lock lost | stop signal) → released.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Instant;

use super::acquire;
use super::policy::{self, Phase};
use crate::backend::{Acquired, HeldLock, LockBackend, LockInfo, LossReason};
use crate::config::Supervised;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Event, EventContext, Hooks};
use crate::locks::hold::{self, HoldEnd, HoldObserver, NotStarted};
use crate::locks::LockManager;
use crate::supervisor::{CommandSpec, ExitStatus, ProcessControl, Signal, StdinMode, Tree};
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
pub(super) async fn start_reporting(config: &Supervised, telemetry: &Arc<Telemetry>) -> Result<()> {
    if let Some(addr) = config.supervision.http_addr {
        crate::http::serve(addr, telemetry.clone(), config.supervision.ready_always).await?;
    }
    if let Some(path) = &config.supervision.status_file {
        crate::http::spawn_status_file(path.clone(), telemetry)?;
    }
    Ok(())
}

pub(super) async fn run<B: LockBackend>(
    config: &Supervised,
    manager: &LockManager<B>,
    mut process: ProcessControl,
    telemetry: Arc<Telemetry>,
) -> Result<Outcome> {
    // A typo in the command must not take the lock from a healthy standby set.
    check_program(config)?;
    acquire::warn_accepted_risks(config.lock.plan.as_ref());
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
    let mut lease = match held_or_outcome(config, result, signal)? {
        Ok(lease) => lease,
        Err(outcome) => return Ok(outcome),
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

    let end = start_and_hold(config, &mut lease, &mut process, &hooks, &ctx, &telemetry).await;
    if end.is_err() {
        // No command, so nothing stops the on-acquired hooks: they end (or time out) before
        // the release, never beside another holder.
        if let Some(running) = acquired_hooks.take() {
            let _ = running.await;
        }
    }
    let outcome = conclude(config, lease, end, &hooks, &ctx, &telemetry).await;
    if let Some(running) = acquired_hooks {
        let _ = running.await;
    }
    Ok(outcome)
}

/// Starts the command under the lease and holds until it exits, the lock is lost, or a stop
/// signal ends the hold; the command's whole tree is stopped before this returns. `Err` when the
/// command never started (the lock was lost first, or it could not be spawned).
async fn start_and_hold<L: HeldLock>(
    config: &Supervised,
    lease: &mut L,
    process: &mut ProcessControl,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
) -> std::result::Result<HoldEnd, NotStarted> {
    let spec = command_spec(config, lease.info());
    let mut child = hold::start(lease, &process.spawner(), &spec).await?;
    tracing::info!(
        event = "started",
        pid = child.pid.as_raw(),
        "command started"
    );
    let observer = LossToHooks {
        hooks,
        ctx,
        telemetry,
    };
    let guardian = process.guardian();
    let mut signals = policy::Signals::new(&mut process.signals, Phase::Supervising);
    Ok(hold::hold(
        lease,
        &mut child,
        Some(&guardian),
        &mut signals,
        &observer,
        config.lock.request.hold.kill_grace,
    )
    .await)
}

/// The lease the campaign won, or the outcome when it did not: the lock stayed taken or the
/// wait timed out (`--locked-exit-code` applies), or a stop signal ended the wait.
fn held_or_outcome<L>(
    config: &Supervised,
    result: Result<Acquired<L>>,
    signal: Option<Signal>,
) -> Result<std::result::Result<L, Outcome>> {
    let acquired = match result {
        // The wait itself can give up with the error that names the holder (`waiting`).
        Err(err) if matches!(err.kind, ErrorKind::Timeout | ErrorKind::Locked) => {
            return Ok(Err(gave_up(config, err)))
        }
        other => other?,
    };
    let key = &config.lock.request.key;
    Ok(match acquired {
        Acquired::Held(lease) => Ok(lease),
        Acquired::Locked(holder) => {
            let who = holder
                .map(|h| format!(" (held by {})", h.holder_summary()))
                .unwrap_or_default();
            Err(gave_up(
                config,
                Error::new(ErrorKind::Locked, format!("lock {key} is taken{who}")),
            ))
        }
        Acquired::TimedOut => Err(gave_up(
            config,
            Error::new(
                ErrorKind::Timeout,
                format!("timed out waiting for lock {key}"),
            ),
        )),
        Acquired::Cancelled => Err(Outcome::Interrupted(
            signal.map(|s| s.number()).unwrap_or(15),
        )),
    })
}

/// What the CLI does as a hold ends: the on-lost hooks start and readiness and `/leader` flip at
/// the loss, while the command is being stopped.
struct LossToHooks<'a> {
    hooks: &'a Hooks,
    ctx: &'a EventContext,
    telemetry: &'a Telemetry,
}

impl HoldObserver for LossToHooks<'_> {
    fn lost(&self, reason: &LossReason) -> Option<tokio::task::JoinHandle<()>> {
        let hooks = self.hooks.fire_detached(
            Event::Lost,
            &EventContext {
                detail: Some(reason.to_string()),
                ..self.ctx.clone()
            },
        );
        self.telemetry.not_leader(true);
        self.telemetry.lost_because(reason);
        Some(hooks)
    }

    fn interrupted(&self, signal: Signal) {
        tracing::info!(signal = signal.name(), "stopping the command");
        self.telemetry.not_leader(false);
    }
}

/// Releases the lock (and destroys the session), runs the hooks that close the hold, records
/// it, and turns it into the outcome: the one place a `run` / `execute` hold ends.
async fn conclude(
    config: &Supervised,
    lease: impl HeldLock,
    end: std::result::Result<HoldEnd, NotStarted>,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
) -> Outcome {
    if let Ok(held) = &end {
        telemetry.child_exited(held.status().code());
        if !held.tree_gone() {
            tracing::error!(
                "a process of the command survived SIGKILL; releasing the lock without the \
                 clean marker, so the next holder waits its takeover delay"
            );
        }
    }
    if !matches!(end, Ok(HoldEnd::Lost { .. })) {
        // (A loss was recorded at the moment it happened, by the hold's observer.)
        telemetry.not_leader(false);
    }
    let released = match &end {
        Ok(held) => hold::release_after(lease, held).await,
        Err(_) => lease.release().await,
    };
    if let Err(err) = released {
        tracing::warn!(%err, "releasing the lock failed; the session was destroyed");
    }
    match end {
        Ok(HoldEnd::Exited { status, .. } | HoldEnd::Interrupted { status, .. }) => {
            hooks.fire(Event::Released, ctx).await;
            Outcome::Child(status.code())
        }
        Err(NotStarted::Spawn(err)) => {
            hooks.fire(Event::Released, ctx).await;
            let kind = if err.exit_code() == 127 {
                ErrorKind::CommandNotFound
            } else {
                ErrorKind::NotExecutable
            };
            Outcome::Failed(Error::new(kind, err.to_string()))
        }
        Err(NotStarted::Lost(reason)) => Outcome::Failed(Error::new(
            ErrorKind::LockLost,
            format!(
                "lock {} lost before the command started ({reason})",
                ctx.key
            ),
        )),
        Ok(HoldEnd::Lost {
            reason,
            status,
            hooks: lost_hooks,
            ..
        }) => {
            if let Some(lost_hooks) = lost_hooks {
                let _ = tokio::time::timeout(config.lock.hook_timeout, lost_hooks).await;
            }
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
        env: hold::command_env(&config.lock.request.key, info),
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
