//! Reading without taking anything: a semaphore's slots and holders for `status`, and whom a
//! waiting contender waits for — the holder, its session's name and node (README,
//! "Observability").

use std::collections::BTreeMap;

use serde::Deserialize;

use super::api::{KvPair, SEMAPHORE_FLAG_VALUE};
use super::wait::lock_key;
use super::{value, ConsulBackend};
use crate::backend::{BackendError, LockInfo, LockRequest, SemaphoreInfo, SlotHolder, WaitingFor};

/// The coordination entry `<prefix>/.lock` as the semaphore recipe writes it, in Go's field
/// names (README, "Key layouts"); only read here.
#[derive(Deserialize)]
struct Slots {
    #[serde(rename = "Limit", default)]
    limit: u32,
    #[serde(rename = "Holders", default)]
    holders: BTreeMap<String, bool>,
}

/// The coordination key of the semaphore under `prefix`.
fn coordination_key(prefix: &str) -> String {
    format!("{}/.lock", prefix.trim_end_matches('/'))
}

/// Whether a KV entry belongs to a semaphore (its `.lock` or a contender key): listings show
/// the semaphore once, under its prefix, and never these entries as locks.
pub(crate) fn is_semaphore_entry(pair: &KvPair) -> bool {
    pair.flags == SEMAPHORE_FLAG_VALUE
}

/// The prefix whose semaphore `pair` coordinates, when it is a coordination entry.
pub(crate) fn semaphore_prefix(pair: &KvPair) -> Option<&str> {
    pair.key
        .strip_suffix("/.lock")
        .filter(|_| is_semaphore_entry(pair))
}

/// `status` of the semaphore `key` from its coordination entry and the entries beside it
/// (contender keys); `None` when no slot is taken, as for an unheld lock.
pub(crate) fn semaphore_info(key: &str, lock: &KvPair, pairs: &[KvPair]) -> Option<LockInfo> {
    let bytes = lock.value_bytes();
    let slots: Slots = serde_json::from_slice(&bytes).ok()?;
    let prefix = key.trim_end_matches('/');
    let holders: Vec<SlotHolder> = slots
        .holders
        .keys()
        .map(|session| {
            let contender_key = format!("{prefix}/{session}");
            let contender = pairs.iter().find(|p| p.key == contender_key);
            let info = contender.map(|p| value::decode(key, p));
            SlotHolder {
                session: session.clone(),
                created: info.as_ref().and_then(|i| i.created.clone()),
                seconds_to_lock: info.as_ref().and_then(|i| i.seconds_to_lock),
                metadata: info.as_ref().and_then(|i| i.metadata.clone()),
                holder: info.as_ref().and_then(|i| i.holder.clone()),
                alive: contender.and_then(KvPair::holder) == Some(session.as_str()),
            }
        })
        .collect();
    if holders.is_empty() {
        return None;
    }
    Some(LockInfo {
        key: key.to_string(),
        session: None,
        created: None,
        seconds_to_lock: None,
        metadata: None,
        holder: None,
        fencing_token: Some(lock.modify_index),
        queue: None,
        semaphore: Some(Box::new(SemaphoreInfo {
            limit: slots.limit,
            holders,
        })),
    })
}

impl ConsulBackend {
    /// `Some(status)` when `key` is a semaphore's prefix (its `.lock` carries the semaphore
    /// flags); `None` when it is not a semaphore.
    pub(crate) async fn find_semaphore(
        &self,
        key: &str,
    ) -> Result<Option<Option<LockInfo>>, BackendError> {
        let lock_key = coordination_key(key);
        let read = self.client.kv_get_retry(&lock_key).await?;
        match read.value {
            Some(pair) if is_semaphore_entry(&pair) => {
                let prefix = format!("{}/", key.trim_end_matches('/'));
                let listed = self.client.kv_list(&prefix, None).await?;
                Ok(Some(semaphore_info(key, &pair, &listed.value)))
            }
            _ => Ok(None),
        }
    }

