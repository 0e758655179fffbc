//! Typed Consul API calls used by the lock recipes: sessions, KV, agent TTL checks.
//! Reads retry on transient failures; writes never retry blindly (README, "Consul connection").

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::{consul_index, ConsulClient};
use crate::backend::error::BackendError;
use crate::duration;
use crate::key::url_path;

/// Consul's own lock flags value (`api.LockFlagValue`), used by consullock-compatible and
/// `consul lock` keys alike.
pub(crate) const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// Consul's semaphore flags value (`api.SemaphoreFlagValue`).
pub(crate) const SEMAPHORE_FLAG_VALUE: u64 = 0xe0f6_9a2b_aa41_4de0;

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub key: String,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub flags: u64,
    /// Base64 as sent by Consul; use [`KvPair::value_bytes`].
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
}

impl KvPair {
    pub fn value_bytes(&self) -> Vec<u8> {
        self.value
            .as_deref()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .unwrap_or_default()
    }

    /// The holding session, if any (Consul sends `""` or omits it when unheld).
    pub fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }
}

/// One agent check as `GET /v1/agent/checks` lists it (only the fields lockwrap reads).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct AgentCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub status: String,
}

/// What to create a session with (README, "Options").
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SessionRequest {
    #[serde(rename = "Name")]
    pub name: String,
    /// `None` = no TTL.
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Always sent: an omitted value would mean Consul's default of 15 s.
    #[serde(rename = "LockDelay")]
    pub lock_delay: String,
    #[serde(rename = "Behavior")]
    pub behavior: String,
    /// Exactly the node checks the session is bound to; `None` = the agent's default
    /// (`serfHealth`), `Some([])` = none. Sent as `NodeChecks` (Consul ≥ 1.7): the legacy
    /// `Checks` field makes Consul add `serfHealth` to whatever list it is given, which would
    /// bind a `--session-checks none --health-check-ttl` session to gossip as well
    /// (docs/timing.md).
    #[serde(rename = "NodeChecks", skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
}

/// A session as `session/info` reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// When Consul created it, as a Raft index (a waiter's log line names it).
    #[serde(default)]
    pub create_index: u64,
}

/// A KV read result with the index to block on next.
#[derive(Debug, Clone)]
pub struct KvRead<T> {
    pub value: T,
    pub index: u64,
}

/// How many times a read is retried on transient failure, and the first back-off step.
/// About 1.5 s of back-off in all: a CLI call against a dead agent fails within seconds.
const READ_ATTEMPTS: u32 = 4;
const READ_BACKOFF: Duration = Duration::from_millis(200);

impl ConsulClient {
    /// Runs a read with retries and exponential back-off on transient failures.
    pub async fn retry_read<T, F, Fut>(&self, mut op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let mut delay = READ_BACKOFF;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(err) if err.is_transient() && attempt < READ_ATTEMPTS => {
                    tracing::debug!(%err, attempt, "retrying Consul read");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A 200 whose body is not Consul's JSON: probably not a Consul agent at that address.
    fn not_consul(&self, request: &str, err: reqwest::Error) -> BackendError {
        BackendError::Invalid(format!(
            "{} answered {request} with a body that is not Consul's JSON ({err}); is it a Consul agent?",
            self.address()
        ))
    }

    // ---- sessions ----

    pub(crate) async fn session_create(
        &self,
        req: &SessionRequest,
    ) -> Result<String, BackendError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let answer = self
            .json::<Created>(self.request(Method::PUT, "session/create").json(req))
            .await?;
        match answer {
            Some((created, _)) => Ok(created.id),
            None => Err(BackendError::Invalid(
                "Consul answered 404 to session/create".into(),
            )),
        }
    }

    /// Renews a session; `SessionGone` when Consul no longer knows it.
    pub async fn session_renew(&self, id: &str, timeout: Duration) -> Result<(), BackendError> {
        let response = self
            .send(
                self.request(Method::PUT, &format!("session/renew/{id}"))
                    .timeout(timeout),
            )
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(BackendError::SessionGone(id.to_string()));
        }
        Ok(())
    }

