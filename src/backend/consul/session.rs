//! Creating and destroying the session that holds a lock, and the optional agent TTL check it
//! is bound to for fast failover (`--health-check-ttl`); no session is leaked: destroys are
//! retried, and creates whose outcome is unknown are found by name (docs/timing.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::api::{AgentCheck, SessionRequest};
use super::client::ConsulClient;
use super::value::Identity;
use crate::backend::retry::Backoff;
use crate::backend::timing::Cadence;
use crate::backend::{BackendError, Checks, SessionSettings};
use crate::duration;

/// A session this process created, with the check it registered (if any).
#[derive(Debug, Clone)]
pub struct OwnedSession {
    /// The session ID Consul gave.
    pub id: String,
    /// lockwrap's own TTL check and the task that keeps it passing.
    pub check: Option<CheckKeeper>,
    /// When the create request was sent: the first "renew" of the lease deadline.
    pub sent_at: Instant,
    /// The session's TTL (`None`: none): bounds how long a destroy is retried.
    pub ttl: Option<Duration>,
}

impl OwnedSession {
    /// How long a destroy is retried: one TTL (after that nobody renews the session and Consul
    /// expires it), or [`DESTROY_PATIENCE_WITHOUT_TTL`] (docs/timing.md, "Consul trouble").
    fn destroy_patience(&self) -> Duration {
        self.ttl.unwrap_or(DESTROY_PATIENCE_WITHOUT_TTL)
    }
}

/// What a dropped acquisition still owes Consul besides its session (a semaphore's contender
/// key); runs before the session's destroy.
pub(crate) type Leftover = Box<
    dyn FnOnce(
            ConsulClient,
            String,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// The session of an acquisition under way, until a lease takes it or the acquisition destroys
/// it. If the acquisition's future is dropped first (a timeout around a library call), the
/// session is destroyed in the background (after `leftover`), instead of being left to its TTL.
pub(crate) struct Pending {
    client: ConsulClient,
    pub(crate) session: Option<OwnedSession>,
    pub(crate) leftover: Option<Leftover>,
}

impl Pending {
    pub(crate) fn new(client: &ConsulClient) -> Pending {
        Pending {
            client: client.clone(),
            session: None,
            leftover: None,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(owned) = self.session.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let client = self.client.clone();
        let leftover = self.leftover.take();
        crate::backend::cleanup::spawn(async move {
            if let Some(leftover) = leftover {
                leftover(client.clone(), owned.id.clone()).await;
            }
            destroy(&client, &owned).await;
        });
    }
}

/// A session without TTL never expires, so its destroy is worth more patience than a TTL
/// session's; 30 s rides out a leader election with room to spare.
const DESTROY_PATIENCE_WITHOUT_TTL: Duration = Duration::from_secs(30);

/// Keeps lockwrap's TTL check passing from its registration until the session is destroyed
/// or the last clone of this handle is dropped, whatever phase the session is in (waiting out
/// a lock-delay, acquiring, holding): a check nobody passes would kill its own session
/// (docs/timing.md, "Health checks").
#[derive(Debug, Clone)]
pub struct CheckKeeper {
    pub id: String,
    /// Send time of the last pass the agent accepted (registration counts: it registers
    /// passing).
    pub last_pass: watch::Receiver<Instant>,
    stop: CancellationToken,
    _guard: Arc<DropGuard>,
}

impl CheckKeeper {
    fn start(client: ConsulClient, id: String, cadence: Cadence, registered_at: Instant) -> Self {
        let (tx, last_pass) = watch::channel(registered_at);
        let stop = CancellationToken::new();
        tokio::spawn(pass_loop(client, id.clone(), cadence, tx, stop.clone()));
        CheckKeeper {
            id,
            last_pass,
            stop: stop.clone(),
            _guard: Arc::new(stop.drop_guard()),
        }
    }

    /// Stops passing (the check then goes critical after its TTL unless deregistered).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Passes the check every `cadence.every` (retrying faster after a failure) and publishes the
/// send time of each pass the agent accepted. Logs once when passing starts failing and once
/// when it recovers.
async fn pass_loop(
    client: ConsulClient,
    id: String,
    cadence: Cadence,
    last_pass: watch::Sender<Instant>,
    stop: CancellationToken,
) {
    let mut next = *last_pass.borrow() + cadence.every;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let sent = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = client.check_pass(&id, cadence.request_timeout) => result,
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(check = %id, "health check passes again");
                    failing = false;
                }
                last_pass.send_replace(sent);
                next = sent + cadence.every;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(check = %id, %err, "could not mark the health check passing; retrying");
                    failing = true;
                }
                next = Instant::now() + cadence.retry_every;
            }
        }
    }
}

