//! The timing model, written once: for a session's settings, how soon another holder can start
//! after each way the session can end; from that, when this holder's command must be dead, how
//! often to renew the session and pass its health check, and which settings cannot be held
//! safely. `docs/timing.md` explains the model and its table; nothing else in lockwrap invents a
//! deadline or a cadence.
//!
//! What Consul guarantees (and lockwrap relies on):
//! - a session with TTL `t` is not invalidated for lack of renewal before `t` after a renew
//!   (Consul waits up to 2×t; only `t` is promised);
//! - a check bound to the session (the agent's `serfHealth`, or any check the user names) can go
//!   critical at any moment, and the session dies with it;
//! - lockwrap's own TTL check (`--health-check-ttl D`) goes critical no sooner than `D` after the
//!   last pass the agent received;
//! - after an invalidation, Consul refuses to let anyone acquire the session's keys for the
//!   session's lock-delay;
//! - a destroyed session, a deleted key, a forced unlock or an agent that lost its state end the
//!   hold at any moment and without lock-delay; the holder sees that through its watch;
//! - a node deregistered (`consul force-leave`, a graceful `consul leave`, the reaper) ends every
//!   session on it at that moment, with lock-delay. A holder that can hear its agent sees it
//!   through its watch; a holder that cannot (its agent crashed or is cut off) cannot, so an
//!   unreachable agent means "the session may end at any moment": the window is the one of a
//!   bound check, from the last renew;
//! - lock-delay guards a lock key, not a semaphore slot: a slot freed by a dead session is taken
//!   again at once, so for `-n N` the model counts lock-delay as 0.
//!
//! After any unclean end, the next lockwrap holder waits `takeover-delay` before starting its
//! command (see `commands::acquire::takeover_wait`).

use std::time::Duration;

use crate::duration::display;

/// Slack between "the command must be dead" and the earliest moment another holder can start:
/// scheduling delays, the time to send signals and to read a watch answer.
pub(crate) const SAFETY_MARGIN: Duration = Duration::from_secs(1);
/// The least time between the last confirmation (renew or check pass) and the stop point that
/// still leaves room for one request and two retries; below it one slow request ends the hold.
pub(crate) const MIN_BUDGET: Duration = Duration::from_secs(2);
/// A single renew or pass never waits longer than this for Consul's answer.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failed renew or pass never come faster than this.
const MIN_RETRY: Duration = Duration::from_millis(200);

/// The settings the model reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimingInputs {
    /// Session TTL; `None` for a session without one.
    pub ttl: Option<Duration>,
    /// Whether the session is bound to checks that can go critical at any moment
    /// (`serfHealth`, user-named checks).
    pub any_moment_checks: bool,
    /// lockwrap's own agent TTL check (`--health-check-ttl`).
    pub health_check_ttl: Option<Duration>,
    pub lock_delay: Duration,
    pub takeover_delay: Duration,
    /// Time the command needs to stop once told to.
    pub kill_grace: Duration,
}

/// A way the session can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Consul expires the session: no renew for TTL.
    TtlExpiry,
    /// A bound check (`serfHealth`, user-named) goes critical.
    CheckCritical,
    /// The node is deregistered (force-leave, leave, reap) while the holder cannot hear its
    /// agent: every session on it ends at any moment.
    BlindDeregistration,
    /// lockwrap's own TTL check goes critical: no pass for its TTL.
    HealthCheck,
    /// Session destroyed, key deleted, forced unlock, agent state lost.
    ExternalBreak,
}

impl Path {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Path::TtlExpiry => "session TTL expiry",
            Path::CheckCritical => "a bound check (serfHealth) going critical",
            Path::BlindDeregistration => {
                "the node deregistered (force-leave) while lockwrap cannot reach its agent"
            }
            Path::HealthCheck => "the --health-check-ttl check going critical",
            Path::ExternalBreak => "session destroyed, key deleted or forced unlock",
        }
    }
}

