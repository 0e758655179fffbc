//! Configuration: defaults < YAML file < `CONSUL_*` env < `LOCKWRAP_*` env < CLI flags, merged
//! with figment, then validated into a typed [`Config`]. Every error names the setting and
//! where its value came from, with exit code 3 for flags and 2 for env/file (6 for keys,
//! 7 for TTLs), and is raised before anything touches Consul.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use serde_json::Value;

use crate::backend::consul::{ConsulClient, ConsulSettings, HttpAuth};
use crate::backend::timing::TimingInputs;
use crate::backend::{Behavior, Checks, HoldSettings, Layout, LockRequest, SessionSettings, Wait};
use crate::cli::{Cli, Command, ConsulArgs, LockArgs, SupervisorArgs};
use crate::duration;
use crate::exit::{Error, ErrorKind, Result};
use crate::hooks::HookSet;
use crate::key;

/// Every setting name (YAML key; `LOCKWRAP_<UPPER>` env var; `--kebab-case` flag).
pub const SETTINGS: &[&str] = &[
    "key",
    "session_ttl",
    "lock_delay",
    "session_behavior",
    "session_checks",
    "session_name",
    "health_check_ttl",
    "non_blocking",
    "queue",
    "timeout",
    "poll_interval",
    "metadata",
    "on_before_lock",
    "on_already_locked",
    "layout",
    "limit",
    "kill_grace",
    "takeover_delay",
    "on_acquired",
    "on_lost",
    "on_released",
    "hook_timeout",
    "webhook",
    "monitor_retry",
    "unsafe_allow_overlap",
    "subreaper",
    "http_addr",
    "ready_always",
    "status_file",
    "exit_on_loss",
    "shell",
    "log_format",
    "consul_addr",
    "consul_ssl",
    "consul_token",
    "consul_token_file",
    "consul_cacert",
    "consul_capath",
    "consul_client_cert",
    "consul_client_key",
    "consul_tls_server_name",
    "consul_ssl_verify",
    "datacenter",
    "consul_http_auth",
    "namespace",
    "partition",
];

pub use crate::backend::consul::env::CONSUL_ENV;

/// Metadata is stored in the lock value; Consul refuses values over 512 KiB, so refuse early.
const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Which subcommand the config is for; decides defaults (README, "Options").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
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

/// Where a setting's value came from, for error messages and exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl Source {
    fn describe(&self, setting: &str) -> String {
        match self {
            Source::Flag => format!("--{}", setting.replace('_', "-")),
            Source::Env(var) => format!("environment variable {var}"),
            Source::File(path) => format!("`{setting}` in config file {}", path.display()),
            Source::Default => format!("default {setting}"),
        }
    }

    fn exit_kind(&self) -> ErrorKind {
        match self {
            Source::Flag | Source::Default => ErrorKind::InvalidArgument,
            Source::Env(_) | Source::File(_) => ErrorKind::InvalidEnvironment,
        }
    }
}

/// The fully validated configuration of one invocation.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub consul: ConsulSettings,
    /// The client built from `consul` during validation (so bad TLS files fail early and the
    /// TLS setup is paid once).
    pub client: ConsulClient,
    /// The lock request (key validated) for modes that take a key.
    pub request: LockRequest,
    pub hooks: HookSet,
    pub hook_timeout: Duration,
    pub shell: bool,
    pub subreaper: bool,
    pub http_addr: Option<SocketAddr>,
    pub ready_always: bool,
    pub status_file: Option<PathBuf>,
    pub exit_on_loss: bool,
    pub regex: bool,
    pub command: Vec<std::ffi::OsString>,
    pub log_json: bool,
    pub verbose: u8,
}

/// Raw merged values plus their sources.
struct Values {
    map: BTreeMap<String, Value>,
    sources: BTreeMap<String, Source>,
}

impl Values {
    fn source(&self, name: &str) -> Source {
        self.sources.get(name).cloned().unwrap_or(Source::Default)
    }

