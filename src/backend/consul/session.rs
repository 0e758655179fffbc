//! Creating and destroying the session that holds a lock, and the optional agent TTL check it
//! is bound to for fast failover (`--health-check-ttl`).

use std::time::Instant;

use super::api::{AgentCheck, SessionRequest};
use super::client::ConsulClient;
use super::value::Identity;
use crate::backend::{BackendError, Checks, SessionSettings};
use crate::duration;

/// A session this process created, with the check it registered (if any).
#[derive(Debug, Clone)]
pub struct OwnedSession {
    pub id: String,
    pub check_id: Option<String>,
    /// When the create request was sent: the first "renew" of the lease deadline.
    pub sent_at: Instant,
}

/// Creates a session per `settings`; registers the health check first when asked.
pub async fn create(
    client: &ConsulClient,
    key: &str,
    settings: &SessionSettings,
    identity: &Identity,
) -> Result<OwnedSession, BackendError> {
    let name = settings.name.clone().unwrap_or_else(|| {
        format!(
            "lockwrap {key} on {} pid {}",
            identity.hostname, identity.pid
        )
    });
    let check_id = match settings.health_check_ttl {
        Some(ttl) => {
            let id = format!(
                "{CHECK_PREFIX}{}:{}:{}",
                identity.hostname,
                identity.pid,
                unique_suffix()
            );
            client
                .check_register(&id, &format!("lockwrap liveness for {key}"), ttl)
                .await?;
            Some(id)
        }
        None => None,
    };
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
            Ok(OwnedSession {
                id,
                check_id,
                sent_at,
            })
        }
        Err(err) => {
            if let Some(id) = &check_id {
                let _ = client.check_deregister(id).await;
            }
            Err(err)
        }
    }
}

/// Destroys the session and deregisters its check; logs and keeps going on failure, because
/// this runs on exit paths where the best effort is all there is.
pub async fn destroy(client: &ConsulClient, session: &OwnedSession) {
    if let Err(err) = client.session_destroy(&session.id).await {
        tracing::warn!(session = %session.id, %err, "could not destroy session; it expires with its TTL");
    } else {
        tracing::debug!(session = %session.id, "session destroyed");
    }
    if let Some(check) = &session.check_id {
        if let Err(err) = client.check_deregister(check).await {
            tracing::warn!(check, %err, "could not deregister health check");
        }
    }
}

/// Prefix of the IDs of the checks lockwrap registers.
const CHECK_PREFIX: &str = "lockwrap:";

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
