//! One name used as two structures: a lock at `KEY` (the default layout) and anything at
//! `KEY/.lock` (the `consul lock` layout, or a semaphore `-n N`) never exclude each other, so
//! a rollout that changes `--limit` or `--layout` would run old and new holders side by side
//! (README, "Key layouts"). A contender reads the other structure right after its own write
//! landed: of two that wrote at once, the later write's check sees the earlier, so at least
//! one of them gives up before it starts anything.

use super::api::{KvPair, SEMAPHORE_FLAG_VALUE};
use super::client::ConsulClient;
use crate::backend::BackendError;

/// Which structure of the name this contender takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Structure {
    /// The default layout's lock at `KEY`.
    Plain,
    /// `KEY/.lock`: a lock in the `consul lock` layout, or a semaphore's entry.
    DotLock,
}

/// `Conflict` when the other structure of `name` is held: a lock entry with a session, or a
/// semaphore entry that lists holders (dead ones included: their commands may still stop).
/// Best effort, as the first-use layout check: a read that fails, or that the token may not
/// make, refuses nothing (README, "ACL rules").
pub(crate) async fn refuse_if_other_held(
    client: &ConsulClient,
    name: &str,
    mine: Structure,
) -> Result<(), BackendError> {
    let base = name.trim_end_matches('/');
    let (other, as_what) = match mine {
        Structure::Plain => (
            format!("{base}/.lock"),
            "a semaphore (`-n N`) or a lock in the consul-lock layout",
        ),
        Structure::DotLock => (base.to_string(), "a lock in the default layout (`-n 1`)"),
    };
    let Ok(read) = client.kv_get_consistent(&other).await else {
        return Ok(());
    };
    match read.value {
        Some(pair) if held(&pair) => Err(BackendError::Conflict(format!(
            "{other} is held as {as_what}: it and {name} never exclude each other; use \
             the same `--limit` and `--layout` for every contender of {name}"
        ))),
        _ => Ok(()),
    }
}

/// Whether `pair` is in use: held by a session, or a semaphore entry listing any holder.
fn held(pair: &KvPair) -> bool {
    if pair.holder().is_some() {
        return true;
    }
    pair.flags == SEMAPHORE_FLAG_VALUE
        && serde_json::from_slice::<serde_json::Value>(&pair.value_bytes())
            .ok()
            .and_then(|v| {
                v.get("Holders")
                    .and_then(|h| h.as_object().map(|h| !h.is_empty()))
            })
            .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn pair(flags: u64, value: &str, session: Option<&str>) -> KvPair {
        KvPair {
            key: "jobs/.lock".into(),
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            flags,
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            session: session.map(str::to_string),
        }
    }

    #[test]
    fn a_held_lock_or_a_semaphore_with_holders_is_in_use() {
        assert!(held(&pair(0, "", Some("s1"))));
        assert!(!held(&pair(0, "", None)));
        assert!(!held(&pair(0, "", Some(""))));
        let sem = SEMAPHORE_FLAG_VALUE;
        assert!(held(&pair(
            sem,
            r#"{"Limit":2,"Holders":{"a":true}}"#,
            None
        )));
        assert!(!held(&pair(sem, r#"{"Limit":2,"Holders":{}}"#, None)));
        // An entry that cannot be read is taken as in use.
        assert!(held(&pair(sem, "not json", None)));
    }
}