    fn bad(&self, name: &str, why: impl std::fmt::Display) -> Error {
        let source = self.source(name);
        Error::new(
            source.exit_kind(),
            format!("invalid {}: {why}", source.describe(name)),
        )
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(self.bad(name, format!("expected a string, got {other}"))),
        }
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .and_then(duration::from_seconds)
                .map(Some)
                .ok_or_else(|| self.bad(name, format!("`{n}` is not a valid duration"))),
            Some(Value::String(s)) => duration::parse(s).map(Some).map_err(|e| self.bad(name, e)),
            Some(other) => Err(self.bad(name, format!("expected a duration, got {other}"))),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
                _ => Err(self.bad(name, format!("`{s}` is not a boolean (true/false)"))),
            },
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
            Some(other) => Err(self.bad(name, format!("`{other}` is not a boolean (true/false)"))),
        }
    }

    fn u32(&self, name: &str) -> Result<Option<u32>> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| self.bad(name, format!("`{s}` is not a non-negative integer"))),
        }
    }

    fn list(&self, name: &str) -> Result<Vec<String>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.bad(name, format!("expected strings, got {other}"))),
                })
                .collect(),
            Some(Value::String(s)) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Some(other) => Err(self.bad(name, format!("expected a list, got {other}"))),
        }
    }

    fn path(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .string(name)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }
}

/// Builds the validated configuration for this invocation from flags, env and the YAML file.
pub fn load(cli: Cli) -> Result<Config> {
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
    let flags = flag_values(&cli);
    let values = merge(config_file.as_deref(), flags)?;
    build(mode, cli, &values)
}

fn merge(file: Option<&Path>, flags: BTreeMap<String, Value>) -> Result<Values> {
    // figment reads the environment lossily; a non-UTF-8 value would silently become a
    // different key or token, so refuse it by name first.
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = name.starts_with("LOCKWRAP_") || CONSUL_ENV.iter().any(|(var, _)| *var == name);
        if ours && value.to_str().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidEnvironment,
                format!("invalid environment variable {name}: not valid UTF-8"),
            ));
        }
    }
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::InvalidEnvironment,
                format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                ),
            ));
        }
        figment = figment.merge(Yaml::file_exact(path));
    }
    let consul_env: Vec<&str> = CONSUL_ENV.iter().map(|(var, _)| *var).collect();
    figment = figment
        .merge(
            Env::raw()
                .only(&consul_env)
                .map(|k| {
                    let upper = k.as_str().to_ascii_uppercase();
                    CONSUL_ENV
                        .iter()
                        .find(|(var, _)| *var == upper)
                        .map(|(_, name)| (*name).into())
                        .unwrap_or_else(|| k.into())
                })
                .lowercase(false),
        )
        .merge(Env::prefixed("LOCKWRAP_").only(SETTINGS));

    let file_map: BTreeMap<String, Value> = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidEnvironment,
                    format!("cannot read config file {}: {e}", path.display()),
                )
            })?;
            let parsed: Option<BTreeMap<String, Value>> =
                serde_yaml_ng_compat(&text).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidEnvironment,
                        format!("config file {} is not valid YAML: {e}", path.display()),
                    )
                })?;
            parsed.unwrap_or_default()
        }
        None => BTreeMap::new(),
    };
    for key in file_map.keys() {
        let normalised = key.replace('-', "_");
        if !SETTINGS.contains(&normalised.as_str()) {
            let path = file.map(|p| p.display().to_string()).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::InvalidEnvironment,
                format!("config file {path}: unknown setting `{key}` (see examples/lockwrap.yaml for every setting)"),
            ));
        }
    }

    let merged: BTreeMap<String, Value> = figment.extract().map_err(|e| {
        Error::new(
            ErrorKind::InvalidEnvironment,
            format!("invalid configuration: {e}"),
        )
    })?;

    let mut map = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for (key, value) in merged {
        let name = key.replace('-', "_");
        let source =
            if std::env::var_os(format!("LOCKWRAP_{}", name.to_ascii_uppercase())).is_some() {
                Source::Env(format!("LOCKWRAP_{}", name.to_ascii_uppercase()))
            } else if let Some((var, _)) = CONSUL_ENV
                .iter()
                .find(|(var, n)| *n == name && std::env::var_os(var).is_some())
            {
                Source::Env((*var).to_string())
            } else if let Some(path) = file {
                Source::File(path.to_path_buf())
            } else {
                Source::Default
            };
        sources.insert(name.clone(), source);
        map.insert(name, value);
    }
    for (name, value) in flags {
        sources.insert(name.clone(), Source::Flag);
        map.insert(name, value);
    }
    Ok(Values { map, sources })
}

