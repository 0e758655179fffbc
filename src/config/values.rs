//! Raw setting values merged from flags, `LOCKWRAP_*` env, Consul's `CONSUL_*` env and the YAML
//! file (README, "Environment and config file"), each with the source it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use serde_json::Value;

use super::{CONSUL_ENV, SETTINGS};
use crate::cli::{Cli, Command, ConsulArgs, LockArgs, SupervisorArgs};
use crate::duration;
use crate::exit::{Error, ErrorKind, Result};

/// Where a setting's value came from, for error messages and exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl Source {
    pub(super) fn describe(&self, setting: &str) -> String {
        match self {
            Source::Flag => format!("--{}", setting.replace('_', "-")),
            Source::Env(var) => format!("environment variable {var}"),
            Source::File(path) => format!("`{setting}` in config file {}", path.display()),
            Source::Default => format!("default {setting}"),
        }
    }

    pub(super) fn exit_kind(&self) -> ErrorKind {
        match self {
            Source::Flag | Source::Default => ErrorKind::InvalidArgument,
            Source::Env(_) | Source::File(_) => ErrorKind::InvalidEnvironment,
        }
    }
}

/// Raw merged values plus their sources.
pub(super) struct Values {
    map: BTreeMap<String, Value>,
    sources: BTreeMap<String, Source>,
}

impl Values {
    pub(super) fn source(&self, name: &str) -> Source {
        self.sources.get(name).cloned().unwrap_or(Source::Default)
    }

    pub(super) fn bad(&self, name: &str, why: impl std::fmt::Display) -> Error {
        let source = self.source(name);
        Error::new(
            source.exit_kind(),
            format!("invalid {}: {why}", source.describe(name)),
        )
    }

    pub(super) fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(self.bad(name, format!("expected a string, got {other}"))),
        }
    }

    pub(super) fn duration(&self, name: &str) -> Result<Option<Duration>> {
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

    pub(super) fn bool(&self, name: &str) -> Result<Option<bool>> {
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

    pub(super) fn u32(&self, name: &str) -> Result<Option<u32>> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| self.bad(name, format!("`{s}` is not a non-negative integer"))),
        }
    }

    pub(super) fn list(&self, name: &str) -> Result<Vec<String>> {
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

    pub(super) fn path(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .string(name)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    }
}

pub(super) fn merge(file: Option<&Path>, flags: BTreeMap<String, Value>) -> Result<Values> {
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
pub(super) fn flag_values(cli: &Cli) -> BTreeMap<String, Value> {
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

pub(super) fn rank(source: &Source) -> u8 {
    match source {
        Source::Default => 0,
        Source::File(_) => 1,
        Source::Env(var) if var.starts_with("CONSUL_") => 2,
        Source::Env(_) => 3,
        Source::Flag => 4,
    }
}
