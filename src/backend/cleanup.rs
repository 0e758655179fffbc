//! Best-effort cleanups that outlive the future that started them (a session create abandoned
//! by a stop signal, a lease dropped without release). `main` waits for them, bounded, before
//! the process exits, so a stop signal does not leave a session behind.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::task::TaskTracker;

fn tracker() -> &'static TaskTracker {
    static TRACKER: OnceLock<TaskTracker> = OnceLock::new();
    TRACKER.get_or_init(TaskTracker::new)
}

/// Runs `cleanup` in the background; [`wait`] waits for it.
pub fn spawn<F>(cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    tracker().spawn(cleanup);
}

/// Waits up to `limit` for every pending cleanup (called once, on the way out).
pub async fn wait(limit: Duration) {
    let tracker = tracker();
    tracker.close();
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!("cleanups still running at exit; their sessions expire with their TTL");
    }
}
