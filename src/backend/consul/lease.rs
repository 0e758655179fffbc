//! A held lock ([`Lease`]): background renewal with a local lease deadline, a blocking-query
//! watch on the key, loss reporting, and release on every exit path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api::{next_index, LOCK_FLAG_VALUE};
use super::client::ConsulClient;
use super::semaphore::SemaphoreSlot;
use super::session::{self, OwnedSession};
use super::value;
use crate::backend::retry::Backoff;
use crate::backend::timing::{Cadence, TimingPlan};
use crate::backend::BackendEvents;
use crate::backend::{BackendError, HeldLock, Layout, LockInfo, LossReason};

/// How long one watch query may block; long, since Consul answers at once on any change.
const WATCH_WAIT: Duration = Duration::from_secs(300);
/// How long a release and session destroy are retried through transient trouble (no leader)
/// when the session has no TTL to make them moot.
const RELEASE_PATIENCE_NO_TTL: Duration = Duration::from_secs(60);

/// What the background tasks need to watch a lease.
pub(crate) struct KeepAlive {
    pub plan: TimingPlan,
    pub monitor_retry: Option<u32>,
    pub watch_index: u64,
    pub telemetry: Arc<dyn BackendEvents>,
}

/// A lock held by this process. Dropping it without [`HeldLock::release`] still releases it
/// in the background (best effort), so a panic or early return cannot leave the lock behind.
pub struct Lease {
    client: ConsulClient,
    info: LockInfo,
    /// The KV key actually acquired (`<prefix>/.lock` or the contender key for layouts).
    lock_key: String,
    layout: Layout,
    session: OwnedSession,
    /// The acquired value, re-sent with `?release` so the entry keeps the last holder's info.
    value: Vec<u8>,
    semaphore: Option<SemaphoreSlot>,
    loss: watch::Receiver<Option<LossReason>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// How long release and destroy are retried through transient trouble.
    release_patience: Duration,
    done: bool,
    /// Whether the previous holder released cleanly (its command had stopped); when not, the
    /// supervisor may wait `--takeover-delay` before starting ours.
    pub(crate) previous_release_clean: bool,
}

impl Lease {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        client: ConsulClient,
        info: LockInfo,
        lock_key: String,
        layout: Layout,
        session: OwnedSession,
        value: Vec<u8>,
        semaphore: Option<SemaphoreSlot>,
        keep_alive: Option<KeepAlive>,
    ) -> Self {
        let (tx, loss) = watch::channel(None);
        let tx = Arc::new(tx);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut release_patience = RELEASE_PATIENCE_NO_TTL;
        if let Some(ka) = keep_alive {
            let sid = session.id.clone();
            if let Some(ttl) = ka.plan.inputs.ttl {
                // Past 2×TTL without renewals Consul has expired the session anyway.
                release_patience = 2 * ttl;
            }
            if let Some(cadence) = ka.plan.renew {
                tasks.push(tokio::spawn(renew_loop(
                    client.clone(),
                    sid.clone(),
                    session.sent_at,
                    cadence,
                    tx.clone(),
                    stop.clone(),
                    ka.telemetry.clone(),
                )));
            }
            if let (Some(keeper), Some(cadence)) = (&session.check, ka.plan.pass) {
                tasks.push(tokio::spawn(pass_deadline(
                    keeper.id.clone(),
                    keeper.last_pass.clone(),
                    cadence,
                    tx.clone(),
                    stop.clone(),
                )));
            }
            let watch = match &semaphore {
                Some(slot) => tokio::spawn(super::semaphore::watch(
                    client.clone(),
                    slot.clone(),
                    sid,
                    ka.monitor_retry,
                    tx.clone(),
                    stop.clone(),
                )),
                None => tokio::spawn(watch_key(
                    client.clone(),
                    lock_key.clone(),
                    sid,
                    ka.watch_index,
                    ka.monitor_retry,
                    tx.clone(),
                    stop.clone(),
                )),
            };
            tasks.push(watch);
        }
        Lease {
            client,
            info,
            lock_key,
            layout,
            session,
            value,
            semaphore,
            loss,
            stop,
            tasks,
            release_patience,
            done: false,
            previous_release_clean: true,
        }
    }

    pub fn key(&self) -> &str {
        &self.info.key
    }

    pub fn session(&self) -> &str {
        &self.session.id
    }

    /// The entry's `ModifyIndex` at acquisition: strictly increasing across holders.
    pub fn fencing_token(&self) -> u64 {
        self.info.fencing_token.unwrap_or_default()
    }

    /// The loss reason if the lock is already lost.
    pub fn loss(&self) -> Option<LossReason> {
        self.loss.borrow().clone()
    }

    async fn release_inner(&mut self) -> Result<(), BackendError> {
        self.done = true;
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let sid = self.session.id.clone();
        let mut result = Ok(());
        if let Some(slot) = &self.semaphore {
            result = super::semaphore::release(&self.client, slot, &sid).await;
        } else {
            let params = [
                ("release", sid.clone()),
                ("flags", LOCK_FLAG_VALUE.to_string()),
            ];
            // Release only matters while we still hold it; after a loss the key is not ours.
            if self.loss().is_none() {
                if let Err(err) = self.release_key(&params).await {
                    tracing::warn!(key = %self.lock_key, %err, "release failed; destroying the session releases the key anyway");
                    result = Err(err);
                }
            }
        }
        session::destroy_within(&self.client, &self.session, self.release_patience).await;
        if self.layout == Layout::ConsulLock && self.semaphore.is_none() {
            // Like Go's Lock.Destroy: remove the lock entry if nobody took it meanwhile.
            if let Ok(read) = self.client.kv_get(&self.lock_key, None).await {
                if let Some(pair) = read.value.filter(|p| p.holder().is_none()) {
                    let _ = self
                        .client
                        .kv_delete(&self.lock_key, Some(pair.modify_index))
                        .await;
                }
            }
        }
        tracing::debug!(key = %self.info.key, session = %sid, "lock released");
        result
    }
}

