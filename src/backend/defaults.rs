//! The one table of per-mode defaults (docs/timing.md, "Defaults, per mode"): the config layer
//! and the library's request defaults take their values from it, every affected flag's `--help`
//! is rendered from it, and tests hold the README's options table and the chart's values to it.

use std::time::Duration;

use super::timing::{TimingInputs, MIN_BUDGET, SAFETY_MARGIN};
use super::{Behavior, Checks};
use crate::duration;

/// The defaults of one column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModeDefaults {
    pub session_ttl: Duration,
    /// Consul's lock-delay on the session. The supervising modes keep Consul's 15 s: a holder
    /// that cannot reach its agent rides out the outage on lock-delay + takeover delay
    /// (docs/timing.md); `lock` supervises nothing and creates its sessions as consullock does.
    pub lock_delay: Duration,
    pub session_behavior: Behavior,
    /// `None` in the supervising modes: a gossip flap cannot end a healthy hold (docs/timing.md,
    /// "Why TTL-only sessions"); `lock` keeps the agent's `serfHealth`, as consullock does.
    pub session_checks: DefaultChecks,
    /// SIGTERM → SIGKILL; `lock` runs nothing, so its value only feeds the takeover formula.
    pub kill_grace: Duration,
}

/// The checks column: the backend's [`Checks`] without a list (no default names a check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultChecks {
    AgentDefault,
    None,
}

impl DefaultChecks {
    pub(crate) fn checks(self) -> Checks {
        match self {
            DefaultChecks::AgentDefault => Checks::AgentDefault,
            DefaultChecks::None => Checks::None,
        }
    }
}

/// `lockwrap lock`: leaves the lock held (README, "Subcommands").
pub(crate) const LOCK: ModeDefaults = ModeDefaults {
    session_ttl: Duration::from_secs(86400),
    lock_delay: Duration::ZERO,
    session_behavior: Behavior::Delete,
    session_checks: DefaultChecks::AgentDefault,
    kill_grace: Duration::from_secs(5),
};

/// `run`, `execute`, `sidecar`, the chart and the library (`LockRequest::new`).
pub(crate) const SUPERVISING: ModeDefaults = ModeDefaults {
    session_ttl: Duration::from_secs(15),
    lock_delay: Duration::from_secs(15),
    session_behavior: Behavior::Release,
    session_checks: DefaultChecks::None,
    kill_grace: Duration::from_secs(5),
};

/// The modes of the [`SUPERVISING`] column, as the help and the README name them.
pub(crate) const SUPERVISING_MODES: &str = "run, execute, sidecar";

impl ModeDefaults {
    /// The takeover delay when none is given: the least that covers a forced unlock and a node
    /// force-left under a holder cut off from its agent (docs/timing.md); a semaphore slot has
    /// no lock-delay, so `limit > 1` counts it as 0.
    pub(crate) fn takeover_delay(
        &self,
        kill_grace: Duration,
        lock_delay: Duration,
        limit: u32,
    ) -> Duration {
        let guarding = if limit > 1 {
            Duration::ZERO
        } else {
            lock_delay
        };
        TimingInputs::auto_takeover_delay(kill_grace, guarding)
    }
}

/// A flag whose default the table gives; [`help`] and [`render`] take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    SessionTtl,
    LockDelay,
    SessionBehavior,
    SessionChecks,
    KillGrace,
    TakeoverDelay,
}

impl Setting {
    /// What the flag does, without its default.
    fn meaning(self) -> &'static str {
        match self {
            Setting::SessionTtl => "Session TTL: 10s…86400s, or 0 for none",
            Setting::LockDelay => {
                "Consul lock-delay after the session is invalidated, 0…60s (an explicit 0 is sent)"
            }
            Setting::SessionBehavior => {
                "What happens to the key when the session is invalidated: release or delete"
            }
            Setting::SessionChecks => {
                "Health checks bound to the session: `none` (TTL only), or check IDs separated by commas"
            }
            Setting::KillGrace => "Time between SIGTERM and SIGKILL when the command must stop",
            Setting::TakeoverDelay => {
                "When the previous holder did not release cleanly (key deleted, session expired or destroyed, forced unlock), wait this long after acquiring before starting the command, so its command has surely stopped"
            }
        }
    }
}

/// A duration as the table shows it: `0` for none, else `duration::display`.
fn show(d: Duration) -> String {
    if d.is_zero() {
        "0".to_string()
    } else {
        duration::display(d)
    }
}

fn show_checks(c: DefaultChecks) -> &'static str {
    match c {
        DefaultChecks::AgentDefault => "the agent's serfHealth",
        DefaultChecks::None => "none",
    }
}