/// Creates a session per `settings`, its name announcing `takeover` (see `naming`); registers
/// the health check first when asked and keeps it passing at `pass` cadence from that moment on.
pub async fn create(
    client: &ConsulClient,
    key: &str,
    settings: &SessionSettings,
    identity: &Identity,
    pass: Option<Cadence>,
    takeover: Option<Duration>,
) -> Result<OwnedSession, BackendError> {
    let base = super::naming::session_name(
        settings.name.as_deref(),
        key,
        &identity.hostname,
        identity.pid,
        takeover,
    );
    // Unique per attempt, so an attempt whose outcome is unknown can be found again.
    let name = attempt_name(&base, attempt_nonce());
    let check = match settings.health_check_ttl {
        Some(ttl) => Some(register_check(client, key, identity, ttl, pass).await?),
        None => None,
    };
    let check_id = check.as_ref().map(|c| c.id.clone());
    let checks = session_checks(&settings.checks, check_id.as_deref());
    let request = SessionRequest {
        name: name.clone(),
        ttl: settings.ttl.map(duration::to_consul),
        lock_delay: duration::to_consul(settings.lock_delay),
        behavior: settings.behavior.as_str().to_string(),
        checks,
    };
    let sent_at = Instant::now();
    match client.session_create(&request).await {
        Ok(id) => {
            tracing::debug!(session = %id, key, "session created");
            if check_id.is_some() {
                // Housekeeping, off the path to starting the command.
                let client = client.clone();
                crate::backend::cleanup::spawn(async move { remove_dead_checks(&client).await });
            }
            // A leader answers again: look for earlier attempts now.
            lost::nudge();
            Ok(OwnedSession {
                id,
                check,
                sent_at,
                ttl: settings.ttl,
            })
        }
        Err(err) => {
            if err.is_transient() {
                // Sent, maybe applied, answer lost (a timeout, a leader lost while committing
                // it): the session may exist now or commit later under a new leader.
                outcome_unknown(client, name, settings.ttl);
            }
            if let Some(keeper) = &check {
                keeper.stop();
                let _ = client.check_deregister(&keeper.id).await;
            }
            Err(err)
        }
    }
}

/// Registers lockwrap's own TTL check for a session on `key` and keeps it passing at `pass`
/// cadence from the moment it is registered: it registers passing, and a check nobody passes
/// would kill its own session (docs/timing.md, "Health checks").
async fn register_check(
    client: &ConsulClient,
    key: &str,
    identity: &Identity,
    ttl: Duration,
    pass: Option<Cadence>,
) -> Result<CheckKeeper, BackendError> {
    let id = format!(
        "{CHECK_PREFIX}{}:{}:{}",
        identity.hostname,
        identity.pid,
        unique_suffix()
    );
    let registered_at = Instant::now();
    client
        .check_register(&id, &format!("lockwrap liveness for {key}"), ttl)
        .await?;
    let cadence = pass.unwrap_or_else(|| default_pass_cadence(ttl));
    Ok(CheckKeeper::start(
        client.clone(),
        id,
        cadence,
        registered_at,
    ))
}

/// The checks a session is bound to: the ones asked for, plus our own TTL check (`check_id`)
/// when there is one. `None` leaves the agent's default (`serfHealth`), which is named
/// explicitly once our check is added, since a list replaces the default.
fn session_checks(asked: &Checks, check_id: Option<&str>) -> Option<Vec<String>> {
    let mut checks = match asked {
        Checks::AgentDefault if check_id.is_some() => Some(vec!["serfHealth".to_string()]),
        Checks::AgentDefault => None,
        Checks::None => Some(Vec::new()),
        Checks::List(list) => Some(list.clone()),
    };
    if let Some(id) = check_id {
        checks.get_or_insert_with(Vec::new).push(id.to_string());
    }
    checks
}