    pub(crate) async fn session_destroy(&self, id: &str) -> Result<(), BackendError> {
        // Short: on exit paths with an unresponsive agent the session expires by itself, and a
        // PID-1 container should not wait long to restart.
        self.send(
            self.request(Method::PUT, &format!("session/destroy/{id}"))
                .timeout(CLEANUP_TIMEOUT),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn session_info(
        &self,
        id: &str,
    ) -> Result<Option<SessionEntry>, BackendError> {
        let path = format!("session/info/{id}");
        let found = self
            .retry_read(|| self.json::<Vec<SessionEntry>>(self.request(Method::GET, &path)))
            .await?;
        Ok(found.and_then(|(mut list, _)| list.pop()))
    }

    /// Every live session, read from the leader (`?consistent`): a just-destroyed session must
    /// not be seen as alive, nor a live one missed.
    pub(crate) async fn session_list_consistent(&self) -> Result<Vec<SessionEntry>, BackendError> {
        let found = self
            .retry_read(|| {
                self.json::<Vec<SessionEntry>>(
                    self.request(Method::GET, "session/list")
                        .query(&[("consistent", "")]),
                )
            })
            .await?;
        Ok(found.map(|(list, _)| list).unwrap_or_default())
    }

    pub(crate) async fn session_list(&self) -> Result<Vec<SessionEntry>, BackendError> {
        let found = self
            .retry_read(|| {
                self.json::<Vec<SessionEntry>>(self.request(Method::GET, "session/list"))
            })
            .await?;
        Ok(found.map(|(list, _)| list).unwrap_or_default())
    }

    // ---- KV ----

    /// Reads one key. With `wait = Some((index, max))` this is a blocking query that returns
    /// when the key changes past `index` or after `max`. The HTTP timeout covers Consul's
    /// jitter of up to wait/16 (README, "Consul connection").
    pub async fn kv_get(
        &self,
        key: &str,
        wait: Option<(u64, Duration)>,
    ) -> Result<KvRead<Option<KvPair>>, BackendError> {
        let mut req = self.request(Method::GET, &format!("kv/{}", url_path(key)));
        if let Some((index, max)) = wait {
            req = req
                .query(&[
                    ("index", index.to_string()),
                    ("wait", duration::to_consul(max)),
                ])
                .timeout(blocking_timeout(max));
        }
        self.read_one(req, key).await
    }

    /// Reads one key from the leader (`?consistent`): what a check right after our own write
    /// must see.
    pub(crate) async fn kv_get_consistent(
        &self,
        key: &str,
    ) -> Result<KvRead<Option<KvPair>>, BackendError> {
        let req = self
            .request(Method::GET, &format!("kv/{}", url_path(key)))
            .query(&[("consistent", "")]);
        self.read_one(req, key).await
    }

    /// Sends a read of one key: its entry (`None` on 404) and Consul's index.
    async fn read_one(
        &self,
        req: reqwest::RequestBuilder,
        key: &str,
    ) -> Result<KvRead<Option<KvPair>>, BackendError> {
        let response = self.send(req).await?;
        let index = consul_index(&response).unwrap_or(0);
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(KvRead { value: None, index });
        }
        let mut pairs: Vec<KvPair> = response
            .json()
            .await
            .map_err(|err| self.not_consul(&format!("GET /v1/kv/{key}"), err))?;
        Ok(KvRead {
            value: pairs.pop(),
            index,
        })
    }

    /// Reads one key with retries (not blocking).
    pub async fn kv_get_retry(&self, key: &str) -> Result<KvRead<Option<KvPair>>, BackendError> {
        self.retry_read(|| self.kv_get(key, None)).await
    }

    /// Every entry under `prefix` (recursive), optionally as a blocking query.
    pub async fn kv_list(
        &self,
        prefix: &str,
        wait: Option<(u64, Duration)>,
    ) -> Result<KvRead<Vec<KvPair>>, BackendError> {
        let op = || async {
            let mut req = self
                .request(Method::GET, &format!("kv/{}", url_path(prefix)))
                .query(&[("recurse", "true")]);
            if let Some((index, max)) = wait {
                req = req
                    .query(&[
                        ("index", index.to_string()),
                        ("wait", duration::to_consul(max)),
                    ])
                    .timeout(blocking_timeout(max));
            }
            let response = self.send(req).await?;
            let index = consul_index(&response).unwrap_or(0);
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(KvRead {
                    value: Vec::new(),
                    index,
                });
            }
            let pairs: Vec<KvPair> = response
                .json()
                .await
                .map_err(|err| self.not_consul(&format!("GET /v1/kv/{prefix}?recurse"), err))?;
            Ok(KvRead {
                value: pairs,
                index,
            })
        };
        if wait.is_some() {
            op().await
        } else {
            self.retry_read(op).await
        }
    }

