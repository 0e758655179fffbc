//! Consul's own environment variables (`CONSUL_HTTP_ADDR` and friends), read the way Consul's
//! clients read them. The library's `LockManager::from_env` uses this; the CLI merges the same
//! variables with flags, `LOCKWRAP_*` and YAML in `config` (README, "Environment and config file").

use std::path::PathBuf;

use super::client::{ConsulSettings, HttpAuth, SettingsError};

/// Consul's own environment variables and the setting each feeds.
pub(crate) const CONSUL_ENV: &[(&str, &str)] = &[
    ("CONSUL_HTTP_ADDR", "consul_addr"),
    ("CONSUL_HTTP_SSL", "consul_ssl"),
    ("CONSUL_HTTP_TOKEN", "consul_token"),
    ("CONSUL_HTTP_TOKEN_FILE", "consul_token_file"),
    ("CONSUL_CACERT", "consul_cacert"),
    ("CONSUL_CAPATH", "consul_capath"),
    ("CONSUL_CLIENT_CERT", "consul_client_cert"),
    ("CONSUL_CLIENT_KEY", "consul_client_key"),
    ("CONSUL_TLS_SERVER_NAME", "consul_tls_server_name"),
    ("CONSUL_HTTP_SSL_VERIFY", "consul_ssl_verify"),
    ("CONSUL_DATACENTER", "datacenter"),
    ("CONSUL_HTTP_AUTH", "consul_http_auth"),
    ("CONSUL_NAMESPACE", "namespace"),
    ("CONSUL_PARTITION", "partition"),
];

/// consullock's variables, each honoured as the Consul variable it stands for (README,
/// "Environment and config file"): `CONSUL_DC` names the datacenter, `CONSUL_SCHEME=https` turns
/// on HTTPS like `CONSUL_HTTP_SSL=true`. When both are set they must agree.
pub(crate) const CONSULLOCK_ENV: &[(&str, &str)] = &[
    ("CONSUL_DC", "CONSUL_DATACENTER"),
    ("CONSUL_SCHEME", "CONSUL_HTTP_SSL"),
];

/// The default agent address, as Consul's clients assume it.
pub(crate) const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// Reads a token file: the trimmed contents, refused when unreadable or empty.
pub(crate) fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token)
}

/// A boolean variable: every spelling Consul's own parsing accepts (`1`, `t`, `T`, `true`, `TRUE`,
/// `True` and the false ones), and `yes`/`no`, `on`/`off` in any case.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The value of Consul's variable `name` as looked up through `var`, with consullock's variable
/// that stands for it (`CONSULLOCK_ENV`) filling in when Consul's is unset or empty. A consullock
/// variable that contradicts Consul's, or a `CONSUL_SCHEME` other than http/https, is refused:
/// the error names the variable to fix.
pub(crate) fn consul_var(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<String>, (&'static str, String)> {
    let own = var(name);
    let Some(&(alias, _)) = CONSULLOCK_ENV
        .iter()
        .find(|(_, stands_for)| *stands_for == name)
    else {
        return Ok(own);
    };
    let Some(alias_text) = var(alias).filter(|v| !v.trim().is_empty()) else {
        return Ok(own);
    };
    let set_own = own.as_deref().map(str::trim).filter(|v| !v.is_empty());
    if alias == "CONSUL_SCHEME" {
        let https = match alias_text.trim().to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err((alias, format!("`{alias_text}` is not http or https"))),
        };
        return match set_own {
            None => Ok(Some(https.to_string())),
            Some(ssl) if parse_bool(ssl) == Some(!https) => Err((
                alias,
                format!("`{alias_text}` contradicts CONSUL_HTTP_SSL=`{ssl}`; set one of them"),
            )),
            Some(_) => Ok(own),
        };
    }
    match set_own {
        None => Ok(Some(alias_text)),
        Some(value) if value != alias_text.trim() => Err((
            alias,
            format!("`{alias_text}` contradicts {name}=`{value}`; set one of them"),
        )),
        Some(_) => Ok(own),
    }
}

/// Which variable gave `setting` its value in the process environment: Consul's own, or the
/// consullock variable standing in for it (for error messages).
pub(crate) fn env_var_of(setting: &str) -> Option<&'static str> {
    let (var, _) = CONSUL_ENV.iter().find(|(_, s)| *s == setting)?;
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    match CONSULLOCK_ENV
        .iter()
        .find(|(_, stands_for)| stands_for == var)
    {
        Some((alias, _)) if !set(var) && set(alias) => Some(alias),
        _ => Some(var),
    }
}