/// Without a plan (a request that is not kept alive) pass at a third of the check's TTL.
fn default_pass_cadence(ttl: Duration) -> Cadence {
    Cadence {
        stop_after: ttl,
        every: ttl / 3,
        retry_every: (ttl / 6).max(Duration::from_millis(200)),
        request_timeout: (ttl / 3).min(Duration::from_secs(5)),
    }
}

/// Destroys the session and deregisters its check. One try inline; if Consul is not ready, the
/// check stops passing (so it goes critical and takes the session with it) and the destroy is
/// retried in the background like the holder's release, for up to one TTL (30 s without TTL),
/// where the exit waits for it (docs/timing.md, "Consul trouble"). Never waits itself.
pub async fn destroy(client: &ConsulClient, session: &OwnedSession) {
    match destroy_once(client, &session.id).await {
        Err(err) if err.is_transient() => {
            tracing::warn!(session = %session.id, %err, "could not destroy the session; retrying in the background");
            if let Some(check) = &session.check {
                check.stop();
            }
            let patience = session.destroy_patience();
            let (client, session) = (client.clone(), session.clone());
            crate::backend::cleanup::spawn_within(patience, async move {
                destroy_within(&client, &session, patience).await
            });
        }
        result => {
            match result {
                Ok(()) => tracing::debug!(session = %session.id, "session destroyed"),
                Err(err) => {
                    tracing::warn!(session = %session.id, %err, "could not destroy session; it expires with its TTL")
                }
            }
            deregister_check(client, session).await;
        }
    }
}

/// Destroys the session, retrying transient failures (no leader, agent restarting) with the
/// project's back-off for up to `patience`, so a key is not left held by a dead session; then
/// deregisters the check. A session that outlives `patience` expires with its TTL.
pub(crate) async fn destroy_within(
    client: &ConsulClient,
    session: &OwnedSession,
    patience: Duration,
) {
    let what = format!("destroying session {}", session.id);
    match retry_within(&what, patience, || destroy_once(client, &session.id)).await {
        Ok(()) => tracing::debug!(session = %session.id, "session destroyed"),
        Err(err) => {
            tracing::warn!(session = %session.id, %err, "could not destroy session; it expires with its TTL")
        }
    }
    deregister_check(client, session).await;
}

/// One destroy request. A session Consul no longer knows (404, "invalid session") is as good
/// as destroyed.
async fn destroy_once(client: &ConsulClient, id: &str) -> Result<(), BackendError> {
    match client.session_destroy(id).await {
        Err(BackendError::SessionGone(_)) => Ok(()),
        other => other,
    }
}

