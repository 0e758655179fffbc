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

use super::api::{next_index, KvPair, KvRead, SEMAPHORE_FLAG_VALUE};
use super::client::ConsulClient;
use super::crossed::{self, Structure};
use super::lease::{declare, BoxFut, Holding, Lease, Watch};
use super::session::{self, OwnedSession};
use super::value;
use super::wait::{interruptible, Interrupt, STANDBY_WAIT};
use super::ConsulBackend;
use crate::backend::retry::Backoff;
use crate::backend::timing::TimingPlan;
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

/// What a try that may have taken a slot owes (see `SlotWait`).
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

/// What one acquisition learns across its sessions (after a failure the riding-out loop starts
/// again with a new one): the highest index `.lock` was read at, and whether Consul lost state
/// this contender saw or wrote — that index going back, or our contender key gone from under
/// our session. Holders of that time may still be stopping and are listed nowhere now, so a
/// slot taken after it is taken unclean and waits the takeover delay (docs/timing.md,
/// "Semaphores").
#[derive(Debug, Default)]
pub(crate) struct PrefixHistory {
    highest_index: u64,
    state_lost: bool,
}

impl PrefixHistory {
    /// `.lock` read at `index`: its ModifyIndex, or Consul's KV index while it does not exist;
    /// neither goes back unless Consul lost its state.
    fn saw_lock_index(&mut self, key: &str, index: u64) {
        if index < self.highest_index {
            self.lost(key, "Consul's index went back: its state was lost");
        }
        self.highest_index = self.highest_index.max(index);
    }

    /// Our waiting session is gone (the riding-out loop saw `SessionGone`).
    pub(super) fn session_gone(&mut self, key: &str) {
        self.lost(key, "our waiting session is gone");
    }

