//! Configuration in two steps: the raw `settings` (one typed list) merged by figment from
//! defaults < YAML file < `CONSUL_*` env < `LOCKWRAP_*` env < CLI flags (`sources`), then
//! validated into a [`Config`] per mode. Every error names the setting and where its value came
//! from, with exit code 3 for flags and 2 for env/file (6 for keys, 7 for TTLs), and is raised
//! before anything touches Consul.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::consul::{ConsulClient, ConsulSettings};
use crate::backend::timing::TimingPlan;
use crate::backend::{Layout, LockRequest};
use crate::cli::{Cli, Command};
use crate::exit::{Error, ErrorKind, Result};
use crate::hooks::HookSet;
use crate::key;

mod consul;
mod lock;
pub(crate) mod settings;
mod sources;
mod types;

use consul::consul_settings_and_client;
use lock::lock_request;
use settings::Settings;
use sources::{gather, Provenance};
use types::{List, Switch, Text};

/// Which subcommand the config is for; decides defaults (README, "Options").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Lock,
    Unlock,
    Status,
    Execute,
    Run,
    Sidecar,
}

impl Mode {
    fn supervises(self) -> bool {
        matches!(self, Mode::Execute | Mode::Run | Mode::Sidecar)
    }
}

/// The fully validated configuration of one invocation: what every mode uses, and in [`Task`]
/// what only its mode uses.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Shown in the configuration's debug log line (`Debug`) and checked by the config tests;
    /// the code uses `client`, built from it.
    #[allow(dead_code)]
    pub consul: ConsulSettings,
    /// The client built from `consul` during validation (so bad TLS files fail early and the
    /// TLS setup is paid once).
    pub client: ConsulClient,
    pub log_json: bool,
    pub verbose: u8,
    pub task: Task,
}

/// The mode and the settings only it uses.
#[derive(Debug, Clone)]
pub(crate) enum Task {
    Lock(Acquiring),
    Unlock(Query),
    Status(Query),
    Execute(Supervised),
    Run(Supervised),
    Sidecar(Supervised),
}

/// `unlock` and `status`: a key (or regex) in a layout; no session of their own.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub key: String,
    pub layout: Layout,
    pub regex: bool,
}

/// What every acquiring mode needs: the lock request (key validated) and the hooks fired
/// around acquiring (`lock` fires the before-lock and already-locked ones).
#[derive(Debug, Clone)]
pub(crate) struct Acquiring {
    pub request: LockRequest,
    /// The timing model's plan for `request`, made once when the configuration was checked
    /// (`None` for `lock`, which supervises nothing): what start-up reports from it.
    pub plan: Option<TimingPlan>,
    pub hooks: HookSet,
    pub hook_timeout: Duration,
}

/// An acquiring mode that supervises a command or a leadership term (execute, run, sidecar).
#[derive(Debug, Clone)]
pub(crate) struct Supervised {
    pub lock: Acquiring,
    pub supervision: Supervision,
}

/// How a held lock is supervised and reported.
#[derive(Debug, Clone)]
pub(crate) struct Supervision {
    pub http_addr: Option<SocketAddr>,
    pub ready_always: bool,
    pub status_file: Option<PathBuf>,
    /// Sidecar: exit when the lock is lost instead of campaigning again.
    pub exit_on_loss: bool,
    /// `--subreaper`, accepted for compatibility: supervising modes always are subreapers now.
    /// Kept so the debug log line shows what was asked.
    #[allow(dead_code)]
    pub subreaper: bool,
    /// Run the command through `/bin/sh -c` (always for execute).
    pub shell: bool,
    /// The command (execute: the one shell string; sidecar: none).
    pub command: Vec<std::ffi::OsString>,
    /// run/execute: the exit code when the lock is taken and `--non-blocking` or `--timeout`
    /// gave up (README, "Exit codes"); `None` = the documented 100 / 5.
    pub locked_exit_code: Option<i32>,
}

