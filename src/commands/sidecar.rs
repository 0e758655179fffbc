//! `lockwrap sidecar`: campaign for leadership with no command, report it (HTTP, status file,
//! hooks), and campaign again after a loss unless `--exit-on-loss`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::acquire;
use super::policy::{self, Action, Phase};
use super::supervise::start_reporting;
use crate::backend::{Acquired, HeldLock, LockBackend, Wait};
use crate::config::Config;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Event, EventContext, Hooks};
use crate::locks::LockManager;
use crate::supervisor::ProcessControl;
use crate::telemetry::Telemetry;

/// Pause before campaigning again after a loss, so a flapping Consul is not hammered.
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

pub async fn run<B: LockBackend>(
    config: &Config,
    manager: &LockManager<B>,
    mut process: ProcessControl,
    telemetry: Arc<Telemetry>,
) -> Result<Outcome> {
    acquire::warn_accepted_risks(&config.request);
    start_reporting(config, &telemetry).await?;
    let hooks = Hooks::new(config.hooks.clone(), process.spawner(), config.hook_timeout);
    let observer = AcquireHooks {
        hooks: hooks.clone(),
    };
    loop {
        let started = Instant::now();
        // A sidecar outlives Consul outages, even at start: campaign again with back-off.
        let (result, _signal) = acquire::campaign(
            manager,
            &config.request,
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
                    format!("timed out waiting for lock {}", config.request.key),
                )))
            }
            Acquired::Locked(_) if config.request.wait == Wait::NonBlocking => {
                return Ok(Outcome::Failed(Error::new(
                    ErrorKind::Locked,
                    format!("lock {} is taken", config.request.key),
                )))
            }
            Acquired::Locked(_) => continue,
        };
        match acquire::takeover_wait(
            config.request.hold.takeover_delay,
            &mut lease,
            &mut process.signals,
        )
        .await
        {
            Ok(()) => {}
            Err(acquire::TakeoverAbort::Stopped(_)) => {
                let _ = lease.release().await;
                return Ok(Outcome::Success);
            }
            Err(acquire::TakeoverAbort::Lost(reason)) => {
                let _ = lease.release().await;
                if config.exit_on_loss {
                    return Ok(Outcome::Failed(Error::new(
                        ErrorKind::LockLost,
                        format!("lock {} lost: {reason}", config.request.key),
                    )));
                }
                continue;
            }
        }
        let ctx = acquire::record_acquired(&telemetry, &lease, started.elapsed());
        hooks.fire(Event::Acquired, &ctx).await;

        let stop_signal = loop {
            tokio::select! {
                reason = lease.lost() => break Err(reason),
                Some(signal) = process.signals.recv() => {
                    // A leader steps down on the same signals that end a standby's wait.
                    if policy::on_signal(signal, Phase::Leading) == Action::Stop {
                        break Ok(signal);
                    }
                }
            }
        };
        match stop_signal {
            Ok(signal) => {
                tracing::info!(event = "released", signal = signal.name(), "stepping down");
                telemetry.not_leader(false);
                let _ = lease.release().await;
                hooks.fire(Event::Released, &ctx).await;
                return Ok(Outcome::Success);
            }
            Err(reason) => {
                telemetry.not_leader(true);
                telemetry.lost_because(&reason);
                let _ = lease.release().await;
                hooks
                    .fire(
                        Event::Lost,
                        &EventContext {
                            detail: Some(reason.to_string()),
                            ..ctx.clone()
                        },
                    )
                    .await;
                if config.exit_on_loss {
                    return Ok(Outcome::Failed(Error::new(
                        ErrorKind::LockLost,
                        format!("lock {} lost: {reason}", config.request.key),
                    )));
                }
                tracing::warn!(event = "lost", %reason, "leadership lost; campaigning again");
                tokio::time::sleep(RECAMPAIGN_PAUSE).await;
            }
        }
    }
}
