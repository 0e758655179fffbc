//! `lockwrap lock KEY`: acquire and leave the lock held (consullock `lock`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::acquire;
use crate::backend::{Acquired, HeldLock, LockBackend};
use crate::config::Acquiring;
use crate::exit::{Error, ErrorKind, Outcome, Result};
use crate::hooks::{AcquireHooks, Hooks};
use crate::locks::LockManager;
use crate::output;
use crate::supervisor::ProcessControl;

pub(super) async fn lock<B: LockBackend>(
    config: &Acquiring,
    manager: &LockManager<B>,
    mut process: ProcessControl,
) -> Result<Outcome> {
    let hooks = Hooks::new(config.hooks.clone(), process.spawner(), config.hook_timeout);
    let observer = AcquireHooks { hooks };
    let key = &config.request.key;
    let (result, signal) =
        acquire::until_signal(manager, &config.request, &observer, &mut process.signals).await;
    // A `--timeout` comes back as an error naming the holder; `lock` still prints `null` first.
    if let Err(err) = &result {
        if err.kind == ErrorKind::Timeout {
            output::null();
        }
    }
    match result? {
        Acquired::Held(lease) => {
            let info = lease.info().clone();
            // Keep the lock and its session: that is what `lock` is for.
            let _ = lease.detach();
            let mut out: BTreeMap<&str, Value> = BTreeMap::new();
            out.insert("created", json!(info.created));
            out.insert("key", json!(info.key));
            if let Some(meta) = info.metadata {
                out.insert("metadata", meta);
            }
            out.insert("secondsToLock", json!(info.seconds_to_lock));
            out.insert("session", json!(info.session));
            out.insert("fencingToken", json!(info.fencing_token));
            output::print(&out);
            Ok(Outcome::Success)
        }
        Acquired::Locked(holder) => {
            output::null();
            let who = holder
                .map(|h| format!(" (held by {})", h.holder_summary()))
                .unwrap_or_default();
            Ok(Outcome::Failed(Error::new(
                ErrorKind::Locked,
                format!("Unable to acquire lock: {key}{who}"),
            )))
        }
        Acquired::TimedOut => {
            output::null();
            let waited = config.request.wait.timeout().unwrap_or(Duration::ZERO);
            Ok(Outcome::Failed(Error::new(
                ErrorKind::Timeout,
                format!(
                    "Unable to acquire lock: {key}: timed out after {}",
                    crate::duration::display(waited)
                ),
            )))
        }
        Acquired::Cancelled => {
            output::null();
            Ok(Outcome::Interrupted(
                signal.map(|s| s.number()).unwrap_or(15),
            ))
        }
    }
}
