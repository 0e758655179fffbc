//! Acquiring a single-holder lock (default and `consul-lock` layouts): wait with blocking
//! queries, acquire with a fresh session, read back the fencing token (README, "Key layouts").

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::api::{KvPair, KvRead, LOCK_FLAG_VALUE};
use super::client::ConsulClient;
use super::crossed::{self, Structure};
use super::key_hold::KeyHold;
use super::lease::{KeepAlive, Lease};
use super::queue::QueueWait;
use super::session::{self, OwnedSession};
use super::value;
pub(crate) use super::wait::lock_key;
use super::wait::{interruptible, Interrupt, STANDBY_WAIT};
use super::ConsulBackend;
use crate::backend::retry::{self, Backoff};
use crate::backend::timing::TimingPlan;
use crate::backend::{
    AcquireObserver, Acquired, BackendError, Layout, LockInfo, LockRequest, Wait,
};

/// While waiting, name the current holder this often at debug level; the default-level lines
/// (one when the wait starts, one a minute) come from the command (README, "Observability").
pub(crate) const HOLDER_LOG_EVERY: Duration = Duration::from_secs(30);
/// Back-off bounds while a lock-delay blocks a free key: short first tries so a released key
/// is taken within milliseconds, capped so a 15 s lock-delay costs ~30 requests at most.
const LOCK_DELAY_RETRY_FIRST: Duration = Duration::from_millis(50);
const LOCK_DELAY_RETRY_MAX: Duration = Duration::from_millis(500);
/// Window over which waiters that have seen contention spread their wake-ups after a release
/// (the thundering herd without `--queue`); a waiter that never lost a race does not wait.
const HERD_SPREAD: Duration = Duration::from_millis(30);

macro_rules! step {
    ($fut:expr, $stop:expr, $deadline:expr) => {
        match interruptible($fut, $stop, $deadline).await {
            Ok(value) => value,
            Err(Interrupt::Cancelled) => return Ok(Some(Attempt::Cancelled)),
            Err(Interrupt::TimedOut) => return Ok(Some(Attempt::TimedOut)),
        }
    };
}

/// What survives from one attempt to the next.
struct AttemptState {
    /// Back-off while a lock-delay blocks a free key.
    delay_backoff: Duration,
    /// A read already known to be current (the one that woke a waiter): saves a round trip.
    fresh: Option<KvRead<Option<KvPair>>>,
    /// Races for a free key this waiter lost: a sign that other waiters wake with it.
    lost_races: u32,
    /// A free key refused us: a lock-delay runs, so a session holding it was invalidated
    /// recently and its holder's command may still be stopping.
    saw_lock_delay: bool,
    /// The highest store index this acquisition has read. A later read below it means the
    /// servers lost their state (a restarted dev agent, a rebuilt cluster): every session went
    /// with it, so a missing key proves nothing about a holder still stopping.
    highest_index: u64,
    /// Such a loss was seen.
    saw_state_loss: bool,
}

enum Attempt {
    Held(Box<Lease>),
    Locked(Option<LockInfo>),
    TimedOut,
    Cancelled,
}

