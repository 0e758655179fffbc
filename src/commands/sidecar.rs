//! `lockwrap sidecar`: campaign for leadership with no command, report it (HTTP, status file,
//! hooks), and campaign again after a loss unless `--exit-on-loss`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::acquire;
use super::policy::{self, Action, Phase};
use super::supervise::start_reporting;
use crate::backend::{Acquired, HeldLock, LockBackend, LossReason, Wait};
use crate::config::Supervised;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Event, EventContext, Hooks};
use crate::locks::LockManager;
use crate::supervisor::ProcessControl;
use crate::telemetry::Telemetry;

/// Pause before campaigning again after a loss, so a flapping Consul is not hammered.
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

pub async fn run<B: LockBackend>(
    config: &Supervised,
    manager: &LockManager<B>,
    mut process: ProcessControl,
    telemetry: Arc<Telemetry>,
) -> Result<Outcome> {
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
            Acquired::Locked(_) if config.lock.request.wait == Wait::NonBlocking => {
                return Ok(Outcome::Failed(Error::new(
                    ErrorKind::Locked,
                    format!("lock {} is taken", config.lock.request.key),
                )))
            }
            Acquired::Locked(_) => continue,
        };
        let end = {
            let ctx = acquire::record_acquired(&telemetry, &lease, started.elapsed());
            hooks.fire(Event::Acquired, &ctx).await;
            let end = loop {
                tokio::select! {
                    reason = lease.lost() => break TermEnd::Lost(reason, ctx),
                    Some(signal) = process.signals.recv() => {
                        // A leader steps down on the same signals that end a standby's wait.
                        if policy::on_signal(signal, Phase::Leading) == Action::Stop {
                            tracing::info!(event = "released", signal = signal.name(), "stepping down");
                            break TermEnd::SteppedDown(ctx);
                        }
                    }
                }
            };
            end
        };
        if let Some(outcome) = conclude(config, lease, end, &hooks, &telemetry).await {
            return Ok(outcome);
        }
        tokio::time::sleep(RECAMPAIGN_PAUSE).await;
    }
}

/// How one term of leadership ended.
enum TermEnd {
    /// Leadership was lost.
    Lost(LossReason, EventContext),
    /// A stop signal: step down and exit.
    SteppedDown(EventContext),
}

/// The one place a term ends: records it, fires the closing hooks, releases the lock, and says
/// whether to exit (`Some`) or campaign again (`None`). After a loss the on-lost hooks run and
/// `--exit-on-loss` is decided before the release, which may retry for up to one TTL.
async fn conclude(
    config: &Supervised,
    mut lease: impl HeldLock,
    end: TermEnd,
    hooks: &Hooks,
    telemetry: &Telemetry,
) -> Option<Outcome> {
    // The app that acts on leadership runs outside lockwrap, and may still be acting on it
    // for up to the kill grace after `/leader` and the status file say not leader: a sidecar's
    // release is never clean, so the next leader waits its takeover delay (docs/timing.md).
    lease.set_release_clean(false);
    // Keep the session (and the lock entry's holder) alive while the app may still be stopping:
    // a key deleted under this sidecar must not look never used to the next one before the app
    // had its kill grace to see `/leader` and the status file say not leader (docs/timing.md,
    // "First use"). Leadership was withdrawn below first, before this wait.
    let app_stop = config.lock.request.hold.kill_grace;
    let outcome = match end {
        TermEnd::Lost(reason, ctx) => {
            telemetry.not_leader(true);
            telemetry.lost_because(&reason);
            let detail = EventContext {
                detail: Some(reason.to_string()),
                ..ctx
            };
            hooks.fire(Event::Lost, &detail).await;
            if config.supervision.exit_on_loss {
                tracing::warn!(event = "lost", %reason, "leadership lost; exiting (--exit-on-loss)");
                Some(Outcome::Failed(Error::new(
                    ErrorKind::LockLost,
                    format!("lock {} lost: {reason}", config.lock.request.key),
                )))
            } else {
                tracing::warn!(event = "lost", %reason, "leadership lost; campaigning again");
                None
            }
        }
        TermEnd::SteppedDown(ctx) => {
            telemetry.not_leader(false);
            tokio::time::sleep(app_stop).await;
            let _ = lease.release().await;
            hooks.fire(Event::Released, &ctx).await;
            return Some(Outcome::Success);
        }
    };
    tokio::time::sleep(app_stop).await;
    let _ = lease.release().await;
    outcome
}
