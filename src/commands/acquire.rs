//! Acquiring while listening to signals: a stop signal aborts the wait at once (the backend
//! destroys its session) and is reported so the caller can exit 128+signal.

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::backend::consul::Lease;
use crate::backend::{AcquireObserver, Acquired, LockRequest};
use crate::exit::Result;
use crate::locks::LockManager;
use crate::supervisor::Signal;

/// Signals that end a wait for the lock (the default action of each is to terminate).
fn ends_wait(signal: Signal) -> bool {
    signal.requests_stop() || signal == Signal::HUP || signal == Signal::QUIT
}

/// Acquires `request`; returns the outcome and the signal that cancelled it, if one did.
pub async fn until_signal(
    manager: &LockManager,
    request: &LockRequest,
    observer: &dyn AcquireObserver,
    signals: &mut UnboundedReceiver<Signal>,
) -> (Result<Acquired<Lease>>, Option<Signal>) {
    let stop = CancellationToken::new();
    let acquire = manager.acquire_with(request, observer, &stop);
    tokio::pin!(acquire);
    let mut received = None;
    loop {
        tokio::select! {
            result = &mut acquire => return (result, received),
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