/// figment already parsed the file; this second parse only lists its top-level keys so unknown
/// ones can be refused by name (figment's extraction into a map would accept anything).
fn serde_yaml_ng_compat(
    text: &str,
) -> std::result::Result<Option<BTreeMap<String, Value>>, String> {
    let figment = Figment::from(Yaml::string(text));
    figment
        .extract::<Option<BTreeMap<String, Value>>>()
        .map_err(|e| e.to_string())
}

/// The flags that were given, as setting name → value.
fn flag_values(cli: &Cli) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, value: Option<&String>| {
        if let Some(v) = value {
            out.insert(name.to_string(), Value::String(v.clone()));
        }
    };
    consul_flags(&cli.consul, &mut put);
    put("log_format", cli.log_format.as_ref());
    let mut lists: Vec<(&str, &Vec<String>)> = Vec::new();
    let mut bools: Vec<(&str, bool)> = Vec::new();
    let mut key: Option<&String> = None;
    let mut layout: Option<&String> = None;
    match &cli.command {
        Command::Lock(c) => {
            lock_flags(&c.lock, &mut put, &mut lists, &mut bools);
        }
        Command::Unlock(c) => layout = c.layout.as_ref(),
        Command::Status(c) => layout = c.layout.as_ref(),
        Command::Execute(c) => {
            lock_flags(&c.lock, &mut put, &mut lists, &mut bools);
            supervisor_flags(&c.supervisor, &mut put, &mut lists, &mut bools);
        }
        Command::Run(c) => {
            key = c.key.as_ref();
            lock_flags(&c.lock, &mut put, &mut lists, &mut bools);
            supervisor_flags(&c.supervisor, &mut put, &mut lists, &mut bools);
            bools.push(("shell", c.shell));
        }
        Command::Sidecar(c) => {
            key = c.key.as_ref();
            lock_flags(&c.lock, &mut put, &mut lists, &mut bools);
            supervisor_flags(&c.supervisor, &mut put, &mut lists, &mut bools);
            bools.push(("exit_on_loss", c.exit_on_loss));
        }
        Command::Install(_) => {}
    }
    put("key", key);
    put("layout", layout);
    for (name, list) in lists {
        if !list.is_empty() {
            out.insert(
                name.to_string(),
                Value::Array(list.iter().cloned().map(Value::String).collect()),
            );
        }
    }
    // Switch flags only count when given: absent means "not set here", not false.
    for (name, on) in bools {
        if on {
            out.insert(name.to_string(), Value::Bool(true));
        }
    }
    out
}

fn consul_flags(c: &ConsulArgs, put: &mut impl FnMut(&str, Option<&String>)) {
    put("consul_addr", c.consul_addr.as_ref());
    put("consul_ssl", c.consul_ssl.as_ref());
    put("consul_token", c.consul_token.as_ref());
    put("consul_token_file", c.consul_token_file.as_ref());
    put("consul_cacert", c.consul_cacert.as_ref());
    put("consul_capath", c.consul_capath.as_ref());
    put("consul_client_cert", c.consul_client_cert.as_ref());
    put("consul_client_key", c.consul_client_key.as_ref());
    put("consul_tls_server_name", c.consul_tls_server_name.as_ref());
    put("consul_ssl_verify", c.consul_ssl_verify.as_ref());
    put("datacenter", c.datacenter.as_ref());
    put("consul_http_auth", c.consul_http_auth.as_ref());
    put("namespace", c.namespace.as_ref());
    put("partition", c.partition.as_ref());
}

fn lock_flags<'a>(
    l: &'a LockArgs,
    put: &mut impl FnMut(&str, Option<&String>),
    lists: &mut Vec<(&'static str, &'a Vec<String>)>,
    bools: &mut Vec<(&'static str, bool)>,
) {
    put("session_ttl", l.session_ttl.as_ref());
    put("lock_delay", l.lock_delay.as_ref());
    put("session_behavior", l.session_behavior.as_ref());
    put("session_checks", l.session_checks.as_ref());
    put("session_name", l.session_name.as_ref());
    put("health_check_ttl", l.health_check_ttl.as_ref());
    put("timeout", l.timeout.as_ref());
    put("poll_interval", l.poll_interval.as_ref());
    put("metadata", l.metadata.as_ref());
    put("layout", l.layout.as_ref());
    put("limit", l.limit.as_ref());
    lists.push(("on_before_lock", &l.on_before_lock));
    lists.push(("on_already_locked", &l.on_already_locked));
    bools.push(("non_blocking", l.non_blocking));
    bools.push(("queue", l.queue));
}

