//! Creating and destroying the session that holds a lock, and the optional agent TTL check it
//! is bound to for fast failover (`--health-check-ttl`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::api::{AgentCheck, SessionRequest};
use super::client::ConsulClient;
use super::value::Identity;
use crate::backend::timing::Cadence;
use crate::backend::{BackendError, Checks, SessionSettings};
use crate::duration;

/// A session this process created, with the check it registered (if any).
#[derive(Debug, Clone)]
pub struct OwnedSession {
    pub id: String,
    /// lockwrap's own TTL check and the task that keeps it passing.
    pub check: Option<CheckKeeper>,
    /// When the create request was sent: the first "renew" of the lease deadline.
    pub sent_at: Instant,
}

impl OwnedSession {
    pub fn check_id(&self) -> Option<&str> {
        self.check.as_ref().map(|c| c.id.as_str())
    }
}

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

/// Creates a session per `settings`; registers the health check first when asked and keeps
/// it passing at `pass` cadence from that moment on.
pub async fn create(
    client: &ConsulClient,
    key: &str,
    settings: &SessionSettings,
    identity: &Identity,
    pass: Option<Cadence>,
) -> Result<OwnedSession, BackendError> {
    let name = super::naming::session_name(
        settings.name.as_deref(),
        key,
        &identity.hostname,
        identity.pid,
    );
    let check = match settings.health_check_ttl {
        Some(ttl) => {
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
            Some(CheckKeeper::start(
                client.clone(),
                id,
                cadence,
                registered_at,
            ))
        }
        None => None,
    };
    let check_id = check.as_ref().map(|c| c.id.clone());
    let mut checks = match &settings.checks {
        Checks::AgentDefault if check_id.is_some() => Some(vec!["serfHealth".to_string()]),
        Checks::AgentDefault => None,
        Checks::None => Some(Vec::new()),
        Checks::List(list) => Some(list.clone()),
    };
    if let Some(id) = &check_id {
        checks.get_or_insert_with(Vec::new).push(id.clone());
    }
    let request = SessionRequest {
        name,
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
            Ok(OwnedSession { id, check, sent_at })
        }
        Err(err) => {
            if let Some(keeper) = &check {
                keeper.stop();
                let _ = client.check_deregister(&keeper.id).await;
            }
            Err(err)
        }
    }
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

/// Destroys the session and deregisters its check; logs and keeps going on failure, because
/// this runs on exit paths where the best effort is all there is.
pub async fn destroy(client: &ConsulClient, session: &OwnedSession) {
    destroy_within(client, session, Duration::ZERO).await;
}

/// Destroys the session, retrying transient failures (no leader, agent restarting) for up to
/// `patience`, so a key is not left held by a dead session; then deregisters the check.
/// A session that outlives `patience` expires with its TTL.
pub async fn destroy_within(client: &ConsulClient, session: &OwnedSession, patience: Duration) {
    let give_up = Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    let mut warned = false;
    loop {
        match client.session_destroy(&session.id).await {
            Ok(()) => {
                if warned {
                    tracing::info!(session = %session.id, "session destroyed after retries");
                } else {
                    tracing::debug!(session = %session.id, "session destroyed");
                }
                break;
            }
            Err(err) if err.is_transient() && Instant::now() + pause < give_up => {
                if !warned {
                    tracing::warn!(session = %session.id, %err, "could not destroy the session; retrying until it lands");
                    warned = true;
                }
                tokio::time::sleep(crate::backend::retry::jitter(pause)).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::warn!(session = %session.id, %err, "could not destroy session; it expires with its TTL");
                break;
            }
        }
    }
    if let Some(check) = &session.check {
        // Stop passing first: a check that stays registered must go critical.
        check.stop();
        if let Err(err) = client.check_deregister(&check.id).await {
            tracing::warn!(check = %check.id, %err, "could not deregister health check");
        }
    }
}

/// Prefix of the IDs of the checks lockwrap registers.
const CHECK_PREFIX: &str = "lockwrap:";

/// Whether `err` is Consul's "Missing check '…' registration" for a check neither lockwrap nor
/// the agent registers (a user-named check, most likely a typo). Our own checks and the agent's
/// `serfHealth` are only briefly unknown to the servers (an agent that has just started, a check
/// not yet synced), so those are retried as long as any transient error.
pub fn names_foreign_missing_check(err: &BackendError) -> bool {
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
