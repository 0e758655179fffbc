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
use crate::backend::{BackendError, HeldLock, Layout, LockInfo, LossReason};
use crate::duration;
use crate::telemetry::Telemetry;

/// Slack between "stop the child now" and the earliest moment Consul may expire the session:
/// covers scheduling delays, clock granularity and the time to send the signals.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(1);
/// The least time between the last renew and the stop point that still leaves room for a
/// renew plus two retries; below it a single slow request would end the lease.
const MIN_RENEW_BUDGET: Duration = Duration::from_secs(2);
/// How long one watch query may block; long, since Consul answers at once on any change.
const WATCH_WAIT: Duration = Duration::from_secs(300);
/// Pause between failed watch reads, as `consul lock -monitor-retry` does.
const WATCH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// When to renew and when to give up, derived from TTL and kill grace (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    /// Time from the last successful renew's send time to the local stop point.
    pub stop_after: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
    pub request_timeout: Duration,
}

impl LeaseTiming {
    /// Plans renewals so that retries fit before `TTL − kill_grace − margin`; the error says
    /// which settings would fit.
    pub fn plan(ttl: Duration, kill_grace: Duration) -> Result<Self, String> {
        let reserved = kill_grace + SAFETY_MARGIN;
        let budget = ttl.checked_sub(reserved).unwrap_or_default();
        if budget < MIN_RENEW_BUDGET {
            let min_ttl = reserved + MIN_RENEW_BUDGET;
            let max_grace = ttl
                .checked_sub(SAFETY_MARGIN + MIN_RENEW_BUDGET)
                .unwrap_or_default();
            return Err(format!(
                "session TTL {} with kill grace {} cannot be held safely: the child must be dead \
                 {} before the session can expire, which leaves less than {} to renew; use \
                 --session-ttl {} or more, or --kill-grace {} or less",
                duration::display(ttl),
                duration::display(kill_grace),
                duration::display(reserved),
                duration::display(MIN_RENEW_BUDGET),
                duration::display(min_ttl.max(Duration::from_secs(10))),
                duration::display(max_grace),
            ));
        }
        let renew_every = (ttl / 2).min(budget / 3);
        Ok(LeaseTiming {
            ttl,
            stop_after: budget,
            renew_every,
            retry_every: (budget / 6).max(Duration::from_millis(200)),
            request_timeout: (budget / 3).min(Duration::from_secs(5)),
        })
    }
}