fn supervisor_flags<'a>(
    s: &'a SupervisorArgs,
    put: &mut impl FnMut(&str, Option<&String>),
    lists: &mut Vec<(&'static str, &'a Vec<String>)>,
    bools: &mut Vec<(&'static str, bool)>,
) {
    put("kill_grace", s.kill_grace.as_ref());
    put("takeover_delay", s.takeover_delay.as_ref());
    put("hook_timeout", s.hook_timeout.as_ref());
    put("webhook", s.webhook.as_ref());
    put("monitor_retry", s.monitor_retry.as_ref());
    put("http_addr", s.http_addr.as_ref());
    put("status_file", s.status_file.as_ref());
    lists.push(("on_acquired", &s.on_acquired));
    lists.push(("on_lost", &s.on_lost));
    lists.push(("on_released", &s.on_released));
    bools.push(("subreaper", s.subreaper));
    bools.push(("unsafe_allow_overlap", s.unsafe_allow_overlap));
    bools.push(("ready_always", s.ready_always));
}

fn consul_settings_and_client(v: &Values) -> Result<(ConsulSettings, ConsulClient)> {
    let address = v
        .string("consul_addr")?
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| crate::backend::consul::env::DEFAULT_ADDRESS.to_string());
    let token_inline = v.string("consul_token")?.filter(|s| !s.is_empty());
    let token_file = v.path("consul_token_file")?;
    // A token file wins unless the inline token comes from a higher-precedence source.
    let inline_wins = token_inline.is_some()
        && token_file.is_some()
        && rank(&v.source("consul_token")) > rank(&v.source("consul_token_file"));
    let token = match (&token_file, inline_wins) {
        (Some(path), false) => Some(
            crate::backend::consul::env::read_token_file(path)
                .map_err(|e| v.bad("consul_token_file", e))?,
        ),
        _ => token_inline,
    };
    let settings = ConsulSettings {
        address,
        ssl: v.bool("consul_ssl")?.unwrap_or(false),
        token,
        ca_file: v.path("consul_cacert")?,
        ca_path: v.path("consul_capath")?,
        client_cert: v.path("consul_client_cert")?,
        client_key: v.path("consul_client_key")?,
        tls_server_name: v
            .string("consul_tls_server_name")?
            .filter(|s| !s.is_empty()),
        ssl_verify: v.bool("consul_ssl_verify")?.unwrap_or(true),
        datacenter: v.string("datacenter")?.filter(|s| !s.is_empty()),
        http_auth: http_auth(v)?,
        namespace: scope_name(v, "namespace")?,
        partition: scope_name(v, "partition")?,
    };
    // Built now, so bad TLS files or addresses fail validation, before anything else happens.
    let client = ConsulClient::new(&settings).map_err(|e| v.bad(e.setting, e.message))?;
    Ok((settings, client))
}

/// `user:password` for HTTP basic auth; empty means unset, like the token. The value is a
/// secret, so errors describe what is wrong with it and never show it.
fn http_auth(v: &Values) -> Result<Option<HttpAuth>> {
    match v.get("consul_http_auth") {
        None => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => HttpAuth::parse(text)
            .map(Some)
            .map_err(|why| v.bad("consul_http_auth", why)),
        Some(_) => Err(v.bad(
            "consul_http_auth",
            "expected a USER:PASSWORD string (value not shown)",
        )),
    }
}

