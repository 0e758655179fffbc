//! How one setting's raw value is read: the value types of [`super::settings::Settings`]. Each
//! accepts what a YAML file, an environment variable (figment parses `15` as a number and
//! `true` as a bool) or a flag (always a string) can give, and says why it refuses the rest.

use std::time::Duration;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use serde_json::Value;

use crate::backend::consul::HttpAuth;
use crate::duration;

/// Metadata is stored in the lock value; Consul refuses values over 512 KiB, so refuse early.
pub(super) const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Reads the raw value and turns it into `T`, the refusal becoming the deserializer's error
/// (figment adds the setting's path, so `config` can name where the value came from).
fn read<'de, D, T>(
    deserializer: D,
    parse: impl FnOnce(Value) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let value = Value::deserialize(deserializer)?;
    parse(value).map_err(D::Error::custom)
}

/// A string setting; numbers and bools (as env values parse) are taken as their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl Text {
    /// The text, with an empty value read as unset (most settings treat `""` so).
    pub(crate) fn non_empty(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.clone())
    }
}

fn text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, got {other}")),
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| text(v).map(Text))
    }
}

/// A duration: a number of seconds or a string like `1.5`, `500ms`, `1m30s` (`crate::duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seconds(pub Duration);

fn seconds(value: Value) -> Result<Duration, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(duration::from_seconds)
            .ok_or_else(|| format!("`{n}` is not a valid duration")),
        Value::String(s) => duration::parse(&s),
        other => Err(format!("expected a duration, got {other}")),
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| seconds(v).map(Seconds))
    }
}

/// The session TTL: a duration, or a negative one kept as such so validation can refuse it
/// as a TTL problem (exit 7, as consullock answers) rather than as an unreadable duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    Negative,
    Given(Duration),
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| {
            let negative = match &v {
                Value::String(s) => s.trim().starts_with('-'),
                Value::Number(n) => n.as_f64().is_some_and(|f| f < 0.0),
                _ => false,
            };
            if negative {
                Ok(Ttl::Negative)
            } else {
                seconds(v).map(Ttl::Given)
            }
        })
    }
}

/// A boolean: true/false, or (from env) yes/no, on/off, 1/0; empty is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switch(pub bool);

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| match v {
            Value::Bool(b) => Ok(Switch(b)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                // Every spelling of Consul's own boolean parsing (`T`, `F`, …) and yes/no, on/off.
                "1" | "t" | "true" | "yes" | "on" => Ok(Switch(true)),
                "0" | "f" | "false" | "no" | "off" | "" => Ok(Switch(false)),
                _ => Err(format!("`{s}` is not a boolean (true/false)")),
            },
            Value::Number(n) if n.as_u64() == Some(1) => Ok(Switch(true)),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Switch(false)),
            other => Err(format!("`{other}` is not a boolean (true/false)")),
        })
    }
}

/// A non-negative count, given as a number or as its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| {
            let s = text(v)?;
            s.trim()
                .parse::<u32>()
                .map(Count)
                .map_err(|_| format!("`{s}` is not a non-negative integer"))
        })
    }
}

/// A list of strings: a YAML array, or one string of comma-separated items (env, flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct List(pub Vec<String>);

fn list(value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!("expected strings, got {other}")),
            })
            .collect(),
        Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
        other => Err(format!("expected a list, got {other}")),
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| list(v).map(List))
    }
}

/// The health checks a session is bound to: `none`, empty (the mode's default) or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checks {
    None,
    ModeDefault,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Checks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| match &v {
            Value::String(s) if s.trim() == "none" => Ok(Checks::None),
            Value::String(s) if s.trim().is_empty() => Ok(Checks::ModeDefault),
            _ => list(v).map(Checks::List),
        })
    }
}

/// JSON stored with the lock: given as JSON text (flags, env) or as YAML structure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metadata(pub Value);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| match v {
            Value::String(text) => {
                if text.len() > MAX_METADATA_BYTES {
                    return Err(format!(
                        "{} bytes is more than the {MAX_METADATA_BYTES}-byte limit",
                        text.len()
                    ));
                }
                serde_json::from_str::<Value>(&text)
                    .map(Metadata)
                    .map_err(|e| format!("not valid JSON ({e}): {}", abbreviate(&text)))
            }
            other => Ok(Metadata(other)),
        })
    }
}

/// `user:password` for HTTP basic auth; empty means unset, like the token. The value is a
/// secret, so refusals describe what is wrong with it and never show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials(pub Option<HttpAuth>);

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, |v| match v {
            Value::String(text) if text.is_empty() => Ok(Credentials(None)),
            Value::String(text) => HttpAuth::parse(&text).map(|a| Credentials(Some(a))),
            _ => Err("expected a USER:PASSWORD string (value not shown)".into()),
        })
    }
}

/// A value cut to 60 characters for an error message.
fn abbreviate(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text.to_string()
    }
}
