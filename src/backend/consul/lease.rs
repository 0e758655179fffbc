//! A held lock ([`Lease`]): background renewal with a local lease deadline, a blocking-query
//! watch on the key, loss reporting, and release on every exit path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::ConsulClient;
use super::session::{self, OwnedSession};
use crate::backend::timing::{Cadence, TimingPlan};
use crate::backend::BackendEvents;
use crate::backend::{BackendError, HeldLock, LockInfo, LossReason};
/// How long a release and session destroy are retried, together, through transient trouble
/// (no leader) when the session has no TTL to make them moot.
const RELEASE_PATIENCE_NO_TTL: Duration = Duration::from_secs(30);

/// What the background tasks need to watch a lease.
pub(crate) struct KeepAlive {
    pub plan: TimingPlan,
    pub monitor_retry: Option<u32>,
    pub watch_index: u64,
    pub telemetry: Arc<dyn BackendEvents>,
}

/// A boxed future borrowing for `'a` (what [`Holding`]'s methods return).
pub(crate) type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a watch task needs: the session to check, where to start, and where to report loss.
pub(crate) struct Watch {
    pub client: ConsulClient,
    pub session: String,
    /// The index to block on first (the acquisition's).
    pub index: u64,
    pub monitor_retry: Option<u32>,
    pub loss: Arc<watch::Sender<Option<LossReason>>>,
    pub stop: CancellationToken,
}

/// What a lease holds — a lock key (`KeyHold`) or a semaphore slot — and how to watch and give
/// it back. The recipes implement it; the lease knows neither.
pub(crate) trait Holding: Send + Sync {
    /// Watches the hold until it is lost (declared through `watch.loss`) or stopped.
    fn watch(&self, watch: Watch) -> BoxFut<'static, ()>;
    /// Gives the hold back; `still_held` is false after a loss (nothing of ours to release);
    /// `clean` says whether the next holder may skip its takeover delay.
    fn release<'a>(
        &'a self,
        client: &'a ConsulClient,
        session: &'a str,
        still_held: bool,
        clean: bool,
        patience: Duration,
    ) -> BoxFut<'a, Result<(), BackendError>>;
    /// Housekeeping once the session is destroyed; `clean` says whether the release was.
    fn after_destroy<'a>(&'a self, _client: &'a ConsulClient, _clean: bool) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
}

/// The hold's local stop deadline: the earliest of the renew and the pass deadlines, published
/// to a watch (for the guardian process) and to the backend's events (for `validUntil`).
#[derive(Clone)]
pub(crate) struct DeadlineBoard {
    /// [renew deadline, pass deadline].
    slots: Arc<std::sync::Mutex<[Option<Instant>; 2]>>,
    tx: Arc<watch::Sender<Option<Instant>>>,
    events: Arc<dyn BackendEvents>,
}

impl DeadlineBoard {
    const RENEW: usize = 0;
    const PASS: usize = 1;

    fn new(events: Arc<dyn BackendEvents>) -> (Self, watch::Receiver<Option<Instant>>) {
        let (tx, rx) = watch::channel(None);
        let board = DeadlineBoard {
            slots: Arc::new(std::sync::Mutex::new([None; 2])),
            tx: Arc::new(tx),
            events,
        };
        (board, rx)
    }

    fn set(&self, slot: usize, at: Instant) {
        let earliest = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots[slot] = Some(at);
            slots.iter().flatten().min().copied()
        };
        self.tx.send_replace(earliest);
        self.events.lease_deadline(earliest);
    }

    fn clear(&self) {
        self.tx.send_replace(None);
        self.events.lease_deadline(None);
    }
}