impl ConsulSettings {
    /// Settings from Consul's own environment variables only; a token file wins over
    /// `CONSUL_HTTP_TOKEN`, as in Consul's CLI.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Self::from_env`] with the variables looked up through `var` (testable).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let setting_of = |name: &str| {
            CONSUL_ENV
                .iter()
                .find(|(v, _)| *v == name)
                .map(|(_, s)| *s)
                .unwrap_or("consul_addr")
        };
        let bad = |name: &str, message: String| SettingsError {
            setting: setting_of(name),
            message: format!("invalid environment variable {name}: {message}"),
        };
        let resolved = |name: &str| {
            consul_var(&var, name).map_err(|(alias, message)| SettingsError {
                setting: setting_of(name),
                message: format!("invalid environment variable {alias}: {message}"),
            })
        };
        let flag = |name: &str, default: bool| match resolved(name)? {
            None => Ok(default),
            Some(text) => {
                parse_bool(&text).ok_or_else(|| bad(name, format!("`{text}` is not true or false")))
            }
        };
        let token = match var("CONSUL_HTTP_TOKEN_FILE") {
            Some(path) => Some(
                read_token_file(std::path::Path::new(&path))
                    .map_err(|e| bad("CONSUL_HTTP_TOKEN_FILE", e))?,
            ),
            None => var("CONSUL_HTTP_TOKEN"),
        };
        let http_auth = var("CONSUL_HTTP_AUTH")
            .map(|text| HttpAuth::parse(&text).map_err(|e| bad("CONSUL_HTTP_AUTH", e)))
            .transpose()?;
        Ok(ConsulSettings {
            address: var("CONSUL_HTTP_ADDR").unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
            ssl: flag("CONSUL_HTTP_SSL", false)?,
            token,
            ca_file: var("CONSUL_CACERT").map(PathBuf::from),
            ca_path: var("CONSUL_CAPATH").map(PathBuf::from),
            client_cert: var("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: var("CONSUL_CLIENT_KEY").map(PathBuf::from),
            tls_server_name: var("CONSUL_TLS_SERVER_NAME"),
            ssl_verify: flag("CONSUL_HTTP_SSL_VERIFY", true)?,
            datacenter: resolved("CONSUL_DATACENTER")?,
            http_auth,
            namespace: var("CONSUL_NAMESPACE"),
            partition: var("CONSUL_PARTITION"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_and_values() {
        let s = ConsulSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.address, DEFAULT_ADDRESS);
        assert!(s.ssl_verify && !s.ssl);
        let s = ConsulSettings::from_vars(vars(&[
            ("CONSUL_HTTP_ADDR", "https://c:8501"),
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
            ("CONSUL_HTTP_TOKEN", "t"),
            ("CONSUL_DATACENTER", "dc2"),
        ]))
        .unwrap();
        assert_eq!(s.address, "https://c:8501");
        assert!(!s.ssl_verify);
        assert_eq!(s.token.as_deref(), Some("t"));
        assert_eq!(s.datacenter.as_deref(), Some("dc2"));
    }

    #[test]
    fn consullock_variables_stand_in_for_consuls() {
        let s =
            ConsulSettings::from_vars(vars(&[("CONSUL_SCHEME", "https"), ("CONSUL_DC", "dc3")]))
                .unwrap();
        assert!(s.ssl);
        assert_eq!(s.datacenter.as_deref(), Some("dc3"));
        // Consul's own variable wins when both agree; HTTPS spelled as Go's ParseBool spells it.
        let s = ConsulSettings::from_vars(vars(&[
            ("CONSUL_SCHEME", "HTTPS"),
            ("CONSUL_HTTP_SSL", "T"),
            ("CONSUL_DC", "dc3"),
            ("CONSUL_DATACENTER", "dc3"),
        ]))
        .unwrap();
        assert!(s.ssl);
        let s = ConsulSettings::from_vars(vars(&[("CONSUL_SCHEME", "http")])).unwrap();
        assert!(!s.ssl);
    }

    #[test]
    fn every_spelling_of_go_parse_bool_is_accepted() {
        for (text, want) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("F", false),
            ("FALSE", false),
            ("false", false),
            ("False", false),
        ] {
            let s = ConsulSettings::from_vars(vars(&[("CONSUL_HTTP_SSL", text)])).unwrap();
            assert_eq!(s.ssl, want, "CONSUL_HTTP_SSL={text}");
        }
    }

    #[test]
    fn contradicting_consullock_variables_are_refused_by_name() {
        let err = ConsulSettings::from_vars(vars(&[
            ("CONSUL_SCHEME", "https"),
            ("CONSUL_HTTP_SSL", "false"),
        ]))
        .unwrap_err();
        assert_eq!(err.setting, "consul_ssl");
        assert!(err.message.contains("CONSUL_SCHEME"), "{err}");
        let err =
            ConsulSettings::from_vars(vars(&[("CONSUL_DC", "dc1"), ("CONSUL_DATACENTER", "dc2")]))
                .unwrap_err();
        assert_eq!(err.setting, "datacenter");
        let err = ConsulSettings::from_vars(vars(&[("CONSUL_SCHEME", "ftp")])).unwrap_err();
        assert!(err.message.contains("`ftp` is not http or https"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable_and_hide_secrets() {
        let err = ConsulSettings::from_vars(vars(&[("CONSUL_HTTP_SSL", "maybe")])).unwrap_err();
        assert!(err.message.contains("CONSUL_HTTP_SSL"), "{err}");
        let err = ConsulSettings::from_vars(vars(&[("CONSUL_HTTP_AUTH", "s3cr3t")])).unwrap_err();
        assert!(err.message.contains("CONSUL_HTTP_AUTH"), "{err}");
        assert!(!err.message.contains("s3cr3t"), "{err}");
        let err = ConsulSettings::from_vars(vars(&[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent")]))
            .unwrap_err();
        assert_eq!(err.setting, "consul_token_file");
    }
}