impl Lease {
    /// Writes the released value, riding out a short leader election (a failed release leaves
    /// the key to the session destroy, which is retried longer). A write whose outcome is
    /// unknown is not repeated: the destroy that follows frees the key either way.
    async fn release_key(&self, params: &[(&str, String)]) -> Result<(), BackendError> {
        let give_up = Instant::now() + self.release_patience.min(Duration::from_secs(10));
        let mut backoff = Backoff::default();
        loop {
            match self
                .client
                .kv_put(&self.lock_key, value::mark_released(&self.value), params)
                .await
            {
                Ok(_) => return Ok(()),
                // Releasing twice is harmless, so an unknown outcome is simply tried again.
                Err(err @ (BackendError::Transient(_) | BackendError::Unknown(_))) => {
                    let pause = backoff.failed("releasing the lock", &err);
                    if Instant::now() + pause >= give_up {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        }
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

    /// Keeps the lock and session in Consul on purpose.
    fn detach(mut self) -> LockInfo {
        self.done = true;
        self.stop.cancel();
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
    telemetry: Arc<dyn BackendEvents>,
) {
    let mut last_ok = created_at;
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
) {
    loop {
        let deadline = *last_pass.borrow_and_update() + cadence.stop_after;
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

/// Watches the lock key with blocking queries; loss when the key goes or changes holder.
/// Read errors alone do not end the hold (the renew deadline does, see `docs/timing.md`),
/// unless `monitor_retry` asks to give up after that many consecutive failures.
async fn watch_key(
    client: ConsulClient,
    key: String,
    session: String,
    mut index: u64,
    monitor_retry: Option<u32>,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = client.kv_get(&key, Some((index, WATCH_WAIT))) => read,
        };
        match read {
            Ok(read) => {
                failures = 0;
                backoff.succeeded("watching the lock");
                match read.value {
                    None => return declare(&loss, LossReason::KeyDeleted),
                    Some(pair) => match pair.holder() {
                        Some(holder) if holder == session => {
                            index = next_index(index, read.index);
                        }
                        Some(other) => {
                            return declare(&loss, LossReason::HolderChanged(other.to_string()))
                        }
                        None => return declare(&loss, LossReason::SessionInvalidated),
                    },
                }
            }
            Err(err) => {
                failures += 1;
                if monitor_retry.is_some_and(|limit| failures > limit) {
                    return declare(&loss, LossReason::ConsulUnreachable(err.to_string()));
                }
                let pause = backoff.failed("watching the lock", &err);
                // After an agent restart the index starts lower; don't block on the old one.
                index = 0;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause.min(Duration::from_secs(1))) => {}
                }
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
