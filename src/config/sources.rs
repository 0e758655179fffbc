//! Where settings come from: the figment providers in precedence order (defaults < YAML file <
//! `CONSUL_*` env < `LOCKWRAP_*` env < flags; README, "Environment and config file"), and the
//! provenance of each value, read back from figment's metadata for error messages and exit codes.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::settings::{self, Settings};
use crate::backend::consul::env::{consul_var, env_var_of, CONSULLOCK_ENV, CONSUL_ENV};
use crate::cli::Cli;
use crate::exit::{Error, ErrorKind, Result};

/// Where a setting's value came from, for error messages and exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
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

    /// Precedence: a value from a higher rank overrides one from a lower rank.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Source::Default => 0,
            Source::File(_) => 1,
            Source::Env(var) if var.starts_with("CONSUL_") => 2,
            Source::Env(_) => 3,
            Source::Flag => 4,
        }
    }
}

/// The metadata names of the providers, so a value's metadata maps back to a [`Source`].
const FLAGS: &str = "command-line flags";
const CONSUL_VARS: &str = "Consul environment variables";
const LOCKWRAP_VARS: &str = "lockwrap environment variables";

/// Which source set each setting, as figment recorded it while merging.
pub(super) struct Provenance {
    figment: Figment,
}

impl Provenance {
    pub(super) fn source(&self, name: &str) -> Source {
        let Some(metadata) = self.figment.find_metadata(name) else {
            return Source::Default;
        };
        if let Some(figment::Source::File(path)) = &metadata.source {
            return Source::File(path.clone());
        }
        match metadata.name.as_ref() {
            FLAGS => Source::Flag,
            CONSUL_VARS | LOCKWRAP_VARS => {
                Source::Env(metadata.interpolate(&Profile::Default, &[name]))
            }
            _ => Source::Default,
        }
    }

    /// An invalid-value error naming the setting and where its value came from.
    pub(super) fn bad(&self, name: &str, why: impl std::fmt::Display) -> Error {
        let source = self.source(name);
        Error::new(
            source.exit_kind(),
            format!("invalid {}: {why}", source.describe(name)),
        )
    }
}

/// Merges every source and reads the typed settings; refusals name the setting and its source.
pub(super) fn gather(file: Option<&Path>, cli: &Cli) -> Result<(Settings, Provenance)> {
    refuse_non_utf8_env()?;
    let names = settings::names();
    let mut figment = Figment::new();
    if let Some(path) = file {
        figment = figment.merge(YamlFile::read(path, names)?);
    }
    let consul_env = consul_env()?;
    let consul_metadata =
        Metadata::named(CONSUL_VARS).interpolater(|_: &Profile, keys: &[&str]| {
            let name = keys.join(".");
            env_var_of(&name).map(str::to_string).unwrap_or(name)
        });
    let lockwrap_metadata =
        Metadata::named(LOCKWRAP_VARS).interpolater(|_: &Profile, keys: &[&str]| {
            format!("LOCKWRAP_{}", keys.join(".").to_ascii_uppercase())
        });
    let flags_metadata = Metadata::named(FLAGS).interpolater(|_: &Profile, keys: &[&str]| {
        format!("--{}", keys.join(".").replace('_', "-"))
    });
    figment = figment
        .merge(Named(Serialized::defaults(consul_env), consul_metadata))
        .merge(Named(
            Env::prefixed("LOCKWRAP_").only(names),
            lockwrap_metadata,
        ))
        // Only flags that were given serialize (see `cli`): absent means "not set here".
        .merge(Named(Serialized::defaults(cli), flags_metadata));
    let provenance = Provenance { figment };
    let settings = provenance
        .figment
        .extract::<Settings>()
        .map_err(|e| extraction_error(e, file, &provenance))?;
    Ok((settings, provenance))
}

/// Consul's own variables (and consullock's, standing in for them) as settings. Read here rather
/// than by figment's `Env`, because a consullock variable is not a setting of its own: it fills
/// in a Consul variable, and must not contradict it.
fn consul_env() -> Result<Dict> {
    let lookup = |name: &str| std::env::var(name).ok();
    let mut dict = Dict::new();
    for (var, setting) in CONSUL_ENV {
        let value = consul_var(&lookup, var).map_err(|(alias, why)| {
            Error::new(
                ErrorKind::InvalidEnvironment,
                format!("invalid environment variable {alias}: {why}"),
            )
        })?;
        if let Some(value) = value {
            dict.insert((*setting).to_string(), value.into());
        }
    }
    Ok(dict)
}

/// figment reads the environment lossily; a non-UTF-8 value would silently become a different
/// key or token, so refuse it by name first.
fn refuse_non_utf8_env() -> Result<()> {
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = name.starts_with("LOCKWRAP_")
            || CONSUL_ENV.iter().any(|(var, _)| *var == name)
            || CONSULLOCK_ENV.iter().any(|(var, _)| *var == name);
        if ours && value.to_str().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidEnvironment,
                format!("invalid environment variable {name}: not valid UTF-8"),
            ));
        }
    }
    Ok(())
}

/// Turns figment's error (kind + path) into lockwrap's one-line message naming the source.
fn extraction_error(error: figment::Error, file: Option<&Path>, provenance: &Provenance) -> Error {
    match &error.kind {
        // Only the file can hold keys outside the list: env and flags are filtered by name.
        figment::error::Kind::UnknownField(key, _) => Error::new(
            ErrorKind::InvalidEnvironment,
            format!(
                "config file {}: unknown setting `{key}` (see examples/lockwrap.yaml for every setting)",
                file.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ),
        figment::error::Kind::Message(why) if !error.path.is_empty() => {
            provenance.bad(&error.path.join("."), why)
        }
        _ => Error::new(
            ErrorKind::InvalidEnvironment,
            format!("invalid configuration: {error}"),
        ),
    }
}

/// A provider under a name of our choosing, so a value's metadata says which source it was.
struct Named<P>(P, Metadata);

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        self.1.clone()
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// The YAML config file, read and parsed once, keys written with dashes (`session-ttl`) taken
/// as the setting they name.
struct YamlFile {
    path: PathBuf,
    dict: Dict,
}

impl YamlFile {
    fn read(path: &Path, names: &[&str]) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::InvalidEnvironment,
                format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidEnvironment,
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        let parsed: Dict = Yaml::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidEnvironment,
                format!("config file {} is not valid YAML: {e}", path.display()),
            )
        })?;
        let dict = parsed
            .into_iter()
            .map(|(key, value)| {
                let normalised = key.replace('-', "_");
                // An unknown key keeps its spelling, so the refusal quotes what the file says.
                let key = if names.contains(&normalised.as_str()) {
                    normalised
                } else {
                    key
                };
                (key, value)
            })
            .collect();
        Ok(YamlFile {
            path: path.to_path_buf(),
            dict,
        })
    }
}

impl Provider for YamlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("config file", figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}