/// The last moment lockwrap knew its session valid, for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// Send time of the last successful session renew (or of the create).
    Renew,
    /// Send time of the last successful pass of lockwrap's check (or of its registration).
    CheckPass,
    /// The watch sees the break as it happens.
    Watch,
}

/// Another holder can start no sooner than `window` after the path's evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PathBound {
    pub path: Path,
    pub evidence: Evidence,
    pub window: Duration,
}

impl PathBound {
    /// Time left to renew or pass, once the command's stop and the margin are reserved.
    pub(crate) fn budget(&self, kill_grace: Duration) -> Duration {
        self.window
            .checked_sub(kill_grace + SAFETY_MARGIN)
            .unwrap_or_default()
    }
}

/// When to confirm (renew, or pass) and when to give up, for one kind of evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    /// From the last successful confirmation's send time to the moment the command is told
    /// to stop.
    pub stop_after: Duration,
    pub every: Duration,
    pub retry_every: Duration,
    pub request_timeout: Duration,
}

impl Cadence {
    /// Three tries fit in `budget`; `period` bounds the interval from above (half the session
    /// TTL, a third of the check TTL) so Consul never sees a late confirmation in good times.
    fn within(budget: Duration, period: Duration) -> Self {
        Cadence {
            stop_after: budget,
            every: period.min(budget / 3),
            retry_every: (budget / 6).max(MIN_RETRY).min(period),
            request_timeout: (budget / 3).min(MAX_REQUEST_TIMEOUT),
        }
    }
}

/// A configuration that leaves the command less time to stop than it needs on some path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsafe {
    /// The setting to name in the error (its source decides the exit code).
    pub setting: &'static str,
    /// One line: which path, what is missing, the smallest safe values.
    pub message: String,
}

/// The model's answer for one configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimingPlan {
    pub inputs: TimingInputs,
    /// Every path possible with this configuration.
    pub paths: Vec<PathBound>,
    /// Renew cadence and deadline (`None`: the session has no TTL).
    pub renew: Option<Cadence>,
    /// Health-check pass cadence and deadline (`None`: no `--health-check-ttl`).
    pub pass: Option<Cadence>,
    /// Paths accepted as unsafe with `--unsafe-allow-overlap` (empty otherwise).
    pub accepted: Vec<Unsafe>,
}

impl TimingInputs {
    /// The default takeover delay: the command's stop plus the margin, which is what a holder
    /// that sees an external break through its watch needs; and at least what a holder that
    /// cannot hear its agent needs when its node is deregistered (lock-delay + takeover delay
    /// ≥ grace + margin + [`MIN_BUDGET`]). `lock_delay` is the one that protects the key
    /// (0 for a semaphore slot).
    pub(crate) fn auto_takeover_delay(kill_grace: Duration, lock_delay: Duration) -> Duration {
        let watched = kill_grace + SAFETY_MARGIN;
        let blind = (kill_grace + SAFETY_MARGIN + MIN_BUDGET)
            .checked_sub(lock_delay)
            .unwrap_or_default();
        watched.max(blind)
    }

    /// Every path this configuration allows, with its window.
    pub(crate) fn paths(&self) -> Vec<PathBound> {
        let after_invalidation = self.lock_delay + self.takeover_delay;
        let mut paths = Vec::new();
        if let Some(ttl) = self.ttl {
            paths.push(PathBound {
                path: Path::TtlExpiry,
                evidence: Evidence::Renew,
                window: ttl + after_invalidation,
            });
        }
        if self.any_moment_checks {
            paths.push(PathBound {
                path: Path::CheckCritical,
                evidence: Evidence::Renew,
                window: after_invalidation,
            });
        }
        // Always possible: an operator can force-leave the node of a holder cut off from its
        // agent; only the last renew says the session was still valid.
        paths.push(PathBound {
            path: Path::BlindDeregistration,
            evidence: Evidence::Renew,
            window: after_invalidation,
        });
        if let Some(d) = self.health_check_ttl {
            paths.push(PathBound {
                path: Path::HealthCheck,
                evidence: Evidence::CheckPass,
                window: d + after_invalidation,
            });
        }
        paths.push(PathBound {
            path: Path::ExternalBreak,
            evidence: Evidence::Watch,
            window: self.takeover_delay,
        });
        paths
    }
}

