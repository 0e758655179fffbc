//! The library API, the same operations as the CLI (consullock's `ConsulLockManager`):
//! acquire (a guard that releases), find, find_regex, release, release_all, release_regex,
//! execute.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockwrap::Error> {
//! use lockwrap::{HeldLock, LockManager};
//! let manager = LockManager::from_env()?;
//! let lease = manager.acquire("my/lock").await?;   // blocks until held
//! // ... work while holding it; `lease.lost()` resolves if it is lost ...
//! lease.release().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regex::Regex;
use tokio_util::sync::CancellationToken;

use crate::backend::consul::{ConsulBackend, ConsulClient, ConsulSettings};
use crate::backend::{
    AcquireObserver, Acquired, HeldLock, Layout, LockBackend, LockInfo, LockRequest, LossReason,
    NoObserver,
};
use crate::exit::ErrorKind;
use crate::key;
use crate::supervisor::{Child, CommandSpec, Guardian, Spawner};

mod error;
pub(crate) mod hold;

pub use error::Error;
use hold::{HoldEnd, NoInterrupts, NotStarted, Unobserved};

/// What the library's operations return.
type Result<T, E = Error> = std::result::Result<T, E>;

/// Lock operations against one lock store.
pub struct LockManager<B: LockBackend = ConsulBackend> {
    backend: B,
    layout: Layout,
}

impl LockManager<ConsulBackend> {
    /// A manager for the Consul agent named by `CONSUL_HTTP_ADDR` and friends (README, "Consul connection").
    pub fn from_env() -> Result<Self> {
        let settings = ConsulSettings::from_env()
            .map_err(|e| Error::settings(ErrorKind::InvalidEnvironment, e))?;
        Self::connect(&settings)
    }

    /// A manager for the Consul agent `settings` describe (the CLI's connection settings, built
    /// by hand). Fails only on settings that cannot make a client (unreadable TLS files, a bad
    /// address); Consul itself is first contacted by an operation.
    pub fn connect(settings: &ConsulSettings) -> Result<Self> {
        let client = ConsulClient::new(settings)
            .map_err(|e| Error::settings(ErrorKind::InvalidArgument, e))?;
        Ok(Self::new(ConsulBackend::new(client)))
    }
}

impl<B: LockBackend> LockManager<B> {
    /// A manager over any [`LockBackend`], with the default key layout.
    pub fn new(backend: B) -> Self {
        LockManager {
            backend,
            layout: Layout::Default,
        }
    }

    /// Use HashiCorp `consul lock`'s layout (`<prefix>/.lock`) for every operation.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// Blocks until `key` is held, with default settings (renewed session, TTL 15 s).
    pub async fn acquire(&self, key: &str) -> Result<B::Lease> {
        let mut request = LockRequest::new(key);
        request.layout = self.layout;
        match self
            .acquire_with(&request, &NoObserver, &CancellationToken::new())
            .await?
        {
            Acquired::Held(lease) => Ok(lease),
            Acquired::Locked(_) => Err(Error::new(ErrorKind::Locked, format!("{key} is locked"))),
            Acquired::TimedOut => Err(Error::new(
                ErrorKind::Timeout,
                format!("timed out acquiring {key}"),
            )),
            Acquired::Cancelled => Err(Error::new(
                ErrorKind::Timeout,
                format!("cancelled acquiring {key}"),
            )),
        }
    }

    /// Acquire with every option: blocking mode, timeout, session settings, hooks, and a stop
    /// token that aborts the wait (the session is destroyed, nothing is left in the store).
    pub async fn acquire_with(
        &self,
        request: &LockRequest,
        observer: &dyn AcquireObserver,
        stop: &CancellationToken,
    ) -> Result<Acquired<B::Lease>> {
        key::validate(&request.key)?;
        // A request the timing model cannot keep is refused before anything reaches Consul.
        request
            .timing_plan()
            .map_err(|unsafe_plan| Error::new(ErrorKind::InvalidArgument, unsafe_plan.message))?;
        // A takeover wait cut short by a loss is still owed after the next acquisition.
        let mut owed_until: Option<Instant> = None;
        loop {
            let acquired = self
                .backend
                .acquire(request, observer, stop)
                .await
                .map_err(|e| Error::backend(format!("acquiring {}", request.key), e))?;
            let Acquired::Held(mut lease) = acquired else {
                return Ok(acquired);
            };
            match takeover_wait(request, &mut lease, stop, &mut owed_until).await {
                None => return Ok(Acquired::Held(lease)),
                Some(end) => {
                    // Nothing was started: give the lock back without the clean marker, so the
                    // next holder still waits for the previous holder's command.
                    if let Err(err) = lease.release().await {
                        tracing::warn!(%err, "releasing the lock after the takeover wait failed");
                    }
                    match end {
                        TakeoverEnd::Cancelled => return Ok(Acquired::Cancelled),
                        TakeoverEnd::Lost(reason) => {
                            tracing::info!(%reason, "lock lost during the takeover wait; waiting again");
                        }
                    }
                }
            }
        }
    }