impl Config {
    /// The key (or regex) this invocation works on.
    pub(crate) fn key(&self) -> &str {
        match &self.task {
            Task::Lock(lock) => &lock.request.key,
            Task::Unlock(query) | Task::Status(query) => &query.key,
            Task::Execute(job) | Task::Run(job) | Task::Sidecar(job) => &job.lock.request.key,
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        match &self.task {
            Task::Lock(lock) => lock.request.layout,
            Task::Unlock(query) | Task::Status(query) => query.layout,
            Task::Execute(job) | Task::Run(job) | Task::Sidecar(job) => job.lock.request.layout,
        }
    }

    /// Whether this mode supervises processes (run, execute, sidecar): then lockwrap is always a
    /// child subreaper and starts the guardian before the runtime (README, "The supervisor");
    /// `--subreaper` is accepted but no longer needed.
    pub(crate) fn supervising(&self) -> bool {
        match &self.task {
            Task::Execute(_) | Task::Run(_) | Task::Sidecar(_) => true,
            Task::Lock(_) | Task::Unlock(_) | Task::Status(_) => false,
        }
    }
}

/// Builds the validated configuration for this invocation from flags, env and the YAML file.
pub(crate) fn load(cli: Cli) -> Result<Config> {
    let mode = match &cli.command {
        Command::Lock(_) => Mode::Lock,
        Command::Unlock(_) => Mode::Unlock,
        Command::Status(_) => Mode::Status,
        Command::Execute(_) => Mode::Execute,
        Command::Run(_) => Mode::Run,
        Command::Sidecar(_) => Mode::Sidecar,
        // `main` runs `install` without loading any configuration.
        Command::Install(_) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "`install` takes no lock settings",
            ))
        }
    };
    let config_file = cli.config.clone().or_else(|| {
        std::env::var_os("LOCKWRAP_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let (settings, provenance) = gather(config_file.as_deref(), &cli)?;
    build(mode, cli, settings, &provenance)
}

fn build(mode: Mode, cli: Cli, s: Settings, v: &Provenance) -> Result<Config> {
    // In the order the settings were always checked, so the first bad one is the one reported.
    let given = Invocation::of(cli.command);
    let log_json = match s.log_format.as_ref().map(|t| t.0.as_str()) {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(v.bad("log_format", format!("`{other}` is not text or json"))),
    };
    let key = lock_key(mode, &s, &given)?;
    let layout = match s.layout.as_ref().map(|t| t.0.as_str()) {
        None | Some("default") => Layout::Default,
        Some("consul-lock") => Layout::ConsulLock,
        Some(other) => {
            return Err(v.bad("layout", format!("`{other}` is not default or consul-lock")))
        }
    };
    let (consul, client) = consul_settings_and_client(&s, v)?;
    let (request, plan) = lock_request(mode, key, layout, &s, v)?;
    let lock = Acquiring {
        request,
        plan,
        hook_timeout: hook_timeout_of(&s, v)?,
        hooks: hooks_of(&s, v)?,
    };
    // Every setting is validated in every mode (a bad value is refused even where the mode
    // would not use it); each mode then keeps only what it uses.
    let supervision = supervision_of(mode, &s, v, given.executable, given.command)?;
    let query = |lock: Acquiring| Query {
        key: lock.request.key,
        layout,
        regex: given.regex,
    };
    let supervised = |lock| Supervised { lock, supervision };
    let task = match mode {
        Mode::Lock => Task::Lock(lock),
        Mode::Unlock => Task::Unlock(query(lock)),
        Mode::Status => Task::Status(query(lock)),
        Mode::Execute => Task::Execute(supervised(lock)),
        Mode::Run => Task::Run(supervised(lock)),
        Mode::Sidecar => Task::Sidecar(supervised(lock)),
    };
    Ok(Config {
        consul,
        client,
        log_json,
        verbose: cli.verbose,
        task,
    })
}

/// What the command line gives besides settings: the positional key, `execute`'s shell string,
/// `run`'s command, and whether the key is a regular expression (`unlock -r`, `status -r`).
struct Invocation {
    positional_key: Option<String>,
    executable: Option<String>,
    command: Vec<std::ffi::OsString>,
    regex: bool,
}

impl Invocation {
    fn of(command: Command) -> Self {
        let (positional_key, executable, command, regex) = match command {
            Command::Lock(c) => (c.key, None, Vec::new(), false),
            Command::Unlock(c) => (c.key, None, Vec::new(), c.regex),
            Command::Status(c) => (c.key, None, Vec::new(), c.regex),
            Command::Execute(c) => (c.key, c.executable, Vec::new(), false),
            Command::Run(c) => (None, None, c.command, false),
            Command::Sidecar(_) | Command::Install(_) => (None, None, Vec::new(), false),
        };
        Invocation {
            positional_key,
            executable,
            command,
            regex,
        }
    }
}

/// The lock key (`--key` for run and sidecar, the argument otherwise), checked; and for `run`
/// and `execute`, that a command was given.
fn lock_key(mode: Mode, s: &Settings, given: &Invocation) -> Result<String> {
    let key = match mode {
        Mode::Run | Mode::Sidecar => s.key.clone().map(|t| t.0),
        _ => given.positional_key.clone(),
    };
    let Some(key) = key.filter(|k| !k.is_empty() || mode != Mode::Run) else {
        return Err(Error::new(
            ErrorKind::MissingSetting,
            match mode {
                Mode::Run | Mode::Sidecar => {
                    "no lock key: give --key KEY, LOCKWRAP_KEY or `key:` in the config file"
                }
                _ => "no lock key given (the KEY argument)",
            },
        ));
    };
    if !given.regex {
        key::validate(&key)?;
    } else {
        crate::locks::whole_match(&key)?;
    }
    if mode == Mode::Execute && given.executable.as_deref().map_or(true, str::is_empty) {
        return Err(Error::new(
            ErrorKind::MissingSetting,
            "no command given: lockwrap execute KEY 'SHELL STRING'",
        ));
    }
    if mode == Mode::Run && given.command.is_empty() {
        return Err(Error::new(
            ErrorKind::MissingSetting,
            "no command given: lockwrap run [options] -- CMD ARGS…",
        ));
    }
    Ok(key)
}

/// `--hook-timeout` (> 0; 30 s by default).
fn hook_timeout_of(s: &Settings, v: &Provenance) -> Result<Duration> {
    let hook_timeout = s.hook_timeout.map_or(Duration::from_secs(30), |d| d.0);
    if hook_timeout.is_zero() {
        return Err(v.bad("hook_timeout", "must be greater than 0"));
    }
    Ok(hook_timeout)
}

/// The event hooks and the webhook (an http(s) URL).
fn hooks_of(s: &Settings, v: &Provenance) -> Result<HookSet> {
    let webhook = s.webhook.as_ref().and_then(Text::non_empty);
    if let Some(url) = &webhook {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(v.bad("webhook", format!("`{url}` is not an http(s) URL"))),
        }
    }
    Ok(HookSet {
        before_lock: list(&s.on_before_lock),
        already_locked: list(&s.on_already_locked),
        acquired: list(&s.on_acquired),
        lost: list(&s.on_lost),
        released: list(&s.on_released),
        webhook,
    })
}

/// What `run`, `execute` and `sidecar` need besides the lock: the HTTP server, the status file,
/// the command (`execute`'s shell string as `sh -c`), and the exit code for a lock that stays
/// taken.
fn supervision_of(
    mode: Mode,
    s: &Settings,
    v: &Provenance,
    executable: Option<String>,
    command: Vec<std::ffi::OsString>,
) -> Result<Supervision> {
    let http_addr = match s.http_addr.as_ref().and_then(Text::non_empty) {
        None => None,
        Some(text) => Some(parse_listen(&text).map_err(|e| v.bad("http_addr", e))?),
    };
    let shell = mode == Mode::Execute || switch(s.shell);
    let command = match (mode, executable) {
        (Mode::Execute, executable) => vec![executable.unwrap_or_default().into()],
        _ => command,
    };
    let locked_exit_code = match s.locked_exit_code.map(|n| n.0) {
        Some(code) if code > 255 => {
            return Err(v.bad(
                "locked_exit_code",
                format!("{code} is not an exit code (0…255)"),
            ))
        }
        code => code.map(|c| c as i32),
    };
    Ok(Supervision {
        http_addr,
        ready_always: switch(s.ready_always),
        status_file: path(&s.status_file),
        exit_on_loss: switch(s.exit_on_loss),
        subreaper: switch(s.subreaper),
        shell,
        command,
        locked_exit_code,
    })
}

/// `HOST:PORT`, or `:PORT` for every interface.
fn parse_listen(text: &str) -> std::result::Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    full.parse()
        .map_err(|_| format!("`{text}` is not HOST:PORT (e.g. 0.0.0.0:8080 or :8080)"))
}

/// A switch's value; unset is off.
fn switch(value: Option<Switch>) -> bool {
    value.is_some_and(|s| s.0)
}

/// A list's items; unset is empty.
fn list(value: &Option<List>) -> Vec<String> {
    value.as_ref().map(|l| l.0.clone()).unwrap_or_default()
}

/// A path setting; empty means unset.
fn path(value: &Option<Text>) -> Option<PathBuf> {
    value.as_ref().and_then(Text::non_empty).map(PathBuf::from)
}

#[cfg(test)]
mod precedence_tests;
#[cfg(test)]
mod rejection_tests;

#[cfg(test)]
mod tests {
    use super::sources::Source;
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":8080").unwrap().port(), 8080);
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn flag_sources_are_exit_3_and_env_2() {
        assert_eq!(Source::Flag.exit_kind().exit_code(), 3);
        assert_eq!(Source::Env("X".into()).exit_kind().exit_code(), 2);
        assert_eq!(Source::File("f".into()).exit_kind().exit_code(), 2);
    }
}
