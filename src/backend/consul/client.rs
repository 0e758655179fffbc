//! The Consul HTTP client: connection settings (README, "Consul connection"), TCP or unix-socket transport, TLS,
//! ACL token, basic auth, datacenter / namespace / partition, timeouts, status-code mapping and
//! read retries. Everything above this speaks in typed calls.

use std::net::ToSocketAddrs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::backend::error::BackendError;

/// Connection settings, already validated and with the token loaded.
#[derive(Clone, Default)]
pub struct ConsulSettings {
    /// `host:port`, `http://host:port`, `https://host:port` or `unix:///path/consul.sock`.
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
    /// Basic auth for a reverse proxy in front of Consul (`CONSUL_HTTP_AUTH`).
    pub http_auth: Option<HttpAuth>,
    /// Consul Enterprise namespace and admin partition, sent as `ns` / `partition` on every
    /// request as Consul's own clients do.
    pub namespace: Option<String>,
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
    user: String,
    password: String,
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
    http_auth: Option<HttpAuth>,
    datacenter: Option<String>,
    /// Whether any HTTP answer (whatever its status) ever came back: an agent that answers
    /// "No cluster leader" is reachable and worth waiting for; an address that never answered
    /// is a configuration error (exit 8).
    answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
    namespace: Option<String>,
    partition: Option<String>,
    /// Filled once the agent is known to honour `namespace` / `partition` (see
    /// [`ConsulClient::check_scope`]); shared by clones so the check runs once per process.
    scope_checked: Arc<tokio::sync::OnceCell<()>>,
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
        let socket = unix_socket_path(&settings.address)?;
        let (scheme, host_port) = match &socket {
            Some(_) => (if settings.ssl { "https" } else { "http" }, String::new()),
            None => split_address(&settings.address, settings.ssl)?,
        };
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
        let mut display_address = format!("{scheme}://{host_port}");
        if let Some(path) = &socket {
            // Every connection goes to the socket; the URL's host only fills the Host header
            // (and the TLS name, for an HTTPS listener on a socket).
            builder = builder.unix_socket(path.as_path());
            base_host = settings
                .tls_server_name
                .clone()
                .unwrap_or_else(|| "localhost".to_string());
            display_address = format!("unix://{}", path.display());
        } else if let (Some(name), "https") = (&settings.tls_server_name, scheme) {
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
            display_address,
            token: settings.token.clone(),
            http_auth: settings.http_auth.clone(),
            datacenter: settings.datacenter.clone(),
            answered: Default::default(),
            namespace: settings.namespace.clone(),
            partition: settings.partition.clone(),
            scope_checked: Arc::default(),
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

    /// Starts a request to `/v1/<path>` with the credentials, datacenter, namespace and
    /// partition applied. Like Consul's own API client, `ns` and `partition` go on every
    /// request: KV and sessions are scoped by them, and so are agent checks on Enterprise.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.unscoped(method, path);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(ns) = &self.namespace {
            req = req.query(&[("ns", ns)]);
        }
        if let Some(partition) = &self.partition {
            req = req.query(&[("partition", partition)]);
        }
        req
    }

    /// A request to `/v1/<path>` with only the credentials: token and basic auth.
    fn unscoped(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(auth) = &self.http_auth {
            req = req.basic_auth(&auth.user, Some(&auth.password));
        }
        req
    }

    /// The namespace and partition every request is scoped to, for holder info and messages.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn partition(&self) -> Option<&str> {
        self.partition.as_deref()
    }

    /// Sends a request and maps transport failures and HTTP statuses to [`BackendError`].
    /// 404 is returned as `Ok` so callers can tell "absent" from failure. With a namespace or
    /// partition set, the first request checks that the agent will honour them.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, BackendError> {
        self.check_scope().await?;
        self.send_checked(req).await
    }

    async fn send_checked(&self, req: RequestBuilder) -> Result<Response, BackendError> {
        let response = req.send().await.map_err(|err| self.transport_error(err))?;
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.check_status(response).await
    }

    /// Passes 2xx and 404 through; maps every other status to a [`BackendError`].
    async fn check_status(&self, response: Response) -> Result<Response, BackendError> {
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body = body.trim().to_string();
        Err(match status {
            StatusCode::FORBIDDEN => BackendError::Denied(body),
            // A reverse proxy in front of Consul that wants basic auth (Consul itself uses 403).
            StatusCode::UNAUTHORIZED => BackendError::Denied(format!(
                "{} answered 401 Unauthorized: HTTP basic auth missing or refused \
                 (--consul-http-auth / CONSUL_HTTP_AUTH)",
                self.display_address
            )),
            // Open-source agents since 1.7 refuse `ns` (and since 1.11 `partition`) this way.
            StatusCode::BAD_REQUEST if body.contains("Consul Enterprise feature") => {
                BackendError::Invalid(self.scope_refused(&body))
            }
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

    /// Makes sure the agent will honour the namespace and partition rather than silently
    /// ignore them and lock in the default ones, where a holder would not exclude one in the
    /// intended scope. Agents that know the parameters refuse them when they cannot serve
    /// them; older ones ignore them, so those are told apart by version (namespaces came in
    /// 1.7, admin partitions in 1.11). Runs once; a failure is not cached.
    async fn check_scope(&self) -> Result<(), BackendError> {
        if self.namespace.is_none() && self.partition.is_none() {
            return Ok(());
        }
        self.scope_checked
            .get_or_try_init(|| async {
                let response = self
                    .unscoped(Method::GET, "agent/self")
                    .send()
                    .await
                    .map_err(|err| self.transport_error(err))?;
                // `agent/self` needs `agent:read`, which a token made for locking may lack.
                // Without the version a partition cannot be trusted (every agent before 1.11
                // ignores it); a namespace can, as only agents before 1.7 ignore it. Any other
                // failure (a proxy's 401, a 5xx) is reported as for any request.
                let self_info = if response.status() == StatusCode::FORBIDDEN {
                    if let Some(partition) = &self.partition {
                        return Err(BackendError::Denied(format!(
                            "cannot confirm that Consul at {} honours partition {partition:?} \
                             (agents before 1.11 ignore it): reading its version from \
                             /v1/agent/self needs a token with agent:read",
                            self.display_address
                        )));
                    }
                    None
                } else {
                    let response = self.check_status(response).await?;
                    response.json::<AgentSelf>().await.ok()
                };
                let version = self_info.map(|info| info.config.version);
                if let Some(message) = self.scope_unsupported(version.as_deref()) {
                    return Err(BackendError::Invalid(message));
                }
                if version.is_none() {
                    tracing::debug!(
                        "cannot read the Consul version at {} (agent/self); trusting it to refuse a namespace it cannot honour",
                        self.display_address
                    );
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Why an agent of `version` would ignore the configured scope, if it would.
    fn scope_unsupported(&self, version: Option<&str>) -> Option<String> {
        let version = version?;
        let (major, minor) = major_minor(version)?;
        let (what, setting, value, since) = match (&self.namespace, &self.partition) {
            (_, Some(partition)) if (major, minor) < (1, 11) => {
                ("admin partitions", "partition", partition, "1.11")
            }
            (Some(ns), _) if (major, minor) < (1, 7) => ("namespaces", "namespace", ns, "1.7"),
            _ => return None,
        };
        Some(format!(
            "Consul at {} is version {version}, which predates {what} (Consul Enterprise \
             {since}+) and would ignore {setting} {value:?}, locking outside it; {}",
            self.display_address,
            self.scope_hint()
        ))
    }

    /// The one-line message for an agent that refused the namespace or partition.
    fn scope_refused(&self, body: &str) -> String {
        // "Bad request: Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise
        // feature": the part after the dash says it all.
        let reason = body.rsplit(" - ").next().unwrap_or(body);
        let scope: Vec<String> = [
            ("namespace", &self.namespace),
            ("partition", &self.partition),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} {v:?}")))
        .collect();
        format!(
            "Consul at {} cannot use {}: {reason}; {}",
            self.display_address,
            scope.join(" and "),
            self.scope_hint()
        )
    }

    fn scope_hint(&self) -> &'static str {
        "unset --namespace/--partition (CONSUL_NAMESPACE/CONSUL_PARTITION) or use a Consul Enterprise agent that supports them"
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

/// The fields of `GET /v1/agent/self` that the scope check reads.
#[derive(serde::Deserialize)]
struct AgentSelf {
    #[serde(rename = "Config")]
    config: AgentConfig,
}

#[derive(serde::Deserialize)]
struct AgentConfig {
    #[serde(rename = "Version")]
    version: String,
}

/// `(major, minor)` of a Consul version such as `1.8.7`, `1.11.0+ent` or `1.15.2-rc1`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
}

/// The socket path of a `unix://` address (the form of the agent's `addresses.http` and of
/// `CONSUL_HTTP_ADDR`), checked to be a socket now so a wrong path fails before any request.
fn unix_socket_path(address: &str) -> Result<Option<PathBuf>, SettingsError> {
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
        for bad in ["ftp://x:1", "", "http://a/b"] {
            let err = split_address(bad, false).unwrap_err();
            assert!(err.message.contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_token_or_basic_auth() {
        let settings = ConsulSettings {
            token: Some("s3cr3t".into()),
            http_auth: Some(HttpAuth::parse("admin:pa55word").unwrap()),
            ..Default::default()
        };
        let shown = format!("{settings:?}");
        for secret in ["s3cr3t", "admin", "pa55word"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn basic_auth_values() {
        let auth = HttpAuth::parse("user:pa:ss").unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(HttpAuth::parse("user:").unwrap().password, "");
        for bad in ["no-colon-s3cr3t", ":s3cr3t", "user:s3cr3t\n"] {
            let err = HttpAuth::parse(bad).unwrap_err();
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn credentials_in_the_address_are_refused_without_echoing_them() {
        let err = split_address("http://user:s3cr3t@consul:8500", false).unwrap_err();
        assert!(!err.message.contains("s3cr3t"), "{err}");
        assert!(err.message.contains("CONSUL_HTTP_AUTH"), "{err}");
    }

    #[test]
    fn every_request_carries_the_scope_and_the_credentials() {
        let client = ConsulClient::new(&ConsulSettings {
            address: "127.0.0.1:8500".into(),
            ssl_verify: true,
            datacenter: Some("dc2".into()),
            namespace: Some("team-a".into()),
            partition: Some("part-b".into()),
            http_auth: Some(HttpAuth::parse("user:pw").unwrap()),
            ..Default::default()
        })
        .unwrap();
        for path in ["kv/a/b", "session/create", "agent/check/register"] {
            let req = client.request(Method::PUT, path).build().unwrap();
            assert_eq!(
                req.url().query(),
                Some("dc=dc2&ns=team-a&partition=part-b"),
                "{path}"
            );
            let auth = req.headers().get("authorization").unwrap();
            assert_eq!(auth, "Basic dXNlcjpwdw==");
            assert!(auth.is_sensitive());
        }
        // The version check is not scoped: agent/self takes neither parameter.
        let req = client.unscoped(Method::GET, "agent/self").build().unwrap();
        assert_eq!(req.url().query(), None);
    }

    #[test]
    fn unix_socket_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("consul.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let address = format!("unix://{}", sock.display());
        assert_eq!(unix_socket_path(&address).unwrap(), Some(sock.clone()));
        assert_eq!(unix_socket_path("127.0.0.1:8500").unwrap(), None);
        let client = ConsulClient::new(&ConsulSettings {
            address: address.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(client.address(), address);

        let missing = format!("unix://{}/missing.sock", dir.path().display());
        let err = unix_socket_path(&missing).unwrap_err();
        assert!(err.message.contains(&missing), "{err}");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let err = unix_socket_path(&format!("unix://{}", file.display())).unwrap_err();
        assert!(err.message.contains("not a unix socket"), "{err}");
        assert!(unix_socket_path("unix://").is_err());
    }

    #[test]
    fn versions_that_would_ignore_the_scope() {
        assert_eq!(major_minor("1.8.7"), Some((1, 8)));
        assert_eq!(major_minor("1.11.0+ent"), Some((1, 11)));
        assert_eq!(major_minor("1.15.2-rc1"), Some((1, 15)));
        assert_eq!(major_minor("dev"), None);
        let client = |ns: Option<&str>, partition: Option<&str>| {
            ConsulClient::new(&ConsulSettings {
                address: "127.0.0.1:8500".into(),
                namespace: ns.map(str::to_string),
                partition: partition.map(str::to_string),
                ..Default::default()
            })
            .unwrap()
        };
        let partitioned = client(None, Some("p1"));
        let refused = partitioned.scope_unsupported(Some("1.8.7")).unwrap();
        assert!(
            refused.contains("\"p1\"") && refused.contains("1.11"),
            "{refused}"
        );
        assert_eq!(partitioned.scope_unsupported(Some("1.11.0+ent")), None);
        assert_eq!(partitioned.scope_unsupported(None), None);
        let namespaced = client(Some("ns1"), None);
        assert!(namespaced.scope_unsupported(Some("1.6.2")).is_some());
        assert_eq!(namespaced.scope_unsupported(Some("1.8.7")), None);
    }
}