/// The default column of `setting`, one text for every place that states it (help, README).
pub(crate) fn render(setting: Setting) -> String {
    let per_mode = |supervising: String, lock: String| {
        if supervising == lock {
            supervising
        } else {
            format!("{SUPERVISING_MODES}: {supervising}; lock: {lock}")
        }
    };
    let (s, l) = (&SUPERVISING, &LOCK);
    match setting {
        Setting::SessionTtl => per_mode(show(s.session_ttl), show(l.session_ttl)),
        Setting::LockDelay => per_mode(show(s.lock_delay), show(l.lock_delay)),
        Setting::SessionBehavior => per_mode(
            s.session_behavior.as_str().to_string(),
            l.session_behavior.as_str().to_string(),
        ),
        Setting::SessionChecks => per_mode(
            show_checks(s.session_checks).to_string(),
            show_checks(l.session_checks).to_string(),
        ),
        // Only the supervising modes stop a command.
        Setting::KillGrace => show(s.kill_grace),
        Setting::TakeoverDelay => format!(
            "max(kill grace + {}, kill grace + {} − lock-delay), lock-delay counted as 0 with -n N \
             ({} with the {SUPERVISING_MODES} defaults)",
            show(SAFETY_MARGIN),
            show(SAFETY_MARGIN + MIN_BUDGET),
            show(s.takeover_delay(s.kill_grace, s.lock_delay, 1)),
        ),
    }
}

/// A flag's help text: what it does and its defaults from the table.
pub(crate) fn help(setting: Setting) -> String {
    format!("{} [default: {}]", setting.meaning(), render(setting))
}

/// The table's rows and flags, for the tests that hold `--help`, the README and the chart to it.
#[cfg(test)]
impl Setting {
    pub(crate) const ALL: [Setting; 6] = [
        Setting::SessionTtl,
        Setting::LockDelay,
        Setting::SessionBehavior,
        Setting::SessionChecks,
        Setting::KillGrace,
        Setting::TakeoverDelay,
    ];

    /// The flag, as clap and the README spell it.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Setting::SessionTtl => "session-ttl",
            Setting::LockDelay => "lock-delay",
            Setting::SessionBehavior => "session-behavior",
            Setting::SessionChecks => "session-checks",
            Setting::KillGrace => "kill-grace",
            Setting::TakeoverDelay => "takeover-delay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervising_takeover_default_is_six_seconds() {
        // docs/timing.md, "Defaults, per mode": 6 s for run, 8 s for -n N.
        let s = SUPERVISING;
        assert_eq!(
            s.takeover_delay(s.kill_grace, s.lock_delay, 1),
            Duration::from_secs(6)
        );
        assert_eq!(
            s.takeover_delay(s.kill_grace, s.lock_delay, 2),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn a_setting_with_one_value_for_every_mode_names_no_mode() {
        assert_eq!(render(Setting::KillGrace), "5s");
        assert_eq!(
            render(Setting::LockDelay),
            "run, execute, sidecar: 15s; lock: 0"
        );
    }

    fn repo_file(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// The default column of the README options table's row for `--flag`, backticks removed.
    fn readme_default(readme: &str, flag: &str) -> Option<String> {
        readme.lines().find_map(|line| {
            let cells: Vec<String> = line
                .replace("\\|", "")
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect();
            // "| `--flag ARG` | default | meaning |" splits into "", flag, default, meaning, "".
            let first = cells.get(1)?;
            let named = first == &format!("--{flag}") || first.starts_with(&format!("--{flag} "));
            named.then(|| cells.get(2).cloned()).flatten()
        })
    }

    #[test]
    fn readme_options_table_states_the_table_defaults() {
        let readme = repo_file("README.md");
        for setting in Setting::ALL {
            let stated = readme_default(&readme, setting.flag())
                .unwrap_or_else(|| panic!("README has no options row for --{}", setting.flag()));
            assert_eq!(
                stated,
                render(setting),
                "README default of --{}",
                setting.flag()
            );
        }
    }

    #[test]
    fn chart_defaults_are_the_supervising_column() {
        use figment::providers::{Format, Yaml};
        use figment::Figment;
        let values = Figment::from(Yaml::string(&repo_file("charts/lockwrap/values.yaml")));
        let get = |key: &str| -> Option<u64> {
            values
                .extract_inner::<Option<u64>>(&format!("lockwrap.{key}"))
                .unwrap_or_else(|e| panic!("values.yaml lockwrap.{key}: {e}"))
        };
        let secs = |d: Duration| Some(d.as_secs());
        let s = SUPERVISING;
        assert_eq!(get("sessionTTLSeconds"), secs(s.session_ttl));
        assert_eq!(get("lockDelaySeconds"), secs(s.lock_delay));
        assert_eq!(get("killGraceSeconds"), secs(s.kill_grace));
        // Empty: the chart derives it with lockwrap's formula (templates/_env.tpl).
        assert_eq!(get("takeoverDelaySeconds"), None);
        let checks: String = values
            .extract_inner("lockwrap.sessionChecks")
            .expect("values.yaml lockwrap.sessionChecks");
        assert_eq!(checks, show_checks(s.session_checks));
        assert!(
            !values
                .extract_inner::<bool>("lockwrap.fastFailover")
                .expect("values.yaml lockwrap.fastFailover"),
            "the chart's defaults are the table's only without the fast-failover preset"
        );
    }
}