impl ConsulBackend {
    /// The acquire loop for a single-holder lock. Never leaves a session behind unless it
    /// returns `Held`.
    pub(crate) async fn acquire_lock(
        &self,
        request: &LockRequest,
        plan: &TimingPlan,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<Lease>, BackendError> {
        let started = Instant::now();
        let deadline = request.wait.deadline(started);
        // With `--queue`, first wait for our turn; the head of the queue then runs the
        // ordinary recipe below (exclusion rests on the lock key alone).
        let ticket = if request.queue {
            match self.queue_until_head(request, stop, deadline).await? {
                QueueWait::Head(ticket) => Some(ticket),
                QueueWait::Behind(holder) => return Ok(Acquired::Locked(holder)),
                QueueWait::TimedOut => return Ok(Acquired::TimedOut),
                QueueWait::Cancelled => return Ok(Acquired::Cancelled),
            }
        } else {
            None
        };
        let mut pending = session::Pending::new(&self.client);
        let mut attempts = Attempts {
            backend: self,
            request,
            plan,
            observer,
            stop,
            started,
            deadline,
            state: AttemptState {
                delay_backoff: LOCK_DELAY_RETRY_FIRST,
                fresh: None,
                lost_races: 0,
                saw_lock_delay: false,
                highest_index: 0,
                saw_state_loss: false,
            },
        };
        let result = attempts.run(&mut pending.session).await;
        let session = &mut pending.session;
        let outcome = match result {
            Ok(Attempt::Held(lease)) => {
                if let Some(ticket) = ticket {
                    // Off the path to starting the command; awaited at exit.
                    let backend = self.clone();
                    crate::backend::cleanup::spawn(async move { backend.leave(ticket).await });
                }
                return Ok(Acquired::Held(*lease));
            }
            Ok(Attempt::Locked(info)) => Ok(Acquired::Locked(info)),
            Ok(Attempt::TimedOut) => Ok(Acquired::TimedOut),
            Ok(Attempt::Cancelled) => Ok(Acquired::Cancelled),
            Err(err) => Err(err),
        };
        // Still under the drop guard while the destroy runs: a caller's own timeout firing
        // now leaves it to the guard.
        if let Some(owned) = session.as_ref() {
            session::destroy(&self.client, owned).await;
        }
        *session = None;
        if let Some(ticket) = ticket {
            self.leave(ticket).await;
        }
        outcome
    }
}

/// One acquisition's attempts: what every attempt shares (the request, the stop signal and the
/// deadline) and what survives from one to the next, so that an attempt reads as its steps.
struct Attempts<'a> {
    backend: &'a ConsulBackend,
    request: &'a LockRequest,
    plan: &'a TimingPlan,
    observer: &'a dyn AcquireObserver,
    stop: &'a CancellationToken,
    started: Instant,
    deadline: Option<Instant>,
    state: AttemptState,
}

/// Our acquire write to a free key: what it wrote, and what the entry it replaced said.
struct Write {
    lock_key: String,
    /// The entry as read before the write; `None` when the key had none.
    before: Option<KvPair>,
    /// The takeover delay the replaced entry announced.
    previous_takeover: Option<Duration>,
    /// The replaced entry carries the `released` marker.
    marked_clean: bool,
    /// The previous holder's wait this holder still owes (an unclean handoff).
    carried: Option<Duration>,
    /// The value written, announcing `carried` or our own delay, whichever is longer.
    value: Vec<u8>,
}