/// What the background tasks need to watch a lease.
pub(crate) struct KeepAlive {
    pub timing: Option<LeaseTiming>,
    pub monitor_retry: u32,
    pub health_check_ttl: Option<Duration>,
    pub watch_index: u64,
    pub telemetry: Arc<Telemetry>,
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
        if let Some(ka) = keep_alive {
            let sid = session.id.clone();
            if let Some(timing) = ka.timing {
                tasks.push(tokio::spawn(renew_loop(
                    client.clone(),
                    sid.clone(),
                    session.sent_at,
                    timing,
                    tx.clone(),
                    stop.clone(),
                    ka.telemetry.clone(),
                )));
            }
            if let (Some(check), Some(ttl)) = (session.check_id.clone(), ka.health_check_ttl) {
                tasks.push(tokio::spawn(check_pass_loop(
                    client.clone(),
                    check,
                    ttl,
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

    /// False when the previous holder did not release cleanly (key deleted, session expired or
    /// destroyed, forced unlock, Consul state lost): its command may still be stopping.
    pub fn previous_release_clean(&self) -> bool {
        self.previous_release_clean
    }

    /// The loss reason if the lock is already lost.
    pub fn loss(&self) -> Option<LossReason> {
        self.loss.borrow().clone()
    }

    /// Stops watching and keeps the lock and session in Consul on purpose (CLI `lock`).
    pub fn detach(mut self) -> LockInfo {
        self.done = true;
        self.stop.cancel();
        self.info.clone()
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
                if let Err(err) = self
                    .client
                    .kv_put(&self.lock_key, value::mark_released(&self.value), &params)
                    .await
                {
                    tracing::warn!(key = %self.lock_key, %err, "release failed; destroying the session releases the key anyway");
                    result = Err(err);
                }
            }
        }
        session::destroy(&self.client, &self.session).await;
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

/// Renews every `renew_every`; declares loss on 404 or when the local deadline
/// (last successful renew's send time + stop_after) passes without a successful renew.
async fn renew_loop(
    client: ConsulClient,
    session: String,
    created_at: Instant,
    timing: LeaseTiming,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
    telemetry: Arc<Telemetry>,
) {
    let mut last_ok = created_at;
    let mut next_attempt = created_at + timing.renew_every;
    loop {
        let deadline = last_ok + timing.stop_after;
        let attempt = async {
            tokio::time::sleep_until(next_attempt.into()).await;
            let sent = Instant::now();
            (
                sent,
                client.session_renew(&session, timing.request_timeout).await,
            )
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.into()) => {
                tracing::warn!(%session, "no successful renew since {:?}: local lease deadline reached", last_ok.elapsed());
                declare(&loss, LossReason::LeaseDeadline);
                return;
            }
            (sent, result) = attempt => match result {
                Ok(()) => {
                    last_ok = sent;
                    telemetry.renew_succeeded();
                    next_attempt = sent + timing.renew_every;
                    tracing::trace!(%session, "session renewed");
                }
                Err(BackendError::SessionGone(_)) => {
                    declare(&loss, LossReason::SessionInvalidated);
                    return;
                }
                Err(err) => {
                    telemetry.renew_failed();
                    tracing::warn!(%session, %err, "session renew failed; retrying");
                    next_attempt = Instant::now() + timing.retry_every;
                }
            }
        }
    }
}

/// Watches the lock key with blocking queries; loss when the key goes or changes holder.
async fn watch_key(
    client: ConsulClient,
    key: String,
    session: String,
    mut index: u64,
    monitor_retry: u32,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = client.kv_get(&key, Some((index, WATCH_WAIT))) => read,
        };
        match read {
            Ok(read) => {
                failures = 0;
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
                if failures > monitor_retry {
                    return declare(&loss, LossReason::ConsulUnreachable(err.to_string()));
                }
                tracing::warn!(%key, %err, failures, "watching the lock failed; retrying");
                // After an agent restart the index starts lower; don't block on the old one.
                index = 0;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_RETRY_PAUSE) => {}
                }
            }
        }
    }
}

/// Keeps the agent TTL check passing while this process is alive and healthy; when the process
/// dies the check goes critical after its TTL and Consul invalidates the session.
async fn check_pass_loop(
    client: ConsulClient,
    check: String,
    ttl: Duration,
    stop: CancellationToken,
) {
    let every = ttl / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(err) = client.check_pass(&check, every).await {
            tracing::warn!(check, %err, "could not mark the health check passing");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_timing_leaves_room_for_retries() {
        let t = LeaseTiming::plan(Duration::from_secs(15), Duration::from_secs(5)).unwrap();
        assert_eq!(t.stop_after, Duration::from_secs(9));
        assert_eq!(t.renew_every, Duration::from_secs(3));
        assert!(t.renew_every + 2 * t.retry_every < t.stop_after);
    }

    #[test]
    fn ten_second_ttl_with_short_grace_fits() {
        let t = LeaseTiming::plan(Duration::from_secs(10), Duration::from_secs(2)).unwrap();
        assert_eq!(t.stop_after, Duration::from_secs(7));
        assert!(t.renew_every <= Duration::from_secs(5));
    }

    #[test]
    fn impossible_combination_says_what_fits() {
        let err = LeaseTiming::plan(Duration::from_secs(10), Duration::from_secs(8)).unwrap_err();
        assert!(err.contains("--session-ttl 11s"), "{err}");
        assert!(err.contains("--kill-grace 7s"), "{err}");
    }
}