/// A lock held by this process. Dropping it without [`HeldLock::release`] still releases it
/// in the background (best effort), so a panic or early return cannot leave the lock behind.
pub struct Lease {
    client: ConsulClient,
    info: LockInfo,
    session: OwnedSession,
    /// What is held: a lock key, or a semaphore slot.
    hold: Box<dyn Holding>,
    loss: watch::Receiver<Option<LossReason>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// How long release and destroy are retried through transient trouble.
    release_patience: Duration,
    done: bool,
    /// Whether the previous holder released cleanly (its command had stopped); when not, the
    /// supervisor may wait `--takeover-delay` before starting ours.
    pub(crate) previous_release_clean: bool,
    /// The takeover delay the previous holder announced in its value (`None`: not announced).
    pub(crate) previous_takeover: Option<Duration>,
    /// Whether the release may be marked clean ([`HeldLock::set_release_clean`]).
    release_clean: bool,
    /// The local stop deadline (`None` without keep-alive).
    deadline: Option<(DeadlineBoard, watch::Receiver<Option<Instant>>)>,
}

impl Lease {
    pub(crate) fn start(
        client: ConsulClient,
        info: LockInfo,
        session: OwnedSession,
        hold: Box<dyn Holding>,
        keep_alive: Option<KeepAlive>,
    ) -> Self {
        let (tx, loss) = watch::channel(None);
        let tx = Arc::new(tx);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut release_patience = RELEASE_PATIENCE_NO_TTL;
        let mut deadline = None;
        if let Some(ka) = keep_alive {
            let (board, rx) = DeadlineBoard::new(ka.telemetry.clone());
            // Known before any task runs, so a check right after the acquisition sees it.
            if let Some(cadence) = ka.plan.renew {
                board.set(DeadlineBoard::RENEW, session.sent_at + cadence.stop_after);
            }
            deadline = Some((board.clone(), rx));
            let sid = session.id.clone();
            if let Some(ttl) = ka.plan.inputs.ttl {
                // Once nobody renews, Consul expires the session after TTL (up to 2×TTL); by
                // then a stuck release is moot. One budget for release and destroy together, so
                // an exit never waits longer than that (the command is already dead).
                release_patience = ttl;
            }
            if let Some(cadence) = ka.plan.renew {
                tasks.push(tokio::spawn(renew_loop(
                    client.clone(),
                    sid.clone(),
                    session.sent_at,
                    cadence,
                    tx.clone(),
                    stop.clone(),
                    board.clone(),
                )));
            }
            if let (Some(keeper), Some(cadence)) = (&session.check, ka.plan.pass) {
                tasks.push(tokio::spawn(pass_deadline(
                    keeper.id.clone(),
                    keeper.last_pass.clone(),
                    cadence,
                    tx.clone(),
                    stop.clone(),
                    board.clone(),
                )));
            }
            tasks.push(tokio::spawn(hold.watch(Watch {
                client: client.clone(),
                session: sid,
                index: ka.watch_index,
                monitor_retry: ka.monitor_retry,
                loss: tx.clone(),
                stop: stop.clone(),
            })));
        }
        Lease {
            client,
            info,
            session,
            hold,
            loss,
            stop,
            tasks,
            release_patience,
            done: false,
            previous_release_clean: true,
            previous_takeover: None,
            release_clean: true,
            deadline,
        }
    }

    /// The loss reason if the lock is already lost.
    fn loss(&self) -> Option<LossReason> {
        self.loss.borrow().clone()
    }

    async fn release_inner(&mut self) -> Result<(), BackendError> {
        // `done` only once the session is destroyed: a release dropped midway (a library
        // caller's timeout) leaves the destroy to `Drop`, without the clean marker.
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some((board, _)) = &self.deadline {
            board.clear();
        }
        let sid = self.session.id.clone();
        let still_held = self.loss().is_none();
        let give_up = Instant::now() + self.release_patience;
        let result = self
            .hold
            .release(
                &self.client,
                &sid,
                still_held,
                self.release_clean,
                self.release_patience / 2,
            )
            .await;
        let left = give_up.saturating_duration_since(Instant::now());
        session::destroy_within(&self.client, &self.session, left).await;
        self.done = true;
        self.hold
            .after_destroy(&self.client, still_held && self.release_clean)
            .await;
        tracing::debug!(key = %self.info.key, session = %sid, "lock released");
        result
    }
}

impl HeldLock for Lease {
    fn info(&self) -> &LockInfo {
        &self.info
    }