impl Attempts<'_> {
    /// Runs attempts until one decides; rides out transient trouble (no leader, an agent
    /// that has just started, a session lost with the agent's state) with jittered back-off:
    /// a blocking acquire until `--timeout` or a stop signal, `--non-blocking` for
    /// [`retry::NON_BLOCKING_PATIENCE`]. An address that never answered fails at once (exit 8).
    async fn run(&mut self, session: &mut Option<OwnedSession>) -> Result<Attempt, BackendError> {
        let (backend, stop, deadline) = (self.backend, self.stop, self.deadline);
        let patience = (self.request.wait == Wait::NonBlocking)
            .then(|| self.started + retry::NON_BLOCKING_PATIENCE);
        let mut backoff = Backoff::default();
        loop {
            let result = self.attempt(session).await;
            let err = match result {
                Ok(Some(decided)) => return Ok(decided),
                Ok(None) => {
                    backoff.succeeded("acquiring the lock");
                    continue;
                }
                Err(err) => err,
            };
            if let BackendError::SessionGone(_) = err {
                // Our session vanished (agent restarted with its state lost): make a new one.
                if let Some(gone) = session.as_ref() {
                    session::destroy(&backend.client, gone).await;
                }
                *session = None;
            } else if !(err.is_transient() && backend.client.answered())
                // A check the user named that Consul does not know is most likely a typo:
                // say so at once rather than wait for it.
                || session::names_foreign_missing_check(&err)
            {
                return Err(err);
            }
            if patience.is_some_and(|end| Instant::now() >= end) {
                return Err(err);
            }

            backend.telemetry.store_healthy(false);
            let pause = backoff.failed("acquiring the lock", &err);
            match interruptible(tokio::time::sleep(pause), stop, deadline).await {
                Ok(()) => {}
                Err(Interrupt::Cancelled) => return Ok(Attempt::Cancelled),
                Err(Interrupt::TimedOut) => return Ok(Attempt::TimedOut),
            }
        }
    }

    /// One pass of the acquire recipe: read, then wait while taken, or take the free key.
    /// `Ok(None)`: go round again.
    async fn attempt(
        &mut self,
        session: &mut Option<OwnedSession>,
    ) -> Result<Option<Attempt>, BackendError> {
        let (request, backend) = (self.request, self.backend);
        let (stop, deadline) = (self.stop, self.deadline);
        let key = request.key.as_str();
        let lock_key = lock_key(key, request.layout);
        step!(self.observer.before_attempt(key), stop, deadline);
        let read = match self.state.fresh.take() {
            // Woken by a release after having lost a race before: others wait too. Spread the
            // wake-ups and look again before writing anything, so only the first few create a
            // session and try (the rest see the key taken and go back to waiting for free).
            Some(_) if self.state.lost_races > 0 => {
                let spread = HERD_SPREAD.mul_f64(fastrand::f64());
                step!(tokio::time::sleep(spread), stop, deadline);
                step!(backend.client.kv_get(&lock_key, None), stop, deadline)?
            }
            Some(read) => read,
            None => {
                let read = step!(backend.client.kv_get(&lock_key, None), stop, deadline);
                backend.telemetry.store_healthy(read.is_ok());
                read?
            }
        };
        check_flags(read.value.as_ref(), &lock_key, request.layout)?;
        if read.index < self.state.highest_index {
            tracing::warn!(key, index = read.index, before = self.state.highest_index, "Consul's index went back: its state was lost; the next hold waits its takeover delay");
            self.state.saw_state_loss = true;
        }
        self.state.highest_index = self.state.highest_index.max(read.index);

        if let Some(pair) = read.value.as_ref().filter(|p| p.holder().is_some()) {
            let info = value::decode(key, pair);
            return self
                .wait_while_taken(session, &lock_key, read.index, info)
                .await;
        }
        self.take_free_key(session, lock_key, read).await
    }

    /// The key is held by `info`: reports it, and unless the request does not wait, drops our
    /// session (a standby needs none) and waits until the key is free. The read that shows it
    /// free starts the next attempt.
    async fn wait_while_taken(
        &mut self,
        session: &mut Option<OwnedSession>,
        lock_key: &str,
        index: u64,
        info: LockInfo,
    ) -> Result<Option<Attempt>, BackendError> {
        let (request, backend) = (self.request, self.backend);
        let (stop, deadline) = (self.stop, self.deadline);
        let key = request.key.as_str();
        tracing::debug!(key, holder = %info.holder_summary(), "lock is taken");
        backend.telemetry.observed_holder(Some(&info));
        step!(
            self.observer.already_locked(key, Some(&info)),
            stop,
            deadline
        );
        if request.wait == Wait::NonBlocking {
            return Ok(Some(Attempt::Locked(Some(info))));
        }
        // Whoever holds it now took it after any lock-delay we saw.
        self.state.saw_lock_delay = false;
        // A standby needs no session: drop ours until the key is free again.
        if let Some(owned) = session.as_ref() {
            session::destroy(&backend.client, owned).await;
        }
        *session = None;
        self.state.fresh = step!(
            backend.wait_until_free(
                key,
                lock_key,
                request.layout,
                index,
                info,
                request.wait.poll()
            ),
            stop,
            deadline
        )?;
        self.state.delay_backoff = LOCK_DELAY_RETRY_FIRST;
        Ok(None)
    }

    /// The key is free: takes it with a session of our own (created now if we have none), then
    /// reads it back, which says whether the write made us the holder.
    async fn take_free_key(
        &mut self,
        session: &mut Option<OwnedSession>,
        lock_key: String,
        read: KvRead<Option<KvPair>>,
    ) -> Result<Option<Attempt>, BackendError> {
        let (request, backend) = (self.request, self.backend);
        let (stop, deadline) = (self.stop, self.deadline);
        let key = request.key.as_str();
        let previous_takeover = read.value.as_ref().and_then(value::announced_takeover);
        if session.is_none() {
            *session = Some(step!(
                backend.create_session(request, self.plan),
                stop,
                deadline
            )?);
            // Creating a session can take long (a slow agent, a leader election): whatever the
            // read said may be stale by now. Judge a changed key afresh.
            if let Some(before) = read.value.as_ref() {
                let again = step!(backend.client.kv_get(&lock_key, None), stop, deadline)?;
                if again.value.as_ref().map(|p| p.modify_index) != Some(before.modify_index) {
                    tracing::debug!(key, "the key changed while our session was created");
                    return Ok(None);
                }
            }
        }
        let owned = session.as_ref().expect("session was just created");
        if read.value.is_none() {
            step!(
                backend.refuse_other_layout(key, request.layout),
                stop,
                deadline
            )?;
        }
        // An unclean handoff owes the previous holder's announced wait: pass it on, so a holder
        // stopped during its own takeover wait still makes the next one wait that long.
        let marked_clean = read.value.as_ref().is_some_and(value::released_cleanly);
        let carried = previous_takeover.filter(|_| !marked_clean);
        let value = backend.holder_value(request, &owned.id, self.started, carried);
        let params = [
            ("acquire", owned.id.clone()),
            ("flags", LOCK_FLAG_VALUE.to_string()),
        ];
        let acquired = match backend
            .client
            .kv_put(&lock_key, value.clone(), &params)
            .await
        {
            Ok(acquired) => acquired,
            // The write may have landed: the entry says whether it is ours.
            Err(BackendError::Unknown(err)) => {
                tracing::warn!(%err, "acquire outcome unknown; re-reading the key");
                false
            }
            Err(err) => return Err(err),
        };
        // Read back: confirms the holder and gives the fencing token (ModifyIndex).
        // Stoppable from here on too: if the write landed, the caller's cleanup destroys the
        // session, and with no clean marker the next holder waits its takeover delay.
        // Beside it, the other structure of the name (`crossed`): costs no time on the path.
        let mine = match request.layout {
            Layout::Default => Structure::Plain,
            Layout::ConsulLock => Structure::DotLock,
        };
        let (after, crossed) = step!(
            async {
                tokio::join!(
                    backend.client.kv_get(&lock_key, None),
                    crossed::refuse_if_other_held(&backend.client, key, mine)
                )
            },
            stop,
            deadline
        );
        let after = after?;
        match after.value.as_ref() {
            Some(pair) if pair.holder() == Some(owned.id.as_str()) => {
                // Ours, but the same name is held as the other structure: give it back (the
                // caller destroys the session; no clean marker) before anything starts.
                crossed?;
                let write = Write {
                    lock_key,
                    before: read.value,
                    previous_takeover,
                    marked_clean,
                    carried,
                    value,
                };
                self.start_lease(session, write, pair, after.index).await
            }
            Some(pair) if pair.holder().is_some() => {
                // Someone else won the race; go round and wait for them.
                tracing::debug!(key, "another contender took the lock first");
                self.state.lost_races += 1;
                Ok(None)
            }
            _ if acquired => Ok(None),
            _ => self.wait_out_lock_delay(session).await,
        }
    }

    /// Our write made us the holder (`pair`, read back at `index`): judges whether the previous
    /// holder surely stopped, settles the takeover delay this hold owes, and starts the lease.
    async fn start_lease(
        &mut self,
        session: &mut Option<OwnedSession>,
        write: Write,
        pair: &KvPair,
        index: u64,
    ) -> Result<Option<Attempt>, BackendError> {
        let (request, backend) = (self.request, self.backend);
        let (stop, deadline) = (self.stop, self.deadline);
        let key = request.key.as_str();
        let owned = session
            .as_ref()
            .expect("the key was read back held by our session");
        // Checked after our acquire: a holder that came and went before it keeps its
        // session until its command is dead. `Some`: such a session lives, with the
        // longest takeover delay those sessions announced.
        let may_live = || async {
            backend
                .holder_may_live(key, &owned.id)
                .await
                .unwrap_or(Some(Duration::ZERO))
        };
        let mut live = match write.before {
            Some(_) => None,
            None => step!(may_live(), stop, deadline),
        };
        // Judged against what this acquire replaced, not the read before it: another
        // holder may have come and gone in between (docs/timing.md, "First use").
        let previous_clean = !self.state.saw_lock_delay
            && !self.state.saw_state_loss
            && match write.before.as_ref() {
                // Nobody else acquired since the read: the same entry (not deleted and
                // re-created), its lock index moved by one.
                Some(before) => {
                    write.marked_clean
                        && pair.create_index == before.create_index
                        && pair.lock_index == before.lock_index + 1
                }
                None => live.is_none(),
            };
        if !previous_clean && write.before.is_some() {
            // Any holder still stopping may have a longer kill grace than the one whose
            // entry we replaced announced: its session name says how long it needs.
            live = step!(may_live(), stop, deadline);
        }
        let owed = write.previous_takeover.max(live);
        // If this hold ends unclean before the wait is over, the next holder owes it too.
        let value = match owed {
            Some(delay) if !previous_clean && Some(delay) > write.carried => {
                backend.holder_value(request, &owned.id, self.started, Some(delay))
            }
            _ => write.value,
        };
        let info = value::decode(key, pair);
        let owned = session.take().expect("session is set");
        let keep_alive = backend.keep_alive(request, self.plan, index);
        let hold = KeyHold {
            lock_key: write.lock_key,
            layout: request.layout,
            value,
        };
        let mut lease = Lease::start(
            backend.client.clone(),
            info,
            owned,
            Box::new(hold),
            keep_alive,
        );
        lease.previous_release_clean = previous_clean;
        lease.previous_takeover = owed;
        Ok(Some(Attempt::Held(Box::new(lease))))
    }

    /// The key is free but refused our write: a lock-delay from an invalidated session runs.
    /// Backs off (doubling up to a cap), keeping our session alive meanwhile, and goes round.
    async fn wait_out_lock_delay(
        &mut self,
        session: &mut Option<OwnedSession>,
    ) -> Result<Option<Attempt>, BackendError> {
        let (stop, deadline) = (self.stop, self.deadline);
        if self.request.wait == Wait::NonBlocking {
            return Ok(Some(Attempt::Locked(None)));
        }
        let key = self.request.key.as_str();
        tracing::debug!(key, retry_in = ?self.state.delay_backoff, "key is free but in lock-delay");
        self.state.saw_lock_delay = true;
        step!(tokio::time::sleep(self.state.delay_backoff), stop, deadline);
        self.state.delay_backoff = (self.state.delay_backoff * 2).min(LOCK_DELAY_RETRY_MAX);
        if let Some(owned) = session.as_mut() {
            self.backend.refresh_session(self.request, owned).await?;
        }
        Ok(None)
    }
}

