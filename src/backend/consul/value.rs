//! The lock entry's value: consullock's JSON (`created`, `key`, `metadata`?, `secondsToLock`,
//! `session`) plus lockwrap's `holder`; pretty-printed with sorted keys (README, "Key layouts").

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::backend::consul::api::KvPair;
use crate::backend::LockInfo;

/// Who this process is, for the `holder` field and session names.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This host's name.
    pub hostname: String,
    /// This process's PID.
    pub pid: u32,
    /// Kubernetes pod and node names when the downward API provides them.
    pub pod: Option<String>,
    /// The Kubernetes node name (`NODE_NAME`), as `pod`.
    pub node: Option<String>,
    /// The Consul Enterprise namespace and partition the lock is taken in, so `status` shows
    /// which scope a holder used.
    pub namespace: Option<String>,
    /// The partition, as `namespace`.
    pub partition: Option<String>,
}

impl Identity {
    pub(crate) fn current() -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_string());
        let from_env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        Identity {
            hostname,
            pid: std::process::id(),
            pod: from_env(&["LOCKWRAP_POD_NAME", "POD_NAME"]),
            node: from_env(&["LOCKWRAP_NODE_NAME", "NODE_NAME"]),
            namespace: None,
            partition: None,
        }
    }

    /// The same identity, recording the namespace and partition its requests are scoped to.
    pub fn in_scope(self, namespace: Option<&str>, partition: Option<&str>) -> Self {
        Identity {
            namespace: namespace.map(str::to_string),
            partition: partition.map(str::to_string),
            ..self
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut holder = BTreeMap::new();
        holder.insert("hostname", json!(self.hostname));
        holder.insert("pid", json!(self.pid));
        if let Some(pod) = &self.pod {
            holder.insert("pod", json!(pod));
        }
        if let Some(node) = &self.node {
            holder.insert("node", json!(node));
        }
        if let Some(namespace) = &self.namespace {
            holder.insert("namespace", json!(namespace));
        }
        if let Some(partition) = &self.partition {
            holder.insert("partition", json!(partition));
        }
        json!(holder)
    }
}

/// The value written with the acquire.
pub(crate) fn encode(
    key: &str,
    session: &str,
    created: &str,
    seconds_to_lock: f64,
    metadata: Option<&Value>,
    identity: &Identity,
    takeover_delay: Option<std::time::Duration>,
) -> Vec<u8> {
    let mut map = BTreeMap::new();
    map.insert("created", json!(created));
    map.insert("holder", identity.to_json());
    map.insert("key", json!(key));
    if let Some(meta) = metadata {
        map.insert("metadata", meta.clone());
    }
    map.insert("secondsToLock", json!(seconds_to_lock));
    map.insert("session", json!(session));
    // The wait this holder's command needs after an unclean end; the next holder waits at
    // least this long (docs/timing.md, "Contenders with different settings"). CLI `lock`
    // supervises nothing and writes consullock's value unchanged.
    if let Some(delay) = takeover_delay {
        map.insert("takeoverDelaySeconds", json!(delay.as_secs_f64()));
    }
    // Serialising a map of JSON values cannot fail.
    serde_json::to_vec_pretty(&map).unwrap_or_default()
}

/// Reads a lock entry written by lockwrap, consullock or anything else (unknown values are
/// kept as "no details"); `key` is the user's name for the lock.
pub(crate) fn decode(key: &str, pair: &KvPair) -> LockInfo {
    let parsed: Option<Value> = serde_json::from_slice(&pair.value_bytes()).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).cloned();
    LockInfo {
        key: key.to_string(),
        session: pair.holder().map(str::to_string),
        created: field("created").and_then(|v| v.as_str().map(str::to_string)),
        seconds_to_lock: field("secondsToLock").and_then(|v| v.as_f64()),
        metadata: field("metadata"),
        holder: field("holder"),
        fencing_token: Some(pair.modify_index),
        queue: None,
        semaphore: None,
    }
}

/// The `session` field of an entry value: the session that wrote it.
pub(crate) fn written_by(value: &[u8]) -> Option<String> {
    let map = serde_json::from_slice::<BTreeMap<String, Value>>(value).ok()?;
    map.get("session")?.as_str().map(str::to_string)
}

/// Whether an unheld entry still carries what our session wrote, so a clean release may delete
/// it (`consul-lock` layout, like Go's `Lock.Destroy`). Another holder's entry — even one that
/// took and gave back the key between our release and this check — stays: its release may have
/// been unclean, and deleting it would make the next holder take the key for never used.
pub(crate) fn still_ours_unheld(pair: &KvPair, our_value: &[u8]) -> bool {
    let ours = written_by(our_value);
    pair.holder().is_none() && ours.is_some() && written_by(&pair.value_bytes()) == ours
}

/// The value re-sent with `?release`: the holder's value plus `released` (UTC). It tells the next
/// holder that this release was clean — the holder's command had already stopped.
pub(crate) fn mark_released(value: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<BTreeMap<String, Value>>(value) {
        Ok(mut map) => {
            map.insert("released".to_string(), json!(now_iso8601()));
            serde_json::to_vec_pretty(&map).unwrap_or_else(|_| value.to_vec())
        }
        Err(_) => value.to_vec(),
    }
}