/// Runs `op` until it succeeds, fails for good, or transient failures have lasted `patience`;
/// pauses with [`Backoff`] (docs/timing.md, "Consul trouble").
async fn retry_within<F, Fut>(what: &str, patience: Duration, mut op: F) -> Result<(), BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BackendError>>,
{
    let give_up = Instant::now() + patience;
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(()) => {
                backoff.succeeded(what);
                return Ok(());
            }
            Err(err) if err.is_transient() => {
                let pause = backoff.failed(what, &err);
                if Instant::now() + pause >= give_up {
                    return Err(err);
                }
                tokio::time::sleep(pause).await;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn deregister_check(client: &ConsulClient, session: &OwnedSession) {
    if let Some(check) = &session.check {
        // Stop passing first: a check that stays registered must go critical.
        check.stop();
        if let Err(err) = client.check_deregister(&check.id).await {
            tracing::warn!(check = %check.id, %err, "could not deregister health check");
        }
    }
}

/// The name a create attempt sends: the user's `--session-name` or lockwrap's default, then a
/// marker unique to the attempt (README, "Options"), so an attempt whose outcome is unknown
/// can be found again by its name and destroyed.
fn attempt_name(base: &str, nonce: u64) -> String {
    format!("{base} [attempt {nonce:016x}]")
}

/// 64 random bits: names of attempts on every host must not collide, since a match is
/// destroyed. The clock is mixed in against two processes starting from the same seed.
fn attempt_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    fastrand::u64(..) ^ nanos.rotate_left(32) ^ u64::from(std::process::id())
}

/// How long a create whose outcome is unknown is looked for: it can commit after the first
/// lookup, under a new leader, within seconds of the request (the agent holds a request for a
/// leader for a few seconds); twice the TTL, at least 30 s and at most 3 minutes.
fn lookup_window(ttl: Option<Duration>) -> Duration {
    ttl.map_or(LOOKUP_MAX, |ttl| (ttl * 2).clamp(LOOKUP_MIN, LOOKUP_MAX))
}

/// A short TTL still gets a leader election's worth of looking (elections take seconds).
const LOOKUP_MIN: Duration = Duration::from_secs(30);
/// A create left in flight commits within seconds or not at all; three minutes is far past
/// that, and caps the looking for sessions without TTL (which would never expire).
const LOOKUP_MAX: Duration = Duration::from_secs(180);
/// Between lookups: a late commit is destroyed within seconds, and one `session/list` per
/// round costs the servers little.
const LOOKUP_EVERY: Duration = Duration::from_secs(2);
/// The look on the way out: well inside the 3 s `main` gives every cleanup.
const LAST_LOOK: Duration = Duration::from_secs(1);

/// Records a create attempt named `name` whose outcome is unknown: it is looked for (by name)
/// and destroyed in the background until [`lookup_window`] has passed, or the process exits.
#[doc(hidden)]
pub fn outcome_unknown(client: &ConsulClient, name: String, ttl: Option<Duration>) {
    tracing::debug!(
        name,
        "a session create's outcome is unknown; looking for it"
    );
    lost::record(lost::Lost {
        name,
        client: client.clone(),
        until: Instant::now() + lookup_window(ttl),
    });
}

/// The create attempts whose outcome is unknown, and the one background task that looks for
/// them (one `session/list` per round for all of them, however many attempts failed).
mod lost {
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use tokio::sync::Notify;

    use super::{
        destroy_once, retry_within, DESTROY_PATIENCE_WITHOUT_TTL, LAST_LOOK, LOOKUP_EVERY,
    };
    use crate::backend::consul::client::ConsulClient;
    use crate::backend::retry::Backoff;

    pub(super) struct Lost {
        pub(super) name: String,
        pub(super) client: ConsulClient,
        pub(super) until: Instant,
    }

    #[derive(Default)]
    struct Pending {
        lost: Vec<Lost>,
        looking: bool,
    }

    fn pending() -> &'static Mutex<Pending> {
        static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
        PENDING.get_or_init(Mutex::default)
    }

    fn wake() -> &'static Notify {
        static WAKE: OnceLock<Notify> = OnceLock::new();
        WAKE.get_or_init(Notify::new)
    }

    pub(super) fn record(lost: Lost) {
        let mut pending = pending().lock().unwrap_or_else(|e| e.into_inner());
        pending.lost.push(lost);
        if !pending.looking {
            pending.looking = true;
            crate::backend::cleanup::spawn(look());
        }
    }

    /// Looks now rather than at the next round (a create just succeeded: a leader is back).
    pub(super) fn nudge() {
        wake().notify_one();
    }

    /// One round per [`LOOKUP_EVERY`] while anything is pending; a last round when the process
    /// starts exiting.
    async fn look() {
        /// A looker dropped with its runtime (a library user's runtime that ends) lets the
        /// next record start another.
        struct Looking;
        impl Drop for Looking {
            fn drop(&mut self) {
                pending().lock().unwrap_or_else(|e| e.into_inner()).looking = false;
            }
        }
        let looking = Looking;
        rounds().await;
        // Ended by itself: `rounds` cleared the flag under the lock.
        std::mem::forget(looking);
    }

    async fn rounds() {
        let closing = crate::backend::cleanup::closing();
        let mut backoff = Backoff::default();
        loop {
            let last = closing.is_cancelled();
            let round: Vec<(String, ConsulClient)> = {
                let mut pending = pending().lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                pending.lost.retain(|l| l.until > now);
                let round = pending
                    .lost
                    .iter()
                    .map(|l| (l.name.clone(), l.client.clone()))
                    .collect::<Vec<_>>();
                if round.is_empty() || last {
                    pending.lost.clear();
                    pending.looking = false;
                }
                round
            };
            if round.is_empty() {
                return;
            }
            let what = "looking for session creates with an unknown outcome";
            if last {
                // The exit should not wait on an agent that is not answering: one short look
                // if it was, else the sessions expire with their TTL.
                if backoff.in_outage()
                    || !matches!(
                        tokio::time::timeout(LAST_LOOK, look_once(&round)).await,
                        Ok(Ok(()))
                    )
                {
                    tracing::warn!(
                        "exiting with session creates of unknown outcome not found; \
                         such a session expires with its TTL"
                    );
                }
                return;
            }
            let pause = match look_once(&round).await {
                Ok(()) => {
                    backoff.succeeded(what);
                    LOOKUP_EVERY
                }
                Err(err) => backoff.failed(what, &err).max(LOOKUP_EVERY),
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wake().notified() => {}
                _ = closing.cancelled() => {}
            }
        }
    }

    /// Lists the sessions of every agent in `round` once and destroys those named like a lost
    /// attempt. Keeps the names: the same attempt can still commit again after a retry.
    async fn look_once(
        round: &[(String, ConsulClient)],
    ) -> Result<(), crate::backend::BackendError> {
        let mut result = Ok(());
        let mut listed: Vec<&str> = Vec::new();
        for (_, client) in round {
            if listed.contains(&client.base.as_str()) {
                continue;
            }
            listed.push(client.base.as_str());
            let sessions = match client.session_list().await {
                Ok(sessions) => sessions,
                Err(err) => {
                    result = Err(err);
                    continue;
                }
            };
            let names: Vec<&str> = round
                .iter()
                .filter(|(_, c)| c.base == client.base)
                .map(|(name, _)| name.as_str())
                .collect();
            for found in sessions.iter().filter(|s| names.contains(&s.name.as_str())) {
                let what = format!(
                    "destroying session {} left by a create with an unknown outcome",
                    found.id
                );
                match retry_within(&what, DESTROY_PATIENCE_WITHOUT_TTL, || {
                    destroy_once(client, &found.id)
                })
                .await
                {
                    Ok(()) => {
                        tracing::info!(session = %found.id, name = %found.name, "destroyed a session left by a create with an unknown outcome")
                    }
                    Err(err) => {
                        tracing::warn!(session = %found.id, %err, "could not destroy a session left by a create with an unknown outcome");
                        result = Err(err);
                    }
                }
            }
        }
        result
    }
}