impl ConsulBackend {
    /// For a key with no entry: refuses when the same name is locked in the other layout — a
    /// `consul lock KEY` holds `KEY/.lock`, lockwrap's default layout holds `KEY` — since the
    /// two would never exclude each other (README, "Key layouts").
    async fn refuse_other_layout(&self, key: &str, layout: Layout) -> Result<(), BackendError> {
        let (other, other_layout, flag) = match layout {
            Layout::Default => (
                lock_key(key, Layout::ConsulLock),
                "consul-lock",
                "--layout consul-lock",
            ),
            Layout::ConsulLock => (key.to_string(), "default", "--layout default"),
        };
        // Best effort: a token that may not read the other layout's key cannot be protected
        // from it, and must not be refused for it (README, "ACL rules").
        let Ok(read) = self.client.kv_get(&other, None).await else {
            return Ok(());
        };
        let Some(pair) = read.value else {
            return Ok(());
        };
        let lock_like = pair.flags == LOCK_FLAG_VALUE
            || pair.flags == super::api::SEMAPHORE_FLAG_VALUE
            || pair.holder().is_some();
        if !lock_like {
            return Ok(());
        }
        Err(BackendError::Conflict(format!(
            "{other} is a lock in the {other_layout} layout (`consul lock {key}` or lockwrap \
             {flag}): the same name in two layouts gives no exclusion; use {flag} for every \
             contender"
        )))
    }

