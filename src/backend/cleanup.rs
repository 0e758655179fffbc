//! Best-effort cleanups that outlive the future that started them (a session create abandoned
//! by a stop signal, a lease dropped without release, a session destroy retried through a
//! leader election). `main` waits for them, bounded, before the process exits, so a stop signal
//! does not leave a session behind.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn tracker() -> &'static TaskTracker {
    static TRACKER: OnceLock<TaskTracker> = OnceLock::new();
    TRACKER.get_or_init(TaskTracker::new)
}

/// The latest deadline a cleanup spawned with [`spawn_within`] asked the exit to wait for.
fn latest() -> &'static Mutex<Option<Instant>> {
    static LATEST: Mutex<Option<Instant>> = Mutex::new(None);
    &LATEST
}

/// Runs `cleanup` in the background; [`wait`] waits for it.
pub(crate) fn spawn<F>(cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tracker().spawn(cleanup);
}

/// Like [`spawn`] for a cleanup that bounds itself to `patience` (a session destroy retried
/// for up to one TTL): [`wait`] waits for it up to then even past its own limit, as an exit
/// waits for the holder's release (docs/timing.md, "Consul trouble").
pub(crate) fn spawn_within<F>(patience: Duration, cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let until = Instant::now() + patience;
    {
        let mut latest = latest().lock().unwrap_or_else(|e| e.into_inner());
        *latest = Some(latest.map_or(until, |l| l.max(until)));
    }
    tracker().spawn(cleanup);
}

/// Cancelled when the process starts waiting for its cleanups: open-ended background work
/// (looking for sessions whose create outcome was unknown) does a last round and ends.
pub(crate) fn closing() -> CancellationToken {
    static CLOSING: OnceLock<CancellationToken> = OnceLock::new();
    CLOSING.get_or_init(CancellationToken::new).clone()
}

/// Waits up to `limit` (or longer, up to the deadline of a cleanup spawned with
/// [`spawn_within`]) for every pending cleanup (called once, on the way out).
pub(crate) async fn wait(limit: Duration) {
    let tracker = tracker();
    tracker.close();
    closing().cancel();
    let started = Instant::now();
    loop {
        let asked = *latest().lock().unwrap_or_else(|e| e.into_inner());
        let until = exit_deadline(started + limit, asked);
        if tokio::time::timeout_at(until.into(), tracker.wait())
            .await
            .is_ok()
        {
            return;
        }
        // A cleanup spawned meanwhile may have moved the deadline.
        let moved = *latest().lock().unwrap_or_else(|e| e.into_inner());
        if moved.map_or(true, |l| l <= until) {
            break;
        }
    }
    tracing::warn!("cleanups still running at exit; their sessions expire with their TTL");
}

/// The later of `limit` and the deadline a bounded cleanup asked for.
fn exit_deadline(limit: Instant, asked: Option<Instant>) -> Instant {
    asked.map_or(limit, |asked| asked.max(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_waits_for_the_latest_bounded_cleanup() {
        let now = Instant::now();
        let limit = now + Duration::from_secs(3);
        assert_eq!(exit_deadline(limit, None), limit);
        assert_eq!(
            exit_deadline(limit, Some(now + Duration::from_secs(1))),
            limit
        );
        let later = now + Duration::from_secs(15);
        assert_eq!(exit_deadline(limit, Some(later)), later);
    }
}
