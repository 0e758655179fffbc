//! The lock request of the acquiring modes, and the timing model's verdict on it
//! (docs/timing.md).

use std::time::Duration;

use serde_json::Value;

use super::values::{Source, Values};
use super::{abbreviate, Mode};
use crate::backend::timing::TimingInputs;
use crate::backend::{Behavior, Checks, HoldSettings, Layout, LockRequest, SessionSettings, Wait};
use crate::duration;
use crate::exit::{Error, ErrorKind, Result};

/// Metadata is stored in the lock value; Consul refuses values over 512 KiB, so refuse early.
const MAX_METADATA_BYTES: usize = 64 * 1024;

pub(super) fn lock_request(
    mode: Mode,
    key: String,
    layout: Layout,
    v: &Values,
) -> Result<LockRequest> {
    let default_ttl = if mode == Mode::Lock {
        Duration::from_secs(86400)
    } else {
        Duration::from_secs(15)
    };
    let negative = match v.get("session_ttl") {
        Some(Value::String(s)) => s.trim().starts_with('-'),
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f < 0.0),
        _ => false,
    };
    if negative {
        return Err(Error::new(
            ErrorKind::InvalidTtl,
            format!(
                "invalid {}: a negative TTL is outside 10s…86400s (or 0 for no TTL)",
                v.source("session_ttl").describe("session_ttl")
            ),
        ));
    }
    let ttl = v.duration("session_ttl")?.unwrap_or(default_ttl);
    let ttl_ok =
        ttl.is_zero() || (Duration::from_secs(10)..=Duration::from_secs(86400)).contains(&ttl);
    if !ttl_ok {
        let source = v.source("session_ttl");
        return Err(Error::new(
            ErrorKind::InvalidTtl,
            format!(
                "invalid {}: {} is outside 10s…86400s (or 0 for no TTL)",
                source.describe("session_ttl"),
                duration::display(ttl)
            ),
        ));
    }
    // consullock creates its sessions with no lock-delay; `consul lock` keeps Consul's 15 s.
    let default_delay = match mode {
        Mode::Lock | Mode::Execute => Duration::ZERO,
        _ => Duration::from_secs(15),
    };
    let lock_delay = v.duration("lock_delay")?.unwrap_or(default_delay);
    if lock_delay > Duration::from_secs(60) {
        return Err(v.bad(
            "lock_delay",
            format!("{} is more than 60s", duration::display(lock_delay)),
        ));
    }
    let behavior = match v.string("session_behavior")?.as_deref() {
        None if mode == Mode::Lock => Behavior::Delete,
        None | Some("release") => Behavior::Release,
        Some("delete") => Behavior::Delete,
        Some(other) => {
            return Err(v.bad(
                "session_behavior",
                format!("`{other}` is not release or delete"),
            ))
        }
    };
    // Supervising modes default to TTL-only sessions: a gossip flap cannot end a healthy
    // holder's hold (docs/timing.md). `lock` keeps consullock's serfHealth.
    let default_checks = if mode.supervises() {
        Checks::None
    } else {
        Checks::AgentDefault
    };
    let checks = match v.get("session_checks") {
        None => default_checks,
        Some(Value::String(s)) if s.trim() == "none" => Checks::None,
        Some(Value::String(s)) if s.trim().is_empty() => default_checks,
        Some(_) => Checks::List(v.list("session_checks")?),
    };
    let health_check_ttl = v.duration("health_check_ttl")?;
    if let Some(d) = health_check_ttl {
        if d < Duration::from_secs(1) {
            return Err(v.bad(
                "health_check_ttl",
                format!(
                    "{} is below 1s; Consul's check reaper runs about once a second",
                    duration::display(d)
                ),
            ));
        }
    }
    let non_blocking = v.bool("non_blocking")?.unwrap_or(false);
    let timeout = v.duration("timeout")?;
    let poll = v.duration("poll_interval")?;
    if poll.is_some_and(|p| p.is_zero()) {
        return Err(v.bad("poll_interval", "must be greater than 0"));
    }
    let wait = if non_blocking {
        Wait::NonBlocking
    } else if timeout.is_some_and(|t| !t.is_zero()) || poll.is_some() {
        Wait::BlockingFor { timeout, poll }
    } else {
        Wait::Blocking
    };
    let metadata = match v.get("metadata") {
        None => None,
        Some(Value::String(text)) => {
            if text.len() > MAX_METADATA_BYTES {
                return Err(v.bad(
                    "metadata",
                    format!(
                        "{} bytes is more than the {MAX_METADATA_BYTES}-byte limit",
                        text.len()
                    ),
                ));
            }
            Some(serde_json::from_str::<Value>(text).map_err(|e| {
                v.bad(
                    "metadata",
                    format!("not valid JSON ({e}): {}", abbreviate(text)),
                )
            })?)
        }
        Some(other) => Some(other.clone()),
    };
    let limit = v.u32("limit")?.unwrap_or(1);
    if limit == 0 {
        return Err(v.bad("limit", "must be at least 1"));
    }
    let queue = v.bool("queue")?.unwrap_or(false);
    if queue && limit > 1 {
        let culprit = if v.source("limit") == Source::Flag {
            "limit"
        } else {
            "queue"
        };
        return Err(v.bad(
            culprit,
            format!("--queue orders waiters for a single holder; it cannot be combined with -n {limit} (the semaphore)"),
        ));
    }
    let kill_grace = v.duration("kill_grace")?.unwrap_or(Duration::from_secs(5));
    let takeover_delay = v
        .duration("takeover_delay")?
        .unwrap_or_else(|| TimingInputs::auto_takeover_delay(kill_grace));
    let monitor_retry = match v.u32("monitor_retry")? {
        Some(0) => {
            return Err(v.bad(
                "monitor_retry",
                "must be at least 1 (leave it unset to never give up early)",
            ))
        }
        other => other,
    };
    let allow_unsafe = v.bool("unsafe_allow_overlap")?.unwrap_or(false);
    let request = LockRequest {
        key,
        layout,
        limit,
        session: SessionSettings {
            name: v.string("session_name")?.filter(|s| !s.is_empty()),
            ttl: (!ttl.is_zero()).then_some(ttl),
            lock_delay,
            behavior,
            checks,
            health_check_ttl,
        },
        wait,
        metadata,
        hold: HoldSettings {
            keep_alive: mode != Mode::Lock,
            kill_grace,
            takeover_delay,
            monitor_retry,
            allow_unsafe,
        },
        queue,
    };
    if mode.supervises() {
        check_timing(&request, v)?;
    }
    Ok(request)
}

/// Refuses, before anything touches Consul, a configuration where the timing model finds a
/// failure path that leaves the command less time to stop than it needs (docs/timing.md);
/// with `--unsafe-allow-overlap` logs each such path as a warning instead.
fn check_timing(request: &LockRequest, v: &Values) -> Result<()> {
    match request.timing_plan() {
        Err(refused) => {
            // Name the setting the user chose; a default is never the culprit on its own.
            let culprit = [
                refused.setting,
                "kill_grace",
                "lock_delay",
                "takeover_delay",
            ]
            .into_iter()
            .find(|s| v.source(s) != Source::Default)
            .unwrap_or(refused.setting);
            let source = v.source(culprit);
            Err(Error::new(
                source.exit_kind(),
                format!(
                    "unsafe timing ({}): {}; or accept overlap with --unsafe-allow-overlap",
                    source.describe(culprit),
                    refused.message
                ),
            ))
        }
        // The accepted risks are logged at start, once logging is set up.
        Ok(_) => Ok(()),
    }
}