    /// For a key with no entry: whether someone may still be running a command under it — the
    /// entry deleted under a live holder, who stops its command before it destroys its session.
    /// A key never used has no such session, so its first holder starts at once (docs/timing.md,
    /// "First use"). Every session lockwrap creates is named for its key.
    ///
    /// `Some(delay)` when such a session is alive: the longest takeover delay those sessions
    /// announced in their names (zero when none did), which the next holder owes on top of its
    /// own, since their kill grace may be longer (docs/timing.md, "Contenders with different
    /// settings").
    pub(super) async fn holder_may_live(
        &self,
        key: &str,
        own: &str,
    ) -> Result<Option<Duration>, BackendError> {
        let sessions = self.client.session_list_consistent().await?;
        let mut owed: Option<Duration> = None;
        for s in sessions
            .iter()
            .filter(|s| s.id != own && super::naming::names_key(&s.name, key))
        {
            tracing::debug!(key, session = %s.id, name = %s.name, "the key has no entry, but a session that may hold it is alive");
            let announced = super::naming::announced_takeover(&s.name).unwrap_or_default();
            owed = Some(owed.unwrap_or_default().max(announced));
        }
        Ok(owed)
    }

    /// The entry value this process writes when it acquires with `session`.
    /// `carried`: the takeover delay a previous holder announced that this holder still owes
    /// (an unclean handoff); the value announces the longer of it and this holder's own.
    pub(crate) fn holder_value(
        &self,
        request: &LockRequest,
        session: &str,
        started: Instant,
        carried: Option<Duration>,
    ) -> Vec<u8> {
        let own = request
            .hold
            .keep_alive
            .then_some(request.hold.takeover_delay);
        value::encode(
            &request.key,
            session,
            &value::now_iso8601(),
            started.elapsed().as_secs_f64(),
            request.metadata.as_ref(),
            &self.identity,
            own.max(carried),
        )
    }

