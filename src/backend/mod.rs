//! The lock-store boundary: request/answer types shared by every backend, the small
//! [`LockBackend`] trait the library API is written against, and the Consul implementation.

pub(crate) mod cleanup;
pub(crate) mod consul;
pub(crate) mod defaults;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod memory;
pub(crate) mod retry;
pub(crate) mod timing;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use error::BackendError;
pub(crate) use events::{BackendEvents, NoEvents};

/// Where the lock lives in the KV store (README, "Key layouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// consullock-compatible: the lock is the key itself.
    #[default]
    Default,
    /// HashiCorp `consul lock PREFIX` / Go `api.Lock`: the lock is `<prefix>/.lock`.
    ConsulLock,
}

/// What Consul does with the key when the session is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Free the key, keeping its entry: the next holder reads who held it and whether it was
    /// released cleanly.
    #[default]
    Release,
    /// Delete the key (consullock's `lock` default); refused while a command runs (docs/timing.md).
    Delete,
}

impl Behavior {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// Health checks the session is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Checks {
    /// The agent's default: `serfHealth` of the node the agent runs on.
    #[default]
    AgentDefault,
    /// No checks: the session lives by TTL alone (right for pods talking to a remote agent).
    None,
    /// Exactly these check IDs.
    List(Vec<String>),
}

/// How the session that holds the lock is created and kept alive.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// Session name; `None` = `lockwrap <key> on <hostname> pid <pid>`.
    pub name: Option<String>,
    /// `None` = a session without TTL (invalidated only by checks or explicitly).
    pub ttl: Option<Duration>,
    /// Consul's lock-delay: how long the key stays unacquirable after the session is invalidated,
    /// which is what a holder cut off from Consul rides out an outage on.
    pub lock_delay: Duration,
    /// What Consul does to the key when the session ends.
    pub behavior: Behavior,
    /// Health checks whose failure ends the session (and so the hold).
    pub checks: Checks,
    /// Register an agent TTL check of this TTL, keep it passing, and bind the session to it.
    pub health_check_ttl: Option<Duration>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        // The library's column of the defaults table is the supervising modes'.
        let d = defaults::SUPERVISING;
        SessionSettings {
            name: None,
            ttl: Some(d.session_ttl),
            lock_delay: d.lock_delay,
            behavior: d.session_behavior,
            checks: d.session_checks.checks(),
            health_check_ttl: None,
        }
    }
}

/// How long to wait for a lock held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// One attempt only.
    NonBlocking,
    /// Wait, woken by blocking queries, or by polling every `poll` when given
    /// (consullock's `-i`); give up after `timeout` when given.
    #[default]
    Blocking,
    /// Wait as [`Wait::Blocking`], with a time limit and/or polling.
    BlockingFor {
        /// Give up ([`Acquired::TimedOut`]) after this long; `None` or zero = never.
        timeout: Option<Duration>,
        /// Poll every this long instead of blocking queries (consullock's `-i`).
        poll: Option<Duration>,
    },
}

impl Wait {
    pub(crate) fn timeout(&self) -> Option<Duration> {
        match self {
            Wait::BlockingFor { timeout, .. } => *timeout,
            _ => None,
        }
    }

    /// When a wait that began at `started` must give up (`None` = never).
    pub(crate) fn deadline(&self, started: std::time::Instant) -> Option<std::time::Instant> {
        self.timeout().filter(|t| !t.is_zero()).map(|t| started + t)
    }

    pub(crate) fn poll(&self) -> Option<Duration> {
        match self {
            Wait::BlockingFor { poll, .. } => *poll,
            _ => None,
        }
    }
}

/// Once held, how the lease is watched (deadlines and cadences come from `backend::timing`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldSettings {
    /// Renew the session and watch the key in the background. Off for CLI `lock`, which
    /// leaves the lock behind on purpose.
    pub keep_alive: bool,
    /// Time the holder needs to stop its work once loss is declared.
    pub kill_grace: Duration,
    /// After taking the lock from a holder that did not release cleanly, wait this long
    /// before starting the command (see `docs/timing.md`).
    pub takeover_delay: Duration,
    /// Consecutive failed watch reads after which the lock is given up early, before the
    /// lease deadline; `None` (the default): watch errors alone never end a hold.
    pub monitor_retry: Option<u32>,
    /// Accept a configuration the timing model calls unsafe (`--unsafe-allow-overlap`).
    pub allow_unsafe: bool,
}

