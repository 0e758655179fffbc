//! The Consul HTTP client: connection settings (SPEC §1), TLS, ACL token, datacenter, timeouts,
//! status-code mapping and read retries. Everything above this speaks in typed calls.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::backend::error::BackendError;

/// Connection settings, already validated and with the token loaded.
#[derive(Clone, Default)]
pub struct ConsulSettings {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub address: String,
    /// Use HTTPS when the address has no scheme (`CONSUL_HTTP_SSL`).
    pub ssl: bool,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// `CONSUL_HTTP_SSL_VERIFY`; true unless explicitly disabled.
    pub ssl_verify: bool,
    pub datacenter: Option<String>,
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
            .finish()
    }
}

/// Why the settings cannot make a client; `config` maps it to exit code 2 or 3 by source.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SettingsError {
    /// The setting at fault (e.g. `ca_file`), so the caller can name its source.
    pub setting: &'static str,
    pub message: String,
}

/// Short requests (session create/renew, KV writes) should fail fast enough for retries to
/// fit inside a lease; 10 s is far above a healthy Consul's latency.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused or blackholed address must not stall a CLI call for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A cheap-to-clone Consul HTTP API client.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    /// The address as the user gave it, for error messages.
    display_address: String,
    token: Option<String>,
    datacenter: Option<String>,
    /// Whether any HTTP answer (whatever its status) ever came back: an agent that answers
    /// "No cluster leader" is reachable and worth waiting for; an address that never answered
    /// is a configuration error (exit 8).
    answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    pub fn new(settings: &ConsulSettings) -> Result<Self, SettingsError> {
        let (scheme, host_port) = split_address(&settings.address, settings.ssl)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .use_rustls_tls()
            .user_agent(concat!("lockwrap/", env!("CARGO_PKG_VERSION")));

        for path in ca_files(settings)? {
            let pem = std::fs::read(&path).map_err(|err| SettingsError {
                setting: "consul_cacert",
                message: format!("cannot read CA file {}: {err}", path.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| SettingsError {
                    setting: "consul_cacert",
                    message: format!("{} is not a PEM certificate bundle: {err}", path.display()),
                })?;
            if certs.is_empty() {
                return Err(SettingsError {
                    setting: "consul_cacert",
                    message: format!("{} holds no PEM certificate", path.display()),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_setting(cert, "consul_client_cert")?;
                pem.push(b'\n');
                pem.extend(read_setting(key, "consul_client_key")?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|err| SettingsError {
                    setting: "consul_client_cert",
                    message: format!(
                        "{} / {} are not a PEM certificate and key: {err}",
                        cert.display(),
                        key.display()
                    ),
                })?;
                builder = builder.identity(identity);
            }
            (Some(_), None) => {
                return Err(SettingsError {
                    setting: "consul_client_cert",
                    message: "a client certificate needs a client key too (--consul-client-key / CONSUL_CLIENT_KEY)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(SettingsError {
                    setting: "consul_client_key",
                    message: "a client key needs a client certificate too (--consul-client-cert / CONSUL_CLIENT_CERT)".into(),
                })
            }
            (None, None) => {}
        }
        if !settings.ssl_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }

        // SNI / certificate name override: address the server by that name and pin the name to
        // the real address, so TLS checks the certificate against it.
        let mut base_host = host_port.clone();
        if let (Some(name), "https") = (&settings.tls_server_name, scheme) {
            let addrs: Vec<_> = host_port
                .to_socket_addrs()
                .map_err(|err| SettingsError {
                    setting: "consul_addr",
                    message: format!("cannot resolve {host_port}: {err}"),
                })?
                .collect();
            let port = addrs.first().map(|a| a.port()).unwrap_or(443);
            builder = builder.resolve_to_addrs(name, &addrs);
            base_host = format!("{name}:{port}");
        }

        let http = builder.build().map_err(|err| SettingsError {
            setting: "consul_addr",
            message: format!("cannot build the HTTP client: {err}"),
        })?;
        Ok(ConsulClient {
            http,
            base: format!("{scheme}://{base_host}"),
            display_address: format!("{scheme}://{host_port}"),
            token: settings.token.clone(),
            datacenter: settings.datacenter.clone(),
            answered: Default::default(),
        })
    }

    /// Whether the agent has answered at least one request of this client.
    pub fn answered(&self) -> bool {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The agent address, for messages.
    pub fn address(&self) -> &str {
        &self.display_address
    }

    /// Starts a request to `/v1/<path>` with the token and datacenter applied.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        req
    }

    /// Sends a request and maps transport failures and HTTP statuses to [`BackendError`].
    /// 404 is returned as `Ok` so callers can tell "absent" from failure.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, BackendError> {
        let response = req.send().await.map_err(|err| self.transport_error(err))?;
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body = body.trim().to_string();
        Err(match status {
            StatusCode::FORBIDDEN => BackendError::Denied(body),
            s if s.is_server_error() && body.contains("No path to datacenter") => {
                BackendError::Invalid(format!(
                    "Consul at {} does not know datacenter {:?} ({body})",
                    self.display_address,
                    self.datacenter.as_deref().unwrap_or_default()
                ))
            }
            // Some Consul versions surface RPC ACL denials as 500.
            s if s.is_server_error() && body.contains("Permission denied") => {
                BackendError::Denied(body)
            }
            // An acquire or renew with a session the servers no longer know (destroyed,
            // expired, or lost with the agent's state): not worth repeating as is.
            s if s.is_server_error() && body.starts_with("invalid session") => {
                BackendError::SessionGone(body)
            }
            // Everything else Consul answers 5xx to is "not ready / no leader / try again":
            // `No cluster leader`, `Missing node registration` (an agent that has just started),
            // `Missing check '…' registration`, rpc errors. 429 is the agent's rate limit.
            StatusCode::TOO_MANY_REQUESTS => BackendError::Transient(format!(
                "Consul at {} answered {status}: {body}",
                self.display_address
            )),
            s if s.is_server_error() => BackendError::Transient(format!(
                "Consul at {} answered {s}: {body}",
                self.display_address
            )),
            s => BackendError::Invalid(format!(
                "Consul at {} answered {s}: {body}",
                self.display_address
            )),
        })
    }

    /// Sends and decodes a JSON answer (`None` on 404).
    pub async fn json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<Option<(T, Option<u64>)>, BackendError> {
        let response = self.send(req).await?;
        let index = consul_index(&response);
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value = response.json::<T>().await.map_err(|err| {
            if err.is_decode() {
                BackendError::Invalid(format!(
                    "{} answered with a body that is not Consul's JSON ({err}); is it a Consul agent?",
                    self.display_address
                ))
            } else {
                self.transport_error(err)
            }
        })?;
        Ok(Some((value, index)))
    }

    fn transport_error(&self, err: reqwest::Error) -> BackendError {
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        // The innermost cause carries the useful part (e.g. "Connection refused").
        let mut cause: &dyn std::error::Error = &err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let message = format!(
            "Consul unreachable at {}: {what} ({cause})",
            self.display_address
        );
        if err.is_connect() || err.is_timeout() || err.is_request() {
            BackendError::Transient(message)
        } else {
            BackendError::Unknown(message)
        }
    }
}

/// The `X-Consul-Index` header of a response, if present and numeric.
pub fn consul_index(response: &Response) -> Option<u64> {
    response
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Splits `address` into a scheme and `host:port`, honouring `CONSUL_HTTP_SSL` when there is
/// no scheme.
fn split_address(address: &str, ssl: bool) -> Result<(&'static str, String), SettingsError> {
    let bad = |why: &str| SettingsError {
        setting: "consul_addr",
        message: format!("invalid Consul address {address:?}: {why}"),
    };
    let address = address.trim();
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (if ssl { "https" } else { "http" }, rest)
    } else if address.starts_with("unix://") {
        return Err(bad("unix sockets are not supported; use host:port"));
    } else if address.contains("://") {
        return Err(bad("the scheme must be http or https"));
    } else {
        (if ssl { "https" } else { "http" }, address)
    };
    let rest = rest.trim_end_matches('/');
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

fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        // `[::1]:8500` has a port, `[::1]` has not.
        Some((h, port)) => {
            !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':')
        }
        None => false,
    }
}

fn ca_files(settings: &ConsulSettings) -> Result<Vec<PathBuf>, SettingsError> {
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

fn read_setting(path: &PathBuf, setting: &'static str) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|err| SettingsError {
        setting,
        message: format!("cannot read {}: {err}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_scheme() {
        assert_eq!(
            split_address("127.0.0.1:8500", false).unwrap(),
            ("http", "127.0.0.1:8500".to_string())
        );
        assert_eq!(
            split_address("consul:8501", true).unwrap(),
            ("https", "consul:8501".to_string())
        );
        assert_eq!(
            split_address("https://consul.example:8501/", false).unwrap(),
            ("https", "consul.example:8501".to_string())
        );
        assert_eq!(
            split_address("http://[::1]:8500", false).unwrap(),
            ("http", "[::1]:8500".to_string())
        );
        assert_eq!(
            split_address("consul", false).unwrap(),
            ("http", "consul:80".to_string())
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        for bad in ["ftp://x:1", "unix:///tmp/sock", "", "http://a/b"] {
            let err = split_address(bad, false).unwrap_err();
            assert!(err.message.contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let settings = ConsulSettings {
            token: Some("s3cr3t".into()),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }
}