impl TimingPlan {
    /// Plans deadlines and cadences; refuses (unless `allow_unsafe`) a configuration where some
    /// path leaves the command less time to stop than it needs.
    pub(crate) fn new(inputs: TimingInputs, allow_unsafe: bool) -> Result<Self, Unsafe> {
        let paths = inputs.paths();
        let mut problems = Vec::new();
        let g = inputs.kill_grace;

        if inputs.ttl.is_none() {
            let message = if inputs.any_moment_checks {
                "a session without TTL that is bound to checks (serfHealth) can end at any \
                 moment with no renew to tell lockwrap it is still valid; set a --session-ttl \
                 (e.g. 15s)"
            } else {
                "a session without TTL and without checks outlives a crashed holder: nothing \
                 would ever free the lock; set a --session-ttl (e.g. 15s)"
            };
            problems.push(Unsafe {
                setting: "session_ttl",
                message: message.to_string(),
            });
        }
        let renew_budget = paths
            .iter()
            .filter(|p| p.evidence == Evidence::Renew)
            .map(|p| (p, p.budget(g)))
            .min_by_key(|(_, b)| *b);
        if let Some((bound, budget)) = renew_budget {
            if budget < MIN_BUDGET {
                problems.push(too_short(&inputs, bound));
            }
        }
        let pass_budget = paths
            .iter()
            .find(|p| p.evidence == Evidence::CheckPass)
            .map(|p| (p, p.budget(g)));
        if let Some((bound, budget)) = pass_budget {
            if budget < MIN_BUDGET {
                problems.push(too_short(&inputs, bound));
            }
        }
        if inputs.takeover_delay < g + SAFETY_MARGIN {
            problems.push(Unsafe {
                setting: "takeover_delay",
                message: format!(
                    "takeover delay {} is shorter than kill grace {} + {} margin: after a \
                     forced unlock, session destroy or key delete the next holder could start \
                     while this command is still stopping; use --takeover-delay {} or more \
                     (the default), or --kill-grace {} or less",
                    display(inputs.takeover_delay),
                    display(g),
                    display(SAFETY_MARGIN),
                    display(g + SAFETY_MARGIN),
                    display(
                        inputs
                            .takeover_delay
                            .checked_sub(SAFETY_MARGIN)
                            .unwrap_or_default()
                    ),
                ),
            });
        }
        if !problems.is_empty() && !allow_unsafe {
            return Err(problems.remove(0));
        }

        let floor = |b: Duration| b.max(MIN_BUDGET);
        let renew = inputs.ttl.map(|ttl| {
            let budget = renew_budget.map(|(_, b)| floor(b)).unwrap_or(MIN_BUDGET);
            Cadence::within(budget, ttl / 2)
        });
        let pass = inputs.health_check_ttl.map(|d| {
            let budget = pass_budget.map(|(_, b)| floor(b)).unwrap_or(MIN_BUDGET);
            Cadence::within(budget, d / 3)
        });
        Ok(TimingPlan {
            inputs,
            paths,
            renew,
            pass,
            accepted: problems,
        })
    }
}