    /// The holder of `key`, or `None` when it is not locked.
    pub async fn find(&self, key: &str) -> Result<Option<LockInfo>> {
        key::validate(key)?;
        self.backend
            .find(key, self.layout)
            .await
            .map_err(|e| Error::backend_quiet(format!("reading {key}"), e))
    }

    /// Every key whose whole name matches `pattern`, with its holder (`None` = not locked).
    /// Only the regex's literal prefix is listed from the store.
    pub async fn find_regex(&self, pattern: &str) -> Result<BTreeMap<String, Option<LockInfo>>> {
        let regex = whole_match(pattern)?;
        let prefix = literal_prefix(pattern);
        let found = self
            .backend
            .list(&prefix, self.layout)
            .await
            .map_err(|e| Error::backend_quiet(format!("listing keys under {prefix:?}"), e))?;
        Ok(found
            .into_iter()
            .filter(|(k, _)| regex.is_match(k))
            .collect())
    }

    /// Forces `key` free; returns whether it was locked.
    pub async fn release(&self, key: &str) -> Result<bool> {
        key::validate(key)?;
        self.backend
            .release(key, self.layout)
            .await
            .map_err(|e| Error::backend_quiet(format!("releasing {key}"), e))
    }

    /// Releases each key; returns the ones that were locked.
    pub async fn release_all<I, S>(&self, keys: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut released = Vec::new();
        for key in keys {
            if self.release(key.as_ref()).await? {
                released.push(key.as_ref().to_string());
            }
        }
        Ok(released)
    }

    /// Releases every locked key whose whole name matches `pattern`; sorted.
    pub async fn release_regex(&self, pattern: &str) -> Result<Vec<String>> {
        let locked: Vec<String> = self
            .find_regex(pattern)
            .await?
            .into_iter()
            .filter(|(_, info)| info.is_some())
            .map(|(k, _)| k)
            .collect();
        let mut released = self.release_all(locked).await?;
        released.sort();
        Ok(released)
    }

    /// Runs `shell` (`/bin/sh -c`) while holding `key`; returns its exit code (128+N when
    /// killed by signal N). The command runs in its own process group through the supervisor's
    /// `spawner` (from [`crate::supervisor::install`]`(true)`, called once before the runtime
    /// starts: it forks the guardian and makes this process a subreaper; refused otherwise),
    /// like `lockwrap execute`: if the lock is lost its whole group is stopped (SIGTERM, the
    /// request's kill grace, SIGKILL) before this returns an error of kind `LockLost`, and
    /// nothing it started outlives the lock. One `execute` at a time per process: a second one
    /// while another runs is refused (the guardian guards one command).
    pub async fn execute(&self, key: &str, shell: &str, spawner: &Spawner) -> Result<i32>
    where
        B::Lease: Send,
    {
        let grace = LockRequest::new(key).hold.kill_grace;
        // Without the guardian a stalled host keeps its command past the lock's deadline, and
        // without the subreaper a stop cannot find escaped processes: refuse before anything
        // changes in Consul (docs/timing.md, "The stalled wrapper: the guardian").
        let guardian = spawner.guardian();
        if guardian.pid().is_none() {
            return Err(Error::new(
                ErrorKind::Internal,
                "LockManager::execute needs the guardian: call lockwrap::supervisor::install(true) \
                 before the async runtime starts"
                    .to_string(),
            ));
        }
        // Refused before anything changes in Consul, like a missing guardian.
        let Some(claim) = hold::OneCommand::claim() else {
            return Err(Error::new(
                ErrorKind::Internal,
                "LockManager::execute runs one command at a time per process (its guardian \
                 guards one); wait for the other execute to return"
                    .to_string(),
            ));
        };
        let mut lease = self.acquire(key).await?;
        let mut spec = CommandSpec::new("/bin/sh");
        spec.args = vec!["-c".into(), shell.into()];
        spec.env = hold::command_env(key, lease.info());
        let command = match hold::start(&mut lease, spawner, &spec).await {
            Ok(command) => command,
            Err(not_started) => {
                let _ = lease.release().await;
                return Err(not_started_error(key, not_started));
            }
        };
        // Declared after the lease, so dropped before it if the caller drops this future: the
        // command's stop starts before the lease's drop destroys the session.
        let mut running = Unfinished {
            command: None,
            guardian: guardian.clone(),
            grace,
            claim: Some(claim),
        };
        let command = running.command.insert(command);
        let end = hold::hold(
            &mut lease,
            command,
            Some(&guardian),
            &mut NoInterrupts,
            &Unobserved,
            grace,
        )
        .await;
        // The hold stopped the command's tree: nothing is left for the drop guard to do.
        running.command = None;
        let released = hold::release_after(lease, &end).await;
        executed(key, end, released)
    }
}

