//! What every recipe (lock, semaphore, queue) shares while waiting: the key layout, the
//! standby's blocking-query length, and waits that a stop signal or `--timeout` interrupt.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backend::Layout;

/// How long a standby's blocking query waits before re-asking: long, because Consul answers
/// at once when the key changes, and every re-ask is a request (target ≤ 1 per minute).
pub(crate) const STANDBY_WAIT: Duration = Duration::from_secs(300);
/// The KV key holding the lock for `key` in `layout`.
pub(crate) fn lock_key(key: &str, layout: Layout) -> String {
    match layout {
        Layout::Default => key.to_string(),
        Layout::ConsulLock => format!("{}/.lock", key.trim_end_matches('/')),
    }
}

/// Why an acquire attempt stopped early.
pub(crate) enum Interrupt {
    Cancelled,
    TimedOut,
}

/// Runs `fut` unless `stop` fires or `deadline` passes first; the future is dropped then, which
/// aborts an in-flight read at once.
pub(crate) async fn interruptible<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<T, Interrupt> {
    let timeout = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Interrupt::Cancelled),
        _ = timeout => Err(Interrupt::TimedOut),
        value = fut => Ok(value),
    }
}
