//! Consul's semaphore recipe (`-n N`), compatible with `consul lock -n` and Go's
//! `api.Semaphore`: a contender key `<prefix>/<session>` held by our session, and the
//! coordination key `<prefix>/.lock` holding `{"Limit":N,"Holders":{…}}`, changed only by
//! check-and-set on its ModifyIndex (README, "Key layouts").

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api::{next_index, KvPair, SEMAPHORE_FLAG_VALUE};
use super::client::ConsulClient;
use super::lease::{declare, BoxFut, Holding, Lease, Watch};
use super::session::{self, OwnedSession};
use super::value;
use super::wait::{interruptible, Interrupt, STANDBY_WAIT};
use super::ConsulBackend;
use crate::backend::{
    AcquireObserver, Acquired, BackendError, LockInfo, LockRequest, LossReason, Wait,
};

/// Before the next try after an owed-delay announcement that could not be written (it was
/// retried already): the store had trouble, or our session is gone.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Where one semaphore slot lives.
#[derive(Debug, Clone)]
pub(crate) struct SemaphoreSlot {
    pub lock_key: String,
    pub contender_key: String,
}

/// A slot this process took: what the lease starts from.
struct SlotTaken {
    info: LockInfo,
    /// The index to watch from.
    index: u64,
    /// `Some` when the slot was a dead holder's: the takeover delay it announced, if any.
    takeover: Option<Option<Duration>>,
}

/// What a try that may have taken a slot owes (see `semaphore_loop`).
#[derive(Debug, Default)]
struct Owed {
    /// `Some(announced)`: the slot was a dead holder's (or `.lock` was re-created).
    takeover: Option<Option<Duration>>,
    /// Dead holders whose slot it took.
    replaced: Vec<String>,
    /// It created `.lock`.
    created: bool,
}

impl Owed {
    fn add(&mut self, takeover: Option<Option<Duration>>, replaced: Vec<String>, created: bool) {
        if takeover.is_some() {
            let owed = self.takeover.get_or_insert(None);
            *owed = (*owed).max(takeover.flatten());
        }
        self.replaced.extend(replaced);
        self.created |= created;
    }

    fn is_empty(&self) -> bool {
        self.takeover.is_none() && self.replaced.is_empty() && !self.created
    }
}

/// The coordination entry, in Go's field names.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct SemaphoreLock {
    #[serde(rename = "Limit")]
    limit: u32,
    #[serde(rename = "Holders", default)]
    holders: BTreeMap<String, bool>,
}

fn decode_lock(pair: Option<&KvPair>, lock_key: &str) -> Result<SemaphoreLock, BackendError> {
    let Some(pair) = pair else {
        return Ok(SemaphoreLock::default());
    };
    if pair.flags != SEMAPHORE_FLAG_VALUE {
        return Err(BackendError::Conflict(format!(
            "{lock_key} exists with flags {} instead of Consul's semaphore flags \
             {SEMAPHORE_FLAG_VALUE}: it is a single lock or another tool's key",
            pair.flags
        )));
    }
    let bytes = pair.value_bytes();
    if bytes.is_empty() {
        return Ok(SemaphoreLock::default());
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        BackendError::Conflict(format!("{lock_key} is not a semaphore entry: {err}"))
    })
}

/// A `.lock` holder entry standing for holders that may still be stopping but are listed nowhere
/// (`.lock` was deleted under them). No contender key has this name, so it is dead at once: a
/// contender takes its slot only through the dead-holder path, which waits the takeover delay.
fn placeholder(creator: &str, n: u32) -> String {
    format!("unknown-holder-{n}-of-{creator}")
}

pub(crate) fn slot(prefix: &str, session: &str) -> SemaphoreSlot {
    let prefix = prefix.trim_end_matches('/');
    SemaphoreSlot {
        lock_key: format!("{prefix}/.lock"),
        contender_key: format!("{prefix}/{session}"),
    }
}