/// The error of an `execute` whose command never started: the lock was lost first, or the
/// command could not be spawned (127: not found, as a shell says).
fn not_started_error(key: &str, not_started: NotStarted) -> Error {
    match not_started {
        NotStarted::Lost(reason) => Error::new(
            ErrorKind::LockLost,
            format!("lock {key} lost before the command started ({reason})"),
        ),
        NotStarted::Spawn(err) => {
            let kind = if err.exit_code() == 127 {
                ErrorKind::CommandNotFound
            } else {
                ErrorKind::NotExecutable
            };
            Error::new(kind, err.to_string())
        }
    }
}

/// What an `execute` whose command ran returns, once the hold has ended and the lock has been
/// given back (`released`): the command's exit code, or an error when the lock was lost or a
/// process of the command survived.
fn executed(
    key: &str,
    end: HoldEnd,
    released: std::result::Result<(), crate::backend::BackendError>,
) -> Result<i32> {
    match end {
        HoldEnd::Lost { reason, status, .. } => Err(Error::new(
            ErrorKind::LockLost,
            format!("lock {key} lost while the command ran ({reason}); it was stopped ({status})"),
        )),
        // Without signals the hold ends only by the command's exit or a loss.
        HoldEnd::Exited { status, tree_gone }
        | HoldEnd::Interrupted {
            status, tree_gone, ..
        } => {
            // As `lockwrap execute`: the command's code is the answer. A release Consul did
            // not take (an agent down) leaves the session to its TTL; the next holder waits
            // its takeover delay, as after any unclean release (docs/timing.md).
            if let Err(err) = released {
                tracing::warn!(%err, "releasing the lock failed; the session ends with its TTL");
            }
            if !tree_gone {
                // Something survived: the next holder must wait (docs/timing.md).
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("lock {key} released, but a process of the command survived SIGKILL"),
                ));
            }
            Ok(status.code())
        }
    }
}

/// A library `execute`'s command while its hold runs. If the caller drops the `execute` future
/// meanwhile (a timeout, a `select!`), the command must not outlive the lock: the guardian is told
/// the stop has begun (it kills the tree at grace + lag if nothing else does), the tree is stopped
/// (TERM, grace, KILL) in a task of its own, and the one-command claim is kept until then. The
/// lease's own drop destroys the session without the clean marker, so the next holder waits its
/// takeover delay, which covers the grace.
struct Unfinished {
    command: Option<Child>,
    guardian: Guardian,
    grace: Duration,
    claim: Option<hold::OneCommand>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(mut command) = self.command.take() else {
            return;
        };
        // TERM now, whether or not the task below ever runs (a runtime shutting down drops it
        // unpolled); the guardian kills what is left at grace + lag.
        self.guardian.stopping(self.grace);
        let _ = command.signal_group(crate::supervisor::Signal::TERM);
        let (guardian, grace) = (self.guardian.clone(), self.grace);
        // The claim is kept until the stop is over, or past the guardian's own kill if the task
        // never runs: a new `execute` meanwhile would take the guardian over from this one.
        let (stopped, wait_stopped) = std::sync::mpsc::channel::<()>();
        if let Some(claim) = self.claim.take() {
            let limit = grace + crate::supervisor::guardian::GUARDIAN_LAG + Duration::from_secs(3);
            let keeper = std::thread::Builder::new()
                .name("lockwrap-execute-drop".into())
                .spawn(move || {
                    let since = std::time::Instant::now();
                    if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                        wait_stopped.recv_timeout(limit)
                    {
                        std::thread::sleep(limit.saturating_sub(since.elapsed()));
                    }
                    drop(claim);
                });
            if keeper.is_err() {
                tracing::warn!("cannot start the thread that keeps the execute claim");
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // The group had its TERM above; the rest of the tree gets it now.
                let _ = command.stop_after(None, grace).await;
                guardian.disarm();
                let _ = stopped.send(());
            });
        }
    }
}