    async fn lost(&mut self) -> LossReason {
        loop {
            if let Some(reason) = self.loss.borrow_and_update().clone() {
                return reason;
            }
            if self.loss.changed().await.is_err() {
                // Every sender is gone: nothing watches the lease any more (keep-alive off),
                // so loss can never be observed; wait forever like a held lock.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn release(mut self) -> Result<(), BackendError> {
        self.release_inner().await
    }

    fn previous_release_clean(&self) -> bool {
        self.previous_release_clean
    }

    fn takeover_delay(&self, own: Duration) -> Duration {
        if self.previous_release_clean {
            Duration::ZERO
        } else {
            own.max(self.previous_takeover.unwrap_or_default())
        }
    }

    fn set_release_clean(&mut self, clean: bool) {
        self.release_clean = clean;
    }

    fn stop_deadline(&self) -> Option<watch::Receiver<Option<Instant>>> {
        self.deadline.as_ref().map(|(_, rx)| rx.clone())
    }

    /// Keeps the lock and session in Consul on purpose.
    fn detach(mut self) -> LockInfo {
        self.done = true;
        self.stop.cancel();
        if let Some((board, _)) = &self.deadline {
            board.clear();
        }
        self.info.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop.cancel();
        let client = self.client.clone();
        let session = self.session.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            crate::backend::cleanup::spawn(
                async move { session::destroy(&client, &session).await },
            );
        }
    }
}

/// Renews every `cadence.every`; declares loss on 404 or when the local deadline (the last
/// successful renew's send time + `cadence.stop_after`, from the timing model) passes without a
/// successful renew. Transient failures are retried until that deadline, logged once.
async fn renew_loop(
    client: ConsulClient,
    session: String,
    created_at: Instant,
    cadence: Cadence,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
    board: DeadlineBoard,
) {
    let telemetry = board.events.clone();
    let mut last_ok = created_at;
    board.set(DeadlineBoard::RENEW, last_ok + cadence.stop_after);
    let mut next_attempt = created_at + cadence.every;
    let mut failing = false;
    loop {
        let deadline = last_ok + cadence.stop_after;
        let attempt = async {
            tokio::time::sleep_until(next_attempt.into()).await;
            let sent = Instant::now();
            (
                sent,
                client
                    .session_renew(&session, cadence.request_timeout)
                    .await,
            )
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.into()) => {
                tracing::warn!(%session, "no successful renew for {:?}: local lease deadline reached", last_ok.elapsed());
                declare(&loss, LossReason::LeaseDeadline);
                return;
            }
            (sent, result) = attempt => match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(%session, "session renewed again");
                        failing = false;
                    }
                    last_ok = sent;
                    board.set(DeadlineBoard::RENEW, last_ok + cadence.stop_after);
                    telemetry.renew_succeeded();
                    next_attempt = sent + cadence.every;
                    tracing::trace!(%session, "session renewed");
                }
                Err(BackendError::SessionGone(_)) => {
                    declare(&loss, LossReason::SessionInvalidated);
                    return;
                }
                Err(err) => {
                    telemetry.renew_failed();
                    if !failing {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tracing::warn!(%session, %err, ?left, "session renew failed; retrying until the lease deadline");
                        failing = true;
                    }
                    next_attempt = Instant::now() + cadence.retry_every;
                }
            }
        }
    }
}

/// Declares loss when lockwrap's own check has not been passed for `cadence.stop_after`: the
/// agent may then mark it critical, and the timing model says the command must stop now.
async fn pass_deadline(
    check: String,
    mut last_pass: watch::Receiver<Instant>,
    cadence: Cadence,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
    board: DeadlineBoard,
) {
    loop {
        let deadline = *last_pass.borrow_and_update() + cadence.stop_after;
        board.set(DeadlineBoard::PASS, deadline);
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = last_pass.changed() => {
                if changed.is_err() {
                    // The keeper stopped: the session is being destroyed.
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                tracing::warn!(%check, "health check not passed for {:?}: local deadline reached", cadence.stop_after);
                declare(&loss, LossReason::LeaseDeadline);
                return;
            }
        }
    }
}

pub(crate) fn declare(loss: &watch::Sender<Option<LossReason>>, reason: LossReason) {
    loss.send_if_modified(|current| {
        if current.is_none() {
            tracing::warn!(%reason, "lock lost");
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}