/// Prefix of the IDs of the checks lockwrap registers.
const CHECK_PREFIX: &str = "lockwrap:";

/// Whether `err` is Consul's "Missing check '…' registration" for a check neither lockwrap nor
/// the agent registers (a user-named check, most likely a typo). Our own checks and the agent's
/// `serfHealth` are only briefly unknown to the servers (an agent that has just started, a check
/// not yet synced), so those are retried as long as any transient error.
pub(crate) fn names_foreign_missing_check(err: &BackendError) -> bool {
    match err {
        BackendError::Transient(message) => {
            message.contains("Missing check '")
                && !message.contains(&format!("Missing check '{CHECK_PREFIX}"))
                && !message.contains("Missing check 'serfHealth'")
        }
        _ => false,
    }
}

/// Deregisters lockwrap checks left critical on the agent by holders that died without
/// cleaning up (`kill -9`, OOM kill, node reboot). A critical check is of no use to anyone:
/// Consul has already invalidated every session bound to it, and a live owner that recovers
/// creates a new session with a new check (ours was registered passing). Best effort: an ACL
/// token that may not do this just leaves them.
async fn remove_dead_checks(client: &ConsulClient) {
    let checks = match client.agent_checks().await {
        Ok(checks) => checks,
        Err(err) => {
            tracing::debug!(%err, "could not list agent checks; stale ones stay");
            return;
        }
    };
    for check in checks.iter().filter(|c| is_dead_lockwrap_check(c)) {
        match client.check_deregister(&check.check_id).await {
            Ok(()) => {
                tracing::info!(check = %check.check_id, "removed a dead holder's critical health check")
            }
            Err(err) => {
                tracing::debug!(check = %check.check_id, %err, "could not remove stale check")
            }
        }
    }
}

