//! What a waiting contender says (README, "Observability"): one line when it finds the lock
//! taken, one a minute while it still waits, each naming the holder, and a `--timeout` failure
//! that names the holder too. The lines show at the default verbosity; `-q` silences them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{AcquireObserver, LockBackend, LockInfo, LockRequest, WaitingFor};
use crate::exit::{Error, ErrorKind};
use crate::logging::WAITING;

/// A waiter says it still waits this often: often enough to show it is alive, rare enough for
/// a standby that waits for days (README, "Observability").
pub(super) const STILL_WAITING_EVERY: Duration = Duration::from_secs(60);
/// A queue waiter behind others is not told by the observer (it calls nothing while queued):
/// a queue wait that lasts this long is a wait. An uncontended queue acquire takes milliseconds
/// and so never pays the look-up.
const QUEUE_WAIT_NOTICED: Duration = Duration::from_millis(250);
/// Bound on a look-up of whom the wait is for: a slow agent must not hold up a stop signal (the
/// look runs in the loop that receives them) nor a `--timeout` failure.
const LOOKUP_BOUND: Duration = Duration::from_secs(2);

/// The caller's observer, plus a signal each time the backend finds the key taken.
pub(super) struct Watching<'a> {
    inner: &'a dyn AcquireObserver,
    pub taken: Notify,
    /// How many acquire attempts the backend began. It begins one only when its blocking query
    /// returns (the key changed, or the query's wait ran out), so while this count stands still
    /// the holder is the one last looked up.
    attempts: AtomicU64,
}

impl<'a> Watching<'a> {
    pub(super) fn new(inner: &'a dyn AcquireObserver) -> Self {
        Watching {
            inner,
            taken: Notify::new(),
            attempts: AtomicU64::new(0),
        }
    }

    /// The backend's acquire attempts so far (see [`Watching::attempts`]).
    pub(super) fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

impl AcquireObserver for Watching<'_> {
    fn before_attempt<'a>(&'a self, key: &'a str) -> futures_lite::future::Boxed<()> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.inner.before_attempt(key)
    }

    fn already_locked<'a>(
        &'a self,
        key: &'a str,
        holder: Option<&'a LockInfo>,
    ) -> futures_lite::future::Boxed<()> {
        self.taken.notify_one();
        self.inner.already_locked(key, holder)
    }
}

/// One wait's lines: whether the first was written and when the next is due.
pub(super) struct WaitLog {
    started: Instant,
    /// `--non-blocking` does not wait: it reports the holder in its own failure instead.
    waits: bool,
    announced: bool,
    next: Instant,
    /// The last look-up and the backend's attempt count when it was made: a waiting standby's
    /// once-a-minute line reuses it while the key has not changed, so the standby sends Consul
    /// nothing but its blocking query (README, "Performance": ≤ 1 request a minute).
    last: Option<(u64, WaitingFor)>,
}

impl WaitLog {
    pub(super) fn new(request: &LockRequest) -> Self {
        let started = Instant::now();
        let first_look = if request.queue {
            QUEUE_WAIT_NOTICED
        } else {
            STILL_WAITING_EVERY
        };
        WaitLog {
            started,
            waits: request.wait != crate::backend::Wait::NonBlocking,
            announced: false,
            next: started + first_look,
            last: None,
        }
    }

    /// Whether the first line is still due once the backend finds the key taken.
    pub(super) fn first_due(&self) -> bool {
        self.waits && !self.announced
    }

    /// Whether this acquire waits at all (`--non-blocking` does not).
    pub(super) fn waits(&self) -> bool {
        self.waits
    }

    /// When to look again without being told.
    pub(super) fn next_look(&self) -> Instant {
        self.next
    }