impl ConsulBackend {
    /// Takes one of `limit` slots; never leaves a session behind unless it returns `Held`, nor a
    /// contender key unless `.lock` may list it (then the key announces its takeover delay for
    /// whoever takes that dead slot, and that taker deletes it).
    pub(crate) async fn acquire_semaphore(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<Lease>, BackendError> {
        let started = Instant::now();
        let deadline = request.wait.deadline(started);
        let key = request.key.as_str();
        let prefix = key.trim_end_matches('/');
        // Refuse a conflicting entry before creating anything; a stop signal or `--timeout`
        // ends this first read too.
        let first = match interruptible(
            self.client.kv_get_retry(&format!("{prefix}/.lock")),
            stop,
            deadline,
        )
        .await
        {
            Ok(read) => read?,
            Err(Interrupt::Cancelled) => return Ok(Acquired::Cancelled),
            Err(Interrupt::TimedOut) => return Ok(Acquired::TimedOut),
        };
        self.telemetry.store_healthy(true);
        check_limit(&decode_lock(first.value.as_ref(), key)?, request.limit, key)?;

        let mut pending = session::Pending::new(&self.client);
        let owned = match interruptible(self.create_session(request), stop, deadline).await {
            Ok(created) => pending.session.insert(created?),
            Err(Interrupt::Cancelled) => return Ok(Acquired::Cancelled),
            Err(Interrupt::TimedOut) => return Ok(Acquired::TimedOut),
        };
        let slot = slot(prefix, &owned.id);
        // Dropped midway (a library caller's timeout): the same cleanup as a failed acquisition.
        let (lock_key, contender_key, prefix_key) = (
            slot.lock_key.clone(),
            slot.contender_key.clone(),
            key.to_string(),
        );
        pending.leftover = Some(Box::new(move |client, session| {
            Box::pin(async move {
                if !maybe_listed(&client, &lock_key, &session, &prefix_key).await {
                    let _ = client.kv_delete(&contender_key, None).await;
                }
            })
        }));
        let outcome = self
            .semaphore_loop(request, observer, stop, started, deadline, owned, &slot)
            .await;
        match outcome {
            Ok(Some(taken)) => {
                pending.leftover = None;
                let owned = pending
                    .session
                    .take()
                    .expect("the session stays pending until here");
                let keep_alive = self.keep_alive(request, taken.index)?;
                let mut lease = Lease::start(
                    self.client.clone(),
                    taken.info,
                    owned,
                    Box::new(slot),
                    keep_alive,
                );
                if let Some(announced) = taken.takeover {
                    lease.previous_release_clean = false;
                    lease.previous_takeover = announced;
                }
                Ok(Acquired::Held(lease))
            }
            other => {
                // A take whose write may have landed leaves our entry in `.lock`, dead once our
                // session is gone: keep our contender key then, with the takeover delay it
                // announces, for whoever takes that slot (it deletes the key). Still under the
                // drop guard: a caller's own timeout firing now leaves the rest to it.
                if let Some(owned) = pending.session.as_ref() {
                    if !maybe_listed(&self.client, &slot.lock_key, &owned.id, key).await {
                        let _ = self.client.kv_delete(&slot.contender_key, None).await;
                    }
                    pending.leftover = None;
                    session::destroy(&self.client, owned).await;
                }
                pending.session = None;
                match other {
                    Ok(None) => Ok(Acquired::Locked(None)),
                    Err(Ok(interrupt)) => Ok(match interrupt {
                        Interrupt::Cancelled => Acquired::Cancelled,
                        Interrupt::TimedOut => Acquired::TimedOut,
                    }),
                    Err(Err(err)) => Err(err),
                    Ok(Some(_)) => unreachable!("handled above"),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    async fn semaphore_loop(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
        started: Instant,
        deadline: Option<Instant>,
        owned: &mut OwnedSession,
        slot: &SemaphoreSlot,
    ) -> Result<Option<SlotTaken>, Result<Interrupt, BackendError>> {
        let key = request.key.as_str();
        let value = self.holder_value(request, &owned.id, started, None);
        let contender_params = [
            ("acquire", owned.id.clone()),
            ("flags", SEMAPHORE_FLAG_VALUE.to_string()),
        ];
        // Every request below honours a stop signal and `--timeout`: in a leader election one
        // can hang for seconds (the cleanup after the loop undoes what landed).
        let put = self
            .client
            .kv_put(&slot.contender_key, value.clone(), &contender_params);
        if !interruptible(put, stop, deadline)
            .await
            .map_err(Ok)?
            .map_err(Err)?
        {
            return Err(Err(BackendError::Invalid(format!(
                "could not create the contender key {}",
                slot.contender_key
            ))));
        }
        let prefix = key.trim_end_matches('/');
        let mut index = 0u64;
        let mut backoff = crate::backend::retry::Backoff::default();
        // A waiter keeps its session: renewed between blocking queries no longer than a third
        // of the TTL, so it is alive when a slot frees.
        let ttl = owned.ttl.or(request.session.ttl);
        let longest_wait = ttl.map_or(STANDBY_WAIT, |t| (t / 3).min(STANDBY_WAIT));
        // What earlier tries owe whose write may have landed unseen (an unknown outcome, a
        // confirm read that missed it): a later try that finds itself in `.lock` took the slot
        // then, and owes what that try owed.
        let mut uncertain = Owed::default();
        loop {
            // Judged afresh on every try, from the `.lock` this try writes: `Some(announced)`
            // when the slot it takes is a dead holder's (the takeover is unclean), and the dead
            // holders whose slot it takes (their contender keys go once we hold). A try whose
            // write surely lost owes nothing: the slot it aimed at went to someone who waits.
            let mut takeover: Option<Option<Duration>> = None;
            let mut replaced: Vec<String> = Vec::new();
            interruptible(observer.before_attempt(key), stop, deadline)
                .await
                .map_err(Ok)?;
            if let Some(ttl) = ttl {
                if owned.sent_at.elapsed() >= ttl / 3 {
                    self.renew_waiter(owned, ttl).await.map_err(Err)?;
                }
            }
            let wait = if index == 0 {
                None
            } else {
                Some((index, longest_wait))
            };
            let listed = interruptible(
                self.client.kv_list(&format!("{prefix}/"), wait),
                stop,
                deadline,
            )
            .await
            .map_err(Ok)?;
            let read = match listed {
                Ok(read) => {
                    backoff.succeeded("waiting for a semaphore slot");
                    self.telemetry.store_healthy(true);
                    read
                }
                Err(err) if err.is_transient() && wait.is_some() => {
                    // A standby rides out Consul outages; index 0 because a restarted agent
                    // counts from a lower index.
                    self.telemetry.store_healthy(false);
                    let pause = backoff.failed("waiting for a semaphore slot", &err);
                    index = 0;
                    interruptible(tokio::time::sleep(pause), stop, deadline)
                        .await
                        .map_err(Ok)?;
                    continue;
                }
                Err(err) => return Err(Err(err)),
            };
            index = next_index(index, read.index).max(1);
            let lock_pair = read.value.iter().find(|p| p.key == slot.lock_key);
            let mut lock = decode_lock(lock_pair, key).map_err(Err)?;
            if lock_pair.is_some() {
                check_limit(&lock, request.limit, key).map_err(Err)?;
            }
            lock.limit = request.limit;
            if lock_pair.is_none() {
                // Creating `.lock`: a prefix never used, or one whose `.lock` was deleted under
                // holders that are still stopping and are listed nowhere now. If any session named
                // for the key lives, the other slots get placeholders (dead from the start), so a
                // second contender takes one through the dead-holder path below and waits the
                // takeover delay too, instead of a free slot at once (docs/timing.md,
                // "Semaphores"). Our own wait, if the create succeeds, is judged after the put.
                let live = interruptible(self.holder_may_live(key, &owned.id), stop, deadline)
                    .await
                    .map_err(Ok)?
                    .unwrap_or(Some(Duration::ZERO));
                if live.is_some() {
                    for n in 1..request.limit {
                        lock.holders.insert(placeholder(&owned.id, n), true);
                    }
                }
            }
            // A holder whose contender key is gone or no longer held by it is dead, but its
            // command may still be stopping: its entry keeps counting against the limit until
            // a contender takes its place and waits the takeover delay (lock-delay does not
            // guard a slot; docs/timing.md, "Semaphores").
            let alive: HashSet<&str> = read.value.iter().filter_map(KvPair::holder).collect();
            let dead: Vec<String> = lock
                .holders
                .keys()
                .filter(|sid| sid.as_str() != owned.id && !alive.contains(sid.as_str()))
                .cloned()
                .collect();
            let mine = lock.holders.contains_key(&owned.id);
            if mine && uncertain.is_empty() {
                // Only an earlier write of ours, landed unseen, can have put us there: count the
                // take as unclean, whatever that write was.
                takeover = Some(None);
            }
            if !mine && lock.holders.len() >= lock.limit as usize {
                match dead.first() {
                    Some(gone) => {
                        let contender = format!("{prefix}/{gone}");
                        let announced = read
                            .value
                            .iter()
                            .find(|p| p.key == contender)
                            .and_then(value::announced_takeover);
                        tracing::debug!(key, dead = %gone, "taking the slot of a dead holder");
                        lock.holders.remove(gone);
                        replaced.push(gone.clone());
                        let owed = takeover.get_or_insert(None);
                        *owed = (*owed).max(announced);
                    }
                    None => {
                        interruptible(observer.already_locked(key, None), stop, deadline)
                            .await
                            .map_err(Ok)?;
                        if request.wait == Wait::NonBlocking {
                            return Ok(None);
                        }
                        if let Some(poll) = request.wait.poll() {
                            interruptible(tokio::time::sleep(poll), stop, deadline)
                                .await
                                .map_err(Ok)?;
                            index = 0;
                        }
                        continue;
                    }
                }
            }
            if let Some(Some(delay)) = takeover {
                // The dead holder announced a delay: announce it from our contender key before
                // the slot is ours, so whoever takes our slot if we fail right after the write
                // still waits it (the dead holder's own key goes once we hold).
                // Stopping here is safe: nothing is written to `.lock` yet.
                let carried = self.holder_value(request, &owned.id, started, Some(delay));
                let announced = interruptible(
                    self.announce_owed(&slot.contender_key, carried, &contender_params),
                    stop,
                    deadline,
                )
                .await
                .map_err(Ok)?
                .map_err(Err)?;
                if !announced {
                    // Not written (our session may have died in the same event as the holder's):
                    // a write now could leave the slot listed under a key that announces less.
                    // No write this try; a gone session shows at the renew.
                    match ttl {
                        Some(ttl) => interruptible(self.renew_waiter(owned, ttl), stop, deadline)
                            .await
                            .map_err(Ok)?
                            .map_err(Err)?,
                        // No TTL to renew: ask whether the session still exists.
                        None => {
                            let info = self.client.session_info(&owned.id);
                            let known = interruptible(info, stop, deadline).await.map_err(Ok)?;
                            if let Ok(None) = known {
                                return Err(Err(BackendError::SessionGone(owned.id.clone())));
                            }
                        }
                    }
                    interruptible(tokio::time::sleep(ANNOUNCE_RETRY), stop, deadline)
                        .await
                        .map_err(Ok)?;
                    index = 0;
                    continue;
                }
            }
            lock.holders.insert(owned.id.clone(), true);
            let body = serde_json::to_vec(&lock).unwrap_or_default();
            let cas = lock_pair.map(|p| p.modify_index).unwrap_or(0);
            let created = lock_pair.is_none();
            let cas_params = [
                ("cas", cas.to_string()),
                ("flags", SEMAPHORE_FLAG_VALUE.to_string()),
            ];
            // Stoppable even now: if the write landed, the cleanup keeps our contender key (we
            // may be listed), so the slot's next taker waits what it announces.
            let put = self.client.kv_put(&slot.lock_key, body, &cas_params);
            match interruptible(put, stop, deadline).await.map_err(Ok)? {
                Ok(true) => {}
                Ok(false) => {
                    index = 0;
                    continue;
                }
                Err(BackendError::Unknown(_)) => {
                    uncertain.add(takeover, replaced, created);
                    index = 0;
                    continue;
                }
                Err(err) => return Err(Err(err)),
            }
            let after = interruptible(self.client.kv_get_retry(&slot.lock_key), stop, deadline)
                .await
                .map_err(Ok)?
                .map_err(Err)?;
            let confirmed = match after.value.as_ref() {
                Some(pair) => decode_lock(Some(pair), key)
                    .map_err(Err)?
                    .holders
                    .contains_key(&owned.id),
                None => false,
            };
            let Some(pair) = after.value.as_ref().filter(|_| confirmed) else {
                uncertain.add(takeover, replaced, created);
                index = 0;
                continue;
            };
            // This take may be an earlier try's that landed unseen: it owes what that try owed.
            let owed_before = std::mem::take(&mut uncertain);
            let created = created || owed_before.created;
            if owed_before.takeover.is_some() {
                let owed = takeover.get_or_insert(None);
                *owed = (*owed).max(owed_before.takeover.flatten());
            }
            replaced.extend(owed_before.replaced);
            // The lease's deadline counts from the last renew, and a waiter renews only every
            // third of the TTL: renew now, or a slot taken after a long wait is lost at once.
            if let Some(ttl) = ttl {
                interruptible(self.renew_waiter(owned, ttl), stop, deadline)
                    .await
                    .map_err(Ok)?
                    .map_err(Err)?;
            }
            let mut info = value::decode(key, pair);
            info.session = Some(owned.id.clone());
            let contender = interruptible(
                self.client.kv_get_retry(&slot.contender_key),
                stop,
                deadline,
            )
            .await
            .map_err(Ok)?
            .map_err(Err)?;
            if let Some(c) = contender.value.as_ref() {
                let mine = value::decode(key, c);
                info.created = mine.created;
                info.seconds_to_lock = mine.seconds_to_lock;
                info.metadata = mine.metadata;
                info.holder = mine.holder;
            }
            info.fencing_token = Some(pair.modify_index);
            // We created `.lock`: a prefix never used, or one whose `.lock` (or everything, with
            // `kv delete -recurse`) was deleted under live holders that are still stopping. Those
            // keep their sessions, named for the key, until their commands are dead; checked
            // after our put, as for a lock (docs/timing.md, "First use").
            let checked = created || takeover.is_some();
            let live = if checked {
                interruptible(self.holder_may_live(key, &owned.id), stop, deadline)
                    .await
                    .map_err(Ok)?
                    .unwrap_or(Some(Duration::ZERO))
            } else {
                None
            };
            if let Some(delay) = live {
                // A holder still stopping, maybe with a longer kill grace than the slot's
                // owner announced: its session name says how long it needs.
                let owed = takeover.get_or_insert(None);
                *owed = (*owed).max(Some(delay));
            }
            if let Some(announced) = takeover {
                // Owed: announce the dead holder's wait too, in case we end before it is over.
                let carried = self.holder_value(request, &owned.id, started, announced);
                let _ = self
                    .announce_owed(&slot.contender_key, carried, &contender_params)
                    .await;
                for gone in &replaced {
                    let _ = self
                        .client
                        .kv_delete(&format!("{prefix}/{gone}"), None)
                        .await;
                }
            }
            return Ok(Some(SlotTaken {
                info,
                index: after.index,
                takeover,
            }));
        }
    }
}

impl ConsulBackend {
    /// Writes the contender value that announces an owed takeover delay, retried a few times:
    /// if this holder is stopped before its wait is over, whoever takes its slot reads the delay
    /// from here.
    /// Whether it was written; `SessionGone` when our session is.
    async fn announce_owed(
        &self,
        contender_key: &str,
        value: Vec<u8>,
        params: &[(&str, String)],
    ) -> Result<bool, BackendError> {
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=3 {
            match self
                .client
                .kv_put(contender_key, value.clone(), params)
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) => break,
                // Our session is gone: no try of this acquisition can succeed.
                Err(err @ BackendError::SessionGone(_)) => return Err(err),
                Err(err) if attempt == 3 => {
                    tracing::warn!(%err, "could not announce the owed takeover delay");
                    return Ok(false);
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        tracing::warn!(
            "could not announce the owed takeover delay (the contender key is not ours)"
        );
        Ok(false)
    }

    /// Renews a semaphore contender's session; the lease's deadline counts from the last renew
    /// (docs/timing.md). Only a session that is gone is an error: any other failure is retried by
    /// the next call, and the deadline keeps counting from the renew before.
    async fn renew_waiter(
        &self,
        owned: &mut OwnedSession,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let sent = Instant::now();
        match self.client.session_renew(&owned.id, ttl / 3).await {
            Ok(()) => owned.sent_at = sent,
            Err(err @ BackendError::SessionGone(_)) => return Err(err),
            Err(err) => tracing::debug!(%err, "renewing a semaphore contender's session failed"),
        }
        Ok(())
    }
}

/// Whether `.lock` may list `session` (true when it cannot be read).
async fn maybe_listed(client: &ConsulClient, lock_key: &str, session: &str, key: &str) -> bool {
    // Retried (a short leader election): a key kept for nothing leaks until someone takes a
    // slot listed under it, which may be never.
    match client.kv_get_retry(lock_key).await {
        Ok(read) => read.value.as_ref().is_some_and(|pair| {
            decode_lock(Some(pair), key).map_or(true, |lock| lock.holders.contains_key(session))
        }),
        Err(_) => true,
    }
}

fn check_limit(lock: &SemaphoreLock, limit: u32, key: &str) -> Result<(), BackendError> {
    if lock.limit != 0 && lock.limit != limit {
        return Err(BackendError::Conflict(format!(
            "semaphore {key} has limit {} but -n {limit} was asked: every holder must agree on -n",
            lock.limit
        )));
    }
    Ok(())
}

impl Holding for SemaphoreSlot {
    fn watch(&self, w: Watch) -> BoxFut<'static, ()> {
        Box::pin(watch(
            w.client,
            self.clone(),
            w.session,
            w.monitor_retry,
            w.loss,
            w.stop,
        ))
    }

    fn release<'a>(
        &'a self,
        client: &'a ConsulClient,
        session: &'a str,
        _still_held: bool,
        clean: bool,
        _patience: Duration,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        // Our contender key and holder entry are ours to remove even after a loss. An unclean
        // release leaves the holder entry: the next contender sees a dead holder and waits.
        Box::pin(release(client, self, session, clean))
    }
}

/// Watches the coordination entry and our contender key; loss when we are no longer a holder.
pub(crate) async fn watch(
    client: ConsulClient,
    slot: SemaphoreSlot,
    session: String,
    monitor_retry: Option<u32>,
    loss: Arc<watch::Sender<Option<LossReason>>>,
    stop: CancellationToken,
) {
    let mut backoff = crate::backend::retry::Backoff::default();
    let prefix = slot
        .lock_key
        .strip_suffix(".lock")
        .unwrap_or(&slot.lock_key)
        .to_string();
    let mut index = 0u64;
    let mut failures = 0u32;
    loop {
        let wait = if index == 0 {
            None
        } else {
            Some((index, STANDBY_WAIT))
        };
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = client.kv_list(&prefix, wait) => read,
        };
        match read {
            Ok(read) => {
                failures = 0;
                backoff.succeeded("watching the semaphore");
                index = next_index(index, read.index).max(1);
                let contender = read.value.iter().find(|p| p.key == slot.contender_key);
                if contender.and_then(KvPair::holder) != Some(session.as_str()) {
                    return declare(&loss, LossReason::SessionInvalidated);
                }
                let lock_pair = read.value.iter().find(|p| p.key == slot.lock_key);
                let held = lock_pair.is_some()
                    && decode_lock(lock_pair, &slot.lock_key)
                        .map(|l| l.holders.contains_key(&session))
                        .unwrap_or(false);
                if !held {
                    return declare(&loss, LossReason::KeyDeleted);
                }
            }
            Err(err) => {
                failures += 1;
                index = 0;
                // Read errors alone do not end the hold: the renew deadline does
                // (docs/timing.md), unless --monitor-retry asks to give up earlier.
                if monitor_retry.is_some_and(|limit| failures > limit) {
                    return declare(&loss, LossReason::ConsulUnreachable(err.to_string()));
                }
                let pause = backoff.failed("watching the semaphore", &err);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause.min(Duration::from_secs(1))) => {}
                }
            }
        }
    }
}

/// Gives our slot back: removes us from the holders (check-and-set loop), deletes the
/// contender key.
pub(crate) async fn release(
    client: &ConsulClient,
    slot: &SemaphoreSlot,
    session: &str,
    clean: bool,
) -> Result<(), BackendError> {
    // Bounded: each failed CAS means someone else changed the entry in between.
    for _ in 0..(if clean { 20 } else { 0 }) {
        let read = client.kv_get_retry(&slot.lock_key).await?;
        let Some(pair) = read.value else { break };
        let mut lock = decode_lock(Some(&pair), &slot.lock_key)?;
        if lock.holders.remove(session).is_none() {
            break;
        }
        let body = serde_json::to_vec(&lock).unwrap_or_default();
        let params = [
            ("cas", pair.modify_index.to_string()),
            ("flags", SEMAPHORE_FLAG_VALUE.to_string()),
        ];
        if client
            .kv_put(&slot.lock_key, body, &params)
            .await
            .unwrap_or(false)
        {
            break;
        }
    }
    // An unclean release keeps the contender key: with our session destroyed it shows us dead,
    // and its value keeps the takeover delay we announced for whoever takes our slot.
    if clean {
        client.kv_delete(&slot.contender_key, None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_entry_uses_go_field_names() {
        let mut lock = SemaphoreLock {
            limit: 2,
            ..Default::default()
        };
        lock.holders.insert("abc".into(), true);
        assert_eq!(
            serde_json::to_string(&lock).unwrap(),
            r#"{"Limit":2,"Holders":{"abc":true}}"#
        );
    }

    #[test]
    fn an_unseen_take_keeps_the_longest_owed_wait() {
        let mut owed = Owed::default();
        assert!(owed.is_empty());
        owed.add(None, Vec::new(), false);
        assert!(owed.is_empty(), "a try that took nothing owes nothing");
        owed.add(Some(None), vec!["dead".into()], false);
        owed.add(Some(Some(Duration::from_secs(8))), Vec::new(), true);
        owed.add(Some(Some(Duration::from_secs(3))), Vec::new(), false);
        assert_eq!(owed.takeover, Some(Some(Duration::from_secs(8))));
        assert_eq!(owed.replaced, ["dead"]);
        assert!(owed.created && !owed.is_empty());
    }

    #[test]
    fn limit_conflict_is_reported() {
        let lock = SemaphoreLock {
            limit: 3,
            ..Default::default()
        };
        assert!(matches!(
            check_limit(&lock, 2, "k"),
            Err(BackendError::Conflict(_))
        ));
        check_limit(&lock, 3, "k").unwrap();
    }
}
