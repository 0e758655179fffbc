//! `lockwrap sidecar`: campaign for leadership with no command, report it (HTTP, status file,
//! hooks), and campaign again after a loss unless `--exit-on-loss`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::acquire;
use super::policy::{self, Phase};
use super::supervise::start_reporting;
use crate::backend::{Acquired, HeldLock, LockBackend, LossReason, Wait};
use crate::config::Supervised;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Event, EventContext, Hooks};
use crate::locks::hold::{self, AppBeside, HoldEnd, HoldObserver};
use crate::locks::LockManager;
use crate::supervisor::{ProcessControl, Signal};
use crate::telemetry::Telemetry;

/// Pause before campaigning again after a loss, so a flapping Consul is not hammered.
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

pub(super) async fn run<B: LockBackend>(
    config: &Supervised,
    manager: &LockManager<B>,
    mut process: ProcessControl,
    telemetry: Arc<Telemetry>,
) -> Result<Outcome> {
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
    loop {
        let started = Instant::now();
        // A sidecar outlives Consul outages, even at start: campaign again with back-off.
        let (result, _signal) = acquire::campaign(
            manager,
            &config.lock.request,
            &observer,
            &mut process.signals,
            &telemetry,
            acquire::OnUnreachable::Retry,
        )
        .await;
        let mut lease = match result? {
            Acquired::Held(lease) => lease,
            Acquired::Cancelled => return Ok(Outcome::Success),
            Acquired::TimedOut => {
                return Ok(Outcome::Failed(Error::new(
                    ErrorKind::Timeout,
                    format!("timed out waiting for lock {}", config.lock.request.key),
                )))
            }
            Acquired::Locked(holder) if config.lock.request.wait == Wait::NonBlocking => {
                // Named as `run` names it (README, "Observability").
                let who = holder
                    .map(|h| format!(" (held by {})", h.holder_summary()))
                    .unwrap_or_default();
                return Ok(Outcome::Failed(Error::new(
                    ErrorKind::Locked,
                    format!("lock {} is taken{who}", config.lock.request.key),
                )));
            }
            Acquired::Locked(_) => continue,
        };
        let ctx = acquire::record_acquired(&telemetry, &lease, started.elapsed());
        let end = lead(
            config,
            &mut lease,
            &hooks,
            &ctx,
            &telemetry,
            &mut process.signals,
        )
        .await;
        if let Some(outcome) = conclude(config, lease, end, &hooks, &ctx).await {
            return Ok(outcome);
        }
        tokio::time::sleep(RECAMPAIGN_PAUSE).await;
    }
}

/// One term as leader, until a loss or a stop signal ends it: the on-acquired hooks run beside
/// the hold and end with the term, so none runs on past the release that follows.
async fn lead<L: HeldLock>(
    config: &Supervised,
    lease: &mut L,
    hooks: &Hooks,
    ctx: &EventContext,
    telemetry: &Telemetry,
    signals: &mut UnboundedReceiver<Signal>,
) -> HoldEnd {
    let grace = config.lock.request.hold.kill_grace;
    // The on-acquired hooks run beside the hold, which watches for a loss from the start,
    // and end with the term like a command's (README, "The supervisor").
    let term = CancellationToken::new();
    let (acquired_done, acquired_ended) = tokio::sync::watch::channel(false);
    let acquired_hooks = {
        let running = hooks.fire_detached_until(Event::Acquired, ctx, term.clone(), grace);
        tokio::spawn(async move {
            let _ = running.await;
            let _ = acquired_done.send(true);
        })
    };
    // The app beside us is the command: a loss or a stop signal withdraws leadership first,
    // then the app has the kill grace to notice before the release (docs/timing.md).
    let leadership = Leadership {
        hooks,
        ctx,
        telemetry,
        term: &term,
        acquired_ended,
    };
    let end = hold::hold(
        lease,
        &mut AppBeside,
        None,
        &mut policy::Signals::new(signals, Phase::Leading),
        &leadership,
        grace,
    )
    .await;
    // Stopped at the loss or step-down, so they have had the grace: nothing of the term runs
    // on past the release.
    term.cancel();
    let _ = acquired_hooks.await;
    end
}

/// Withdraws leadership as a term ends, before the app's kill grace starts: `/leader`, readiness
/// and the status file flip, and the on-lost hooks start at the loss.
struct Leadership<'a> {
    hooks: &'a Hooks,
    ctx: &'a EventContext,
    telemetry: &'a Telemetry,
    /// Ends the term's on-acquired hooks.
    term: &'a CancellationToken,
    /// True once they have ended: the on-lost hooks run after them, never beside.
    acquired_ended: tokio::sync::watch::Receiver<bool>,
}

impl HoldObserver for Leadership<'_> {
    fn lost(&self, reason: &LossReason) -> Option<tokio::task::JoinHandle<()>> {
        self.term.cancel();
        self.telemetry.not_leader(true);
        self.telemetry.lost_because(reason);
        let hooks = self.hooks.clone();
        let ctx = EventContext {
            detail: Some(reason.to_string()),
            ..self.ctx.clone()
        };
        let mut acquired_ended = self.acquired_ended.clone();
        // A "demote" hook must not finish before the "promote" hook it answers has stopped.
        Some(tokio::spawn(async move {
            let _ = acquired_ended.wait_for(|ended| *ended).await;
            hooks.fire(Event::Lost, &ctx).await;
        }))
    }

    fn interrupted(&self, signal: Signal) {
        tracing::info!(event = "released", signal = signal.name(), "stepping down");
        self.term.cancel();
        self.telemetry.not_leader(false);
    }
}

/// The one place a term ends, after the app had its kill grace: awaits the on-lost hooks,
/// releases the lock, fires the closing hooks, and says whether to exit (`Some`) or campaign
/// again (`None`). `--exit-on-loss` is decided before the release, which may retry for up to one
/// TTL.
async fn conclude(
    config: &Supervised,
    lease: impl HeldLock,
    end: HoldEnd,
    hooks: &Hooks,
    ctx: &EventContext,
) -> Option<Outcome> {
    // The app that acts on leadership runs outside lockwrap and is never known to be gone: a
    // sidecar's release is never clean, so the next leader waits its takeover delay
    // (`AppBeside`; docs/timing.md). The session stayed alive through the app's kill grace, so a
    // key deleted under this sidecar did not look never used to the next one meanwhile
    // (docs/timing.md, "First use").
    let mut end = end;
    if let HoldEnd::Lost {
        reason,
        hooks: lost_hooks,
        ..
    } = &mut end
    {
        if let Some(lost_hooks) = lost_hooks.take() {
            let _ = tokio::time::timeout(config.lock.hook_timeout, lost_hooks).await;
        }
        let outcome = if config.supervision.exit_on_loss {
            tracing::warn!(%reason, "leadership lost; exiting (--exit-on-loss)");
            Some(Outcome::Failed(Error::new(
                ErrorKind::LockLost,
                format!("lock {} lost: {reason}", config.lock.request.key),
            )))
        } else {
            tracing::warn!(%reason, "leadership lost; campaigning again");
            None
        };
        let _ = hold::release_after(lease, &end).await;
        return outcome;
    }
    let _ = hold::release_after(lease, &end).await;
    hooks.fire(Event::Released, ctx).await;
    Some(Outcome::Success)
}