    /// The backend found the key taken, or a look is due: writes the first line (or, once
    /// written, the once-a-minute line) naming whom the wait is for. `attempts`: the backend's
    /// acquire attempts so far ([`Watching::attempts`]).
    pub(super) async fn look<B: LockBackend>(
        &mut self,
        backend: &B,
        request: &LockRequest,
        attempts: u64,
    ) {
        let seen = self.whom(backend, request, attempts).await;
        let now = Instant::now();
        let waited = now.duration_since(self.started);
        let text = describe(&seen);
        let holder = seen
            .holder
            .as_ref()
            .map(LockInfo::holder_summary)
            .unwrap_or_default();
        let name = seen.session_name.as_deref().unwrap_or_default();
        let node = seen.node.as_deref().unwrap_or_default();
        let since = since(&seen);
        let slots = seen
            .slots
            .map(|(taken, limit)| format!("{taken}/{limit}"))
            .unwrap_or_default();
        let queued = seen.queued.unwrap_or(0);
        let key = request.key.as_str();
        if self.announced {
            tracing::info!(
                target: WAITING,
                event = "still-waiting",
                key,
                waited_secs = waited.as_secs(),
                holder = holder.as_str(),
                holder_name = name,
                holder_node = node,
                holder_since = since.as_str(),
                slots = slots.as_str(),
                queued,
                "still waiting for {key} after {}: {text}",
                crate::duration::display(Duration::from_secs(waited.as_secs()))
            );
        } else {
            // A queue's first look that finds nobody ahead and nothing held is no wait yet.
            let something = seen.holder.is_some() || queued > 0;
            if !something && waited < STILL_WAITING_EVERY {
                self.next = self.started + STILL_WAITING_EVERY;
                return;
            }
            tracing::info!(
                target: WAITING,
                event = "wait-started",
                key,
                holder = holder.as_str(),
                holder_name = name,
                holder_node = node,
                holder_since = since.as_str(),
                slots = slots.as_str(),
                queued,
                "waiting for {key}: {text}"
            );
            self.announced = true;
        }
        self.next = now + STILL_WAITING_EVERY;
    }

    /// Whom the wait is for: the last look-up while the backend has not tried again since
    /// (nothing changed under a blocking query that is still waiting), else a fresh one. A
    /// queue's length changes without the key changing, so a queue waiter always looks again.
    async fn whom<B: LockBackend>(
        &mut self,
        backend: &B,
        request: &LockRequest,
        attempts: u64,
    ) -> WaitingFor {
        if let Some((at, seen)) = &self.last {
            if *at == attempts && !request.queue {
                return seen.clone();
            }
        }
        match tokio::time::timeout(LOOKUP_BOUND, backend.waiting_for(request)).await {
            Ok(Ok(seen)) => {
                self.last = Some((attempts, seen.clone()));
                seen
            }
            Ok(Err(err)) => {
                tracing::debug!(%err, "could not read whom the wait is for");
                WaitingFor::default()
            }
            Err(_) => {
                tracing::debug!("reading whom the wait is for took too long");
                WaitingFor::default()
            }
        }
    }
}

/// The error of a wait that `--timeout` ended, naming whom it waited for (exit code of a
/// timeout, README "Exit codes").
pub(super) async fn timed_out<B: LockBackend>(backend: &B, request: &LockRequest) -> Error {
    let key = &request.key;
    let after = request
        .wait
        .timeout()
        .map(|t| format!(" after {}", crate::duration::display(t)))
        .unwrap_or_default();
    let seen = tokio::time::timeout(LOOKUP_BOUND, backend.waiting_for(request)).await;
    let who = match seen {
        Ok(Ok(seen)) => describe(&seen),
        _ => "the holder could not be read".to_string(),
    };
    Error::new(
        ErrorKind::Timeout,
        format!("timed out waiting for lock {key}{after}: {who}"),
    )
}

/// When the holder took the lock, as it wrote it (`created`), else empty.
fn since(seen: &WaitingFor) -> String {
    seen.holder
        .as_ref()
        .and_then(|h| h.created.clone())
        .unwrap_or_default()
}

