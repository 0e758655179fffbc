//! Connection settings for the Consul client (README, "Consul connection"): the address forms
//! (`host:port`, `http(s)://…`, `unix:///…`), TLS files, token, basic auth, scope.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Connection settings, already validated and with the token loaded.
#[derive(Clone, Default)]
pub struct ConsulSettings {
    /// `host:port`, `http://host:port`, `https://host:port` or `unix:///path/consul.sock`.
    pub address: String,
    /// Use HTTPS when the address has no scheme (`CONSUL_HTTP_SSL`).
    pub ssl: bool,
    /// ACL token (`CONSUL_HTTP_TOKEN`), sent as `X-Consul-Token`; never logged.
    pub token: Option<String>,
    /// CA bundle to verify Consul's certificate (`CONSUL_CACERT`).
    pub ca_file: Option<PathBuf>,
    /// Directory of PEM CA certificates (`CONSUL_CAPATH`).
    pub ca_path: Option<PathBuf>,
    /// Client certificate for mutual TLS (`CONSUL_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// Key of the client certificate (`CONSUL_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// Name expected in Consul's certificate (SNI, `CONSUL_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
    /// `CONSUL_HTTP_SSL_VERIFY`; true unless explicitly disabled.
    pub ssl_verify: bool,
    /// Datacenter for every request (`CONSUL_DATACENTER`); every contender must use the same.
    pub datacenter: Option<String>,
    /// Basic auth for a reverse proxy in front of Consul (`CONSUL_HTTP_AUTH`).
    pub http_auth: Option<HttpAuth>,
    /// Consul Enterprise namespace and admin partition, sent as `ns` / `partition` on every
    /// request as Consul's own clients do.
    pub namespace: Option<String>,
    /// The admin partition (`CONSUL_PARTITION`), as `namespace`.
    pub partition: Option<String>,
}

impl std::fmt::Debug for ConsulSettings {
    // Hand-written so the token can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSettings")
            .field("address", &self.address)
            .field("ssl", &self.ssl)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("ca_path", &self.ca_path)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("tls_server_name", &self.tls_server_name)
            .field("ssl_verify", &self.ssl_verify)
            .field("datacenter", &self.datacenter)
            .field("http_auth", &self.http_auth)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .finish()
    }
}

/// HTTP basic-auth credentials. No `Display`, and a `Debug` that hides both parts, so neither
/// can reach a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpAuth {
    pub(super) user: String,
    pub(super) password: String,
}

impl HttpAuth {
    /// Parses `user:password` (the password may be empty and may contain `:`). Unlike the
    /// `consul` CLI, a value without `:` is refused: it is more often a token in the wrong
    /// variable than a user with no password. Errors never quote the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((user, password)) = text.split_once(':') else {
            return Err("expected USER:PASSWORD but found no `:` (value not shown)".into());
        };
        if user.is_empty() {
            return Err("the user before `:` is empty (value not shown)".into());
        }
        if text.chars().any(char::is_control) {
            return Err("contains a control character such as a newline (value not shown)".into());
        }
        Ok(HttpAuth {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the settings cannot make a client; `config` maps it to exit code 2 or 3 by source.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SettingsError {
    /// The setting at fault (e.g. `ca_file`), so the caller can name its source.
    pub setting: &'static str,
    /// What is wrong with it, in one line.
    pub message: String,
}

/// The socket path of a `unix://` address (the form of the agent's `addresses.http` and of
/// `CONSUL_HTTP_ADDR`), checked to be a socket now so a wrong path fails before any request.
pub(super) fn unix_socket_path(address: &str) -> Result<Option<PathBuf>, SettingsError> {
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return Ok(None);
    };
    let bad = |why: String| SettingsError {
        setting: "consul_addr",
        message: format!("invalid Consul address {address:?}: {why}"),
    };
    if path.is_empty() {
        return Err(bad("expected unix:///path/to/consul.sock".into()));
    }
    let path = Path::new(path);
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(Some(path.to_path_buf())),
        Ok(_) => Err(bad(format!("{} is not a unix socket", path.display()))),
        Err(err) => Err(bad(format!("cannot use {}: {err}", path.display()))),
    }
}

/// Splits `address` into a scheme and `host:port`, honouring `CONSUL_HTTP_SSL` when there is
/// no scheme.
pub(super) fn split_address(
    address: &str,
    ssl: bool,
) -> Result<(&'static str, String), SettingsError> {
    let bad = |why: &str| SettingsError {
        setting: "consul_addr",
        message: format!("invalid Consul address {address:?}: {why}"),
    };
    let address = address.trim();
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (if ssl { "https" } else { "http" }, rest)
    } else if address.contains("://") {
        return Err(bad("the scheme must be http, https or unix"));
    } else {
        (if ssl { "https" } else { "http" }, address)
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        // `user:password@host`: the message must not echo the password.
        return Err(SettingsError {
            setting: "consul_addr",
            message: "invalid Consul address (not shown): credentials in the address are not \
                      supported; use --consul-http-auth / CONSUL_HTTP_AUTH"
                .into(),
        });
    }
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(bad("expected host:port"));
    }
    let host_port = if has_port(rest) {
        rest.to_string()
    } else if scheme == "https" {
        format!("{rest}:443")
    } else {
        format!("{rest}:80")
    };
    Ok((scheme, host_port))
}

pub(super) fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        // `[::1]:8500` has a port, `[::1]` has not.
        Some((h, port)) => {
            !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':')
        }
        None => false,
    }
}

pub(super) fn ca_files(settings: &ConsulSettings) -> Result<Vec<PathBuf>, SettingsError> {
    let mut files: Vec<PathBuf> = settings.ca_file.iter().cloned().collect();
    if let Some(dir) = &settings.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|err| SettingsError {
            setting: "consul_capath",
            message: format!("cannot read CA directory {}: {err}", dir.display()),
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("pem" | "crt" | "cer")
                    )
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

pub(super) fn read_setting(
    path: &PathBuf,
    setting: &'static str,
) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|err| SettingsError {
        setting,
        message: format!("cannot read {}: {err}", path.display()),
    })
}
