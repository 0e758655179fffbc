//! The Consul connection settings of the CLI, validated with their sources; the client is built
//! here so bad TLS files or addresses fail before anything else happens.

use serde_json::Value;

use super::values::{rank, Values};
use crate::backend::consul::{ConsulClient, ConsulSettings, HttpAuth};
use crate::exit::Result;

pub(super) fn consul_settings_and_client(v: &Values) -> Result<(ConsulSettings, ConsulClient)> {
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