    /// Creates a session in a task of its own, so a stop signal need not wait for a slow
    /// agent: if the caller stops waiting, the task still finishes and destroys what it made.
    pub(crate) async fn create_session(
        &self,
        request: &LockRequest,
        plan: &TimingPlan,
    ) -> Result<OwnedSession, BackendError> {
        struct Orphan(
            Option<tokio::task::JoinHandle<Result<OwnedSession, BackendError>>>,
            ConsulClient,
        );
        impl Drop for Orphan {
            fn drop(&mut self) {
                if let Some(task) = self.0.take() {
                    let client = self.1.clone();
                    crate::backend::cleanup::spawn(async move {
                        if let Ok(Ok(owned)) = task.await {
                            session::destroy(&client, &owned).await;
                        }
                    });
                }
            }
        }
        let client = self.client.clone();
        let key = request.key.clone();
        let settings = request.session.clone();
        let identity = self.identity.clone();
        let pass = plan.pass;
        let takeover = request
            .hold
            .keep_alive
            .then_some(request.hold.takeover_delay);
        let task = tokio::spawn(async move {
            session::create(&client, &key, &settings, &identity, pass, takeover).await
        });
        let mut guard = Orphan(Some(task), self.client.clone());
        let joined = guard
            .0
            .as_mut()
            .expect("the task is set until it is awaited")
            .await;
        guard.0 = None;
        joined.map_err(|e| BackendError::Invalid(format!("session creation failed: {e}")))?
    }

    /// Keeps a session alive while it waits out a lock-delay longer than half its TTL.
    async fn refresh_session(
        &self,
        request: &LockRequest,
        owned: &mut OwnedSession,
    ) -> Result<(), BackendError> {
        if let Some(ttl) = request.session.ttl {
            if owned.sent_at.elapsed() > ttl / 2 {
                let sent = Instant::now();
                self.client
                    .session_renew(&owned.id, super::client::REQUEST_TIMEOUT)
                    .await?;
                owned.sent_at = sent;
            }
        }
        Ok(())
    }

