//! The lock request of the acquiring modes, and the timing model's verdict on it
//! (docs/timing.md).

use std::time::Duration;

use super::settings::Settings;
use super::sources::{Provenance, Source};
use super::types::{self, Text, Ttl};
use super::{switch, Mode};
use crate::backend::defaults;
use crate::backend::timing::TimingPlan;
use crate::backend::{Behavior, Checks, HoldSettings, Layout, LockRequest, SessionSettings, Wait};
use crate::duration;
use crate::exit::{Error, ErrorKind, Result};

pub(super) fn lock_request(
    mode: Mode,
    key: String,
    layout: Layout,
    s: &Settings,
    v: &Provenance,
) -> Result<(LockRequest, Option<TimingPlan>)> {
    // Every default below comes from the one per-mode table (docs/timing.md, "Defaults, per mode").
    let defaults = if mode == Mode::Lock {
        defaults::LOCK
    } else {
        defaults::SUPERVISING
    };
    // In the order the settings were always checked, so the first bad one is the one reported.
    let session = session_settings(mode, &defaults, s, v)?;
    let wait = wait_of(s, v)?;
    let (limit, queue) = limit_and_queue(s, v)?;
    let hold = hold_settings(mode, &defaults, s, v, session.lock_delay, limit)?;
    let request = LockRequest {
        key,
        layout,
        limit,
        session,
        wait,
        metadata: s.metadata.clone().map(|m| m.0),
        hold,
        queue,
    };
    let plan = if mode.supervises() {
        Some(check_timing(&request, v)?)
    } else {
        None
    };
    Ok((request, plan))
}

/// The session: TTL (10 s…86400 s, or 0 for none), lock-delay (≤ 60 s), behavior (never
/// `delete` in a supervising mode), checks and the health-check TTL (≥ 1 s).
fn session_settings(
    mode: Mode,
    defaults: &defaults::ModeDefaults,
    s: &Settings,
    v: &Provenance,
) -> Result<SessionSettings> {
    let ttl = session_ttl(defaults, s, v)?;
    let lock_delay = s.lock_delay.map_or(defaults.lock_delay, |d| d.0);
    if lock_delay > Duration::from_secs(60) {
        return Err(v.bad(
            "lock_delay",
            format!("{} is more than 60s", duration::display(lock_delay)),
        ));
    }
    let behavior = session_behavior(mode, defaults, s, v)?;
    let checks = match &s.session_checks {
        None | Some(types::Checks::ModeDefault) => defaults.session_checks.checks(),
        Some(types::Checks::None) => Checks::None,
        Some(types::Checks::List(ids)) => Checks::List(ids.clone()),
    };
    let health_check_ttl = s.health_check_ttl.map(|d| d.0);
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
    Ok(SessionSettings {
        name: s.session_name.as_ref().and_then(Text::non_empty),
        ttl: (!ttl.is_zero()).then_some(ttl),
        lock_delay,
        behavior,
        checks,
        health_check_ttl,
    })
}

/// The session TTL: the one given or the mode's default; 10 s…86400 s, or 0 for none.
fn session_ttl(
    defaults: &defaults::ModeDefaults,
    s: &Settings,
    v: &Provenance,
) -> Result<Duration> {
    if s.session_ttl == Some(Ttl::Negative) {
        return Err(Error::new(
            ErrorKind::InvalidTtl,
            format!(
                "invalid {}: a negative TTL is outside 10s…86400s (or 0 for no TTL)",
                v.source("session_ttl").describe("session_ttl")
            ),
        ));
    }
    let ttl = match s.session_ttl {
        Some(Ttl::Given(ttl)) => ttl,
        _ => defaults.session_ttl,
    };
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
    Ok(ttl)
}

/// What Consul does to the key when the session ends: release (the default) or delete, never
/// `delete` in a supervising mode.
fn session_behavior(
    mode: Mode,
    defaults: &defaults::ModeDefaults,
    s: &Settings,
    v: &Provenance,
) -> Result<Behavior> {
    let behavior =
        match s.session_behavior.as_ref().map(|t| t.0.as_str()) {
            None => defaults.session_behavior,
            Some("release") => Behavior::Release,
            Some("delete") if mode.supervises() => return Err(v.bad(
                "session_behavior",
                "`delete` cannot be held safely by run, execute or sidecar: a session that ends \
                 while its holder cannot hear would delete the key, and the next holder would take \
                 it for never used and skip its takeover wait (docs/timing.md, \"First use\"); \
                 use release (the default)",
            )),
            Some("delete") => Behavior::Delete,
            Some(other) => {
                return Err(v.bad(
                    "session_behavior",
                    format!("`{other}` is not release or delete"),
                ))
            }
        };
    Ok(behavior)
}

/// How to wait: non-blocking, blocking, or blocking with a timeout or a poll interval (> 0).
fn wait_of(s: &Settings, v: &Provenance) -> Result<Wait> {
    let timeout = s.timeout.map(|d| d.0);
    let poll = s.poll_interval.map(|d| d.0);
    if poll.is_some_and(|p| p.is_zero()) {
        return Err(v.bad("poll_interval", "must be greater than 0"));
    }
    Ok(if switch(s.non_blocking) {
        Wait::NonBlocking
    } else if timeout.is_some_and(|t| !t.is_zero()) || poll.is_some() {
        Wait::BlockingFor { timeout, poll }
    } else {
        Wait::Blocking
    })
}

/// The semaphore limit (≥ 1) and `--queue`, which orders waiters for one holder only.
fn limit_and_queue(s: &Settings, v: &Provenance) -> Result<(u32, bool)> {
    let limit = s.limit.map_or(1, |n| n.0);
    if limit == 0 {
        return Err(v.bad("limit", "must be at least 1"));
    }
    let queue = switch(s.queue);
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
    Ok((limit, queue))
}

/// What holding means: renewed (every mode but `lock`), the kill grace, the takeover delay (the
/// per-mode formula unless given), `--monitor-retry` (≥ 1) and `--unsafe-allow-overlap`.
fn hold_settings(
    mode: Mode,
    defaults: &defaults::ModeDefaults,
    s: &Settings,
    v: &Provenance,
    lock_delay: Duration,
    limit: u32,
) -> Result<HoldSettings> {
    let kill_grace = s.kill_grace.map_or(defaults.kill_grace, |d| d.0);
    let takeover_delay = s.takeover_delay.map_or_else(
        || defaults.takeover_delay(kill_grace, lock_delay, limit),
        |d| d.0,
    );
    let monitor_retry = match s.monitor_retry.map(|n| n.0) {
        Some(0) => {
            return Err(v.bad(
                "monitor_retry",
                "must be at least 1 (leave it unset to never give up early)",
            ))
        }
        other => other,
    };
    Ok(HoldSettings {
        keep_alive: mode != Mode::Lock,
        kill_grace,
        takeover_delay,
        monitor_retry,
        allow_unsafe: switch(s.unsafe_allow_overlap),
    })
}

/// Refuses, before anything touches Consul, a configuration where the timing model finds a
/// failure path that leaves the command less time to stop than it needs (docs/timing.md);
/// with `--unsafe-allow-overlap` the plan lists each such path, which start-up logs as a warning.
fn check_timing(request: &LockRequest, v: &Provenance) -> Result<TimingPlan> {
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
        Ok(plan) => Ok(plan),
    }
}
