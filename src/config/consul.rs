//! The Consul connection settings of the CLI, validated with their sources; the client is built
//! here so bad TLS files or addresses fail before anything else happens.

use super::settings::Settings;
use super::sources::Provenance;
use super::types::Text;
use super::{path, switch};
use crate::backend::consul::{ConsulClient, ConsulSettings};
use crate::exit::Result;

pub(super) fn consul_settings_and_client(
    s: &Settings,
    v: &Provenance,
) -> Result<(ConsulSettings, ConsulClient)> {
    let address = s
        .consul_addr
        .as_ref()
        .map(|t| t.0.clone())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| crate::backend::consul::env::DEFAULT_ADDRESS.to_string());
    let token_inline = s.consul_token.as_ref().and_then(Text::non_empty);
    let token_file = path(&s.consul_token_file);
    // A token file wins unless the inline token comes from a higher-precedence source.
    let inline_wins = token_inline.is_some()
        && token_file.is_some()
        && v.source("consul_token").rank() > v.source("consul_token_file").rank();
    let token = match (&token_file, inline_wins) {
        (Some(path), false) => Some(
            crate::backend::consul::env::read_token_file(path)
                .map_err(|e| v.bad("consul_token_file", e))?,
        ),
        _ => token_inline,
    };
    let settings = ConsulSettings {
        address,
        ssl: switch(s.consul_ssl),
        token,
        ca_file: path(&s.consul_cacert),
        ca_path: path(&s.consul_capath),
        client_cert: path(&s.consul_client_cert),
        client_key: path(&s.consul_client_key),
        tls_server_name: s.consul_tls_server_name.as_ref().and_then(Text::non_empty),
        ssl_verify: s.consul_ssl_verify.map_or(true, |b| b.0),
        datacenter: s.datacenter.as_ref().and_then(Text::non_empty),
        http_auth: s.consul_http_auth.clone().and_then(|c| c.0),
        namespace: scope_name(v, "namespace", &s.namespace)?,
        partition: scope_name(v, "partition", &s.partition)?,
    };
    // Built now, so bad TLS files or addresses fail validation, before anything else happens.
    let client = ConsulClient::new(&settings).map_err(|e| v.bad(e.setting, e.message))?;
    Ok((settings, client))
}

/// A namespace or partition name. Unlike most settings an empty value is refused rather than
/// read as unset: it would silently mean the default namespace, where a holder does not exclude
/// one in the intended namespace (README, "Consul connection").
fn scope_name(v: &Provenance, name: &str, value: &Option<Text>) -> Result<Option<String>> {
    let Some(Text(value)) = value.clone() else {
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