impl Default for HoldSettings {
    fn default() -> Self {
        let d = defaults::SUPERVISING;
        HoldSettings {
            keep_alive: true,
            kill_grace: d.kill_grace,
            takeover_delay: d.takeover_delay(d.kill_grace, d.lock_delay, 1),
            monitor_retry: None,
            allow_unsafe: false,
        }
    }
}

/// Everything needed to acquire one lock.
#[derive(Debug, Clone, PartialEq)]
pub struct LockRequest {
    /// The lock's key (for a semaphore or `consul lock` layout, its prefix).
    pub key: String,
    /// Where the lock lives under the key.
    pub layout: Layout,
    /// Number of holders: 1 = a lock, more = Consul's semaphore recipe.
    pub limit: u32,
    /// How the session that holds the lock is created.
    pub session: SessionSettings,
    /// How long to wait while someone else holds it.
    pub wait: Wait,
    /// Extra JSON stored with the lock (`--metadata`, ≤ 64 KiB), shown by `status`.
    pub metadata: Option<Value>,
    /// How the lease is kept and watched once held.
    pub hold: HoldSettings,
    /// Wait in the fair queue: served in arrival order (`--queue`).
    pub queue: bool,
}

impl LockRequest {
    /// What the timing model needs to know about this request.
    pub(crate) fn timing_inputs(&self) -> timing::TimingInputs {
        timing::TimingInputs {
            ttl: self.session.ttl,
            any_moment_checks: match &self.session.checks {
                Checks::AgentDefault => true,
                Checks::None => false,
                Checks::List(list) => !list.is_empty(),
            },
            health_check_ttl: self.session.health_check_ttl,
            // Lock-delay guards a lock key; a semaphore slot freed by a dead session is taken
            // again at once.
            lock_delay: if self.limit > 1 {
                Duration::ZERO
            } else {
                self.session.lock_delay
            },
            takeover_delay: self.hold.takeover_delay,
            kill_grace: self.hold.kill_grace,
        }
    }

    /// The timing plan for this request. A request that is not kept alive (CLI `lock`) has no
    /// command to stop, so nothing in it can be unsafe.
    pub(crate) fn timing_plan(&self) -> Result<timing::TimingPlan, timing::Unsafe> {
        let lenient = self.hold.allow_unsafe || !self.hold.keep_alive;
        // The CLI refuses this while parsing (config/lock.rs); the library meets it here.
        if !lenient && self.session.behavior == Behavior::Delete {
            return Err(timing::Unsafe {
                setting: "session_behavior",
                message: "session behavior `delete` cannot be held safely while a command runs: a \
                          session that ends while its holder cannot hear deletes the key, and the \
                          next holder takes it for never used (docs/timing.md, \"First use\"); \
                          use release"
                    .to_string(),
            });
        }
        timing::TimingPlan::new(self.timing_inputs(), lenient)
    }

    /// A request for `key` with the library's defaults: blocking, TTL 15 s, lock-delay 15 s,
    /// renewed and watched (the defaults of `lockwrap run`).
    pub fn new(key: impl Into<String>) -> Self {
        LockRequest {
            key: key.into(),
            layout: Layout::Default,
            limit: 1,
            session: SessionSettings::default(),
            wait: Wait::Blocking,
            metadata: None,
            hold: HoldSettings::default(),
            queue: false,
        }
    }
}

/// Who holds (or held) a lock, read from the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockInfo {
    /// The lock's name as the user gave it.
    pub key: String,
    /// The holding session (`None` when the key exists but is not held).
    pub session: Option<String>,
    /// When the holder acquired it, as the holder wrote it.
    pub created: Option<String>,
    #[serde(rename = "secondsToLock")]
    /// How long the holder waited for the lock, as it wrote it (consullock's field).
    pub seconds_to_lock: Option<f64>,
    /// The `--metadata` JSON the holder stored.
    pub metadata: Option<Value>,
    /// lockwrap's `{"hostname","pid","pod"?,"node"?,"namespace"?,"partition"?}`.
    pub holder: Option<Value>,
    /// The entry's `ModifyIndex`: for the current holder, its fencing token.
    #[serde(rename = "fencingToken")]
    pub fencing_token: Option<u64>,
    /// Waiters in the fair queue (`--queue`), first in line first; `None` when nobody queues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Vec<QueuedWaiter>>,
    /// A semaphore's `limit` and `holders` (`-n N`), shown beside the other fields; `None` for
    /// a lock. The top-level `session`, `created` and `holder` are then `null`: a semaphore has
    /// no single holder (README, "Key layouts").
    /// Boxed: a lock's info, the common case, stays small.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub semaphore: Option<Box<SemaphoreInfo>>,
}