    fn lost(&mut self, key: &str, why: &str) {
        if !self.state_lost {
            tracing::warn!(
                key,
                "{why}; the slot this wait takes waits its takeover delay"
            );
        }
        self.state_lost = true;
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
        plan: &TimingPlan,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
        history: &mut PrefixHistory,
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
        history.saw_lock_index(key, first.index);
        check_limit(&decode_lock(first.value.as_ref(), key)?, request.limit, key)?;
        // The name held as a plain lock: refused before anything is written (`crossed`).
        crossed::refuse_if_other_held(&self.client, key, Structure::DotLock).await?;

        let mut pending = session::Pending::new(&self.client);
        let owned = match interruptible(self.create_session(request, plan), stop, deadline).await {
            Ok(created) => pending.session.insert(created?),
            Err(Interrupt::Cancelled) => return Ok(Acquired::Cancelled),
            Err(Interrupt::TimedOut) => return Ok(Acquired::TimedOut),
        };
        let slot = slot(prefix, &owned.id);
        // Dropped midway (a library caller's timeout): the same cleanup as a failed acquisition.
        pending.leftover = Some(leftover(&slot, key));
        let outcome = self
            .semaphore_loop(
                request, observer, stop, started, deadline, owned, &slot, history,
            )
            .await;
        match outcome {
            Ok(Some(taken)) => {
                pending.leftover = None;
                let owned = pending
                    .session
                    .take()
                    .expect("the session stays pending until here");
                Ok(Acquired::Held(
                    self.lease_for_slot(request, plan, taken, owned, slot),
                ))
            }
            other => {
                self.abandon(&mut pending, &slot, key).await;
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

    /// The lease of a slot we took, with our session; a dead holder's slot starts it unclean,
    /// owing the takeover delay that holder announced.
    fn lease_for_slot(
        &self,
        request: &LockRequest,
        plan: &TimingPlan,
        taken: SlotTaken,
        owned: OwnedSession,
        slot: SemaphoreSlot,
    ) -> Lease {
        let keep_alive = self.keep_alive(request, plan, taken.index);
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
        lease
    }

    /// Undoes an acquisition that took no slot: destroys our session, and deletes our contender
    /// key unless `.lock` may list us. A take whose write may have landed leaves our entry in
    /// `.lock`, dead once our session is gone: keep our contender key then, with the takeover
    /// delay it announces, for whoever takes that slot (it deletes the key). Runs under the
    /// caller's drop guard (`pending`): a caller's own timeout firing now leaves the rest to it.
    async fn abandon(&self, pending: &mut session::Pending, slot: &SemaphoreSlot, key: &str) {
        if let Some(owned) = pending.session.as_ref() {
            if !maybe_listed(&self.client, &slot.lock_key, &owned.id, key).await {
                let _ = self.client.kv_delete(&slot.contender_key, None).await;
            }
            pending.leftover = None;
            session::destroy(&self.client, owned).await;
        }
        pending.session = None;
    }

    /// Waits for a slot with our session: creates our contender key, then tries until a try
    /// takes a slot (`Some`), or finds every slot held and the request does not wait (`None`).
    /// `Err(Ok)`: a stop signal or `--timeout`; `Err(Err)`: a failure.
    #[allow(clippy::too_many_arguments)]
    async fn semaphore_loop(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
        started: Instant,
        deadline: Option<Instant>,
        owned: &mut OwnedSession,
        slot: &SemaphoreSlot,
        history: &mut PrefixHistory,
    ) -> Result<Option<SlotTaken>, Ended> {
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
            .kv_put(&slot.contender_key, value, &contender_params);
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
        // A waiter keeps its session: renewed between blocking queries no longer than a third
        // of the TTL, so it is alive when a slot frees.
        let ttl = owned.ttl.or(request.session.ttl);
        let mut wait = SlotWait {
            backend: self,
            request,
            observer,
            stop,
            started,
            deadline,
            owned,
            slot,
            key,
            prefix: key.trim_end_matches('/'),
            contender_params,
            ttl,
            longest_wait: ttl.map_or(STANDBY_WAIT, |t| (t / 3).min(STANDBY_WAIT)),
            index: 0,
            backoff: Backoff::default(),
            uncertain: Owed::default(),
            history,
        };
        loop {
            match wait.try_once().await {
                Ok(taken) => return Ok(Some(taken)),
                Err(Detour::Again) => continue,
                Err(Detour::Full) => return Ok(None),
                Err(Detour::Stopped(interrupt)) => return Err(Ok(interrupt)),
                Err(Detour::Failed(err)) => return Err(Err(err)),
            }
        }
    }
}

/// How a semaphore acquisition ends without a slot: `Ok` a stop signal or `--timeout`, `Err` a
/// failure. Kept apart so the caller answers `Cancelled` / `TimedOut` rather than an error.
type Ended = Result<Interrupt, BackendError>;

/// How one try of [`SlotWait`] ends short of a slot.
enum Detour {
    /// Go round again: the next try starts from a fresh read of the prefix.
    Again,
    /// Every slot is held by a live holder, and the request does not wait (`--non-blocking`).
    Full,
    /// A stop signal or `--timeout`.
    Stopped(Interrupt),
    /// A failure that ends the acquisition.
    Failed(BackendError),
}

impl From<Interrupt> for Detour {
    fn from(interrupt: Interrupt) -> Self {
        Detour::Stopped(interrupt)
    }
}

impl From<BackendError> for Detour {
    fn from(err: BackendError) -> Self {
        Detour::Failed(err)
    }
}

/// The wait for a slot once our contender key exists: what every try shares, and what one try
/// leaves to the next (the index to block on, the back-off, what an unseen take owes), so each
/// try reads as its steps in [`SlotWait::try_once`].
struct SlotWait<'a> {
    backend: &'a ConsulBackend,
    request: &'a LockRequest,
    observer: &'a dyn AcquireObserver,
    stop: &'a CancellationToken,
    started: Instant,
    deadline: Option<Instant>,
    owned: &'a mut OwnedSession,
    slot: &'a SemaphoreSlot,
    key: &'a str,
    prefix: &'a str,
    /// How our contender key is written: held by our session, with Consul's semaphore flags.
    contender_params: [(&'static str, String); 2],
    /// Our session's TTL, if it has one: a waiter renews every third of it.
    ttl: Option<Duration>,
    /// The longest a blocking query on the prefix waits.
    longest_wait: Duration,
    /// The index the next read blocks on; 0 reads at once.
    index: u64,
    backoff: Backoff,
    /// What earlier tries owe whose write may have landed unseen (an unknown outcome, a
    /// confirm read that missed it): a later try that finds itself in `.lock` took the slot
    /// then, and owes what that try owed.
    uncertain: Owed,
    /// What this acquisition saw of Consul's state, across its sessions.
    history: &'a mut PrefixHistory,
}

/// What one try writes to `.lock`, and what it owes if the write lands.
struct Take {
    /// The entry to write, with the slot chosen (a dead holder's entry removed, placeholders
    /// added); our own entry goes in at the write.
    lock: SemaphoreLock,
    /// The ModifyIndex the write checks; 0 when `.lock` does not exist yet.
    cas: u64,
    owed: Owed,
}

impl SlotWait<'_> {
    /// One try: read the prefix, choose a slot, announce an owed delay before writing, write
    /// `.lock` by check-and-set, read it back, settle what the take owes.
    async fn try_once(&mut self) -> Result<SlotTaken, Detour> {
        let read = self.read_prefix().await?;
        let Take { lock, cas, owed } = self.choose_slot(&read).await?;
        if let Some(Some(delay)) = owed.takeover {
            self.announce_before_write(delay).await?;
        }
        let confirmed = match self.write_lock(lock, cas).await? {
            true => self.read_back().await?,
            false => None,
        };
        let Some((pair, index)) = confirmed else {
            // The write's outcome is unknown, or the read back missed it: it may have landed.
            self.uncertain
                .add(owed.takeover, owed.replaced, owed.created);
            self.index = 0;
            return Err(Detour::Again);
        };
        self.settle(owed, &pair, index).await
    }

    /// Reads every key under the prefix (`.lock` and the contender keys), as a blocking query
    /// once an index is known; renews our session first when a third of its TTL has passed. A
    /// standby rides out Consul outages here.
    async fn read_prefix(&mut self) -> Result<KvRead<Vec<KvPair>>, Detour> {
        interruptible(
            self.observer.before_attempt(self.key),
            self.stop,
            self.deadline,
        )
        .await?;
        if let Some(ttl) = self.ttl {
            if self.owned.sent_at.elapsed() >= ttl / 3 {
                // Stoppable like every other request of the wait (a slow agent must not hold
                // up a stop signal or `--timeout`).
                interruptible(
                    self.backend.renew_waiter(self.owned, ttl),
                    self.stop,
                    self.deadline,
                )
                .await??;
            }
        }
        let wait = if self.index == 0 {
            None
        } else {
            Some((self.index, self.longest_wait))
        };
        let listed = interruptible(
            self.backend
                .client
                .kv_list(&format!("{}/", self.prefix), wait),
            self.stop,
            self.deadline,
        )
        .await?;
        match listed {
            Ok(read) => {
                self.backoff.succeeded("waiting for a semaphore slot");
                self.backend.telemetry.store_healthy(true);
                self.index = next_index(self.index, read.index).max(1);
                self.check_state(&read)?;
                Ok(read)
            }
            Err(err) if err.is_transient() && wait.is_some() => {
                // Index 0 because a restarted agent counts from a lower index.
                self.backend.telemetry.store_healthy(false);
                let pause = self.backoff.failed("waiting for a semaphore slot", &err);
                self.index = 0;
                interruptible(tokio::time::sleep(pause), self.stop, self.deadline).await?;
                Err(Detour::Again)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Whether the prefix still holds what we saw and wrote: `.lock` not older than before, and
    /// our contender key held by our session. A key gone from under a session we renew means
    /// Consul lost its state (or an operator deleted the prefix): `SessionGone`, so the
    /// acquisition starts again with a new session and key, and takes its slot unclean.
    fn check_state(&mut self, read: &KvRead<Vec<KvPair>>) -> Result<(), Detour> {
        if let Some(lock) = read.value.iter().find(|p| p.key == self.slot.lock_key) {
            self.history.saw_lock_index(self.key, lock.modify_index);
        }
        let ours = read
            .value
            .iter()
            .find(|p| p.key == self.slot.contender_key)
            .and_then(KvPair::holder);
        if ours == Some(self.owned.id.as_str()) {
            return Ok(());
        }
        self.history
            .lost(self.key, "our contender key is gone from under our session");
        Err(BackendError::SessionGone(self.owned.id.clone()).into())
    }

    /// Judges `.lock` as `read` shows it, afresh on every try: the slot this try takes (a free
    /// one, or a dead holder's) and what taking it owes. A try whose write surely lost owes
    /// nothing: the slot it aimed at went to someone who waits. `Again` (or `Full`) when live
    /// holders fill every slot.
    async fn choose_slot(&mut self, read: &KvRead<Vec<KvPair>>) -> Result<Take, Detour> {
        let key = self.key;
        let lock_pair = read.value.iter().find(|p| p.key == self.slot.lock_key);
        let mut lock = decode_lock(lock_pair, key)?;
        if lock_pair.is_some() {
            check_limit(&lock, self.request.limit, key)?;
        }
        lock.limit = self.request.limit;
        if lock_pair.is_none() {
            self.hold_slots_for_the_stopping(&mut lock).await?;
        }
        // `takeover` is `Some(announced)` when the slot this try takes is a dead holder's (the
        // takeover is unclean); `replaced` lists the dead holders whose slot it takes (their
        // contender keys go once we hold).
        let mut owed = Owed {
            takeover: None,
            replaced: Vec::new(),
            created: lock_pair.is_none(),
        };
        // A holder whose contender key is gone or no longer held by it is dead, but its
        // command may still be stopping: its entry keeps counting against the limit until
        // a contender takes its place and waits the takeover delay (lock-delay does not
        // guard a slot; docs/timing.md, "Semaphores").
        let alive: HashSet<&str> = read.value.iter().filter_map(KvPair::holder).collect();
        let dead: Vec<String> = lock
            .holders
            .keys()
            .filter(|sid| sid.as_str() != self.owned.id && !alive.contains(sid.as_str()))
            .cloned()
            .collect();
        let mine = lock.holders.contains_key(&self.owned.id);
        if mine && self.uncertain.is_empty() {
            // Only an earlier write of ours, landed unseen, can have put us there: count the
            // take as unclean, whatever that write was.
            owed.takeover = Some(None);
        }
        if !mine && lock.holders.len() >= lock.limit as usize {
            match dead.first() {
                Some(gone) => {
                    let contender = format!("{}/{gone}", self.prefix);
                    let announced = read
                        .value
                        .iter()
                        .find(|p| p.key == contender)
                        .and_then(value::announced_takeover);
                    tracing::debug!(key, dead = %gone, "taking the slot of a dead holder");
                    lock.holders.remove(gone);
                    owed.replaced.push(gone.clone());
                    let takeover = owed.takeover.get_or_insert(None);
                    *takeover = (*takeover).max(announced);
                }
                None => {
                    interruptible(
                        self.observer.already_locked(key, None),
                        self.stop,
                        self.deadline,
                    )
                    .await?;
                    if self.request.wait == Wait::NonBlocking {
                        return Err(Detour::Full);
                    }
                    if let Some(poll) = self.request.wait.poll() {
                        interruptible(tokio::time::sleep(poll), self.stop, self.deadline).await?;
                        self.index = 0;
                    }
                    return Err(Detour::Again);
                }
            }
        }
        Ok(Take {
            lock,
            cas: lock_pair.map(|p| p.modify_index).unwrap_or(0),
            owed,
        })
    }

    /// Before creating `.lock`: a prefix never used, or one whose `.lock` was deleted under
    /// holders that are still stopping and are listed nowhere now. If any session named for the
    /// key lives, the other slots get placeholders (dead from the start), so a second contender
    /// takes one through the dead-holder path and waits the takeover delay too, instead of a
    /// free slot at once (docs/timing.md, "Semaphores"). Our own wait, if the create succeeds,
    /// is judged after the put.
    async fn hold_slots_for_the_stopping(
        &mut self,
        lock: &mut SemaphoreLock,
    ) -> Result<(), Detour> {
        let live = interruptible(
            self.backend.holder_may_live(self.key, &self.owned.id),
            self.stop,
            self.deadline,
        )
        .await?
        .unwrap_or(Some(Duration::ZERO));
        if live.is_some() {
            for n in 1..self.request.limit {
                lock.holders.insert(placeholder(&self.owned.id, n), true);
            }
        }
        Ok(())
    }

    /// The dead holder whose slot we take announced `delay`: announce it from our contender key
    /// before the slot is ours, so whoever takes our slot if we fail right after the write still
    /// waits it (the dead holder's own key goes once we hold). Stopping here is safe: nothing is
    /// written to `.lock` yet. `Again` when it could not be written: no write this try.
    async fn announce_before_write(&mut self, delay: Duration) -> Result<(), Detour> {
        let carried =
            self.backend
                .holder_value(self.request, &self.owned.id, self.started, Some(delay));
        let announced = interruptible(
            self.backend
                .announce_owed(&self.slot.contender_key, carried, &self.contender_params),
            self.stop,
            self.deadline,
        )
        .await??;
        if announced {
            return Ok(());
        }
        // Not written (our session may have died in the same event as the holder's): a write
        // now could leave the slot listed under a key that announces less. A gone session shows
        // at the renew.
        match self.ttl {
            Some(ttl) => {
                interruptible(
                    self.backend.renew_waiter(self.owned, ttl),
                    self.stop,
                    self.deadline,
                )
                .await??
            }
            // No TTL to renew: ask whether the session still exists.
            None => {
                let info = self.backend.client.session_info(&self.owned.id);
                let known = interruptible(info, self.stop, self.deadline).await?;
                if let Ok(None) = known {
                    return Err(BackendError::SessionGone(self.owned.id.clone()).into());
                }
            }
        }
        interruptible(tokio::time::sleep(ANNOUNCE_RETRY), self.stop, self.deadline).await?;
        self.index = 0;
        Err(Detour::Again)
    }

    /// Writes `.lock` with our entry, by check-and-set on the index it was read at: `true` when
    /// it landed, `false` when its outcome is unknown, `Again` when another write came first.
    async fn write_lock(&mut self, mut lock: SemaphoreLock, cas: u64) -> Result<bool, Detour> {
        lock.holders.insert(self.owned.id.clone(), true);
        let body = serde_json::to_vec(&lock).unwrap_or_default();
        let cas_params = [
            ("cas", cas.to_string()),
            ("flags", SEMAPHORE_FLAG_VALUE.to_string()),
        ];
        // Stoppable even now: if the write landed, the cleanup keeps our contender key (we
        // may be listed), so the slot's next taker waits what it announces.
        let put = self
            .backend
            .client
            .kv_put(&self.slot.lock_key, body, &cas_params);
        match interruptible(put, self.stop, self.deadline).await? {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.index = 0;
                Err(Detour::Again)
            }
            Err(BackendError::Unknown(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Reads `.lock` back after a write that landed: the entry and its index when it lists us,
    /// `None` when it does not.
    async fn read_back(&mut self) -> Result<Option<(KvPair, u64)>, Detour> {
        // Beside it, the name's plain lock (`crossed`): costs no time on the path.
        let client = &self.backend.client;
        let (after, crossed) = interruptible(
            async {
                tokio::join!(
                    client.kv_get_retry(&self.slot.lock_key),
                    crossed::refuse_if_other_held(client, self.key, Structure::DotLock)
                )
            },
            self.stop,
            self.deadline,
        )
        .await?;
        let after = after?;
        let confirmed = match after.value.as_ref() {
            Some(pair) => decode_lock(Some(pair), self.key)?
                .holders
                .contains_key(&self.owned.id),
            None => false,
        };
        if confirmed {
            // A slot is ours, but the name is held as a plain lock too: give the slot back
            // (the cleanup keeps our contender key, and the next taker waits) before anything
            // starts.
            crossed?;
        }
        Ok(after
            .value
            .filter(|_| confirmed)
            .map(|pair| (pair, after.index)))
    }

    /// The slot is ours: adds what earlier unseen takes owed, renews our session for the lease,
    /// reads what the lease starts from, and settles the takeover delay this hold owes.
    async fn settle(
        &mut self,
        mut owed: Owed,
        pair: &KvPair,
        index: u64,
    ) -> Result<SlotTaken, Detour> {
        // This take may be an earlier try's that landed unseen: it owes what that try owed.
        let before = std::mem::take(&mut self.uncertain);
        owed.add(before.takeover, before.replaced, before.created);
        if self.history.state_lost {
            // Whoever held a slot when Consul lost its state may still be stopping.
            owed.takeover.get_or_insert(None);
        }
        // The lease's deadline counts from the last renew, and a waiter renews only every
        // third of the TTL: renew now, or a slot taken after a long wait is lost at once.
        if let Some(ttl) = self.ttl {
            interruptible(
                self.backend.renew_waiter(self.owned, ttl),
                self.stop,
                self.deadline,
            )
            .await??;
        }
        let info = self.holder_info(pair).await?;
        // We created `.lock`: a prefix never used, or one whose `.lock` (or everything, with
        // `kv delete -recurse`) was deleted under live holders that are still stopping. Those
        // keep their sessions, named for the key, until their commands are dead; checked
        // after our put, as for a lock (docs/timing.md, "First use").
        let checked = owed.created || owed.takeover.is_some();
        let live = if checked {
            interruptible(
                self.backend.holder_may_live(self.key, &self.owned.id),
                self.stop,
                self.deadline,
            )
            .await?
            .unwrap_or(Some(Duration::ZERO))
        } else {
            None
        };
        if let Some(delay) = live {
            // A holder still stopping, maybe with a longer kill grace than the slot's
            // owner announced: its session name says how long it needs.
            let takeover = owed.takeover.get_or_insert(None);
            *takeover = (*takeover).max(Some(delay));
        }
        if let Some(announced) = owed.takeover {
            // Owed: announce the dead holder's wait too, in case we end before it is over.
            let carried =
                self.backend
                    .holder_value(self.request, &self.owned.id, self.started, announced);
            let _ = self
                .backend
                .announce_owed(&self.slot.contender_key, carried, &self.contender_params)
                .await;
            for gone in &owed.replaced {
                let _ = self
                    .backend
                    .client
                    .kv_delete(&format!("{}/{gone}", self.prefix), None)
                    .await;
            }
        }
        Ok(SlotTaken {
            info,
            index,
            takeover: owed.takeover,
        })
    }

    /// What the lease reports about this hold: the slot's entry, with the details our contender
    /// key holds (the holder, its metadata, how long it waited) and the entry's index as the
    /// fencing token.
    async fn holder_info(&mut self, pair: &KvPair) -> Result<LockInfo, Detour> {
        let mut info = value::decode(self.key, pair);
        info.session = Some(self.owned.id.clone());
        let contender = interruptible(
            self.backend.client.kv_get_retry(&self.slot.contender_key),
            self.stop,
            self.deadline,
        )
        .await??;
        if let Some(c) = contender.value.as_ref() {
            let mine = value::decode(self.key, c);
            info.created = mine.created;
            info.seconds_to_lock = mine.seconds_to_lock;
            info.metadata = mine.metadata;
            info.holder = mine.holder;
        }
        info.fencing_token = Some(pair.modify_index);
        Ok(info)
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

/// What a semaphore acquisition dropped midway still owes besides its session: our contender
/// key, deleted unless `.lock` may list us (then it announces our takeover delay for whoever
/// takes that slot, as `ConsulBackend::abandon` keeps it).
fn leftover(slot: &SemaphoreSlot, key: &str) -> session::Leftover {
    let (lock_key, contender_key, prefix_key) = (
        slot.lock_key.clone(),
        slot.contender_key.clone(),
        key.to_string(),
    );
    Box::new(move |client, session| {
        Box::pin(async move {
            if !maybe_listed(&client, &lock_key, &session, &prefix_key).await {
                let _ = client.kv_delete(&contender_key, None).await;
            }
        })
    })
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