/// `held by web-1 pid 42 (session 5f…), session "lockwrap jobs/x on web-1 pid 42" on node n1,
/// since 2026-12-02T13:00:00.123456 (session create index 57)`, plus a semaphore's slots and
/// the queue's length.
pub(super) fn describe(seen: &WaitingFor) -> String {
    let mut text = match &seen.holder {
        Some(info) => {
            let mut who = format!("held by {}", info.holder_summary());
            if let Some(name) = &seen.session_name {
                who.push_str(&format!(", session {name:?}"));
            }
            if let Some(node) = &seen.node {
                who.push_str(&format!(" on node {node}"));
            }
            if let Some(created) = &info.created {
                who.push_str(&format!(", since {created}"));
            }
            if let Some(index) = seen.session_index {
                who.push_str(&format!(" (session create index {index})"));
            }
            who
        }
        None => "no holder seen".to_string(),
    };
    if let Some((taken, limit)) = seen.slots {
        text = format!("{taken} of {limit} slots taken; first {text}");
    }
    if let Some(queued) = seen.queued.filter(|n| *n > 0) {
        text.push_str(&format!("; {queued} in the queue"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holder() -> LockInfo {
        LockInfo {
            key: "jobs/x".into(),
            session: Some("5f2".into()),
            created: Some("2026-12-02T13:00:00.123456".into()),
            seconds_to_lock: None,
            metadata: None,
            holder: Some(json!({"hostname": "web-1", "pid": 42})),
            fencing_token: Some(9),
            queue: None,
            semaphore: None,
        }
    }

    #[test]
    fn describe_names_the_holder_its_session_node_and_since() {
        let seen = WaitingFor {
            holder: Some(holder()),
            session_name: Some("lockwrap jobs/x on web-1 pid 42".into()),
            node: Some("n1".into()),
            session_index: Some(57),
            ..WaitingFor::default()
        };
        assert_eq!(
            describe(&seen),
            "held by web-1 pid 42 (session 5f2), session \"lockwrap jobs/x on web-1 pid 42\" \
             on node n1, since 2026-12-02T13:00:00.123456 (session create index 57)"
        );
    }

    /// A waiting standby's once-a-minute line costs Consul nothing while the backend has not
    /// tried again (its blocking query still waits); a new attempt means the key changed, and
    /// the next line looks again. A queue waiter always looks again (its queue moves without
    /// the key changing).
    #[tokio::test]
    async fn a_look_is_reused_until_the_backend_tries_again() {
        use crate::backend::memory::MemoryBackend;
        use crate::backend::{HeldLock, NoObserver};

        let store = MemoryBackend::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let request = LockRequest::new("jobs/x".to_string());
        let take = || async {
            match store.acquire(&request, &NoObserver, &stop).await {
                Ok(crate::backend::Acquired::Held(lease)) => lease,
                other => panic!("not held: {:?}", other.map(|_| ())),
            }
        };
        let first = take().await;
        let first_session = first.info().session.clone();
        let mut log = WaitLog::new(&request);
        let session_of = |seen: &WaitingFor| seen.holder.as_ref().and_then(|h| h.session.clone());
        assert_eq!(
            session_of(&log.whom(&store, &request, 1).await),
            first_session
        );

        first.release().await.expect("released");
        let second = take().await;
        let second_session = second.info().session.clone();
        assert_ne!(first_session, second_session);
        // No attempt since: the holder looked up before is still the answer, no request made.
        assert_eq!(
            session_of(&log.whom(&store, &request, 1).await),
            first_session
        );
        // The backend tried again: the key changed, look again.
        assert_eq!(
            session_of(&log.whom(&store, &request, 2).await),
            second_session
        );

        let mut queued = request.clone();
        queued.queue = true;
        let mut log = WaitLog::new(&queued);
        assert_eq!(
            session_of(&log.whom(&store, &queued, 1).await),
            second_session
        );
        second.release().await.expect("released");
        let third = take().await;
        assert_eq!(
            session_of(&log.whom(&store, &queued, 1).await),
            third.info().session.clone()
        );
    }

    #[test]
    fn describe_counts_slots_and_the_queue() {
        let seen = WaitingFor {
            holder: Some(holder()),
            slots: Some((2, 2)),
            queued: Some(3),
            ..WaitingFor::default()
        };
        let text = describe(&seen);
        assert!(
            text.starts_with("2 of 2 slots taken; first held by web-1"),
            "{text}"
        );
        assert!(text.ends_with("; 3 in the queue"), "{text}");
        assert_eq!(describe(&WaitingFor::default()), "no holder seen");
    }
}
