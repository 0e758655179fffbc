//! The one list of settings: a serde struct whose field names are the setting names (YAML key,
//! `LOCKWRAP_<UPPER>` env var, `--kebab-case` flag) and whose field types say how each is read.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::types::{Checks, Count, Credentials, List, Metadata, Seconds, Switch, Text, Ttl};

/// Raw settings merged from every source, typed but not yet checked against each other or the
/// mode (that is `config::load`'s job). `None` means no source set it.
///
/// Every setting is listed here and nowhere else: the `LOCKWRAP_*` filter and the YAML key
/// check read the names from this struct through [`names`]. No `Debug`: it holds the token.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    // What to lock and how the session behaves.
    pub key: Option<Text>,
    pub session_ttl: Option<Ttl>,
    pub lock_delay: Option<Seconds>,
    pub session_behavior: Option<Text>,
    pub session_checks: Option<Checks>,
    pub session_name: Option<Text>,
    pub health_check_ttl: Option<Seconds>,
    pub non_blocking: Option<Switch>,
    pub queue: Option<Switch>,
    pub timeout: Option<Seconds>,
    pub poll_interval: Option<Seconds>,
    pub metadata: Option<Metadata>,
    pub on_before_lock: Option<List>,
    pub on_already_locked: Option<List>,
    pub layout: Option<Text>,
    pub limit: Option<Count>,
    // Supervision of the command.
    pub kill_grace: Option<Seconds>,
    pub takeover_delay: Option<Seconds>,
    pub on_acquired: Option<List>,
    pub on_lost: Option<List>,
    pub on_released: Option<List>,
    pub hook_timeout: Option<Seconds>,
    pub webhook: Option<Text>,
    pub monitor_retry: Option<Count>,
    pub unsafe_allow_overlap: Option<Switch>,
    pub subreaper: Option<Switch>,
    pub http_addr: Option<Text>,
    pub ready_always: Option<Switch>,
    pub status_file: Option<Text>,
    pub exit_on_loss: Option<Switch>,
    pub locked_exit_code: Option<Count>,
    pub shell: Option<Switch>,
    pub log_format: Option<Text>,
    // The Consul connection (README, "Consul connection").
    pub consul_addr: Option<Text>,
    pub consul_ssl: Option<Switch>,
    pub consul_token: Option<Text>,
    pub consul_token_file: Option<Text>,
    pub consul_cacert: Option<Text>,
    pub consul_capath: Option<Text>,
    pub consul_client_cert: Option<Text>,
    pub consul_client_key: Option<Text>,
    pub consul_tls_server_name: Option<Text>,
    pub consul_ssl_verify: Option<Switch>,
    pub datacenter: Option<Text>,
    pub consul_http_auth: Option<Credentials>,
    pub namespace: Option<Text>,
    pub partition: Option<Text>,
}

/// Every setting name, read from `Settings`' own field list (serde hands it to
/// `deserialize_struct`), so no second list can drift from the struct.
pub fn names() -> &'static [&'static str] {
    let mut capture = FieldNames(None);
    // The capturing deserializer always fails after recording the names: nothing to keep.
    let _ = Settings::deserialize(&mut capture);
    capture.0.unwrap_or_default()
}

/// A deserializer that records the field names a struct asks for and then gives up.
struct FieldNames(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut FieldNames {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "only a struct's field names can be captured",
        ))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("field names captured"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_struct() {
        let names = names();
        assert_eq!(names.len(), 47);
        assert_eq!(names.first(), Some(&"key"));
        assert!(names.contains(&"consul_http_auth"));
        assert!(!names.contains(&"config"));
    }
}