fn is_dead_lockwrap_check(check: &AgentCheck) -> bool {
    check.check_id.starts_with(CHECK_PREFIX) && check.status == "critical"
}

/// Enough randomness to keep check IDs of quickly restarted processes apart.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{nanos:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: &str) -> AgentCheck {
        AgentCheck {
            check_id: id.to_string(),
            status: status.to_string(),
        }
    }

    #[test]
    fn attempt_names_keep_the_base_and_differ_per_attempt() {
        let name = attempt_name("lockwrap jobs/x on h pid 7", 0xab);
        assert_eq!(
            name,
            "lockwrap jobs/x on h pid 7 [attempt 00000000000000ab]"
        );
        let user = attempt_name("my session", attempt_nonce());
        assert!(user.starts_with("my session [attempt "));
        let nonces: std::collections::HashSet<u64> = (0..1000).map(|_| attempt_nonce()).collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn lost_creates_are_looked_for_twice_the_ttl_within_bounds() {
        assert_eq!(lookup_window(Some(Duration::from_secs(5))), LOOKUP_MIN);
        assert_eq!(
            lookup_window(Some(Duration::from_secs(40))),
            Duration::from_secs(80)
        );
        assert_eq!(lookup_window(Some(Duration::from_secs(600))), LOOKUP_MAX);
        assert_eq!(lookup_window(None), LOOKUP_MAX);
    }

    #[test]
    fn destroy_is_retried_for_one_ttl_or_thirty_seconds() {
        let session = |ttl| OwnedSession {
            id: "s".into(),
            check: None,
            sent_at: Instant::now(),
            ttl,
        };
        assert_eq!(
            session(Some(Duration::from_secs(15))).destroy_patience(),
            Duration::from_secs(15)
        );
        assert_eq!(session(None).destroy_patience(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_patience_and_on_lasting_errors() {
        let mut tries = 0;
        let result = retry_within("test", Duration::from_secs(2), || {
            tries += 1;
            async { Err(BackendError::Transient("No cluster leader".into())) }
        })
        .await;
        assert!(result.is_err());
        assert!(tries > 2, "retried {tries} times");

        let mut tries = 0;
        let result = retry_within("test", Duration::from_secs(2), || {
            tries += 1;
            let answer = if tries < 3 {
                Err(BackendError::Transient("No cluster leader".into()))
            } else {
                Ok(())
            };
            async move { answer }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(tries, 3);

        let mut tries = 0;
        let result = retry_within("test", Duration::from_secs(2), || {
            tries += 1;
            async { Err(BackendError::Denied("Permission denied".into())) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }

    #[test]
    fn missing_checks_of_lockwrap_and_the_agent_are_transient() {
        let missing = |id: &str| {
            BackendError::Transient(format!(
                "Consul answered 500: Missing check '{id}' registration"
            ))
        };
        assert!(!names_foreign_missing_check(&missing("serfHealth")));
        assert!(!names_foreign_missing_check(&missing("lockwrap:h:1:ab")));
        assert!(names_foreign_missing_check(&missing("my-typo")));
    }

    #[test]
    fn only_critical_lockwrap_checks_are_dead() {
        assert!(is_dead_lockwrap_check(&check(
            "lockwrap:h:1:ab",
            "critical"
        )));
        assert!(!is_dead_lockwrap_check(&check(
            "lockwrap:h:1:ab",
            "passing"
        )));
        assert!(!is_dead_lockwrap_check(&check(
            "lockwrap:h:1:ab",
            "warning"
        )));
        assert!(!is_dead_lockwrap_check(&check("service:web", "critical")));
        assert!(!is_dead_lockwrap_check(&check("serfHealth", "critical")));
    }
}