    /// `PUT /v1/kv/<key>` with query parameters (`acquire`, `release`, `cas`, `flags`);
    /// returns Consul's boolean answer. Not retried: the caller re-reads on doubt.
    pub async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        params: &[(&str, String)],
    ) -> Result<bool, BackendError> {
        let req = self
            .request(Method::PUT, &format!("kv/{}", url_path(key)))
            .query(params)
            .body(value);
        self.put_bool(req).await
    }

    /// `DELETE /v1/kv/<key>`, optionally check-and-set on `ModifyIndex`.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, BackendError> {
        let mut req = self.request(Method::DELETE, &format!("kv/{}", url_path(key)));
        if let Some(index) = cas {
            req = req.query(&[("cas", index.to_string())]);
        }
        self.put_bool(req).await
    }

    async fn put_bool(&self, req: reqwest::RequestBuilder) -> Result<bool, BackendError> {
        let response = self.send(req).await.map_err(|err| match err {
            // The request may have been applied: say so, the caller re-reads.
            BackendError::Transient(m) => BackendError::Unknown(m),
            other => other,
        })?;
        // The answer was sent, so the write was applied or refused: a body lost on the way
        // (a reset between headers and body) leaves which one unknown, not "refused".
        let text = response
            .text()
            .await
            .map_err(|err| BackendError::Unknown(format!("reading Consul's answer: {err}")))?;
        Ok(text.trim() == "true")
    }

    // ---- agent TTL checks (fast failover) ----

    pub(crate) async fn check_register(
        &self,
        id: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let body = serde_json::json!({
            "ID": id,
            "Name": name,
            "TTL": duration::to_consul(ttl),
            "Status": "passing",
            "Notes": "lockwrap supervisor liveness; the lock session is bound to it",
        });
        self.send(
            self.request(Method::PUT, "agent/check/register")
                .json(&body),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn check_pass(&self, id: &str, timeout: Duration) -> Result<(), BackendError> {
        self.send(
            self.request(Method::PUT, &format!("agent/check/pass/{id}"))
                .timeout(timeout),
        )
        .await?;
        Ok(())
    }

    /// `GET /v1/agent/checks`: the checks registered on the agent this client talks to.
    pub async fn agent_checks(&self) -> Result<Vec<AgentCheck>, BackendError> {
        let found = self
            .json::<std::collections::HashMap<String, AgentCheck>>(
                self.request(Method::GET, "agent/checks")
                    .timeout(CLEANUP_TIMEOUT),
            )
            .await?;
        Ok(found
            .map(|(checks, _)| checks.into_values().collect())
            .unwrap_or_default())
    }

    pub(crate) async fn check_deregister(&self, id: &str) -> Result<(), BackendError> {
        self.send(
            self.request(Method::PUT, &format!("agent/check/deregister/{id}"))
                .timeout(CLEANUP_TIMEOUT),
        )
        .await?;
        Ok(())
    }
}

/// Bound for best-effort cleanup calls (destroy, deregister): a healthy agent answers in
/// milliseconds; an unresponsive one must not hold an exit for the full request timeout.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP timeout for a blocking query of `wait`: Consul adds up to wait/16 of jitter.
pub(crate) fn blocking_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(5)
}

/// Next index for a blocking query: restart from 0 if the index went backwards (README, "Consul connection"),
/// e.g. after a Consul restart or snapshot restore.
pub(crate) fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_consul() {
        assert_eq!(LOCK_FLAG_VALUE, 3304740253564472344);
        assert_eq!(SEMAPHORE_FLAG_VALUE, 16210313421097356768);
    }

    #[test]
    fn explicit_zero_lock_delay_is_sent() {
        let req = SessionRequest {
            name: "n".into(),
            ttl: None,
            lock_delay: duration::to_consul(Duration::ZERO),
            behavior: "release".into(),
            checks: Some(vec![]),
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["LockDelay"], "0s");
        assert_eq!(json["NodeChecks"], serde_json::json!([]));
        assert!(json.get("Checks").is_none());
        assert!(json.get("TTL").is_none());
    }

    #[test]
    fn index_going_backwards_restarts() {
        assert_eq!(next_index(10, 5), 0);
        assert_eq!(next_index(10, 12), 12);
    }
}