    /// Waits until `lock_key` has no holder: blocking queries, or polling every `poll`.
    /// Returns the read that showed the key free (so the caller need not read it again), or
    /// `None` after a poll interval. Logs the holder every 30 s (debug) without extra requests.
    #[allow(clippy::too_many_arguments)]
    async fn wait_until_free(
        &self,
        key: &str,
        lock_key: &str,
        layout: Layout,
        mut index: u64,
        mut holder: LockInfo,
        poll: Option<Duration>,
    ) -> Result<Option<KvRead<Option<KvPair>>>, BackendError> {
        if let Some(every) = poll {
            tokio::time::sleep(every).await;
            return Ok(None);
        }
        let mut log_every =
            tokio::time::interval_at((Instant::now() + HOLDER_LOG_EVERY).into(), HOLDER_LOG_EVERY);
        let mut backoff = Backoff::default();
        loop {
            let fetch = self.client.kv_get(lock_key, Some((index, STANDBY_WAIT)));
            tokio::pin!(fetch);
            let result = loop {
                tokio::select! {
                    result = &mut fetch => break result,
                    _ = log_every.tick() => {
                        tracing::debug!(holder = %holder.holder_summary(), "waiting for the lock");
                    }
                }
            };
            match result {
                Ok(read) => {
                    backoff.succeeded("waiting for the lock");
                    self.telemetry.store_healthy(true);
                    check_flags(read.value.as_ref(), lock_key, layout)?;
                    match read.value.as_ref().filter(|p| p.holder().is_some()) {
                        None => return Ok(Some(read)),
                        Some(pair) => {
                            holder = value::decode(key, pair);
                            self.telemetry.observed_holder(Some(&holder));
                            index = super::api::next_index(index, read.index);
                        }
                    }
                }
                Err(err) if err.is_transient() => {
                    self.telemetry.store_healthy(false);
                    let pause = backoff.failed("waiting for the lock", &err);
                    // The agent may have restarted with a lower index: a blocking query on our
                    // old index would then hang for the whole wait. Start over from 0.
                    index = 0;
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// What keeps a fresh lease alive (renews, the key watch, the stop deadline), from the
    /// acquisition's timing plan; `None` for a lock left held on purpose (CLI `lock`).
    pub(crate) fn keep_alive(
        &self,
        request: &LockRequest,
        plan: &TimingPlan,
        watch_index: u64,
    ) -> Option<KeepAlive> {
        request.hold.keep_alive.then(|| KeepAlive {
            plan: plan.clone(),
            monitor_retry: request.hold.monitor_retry,
            watch_index,
            telemetry: self.telemetry.clone(),
        })
    }

    /// Forces `key` free: releases it from the holder's session — no lock-delay, so a waiting
    /// contender can take it at once — then destroys that session, so its holder stops renewing.
    /// The entry stays, without the `released` marker: the next holder knows the release was
    /// forced and waits its takeover delay while the old command stops (docs/timing.md). Returns
    /// whether it was held.
    pub(crate) async fn force_release(
        &self,
        key: &str,
        layout: Layout,
    ) -> Result<bool, BackendError> {
        let lock_key = lock_key(key, layout);
        let read = self.client.kv_get_retry(&lock_key).await?;
        let Some(pair) = read.value else {
            return Ok(false);
        };
        check_flags(Some(&pair), &lock_key, layout)?;
        let Some(holder) = pair.holder().map(str::to_string) else {
            return Ok(false);
        };
        let params = [
            ("release", holder.clone()),
            ("flags", pair.flags.to_string()),
        ];
        // The holder's own value, unchanged: it keeps the announced takeover delay.
        if let Err(err) = self
            .client
            .kv_put(&lock_key, pair.value_bytes(), &params)
            .await
        {
            // Destroying the session frees the key as well (after its lock-delay).
            tracing::warn!(key, %err, "releasing the holder's key failed; destroying its session");
        }
        self.client.session_destroy(&holder).await?;
        Ok(true)
    }
}

/// An entry with foreign flags belongs to something else (a semaphore, or a plain value):
/// refuse to touch it (README, "Key layouts"). consullock writes flags 0, so the default layout accepts 0;
/// the `consul-lock` layout accepts only Consul's lock flags, as Go's `api.Lock` does.
fn check_flags(pair: Option<&KvPair>, lock_key: &str, layout: Layout) -> Result<(), BackendError> {
    let Some(p) = pair else { return Ok(()) };
    let ok = p.flags == LOCK_FLAG_VALUE || (layout == Layout::Default && p.flags == 0);
    if ok {
        return Ok(());
    }
    Err(BackendError::Conflict(format!(
        "{lock_key} exists with flags {} instead of Consul's lock flags {LOCK_FLAG_VALUE}: it is \
         not a lock of this layout (a semaphore or another tool's key); refusing to touch it",
        p.flags
    )))
}