/// The message for a path whose budget is below [`MIN_BUDGET`], naming the smallest safe values.
fn too_short(inputs: &TimingInputs, bound: &PathBound) -> Unsafe {
    let g = inputs.kill_grace;
    let needed = g + SAFETY_MARGIN + MIN_BUDGET;
    let missing = needed.checked_sub(bound.window).unwrap_or_default();
    let fixed_part = bound
        .window
        .checked_sub(inputs.lock_delay)
        .unwrap_or_default();
    let max_grace = bound
        .window
        .checked_sub(SAFETY_MARGIN + MIN_BUDGET)
        .unwrap_or_default();
    let min_delay = needed.checked_sub(fixed_part).unwrap_or_default();
    let (setting, alternative) = match bound.path {
        Path::TtlExpiry => (
            "session_ttl",
            format!(
                "--session-ttl {}",
                display(inputs.ttl.unwrap_or_default() + missing)
            ),
        ),
        Path::CheckCritical => ("lock_delay", "--session-checks none".to_string()),
        Path::BlindDeregistration => (
            "lock_delay",
            format!(
                "--takeover-delay {}",
                display(inputs.takeover_delay + missing)
            ),
        ),
        Path::HealthCheck => (
            "health_check_ttl",
            format!(
                "--health-check-ttl {}",
                display(inputs.health_check_ttl.unwrap_or_default() + missing)
            ),
        ),
        Path::ExternalBreak => ("takeover_delay", String::new()),
    };
    Unsafe {
        setting,
        message: format!(
            "on {}, another holder can start {} after lockwrap last knew its session valid, but \
             the command needs kill grace {} + {} margin + {} to renew: use --lock-delay {} or \
             more, {}, or --kill-grace {} or less",
            bound.path.describe(),
            display(bound.window),
            display(g),
            display(SAFETY_MARGIN),
            display(MIN_BUDGET),
            display(min_delay),
            alternative,
            display(max_grace),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TimingPlan {
        /// The latest a standby can start after this holder crashes (no stop, no release):
        /// the fastest invalidation path plus lock-delay and takeover-delay (docs/timing.md).
        fn crash_failover_bound(&self) -> Option<Duration> {
            self.paths
                .iter()
                .filter(|p| matches!(p.path, Path::TtlExpiry | Path::HealthCheck))
                .map(|p| p.window)
                .min()
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn inputs() -> TimingInputs {
        TimingInputs {
            ttl: Some(S(15)),
            any_moment_checks: false,
            health_check_ttl: None,
            lock_delay: S(15),
            takeover_delay: TimingInputs::auto_takeover_delay(S(5), S(15)),
            kill_grace: S(5),
        }
    }

    #[test]
    fn run_defaults_ride_out_an_outage_but_stop_before_a_blind_deregistration() {
        let plan = TimingPlan::new(inputs(), false).unwrap();
        let renew = plan.renew.unwrap();
        // A deregistration while blind: lock-delay 15 + takeover 6, minus grace 5 and margin 1.
        assert_eq!(renew.stop_after, S(15));
        assert_eq!(renew.every, S(5));
        assert!(renew.every + 2 * renew.retry_every < renew.stop_after);
        assert!(plan.pass.is_none());
    }

    #[test]
    fn default_takeover_covers_a_blind_holder_when_lock_delay_is_short() {
        assert_eq!(TimingInputs::auto_takeover_delay(S(5), S(15)), S(6));
        assert_eq!(
            TimingInputs::auto_takeover_delay(S(5), Duration::ZERO),
            S(8)
        );
        assert_eq!(
            TimingInputs::auto_takeover_delay(S(1), Duration::ZERO),
            S(4)
        );
        assert_eq!(TimingInputs::auto_takeover_delay(S(60), S(1)), S(62));
        let mut i = inputs();
        i.lock_delay = Duration::ZERO;
        i.takeover_delay = TimingInputs::auto_takeover_delay(S(5), Duration::ZERO);
        let plan = TimingPlan::new(i, false).unwrap();
        assert_eq!(plan.renew.unwrap().stop_after, MIN_BUDGET);
    }

    #[test]
    fn a_short_takeover_with_no_lock_delay_is_refused_for_the_blind_holder() {
        let mut i = inputs();
        i.lock_delay = Duration::ZERO;
        i.takeover_delay = S(6);
        let err = TimingPlan::new(i, false).unwrap_err();
        assert_eq!(err.setting, "lock_delay");
        assert!(err.message.contains("force-leave"), "{}", err.message);
        assert!(
            err.message.contains("--takeover-delay 8s"),
            "{}",
            err.message
        );
        assert!(err.message.contains("--kill-grace 3s"), "{}", err.message);
    }

    #[test]
    fn serf_health_with_no_lock_delay_is_refused_with_safe_values() {
        let mut i = inputs();
        i.lock_delay = Duration::ZERO;
        i.any_moment_checks = true;
        let err = TimingPlan::new(i, false).unwrap_err();
        assert_eq!(err.setting, "lock_delay");
        assert!(err.message.contains("--lock-delay 2s"), "{}", err.message);
        assert!(
            err.message.contains("--session-checks none"),
            "{}",
            err.message
        );
        assert!(err.message.contains("--kill-grace 3s"), "{}", err.message);
    }

    #[test]
    fn serf_health_deadline_is_lock_delay_based() {
        let mut i = inputs();
        i.any_moment_checks = true;
        let plan = TimingPlan::new(i, false).unwrap();
        // min(TTL path 30 s, check path 15 + 6 − 6 = 15 s).
        assert_eq!(plan.renew.unwrap().stop_after, S(15));
    }

    #[test]
    fn fast_failover_setting_fits() {
        let i = TimingInputs {
            ttl: Some(S(15)),
            any_moment_checks: false,
            health_check_ttl: Some(S(2)),
            lock_delay: Duration::ZERO,
            takeover_delay: TimingInputs::auto_takeover_delay(S(1), Duration::ZERO),
            kill_grace: S(1),
        };
        let plan = TimingPlan::new(i, false).unwrap();
        let pass = plan.pass.unwrap();
        // Health-check path 2 + 0 + 4, minus grace 1 and margin 1.
        assert_eq!(pass.stop_after, S(4));
        assert!(pass.every <= S(2) / 3);
        // Blind path 0 + 4, minus grace 1 and margin 1.
        assert_eq!(plan.renew.unwrap().stop_after, S(2));
        assert_eq!(plan.crash_failover_bound(), Some(S(6)));
    }

    #[test]
    fn takeover_delay_below_the_stop_is_refused() {
        let mut i = inputs();
        i.takeover_delay = Duration::ZERO;
        let err = TimingPlan::new(i, false).unwrap_err();
        assert_eq!(err.setting, "takeover_delay");
        assert!(
            err.message.contains("--takeover-delay 6s"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_session_without_ttl_is_refused_with_or_without_checks() {
        let mut i = inputs();
        i.ttl = None;
        let err = TimingPlan::new(i, false).unwrap_err();
        assert_eq!(err.setting, "session_ttl");
        assert!(err.message.contains("crashed holder"), "{}", err.message);
        i.any_moment_checks = true;
        assert_eq!(
            TimingPlan::new(i, false).unwrap_err().setting,
            "session_ttl"
        );
    }

    #[test]
    fn unsafe_flag_accepts_and_lists_the_risks() {
        let mut i = inputs();
        i.lock_delay = Duration::ZERO;
        i.takeover_delay = Duration::ZERO;
        i.any_moment_checks = true;
        let plan = TimingPlan::new(i, true).unwrap();
        assert_eq!(plan.accepted.len(), 2);
        assert_eq!(plan.renew.unwrap().stop_after, MIN_BUDGET);
    }

    #[test]
    fn huge_grace_needs_a_takeover_delay_that_covers_it() {
        let mut i = TimingInputs {
            ttl: Some(S(10)),
            any_moment_checks: false,
            health_check_ttl: None,
            lock_delay: Duration::ZERO,
            takeover_delay: S(9),
            kill_grace: S(8),
        };
        let err = TimingPlan::new(i, false).unwrap_err();
        assert!(
            err.message.contains("--takeover-delay 11s"),
            "{}",
            err.message
        );
        i.takeover_delay = TimingInputs::auto_takeover_delay(S(8), Duration::ZERO);
        assert!(TimingPlan::new(i, false).is_ok());
    }
}