/// Whether the entry was last released cleanly by lockwrap (see [`mark_released`]). A deleted
/// key, an expired or destroyed session, or a forced unlock all read as "not clean".
pub(crate) fn released_cleanly(pair: &KvPair) -> bool {
    pair.holder().is_none()
        && serde_json::from_slice::<Value>(&pair.value_bytes())
            .ok()
            .is_some_and(|v| v.get("released").is_some())
}

/// The takeover delay the holder that wrote `pair` announced (see [`encode`]).
pub(crate) fn announced_takeover(pair: &KvPair) -> Option<std::time::Duration> {
    serde_json::from_slice::<Value>(&pair.value_bytes())
        .ok()?
        .get("takeoverDelaySeconds")?
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
        .map(std::time::Duration::from_secs_f64)
}

/// Now in UTC, as consullock writes it (see [`crate::output::now_iso8601`]).
pub(crate) fn now_iso8601() -> String {
    crate::output::now_iso8601()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::time::Duration;

    fn pair(value: &str, session: Option<&str>) -> KvPair {
        KvPair {
            key: "k".into(),
            create_index: 1,
            modify_index: 42,
            lock_index: 1,
            flags: 0,
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            session: session.map(str::to_string),
        }
    }

    #[test]
    fn a_clean_release_deletes_only_its_own_unheld_entry() {
        let ours = br#"{"session":"s1","holder":"a"}"#;
        let mine = pair(r#"{"session":"s1","holder":"a","released":"x"}"#, None);
        assert!(still_ours_unheld(&mine, ours));
        // Another holder took the key and gave it back (maybe uncleanly) in between.
        let other = pair(r#"{"session":"s2","holder":"b"}"#, None);
        assert!(!still_ours_unheld(&other, ours));
        // Held again, by anyone: never deleted.
        let held = pair(r#"{"session":"s1","holder":"a"}"#, Some("s2"));
        assert!(!still_ours_unheld(&held, ours));
        // A value without a session (consul lock's own, or foreign) is not ours.
        let foreign = pair("", None);
        assert!(!still_ours_unheld(&foreign, ours));
        assert!(!still_ours_unheld(&foreign, b""));
    }

    #[test]
    fn value_is_pretty_with_sorted_keys() {
        let identity = Identity {
            hostname: "h".into(),
            pid: 7,
            pod: None,
            node: None,
            namespace: None,
            partition: None,
        };
        let bytes = encode(
            "a/b",
            "s1",
            "2020-01-01T00:00:00.000000",
            0.5,
            Some(&json!({"x": 1})),
            &identity,
            None,
        );
        let text = String::from_utf8(bytes).unwrap();
        let order: Vec<usize> = [
            "created",
            "holder",
            "key",
            "metadata",
            "secondsToLock",
            "session",
        ]
        .iter()
        .map(|k| text.find(&format!("\"{k}\"")).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains('\n'));
    }

    #[test]
    fn reads_consullock_values() {
        let written_by_consullock = r#"{"created": "2017-12-05T12:26:13.717995", "key": "my/lock", "metadata": {"testing": 123}, "secondsToLock": 4.3, "session": "6ad662de"}"#;
        let info = decode("my/lock", &pair(written_by_consullock, Some("6ad662de")));
        assert_eq!(info.created.as_deref(), Some("2017-12-05T12:26:13.717995"));
        assert_eq!(info.metadata, Some(json!({"testing": 123})));
        assert_eq!(info.session.as_deref(), Some("6ad662de"));
        assert_eq!(info.fencing_token, Some(42));
        assert!(info.holder.is_none());
    }

    #[test]
    fn tolerates_foreign_values() {
        let info = decode("k", &pair("not json", Some("")));
        assert_eq!(info.session, None);
        assert_eq!(info.created, None);
    }

    #[test]
    fn release_marker_round_trips() {
        let identity = Identity {
            hostname: "h".into(),
            pid: 1,
            pod: None,
            node: None,
            namespace: None,
            partition: None,
        };
        let value = encode(
            "k",
            "s",
            "t",
            0.0,
            None,
            &identity,
            Some(Duration::from_secs(6)),
        );
        let held = pair(std::str::from_utf8(&value).unwrap(), None);
        assert!(!released_cleanly(&held));
        let marked = mark_released(&value);
        assert!(released_cleanly(&pair(
            std::str::from_utf8(&marked).unwrap(),
            None
        )));
        assert!(!released_cleanly(&pair(
            std::str::from_utf8(&marked).unwrap(),
            Some("s2")
        )));
    }

    #[test]
    fn holder_names_the_scope_when_set() {
        let identity = Identity {
            hostname: "h".into(),
            pid: 1,
            pod: None,
            node: None,
            namespace: None,
            partition: None,
        };
        assert!(identity.to_json().get("namespace").is_none());
        let scoped = identity.in_scope(Some("team-a"), Some("part-b")).to_json();
        assert_eq!(scoped["namespace"], "team-a");
        assert_eq!(scoped["partition"], "part-b");
    }

    #[test]
    fn timestamp_shape() {
        let ts = now_iso8601();
        assert_eq!(ts.len(), 26, "{ts}");
        assert_eq!(&ts[10..11], "T");
    }
}