/// A namespace or partition name. Unlike most settings an empty value is refused rather than
/// read as unset: it would silently mean the default namespace, where a holder does not exclude
/// one in the intended namespace (README, "Consul connection").
fn scope_name(v: &Values, name: &str) -> Result<Option<String>> {
    let Some(value) = v.string(name)? else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Err(v.bad(
            name,
            format!("the {name} is empty; leave it unset for the default {name}"),
        ));
    }
    let inner_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let valid = value.len() <= 64
        && value.chars().all(inner_ok)
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(v.bad(
            name,
            format!(
                "`{value}` is not a Consul {name} name (letters, digits, `-` and `_`, \
                 starting and ending with a letter or digit, at most 64)"
            ),
        ));
    }
    Ok(Some(value))
}

fn rank(source: &Source) -> u8 {
    match source {
        Source::Default => 0,
        Source::File(_) => 1,
        Source::Env(var) if var.starts_with("CONSUL_") => 2,
        Source::Env(_) => 3,
        Source::Flag => 4,
    }
}

fn build(mode: Mode, cli: Cli, v: &Values) -> Result<Config> {
    // Positional arguments and the command line are not settings: take them from the CLI.
    let (positional_key, executable, command, regex) = match cli.command {
        Command::Lock(c) => (c.key, None, Vec::new(), false),
        Command::Unlock(c) => (c.key, None, Vec::new(), c.regex),
        Command::Status(c) => (c.key, None, Vec::new(), c.regex),
        Command::Execute(c) => (c.key, c.executable, Vec::new(), false),
        Command::Run(c) => (None, None, c.command, false),
        Command::Sidecar(_) | Command::Install(_) => (None, None, Vec::new(), false),
    };
    let log_json = match v.string("log_format")?.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => return Err(v.bad("log_format", format!("`{other}` is not text or json"))),
    };

    let key = match mode {
        Mode::Run | Mode::Sidecar => v.string("key")?,
        _ => positional_key,
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
    if !regex {
        key::validate(&key)?;
    } else {
        crate::locks::whole_match(&key)?;
    }
    if mode == Mode::Execute && executable.as_deref().map_or(true, str::is_empty) {
        return Err(Error::new(
            ErrorKind::MissingSetting,
            "no command given: lockwrap execute KEY 'SHELL STRING'",
        ));
    }
    if mode == Mode::Run && command.is_empty() {
        return Err(Error::new(
            ErrorKind::MissingSetting,
            "no command given: lockwrap run [options] -- CMD ARGS…",
        ));
    }

    let layout = match v.string("layout")?.as_deref() {
        None | Some("default") => Layout::Default,
        Some("consul-lock") => Layout::ConsulLock,
        Some(other) => {
            return Err(v.bad("layout", format!("`{other}` is not default or consul-lock")))
        }
    };
    let (consul, client) = consul_settings_and_client(v)?;

    let request = lock_request(mode, key, layout, v)?;
    let hook_timeout = v
        .duration("hook_timeout")?
        .unwrap_or(Duration::from_secs(30));
    if hook_timeout.is_zero() {
        return Err(v.bad("hook_timeout", "must be greater than 0"));
    }
    let webhook = v.string("webhook")?.filter(|s| !s.is_empty());
    if let Some(url) = &webhook {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(v.bad("webhook", format!("`{url}` is not an http(s) URL"))),
        }
    }
    let hooks = HookSet {
        before_lock: v.list("on_before_lock")?,
        already_locked: v.list("on_already_locked")?,
        acquired: v.list("on_acquired")?,
        lost: v.list("on_lost")?,
        released: v.list("on_released")?,
        webhook,
    };
    let http_addr = match v.string("http_addr")?.filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(parse_listen(&text).map_err(|e| v.bad("http_addr", e))?),
    };
    let mut command = command;
    if mode == Mode::Execute {
        command = vec![executable.unwrap_or_default().into()];
    }
    Ok(Config {
        mode,
        consul,
        client,
        request,
        hooks,
        hook_timeout,
        shell: mode == Mode::Execute || v.bool("shell")?.unwrap_or(false),
        subreaper: v.bool("subreaper")?.unwrap_or(false),
        http_addr,
        ready_always: v.bool("ready_always")?.unwrap_or(false),
        status_file: v.path("status_file")?,
        exit_on_loss: v.bool("exit_on_loss")?.unwrap_or(false),
        regex,
        command,
        log_json,
        verbose: cli.verbose,
    })
}

fn lock_request(mode: Mode, key: String, layout: Layout, v: &Values) -> Result<LockRequest> {
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

fn abbreviate(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
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
