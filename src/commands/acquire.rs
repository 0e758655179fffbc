//! Acquiring while listening to signals: a stop signal aborts the wait at once (the backend
//! destroys its session) and is reported so the caller can exit 128+signal.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::policy::{self, Action, Phase};
use super::waiting::{self, WaitLog, Watching};
use crate::backend::timing::TimingPlan;
use crate::backend::{AcquireObserver, Acquired, HeldLock, LockBackend, LockRequest};
use crate::exit::{ErrorKind, Result};
use crate::hooks::EventContext;
use crate::locks::LockManager;
use crate::output::now_iso8601;
use crate::supervisor::Signal;
use crate::telemetry::Telemetry;

/// What a campaign does when Consul does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnUnreachable {
    /// Keep campaigning with back-off (sidecar: a long-lived daemon).
    Retry,
    /// Retry only once Consul has answered at least once: a wrong address still fails fast
    /// (exit 8), an outage later on is ridden out (run/execute).
    RetryAfterFirstAnswer,
}

/// Back-off between campaigns that failed because Consul did not answer: first quickly, then
/// at most every 30 s (an outage should not turn into a request storm from every replica).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// [`until_signal`] in a loop that rides out Consul outages per `policy`; `/healthz` reports
/// them meanwhile. Stays stoppable by signals during the back-off.
pub(super) async fn campaign<B: LockBackend>(
    manager: &LockManager<B>,
    request: &LockRequest,
    observer: &dyn AcquireObserver,
    signals: &mut UnboundedReceiver<Signal>,
    telemetry: &Telemetry,
    policy: OnUnreachable,
) -> (Result<Acquired<B::Lease>>, Option<Signal>) {
    let mut pause = RETRY_FIRST;
    loop {
        let (result, signal) = until_signal(manager, request, observer, signals).await;
        let retry = match &result {
            Err(err) if err.kind == ErrorKind::ConsulUnavailable => match policy {
                OnUnreachable::Retry => true,
                OnUnreachable::RetryAfterFirstAnswer => telemetry.consul_answered(),
            },
            _ => false,
        };
        if !retry {
            return (result, signal);
        }
        if let Err(err) = &result {
            telemetry.set_consul_healthy(false);
            tracing::warn!(%err, retry_in = ?pause, "campaign failed; retrying");
        }
        let deadline = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(signal) = signals.recv() => {
                    if ends_wait(signal) {
                        return (Ok(Acquired::Cancelled), Some(signal));
                    }
                }
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Logs, at start, each failure path the user accepted with `--unsafe-allow-overlap` (the plan
/// the configuration check made).
pub(super) fn warn_accepted_risks(plan: Option<&TimingPlan>) {
    for risk in plan.iter().flat_map(|plan| &plan.accepted) {
        tracing::warn!(risk = %risk.message, "--unsafe-allow-overlap: two commands may run at once");
    }
}

/// Publishes a fresh acquisition: telemetry, the log span's session, one log line. Returns the
/// hook context of the lease.
pub(super) fn record_acquired(
    telemetry: &Telemetry,
    lease: &impl HeldLock,
    waited: Duration,
) -> EventContext {
    let info = lease.info();
    telemetry.acquired(info, waited, now_iso8601());
    tracing::Span::current().record("session", info.session.as_deref().unwrap_or_default());
    tracing::info!(
        event = "acquired",
        fencing_token = info.fencing_token.unwrap_or_default(),
        "lock acquired"
    );
    EventContext::from_info(lease.info())
}

/// Whether `signal` ends a wait for the lock (the one policy: [`policy::on_signal`]).
fn ends_wait(signal: Signal) -> bool {
    policy::on_signal(signal, Phase::Waiting) == Action::Stop
}

/// Acquires `request`; returns the outcome and the signal that cancelled it, if one did. While
/// it waits it says whom for (`waiting`); a `--timeout` comes back as an error naming them.
pub(super) async fn until_signal<B: LockBackend>(
    manager: &LockManager<B>,
    request: &LockRequest,
    observer: &dyn AcquireObserver,
    signals: &mut UnboundedReceiver<Signal>,
) -> (Result<Acquired<B::Lease>>, Option<Signal>) {
    let stop = CancellationToken::new();
    let watching = Watching::new(observer);
    let acquire = manager.acquire_with(request, &watching, &stop);
    tokio::pin!(acquire);
    let mut received = None;
    let mut wait_log = WaitLog::new(request);
    loop {
        tokio::select! {
            result = &mut acquire => {
                // A failure after a stop signal (e.g. a write that timed out against a frozen
                // agent) is still a stop: exit 128+signal, not 8.
                let result = match result.map_err(crate::exit::Error::from) {
                    Err(err) if received.is_some() => {
                        tracing::debug!(%err, "acquire failed after a stop signal");
                        Ok(Acquired::Cancelled)
                    }
                    // The acquire completed in the same instant as the stop signal: the signal
                    // wins. Give the lock back at once rather than start anything under it (the
                    // signal is consumed here, so nothing later would stop the command).
                    Ok(Acquired::Held(lease)) if received.is_some() => {
                        tracing::info!("stop signal arrived as the lock was taken: releasing it");
                        if let Err(err) = lease.release().await {
                            tracing::warn!(%err, "releasing the lock after a stop signal failed");
                        }
                        Ok(Acquired::Cancelled)
                    }
                    Ok(Acquired::TimedOut) => {
                        Err(waiting::timed_out(manager.backend(), request).await)
                    }
                    other => other,
                };
                return (result, received);
            }
            _ = watching.taken.notified(), if wait_log.first_due() && received.is_none() => {
                wait_log.look(manager.backend(), request, watching.attempts()).await;
            }
            _ = tokio::time::sleep_until(wait_log.next_look()),
                if wait_log.waits() && received.is_none() => {
                wait_log.look(manager.backend(), request, watching.attempts()).await;
            }
            Some(signal) = signals.recv(), if received.is_none() => {
                if ends_wait(signal) {
                    tracing::info!(signal = signal.name(), "stopping the wait for the lock");
                    received = Some(signal);
                    stop.cancel();
                } else {
                    tracing::debug!(signal = signal.name(), "ignored while waiting for the lock");
                }
            }
        }
    }
}