/// What `status` shows of a semaphore: its limit and who holds its slots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SemaphoreInfo {
    /// How many holders the semaphore allows.
    pub limit: u32,
    /// One per entry of the coordination key's `Holders`, sorted by session.
    pub holders: Vec<SlotHolder>,
}

/// One holder of a semaphore slot, read from its contender key `<prefix>/<session>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotHolder {
    /// The slot holder's session.
    pub session: String,
    /// When it took the slot, as it wrote it.
    pub created: Option<String>,
    #[serde(rename = "secondsToLock")]
    /// How long the holder waited for the lock, as it wrote it (consullock's field).
    pub seconds_to_lock: Option<f64>,
    /// The `--metadata` JSON the slot holder stored.
    pub metadata: Option<Value>,
    /// lockwrap's `{"hostname","pid",…}` of the slot holder.
    pub holder: Option<Value>,
    /// False when the contender key is gone or no longer held by the session: the holder died,
    /// and its slot still counts until a contender takes it over (docs/timing.md, "Semaphores").
    pub alive: bool,
}

/// Whom a waiting contender waits for, as its log lines and `--timeout` message name it
/// (README, "Observability").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitingFor {
    /// The lock's holder, or for a semaphore its first live holder.
    pub holder: Option<LockInfo>,
    /// The holding session's `Name` and `Node`, from Consul's session info.
    pub session_name: Option<String>,
    /// The Consul node the holding session lives on.
    pub node: Option<String>,
    /// The holding session's `CreateIndex`.
    pub session_index: Option<u64>,
    /// A semaphore's taken slots and limit.
    pub slots: Option<(usize, u32)>,
    /// Waiters in the key's fair queue.
    pub queued: Option<usize>,
}

/// One waiter in a lock's fair queue, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedWaiter {
    /// 1 = next to get the lock.
    pub position: usize,
    /// The waiter's queue session.
    pub session: String,
    /// lockwrap's `{"hostname","pid","pod"?,"node"?}` of the waiter.
    pub holder: Option<Value>,
    /// When it joined the queue (UTC).
    pub since: Option<String>,
}

impl LockInfo {
    /// A short "who" for log lines: `host pid 123 (session abc…)`.
    pub fn holder_summary(&self) -> String {
        let who = self.holder.as_ref().and_then(|h| {
            let host = h.get("pod").or_else(|| h.get("hostname"))?.as_str()?;
            let pid = h.get("pid").and_then(Value::as_u64);
            Some(match pid {
                Some(pid) => format!("{host} pid {pid}"),
                None => host.to_string(),
            })
        });
        match (who, &self.session) {
            (Some(who), Some(s)) => format!("{who} (session {s})"),
            (Some(who), None) => who,
            (None, Some(s)) => format!("session {s}"),
            (None, None) => "nobody".to_string(),
        }
    }
}

/// Why a held lock stopped being ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// Another session holds the key now.
    HolderChanged(String),
    /// The key was deleted.
    KeyDeleted,
    /// The session was destroyed or invalidated (renew answered 404).
    SessionInvalidated,
    /// No successful renew for so long that the session may expire before the child could be
    /// stopped: the local lease deadline passed.
    LeaseDeadline,
    /// Watching the key failed more often than `--monitor-retry` allows.
    ConsulUnreachable(String),
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::HolderChanged(s) => write!(f, "the key is now held by session {s}"),
            LossReason::KeyDeleted => f.write_str("the key was deleted"),
            LossReason::SessionInvalidated => f.write_str("the session was invalidated"),
            LossReason::LeaseDeadline => {
                f.write_str("no successful renew before the local lease deadline")
            }
            LossReason::ConsulUnreachable(e) => write!(f, "Consul unreachable: {e}"),
        }
    }
}