    /// Whom a contender for `request` waits for: the holder (a semaphore's first live one),
    /// its session's name, node and create index, the slots taken, the queue's length.
    pub(crate) async fn describe_wait(
        &self,
        request: &LockRequest,
    ) -> Result<WaitingFor, BackendError> {
        let key = request.key.as_str();
        let mut seen = WaitingFor::default();
        if request.limit > 1 {
            if let Some(Some(info)) = self.find_semaphore(key).await? {
                if let Some(sem) = &info.semaphore {
                    seen.slots = Some((sem.holders.len(), sem.limit));
                    seen.holder = sem.holders.iter().find(|h| h.alive).map(|h| LockInfo {
                        key: key.to_string(),
                        session: Some(h.session.clone()),
                        created: h.created.clone(),
                        seconds_to_lock: h.seconds_to_lock,
                        metadata: h.metadata.clone(),
                        holder: h.holder.clone(),
                        fencing_token: info.fencing_token,
                        queue: None,
                        semaphore: None,
                    });
                }
            }
        } else {
            let read = self
                .client
                .kv_get(&lock_key(key, request.layout), None)
                .await?;
            seen.holder = read
                .value
                .filter(|p| p.holder().is_some() && !is_semaphore_entry(p))
                .map(|p| value::decode(key, &p));
        }
        if request.queue {
            seen.queued = Some(self.read_queue(key).await?.len());
        }
        let session = seen.holder.as_ref().and_then(|h| h.session.clone());
        if let Some(id) = session {
            if let Some(entry) = self.client.session_info(&id).await? {
                seen.session_name = Some(entry.name).filter(|n| !n.is_empty());
                seen.node = Some(entry.node).filter(|n| !n.is_empty());
                seen.session_index = Some(entry.create_index).filter(|i| *i > 0);
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn pair(key: &str, flags: u64, session: Option<&str>, value: &str) -> KvPair {
        serde_json::from_value(serde_json::json!({
            "Key": key,
            "Flags": flags,
            "Session": session,
            "Value": base64::engine::general_purpose::STANDARD.encode(value),
            "CreateIndex": 5,
            "ModifyIndex": 9,
            "LockIndex": 0,
        }))
        .expect("a KV pair")
    }

    #[test]
    fn a_semaphore_lists_its_holders_and_marks_dead_ones() {
        let lock = pair(
            "sem/.lock",
            SEMAPHORE_FLAG_VALUE,
            None,
            r#"{"Limit":2,"Holders":{"a":true,"b":true}}"#,
        );
        let a = pair(
            "sem/a",
            SEMAPHORE_FLAG_VALUE,
            Some("a"),
            r#"{"created":"2026-12-02T12:00:00.000000","holder":{"hostname":"h","pid":7}}"#,
        );
        let pairs = vec![lock.clone(), a];
        assert_eq!(semaphore_prefix(&lock), Some("sem"));
        let info = semaphore_info("sem", &lock, &pairs).expect("held");
        let sem = info.semaphore.expect("a semaphore");
        assert_eq!(sem.limit, 2);
        assert_eq!(sem.holders.len(), 2);
        assert!(sem.holders[0].alive);
        assert_eq!(sem.holders[0].holder.as_ref().unwrap()["pid"], 7);
        assert!(!sem.holders[1].alive, "b has no contender key");
        assert_eq!(info.fencing_token, Some(9));
        assert_eq!(info.session, None);
    }

    #[test]
    fn a_semaphore_without_holders_reads_as_unheld() {
        let lock = pair(
            "sem/.lock",
            SEMAPHORE_FLAG_VALUE,
            None,
            r#"{"Limit":2,"Holders":{}}"#,
        );
        assert_eq!(
            semaphore_info("sem", &lock, std::slice::from_ref(&lock)),
            None
        );
        let plain = pair("x/.lock", 0, None, "");
        assert_eq!(semaphore_prefix(&plain), None);
    }
}