/// Why a takeover wait ended before its time.
enum TakeoverEnd {
    Cancelled,
    Lost(LossReason),
}

/// After taking over from a holder that did not release cleanly, holds the lock for the
/// takeover delay before the caller may start anything, so the previous holder's command has
/// time to stop (docs/timing.md). While the wait is owed the lease may not be released as
/// clean. A request that supervises nothing (CLI `lock`) waits only what the previous holder
/// announced. Returns `None` once the wait is over; the stop token or a loss end it early.
async fn takeover_wait<L: HeldLock>(
    request: &LockRequest,
    lease: &mut L,
    stop: &CancellationToken,
    owed_until: &mut Option<Instant>,
) -> Option<TakeoverEnd> {
    let own = if request.hold.keep_alive {
        request.hold.takeover_delay
    } else {
        Duration::ZERO
    };
    let still_owed = owed_until.map_or(Duration::ZERO, |until| {
        until.saturating_duration_since(Instant::now())
    });
    let delay = lease.takeover_delay(own).max(still_owed);
    if delay.is_zero() {
        return None;
    }
    *owed_until = Some(Instant::now() + delay);
    lease.set_release_clean(false);
    tracing::info!(
        event = "takeover-wait",
        delay = ?delay,
        "the previous holder did not release cleanly; waiting before taking over"
    );
    let end = tokio::select! {
        // A loss wins over the end of the wait: a wrapper frozen through its wait must not start.
        biased;
        reason = lease.lost() => Some(TakeoverEnd::Lost(reason)),
        _ = stop.cancelled() => Some(TakeoverEnd::Cancelled),
        _ = tokio::time::sleep(delay) => None,
    };
    if end.is_some() {
        return end;
    }
    if let Some(reason) = lost_already(lease).await {
        return Some(TakeoverEnd::Lost(reason));
    }
    lease.set_release_clean(true);
    None
}

/// Whether `lease` is already lost, or its stop deadline has passed (the wrapper was frozen and
/// its renew task has not declared the loss yet): then nothing may be started under it.
pub(crate) async fn lost_already<L: HeldLock>(lease: &mut L) -> Option<LossReason> {
    if let Some(reason) = futures_lite::future::poll_once(lease.lost()).await {
        return Some(reason);
    }
    let expired = lease
        .stop_deadline()
        .is_some_and(|deadline| deadline.borrow().is_some_and(|d| d <= Instant::now()));
    expired.then_some(LossReason::LeaseDeadline)
}

/// `pattern` anchored at both ends, so it must match the whole key (consullock semantics).
pub(crate) fn whole_match(pattern: &str) -> crate::exit::Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        crate::exit::Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "invalid regular expression {pattern:?}: {}",
                one_line(&e.to_string())
            ),
        )
    })
}

/// regex's errors draw a caret diagram over several lines; keep the `error:` line.
fn one_line(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The literal text every match of `pattern` starts with; listing only under it keeps
/// `unlock -r` from reading the whole KV store.
pub(crate) fn literal_prefix(pattern: &str) -> String {
    let body = pattern.strip_prefix('^').unwrap_or(pattern);
    let mut prefix = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if "\\.^$*+?()[]{}|".contains(c) {
            break;
        }
        // A quantifier makes the previous character optional or repeated.
        if matches!(chars.peek(), Some('*' | '?' | '{')) {
            break;
        }
        prefix.push(c);
    }
    // An alternation anywhere means no common literal prefix is guaranteed.
    if pattern.contains('|') {
        return String::new();
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("my/.*"), "my/");
        assert_eq!(literal_prefix("^a/b[0-9]"), "a/b");
        assert_eq!(literal_prefix("a/bc?"), "a/b");
        assert_eq!(literal_prefix("a|b"), "");
        assert_eq!(literal_prefix(".*"), "");
        assert_eq!(literal_prefix("x\\.y"), "x");
    }

    #[test]
    fn whole_key_must_match() {
        let re = whole_match("a/b.*").unwrap();
        assert!(re.is_match("a/bc"));
        assert!(!re.is_match("x/a/bc"));
        assert!(whole_match("(").is_err());
        assert_eq!(whole_match("(").unwrap_err().kind.exit_code(), 3);
    }
}