/// The answer to an acquire.
#[derive(Debug)]
pub enum Acquired<L> {
    /// The lock is ours.
    Held(L),
    /// Someone else holds it and the request said not to wait (their info, if readable).
    Locked(Option<LockInfo>),
    /// `timeout` passed.
    TimedOut,
    /// The stop token fired while waiting.
    Cancelled,
}

/// Side effects around acquire attempts (the `--on-before-lock` / `--on-already-locked`
/// hooks); the backend calls them, the caller decides what they do.
pub trait AcquireObserver: Send + Sync {
    /// Called before every acquire attempt on `key` (`--on-before-lock`).
    fn before_attempt<'a>(&'a self, _key: &'a str) -> futures_lite::future::Boxed<()> {
        Box::pin(async {})
    }
    /// Called after an attempt found `key` held by `holder` (`--on-already-locked`).
    fn already_locked<'a>(
        &'a self,
        _key: &'a str,
        _holder: Option<&'a LockInfo>,
    ) -> futures_lite::future::Boxed<()> {
        Box::pin(async {})
    }
}

/// An observer that does nothing.
pub struct NoObserver;
impl AcquireObserver for NoObserver {}

/// The operations a lock store offers; the library API (`LockManager`) is written against it.
#[allow(async_fn_in_trait)]
pub trait LockBackend {
    /// A held lock: reports loss and releases.
    type Lease: HeldLock;

    /// Takes the lock as `request` says, reporting attempts to `observer`; `stop` ends the wait
    /// with [`Acquired::Cancelled`], leaving nothing behind in the store.
    async fn acquire(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Acquired<Self::Lease>, BackendError>;

    /// The current holder of `key` (`None` when absent or unheld).
    async fn find(&self, key: &str, layout: Layout) -> Result<Option<LockInfo>, BackendError>;

    /// Every key under `prefix` with its holder (`None` when unheld).
    async fn list(
        &self,
        prefix: &str,
        layout: Layout,
    ) -> Result<Vec<(String, Option<LockInfo>)>, BackendError>;

    /// Forces `key` free whoever holds it; returns whether it was held.
    async fn release(&self, key: &str, layout: Layout) -> Result<bool, BackendError>;

    /// Whom a contender for `request` waits for now (for log lines; best effort).
    async fn waiting_for(&self, request: &LockRequest) -> Result<WaitingFor, BackendError> {
        Ok(WaitingFor {
            holder: self.find(&request.key, request.layout).await?,
            ..WaitingFor::default()
        })
    }
}

/// A lock this process holds.
#[allow(async_fn_in_trait)]
pub trait HeldLock {
    /// What was written when the lock was taken (session, fencing token, holder).
    fn info(&self) -> &LockInfo;
    /// Resolves when the lock is lost (never, while it is held).
    async fn lost(&mut self) -> LossReason;
    /// Releases the lock and destroys the session (and check) it created.
    async fn release(self) -> Result<(), BackendError>;
    /// False when the previous holder did not release cleanly (key deleted, session expired or
    /// destroyed, forced unlock, state lost): its command may still be stopping, so the
    /// takeover delay applies (docs/timing.md).
    fn previous_release_clean(&self) -> bool {
        true
    }
    /// How long to hold before starting anything: nothing after a clean release; otherwise the
    /// longer of `own` and the takeover delay the previous holder announced in the lock's value
    /// (a rollout that lowers the kill grace must still wait for the old, slower command).
    fn takeover_delay(&self, own: std::time::Duration) -> std::time::Duration {
        if self.previous_release_clean() {
            std::time::Duration::ZERO
        } else {
            own
        }
    }
    /// Whether [`HeldLock::release`] may tell the next holder that this release was clean
    /// (default: yes). Cleared while a takeover wait is still owed and when something the
    /// command started could not be stopped: the next holder then waits its takeover delay.
    fn set_release_clean(&mut self, _clean: bool) {}
    /// The hold's local stop deadline, updated on every accepted renew or check pass (`None`:
    /// this lease has none, e.g. CLI `lock`). The supervisor hands it to its guardian process.
    fn stop_deadline(&self) -> Option<tokio::sync::watch::Receiver<Option<std::time::Instant>>> {
        None
    }
    /// Stops watching and keeps the lock held on purpose (CLI `lock`).
    fn detach(self) -> LockInfo;
}
