//! The Consul HTTP client: connection settings (README, "Consul connection"), TCP or unix-socket transport, TLS,
//! ACL token, basic auth, datacenter / namespace / partition, timeouts, status-code mapping and
//! read retries. Everything above this speaks in typed calls.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::backend::error::BackendError;

use super::settings::{ca_files, read_setting, split_address, unix_socket_path};
pub use super::settings::{ConsulSettings, HttpAuth, SettingsError};

/// Short requests (session create/renew, KV writes) should fail fast enough for retries to
/// fit inside a lease; 10 s is far above a healthy Consul's latency.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused or blackholed address must not stall a CLI call for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A cheap-to-clone Consul HTTP API client.
#[derive(Clone)]
pub struct ConsulClient {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    /// The address as the user gave it, for error messages.
    pub(super) display_address: String,
    pub(super) token: Option<String>,
    pub(super) http_auth: Option<HttpAuth>,
    pub(super) datacenter: Option<String>,
    /// Whether the agent ever accepted a connection: it answered (whatever the status), or it
    /// accepted the request and then kept it past the timeout (an agent cut off from its
    /// servers holds requests while it looks for a leader). Such an agent is worth waiting for;
    /// an address nothing ever listened on is a configuration error (exit 8).
    pub(super) answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) namespace: Option<String>,
    pub(super) partition: Option<String>,
    /// Filled once the agent is known to honour `namespace` / `partition` (see
    /// [`ConsulClient::check_scope`]); shared by clones so the check runs once per process.
    pub(super) scope_checked: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// A client for `settings`: TLS files are read and the address checked now, so a bad setting
    /// fails before any request.
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
        builder = trust_ca_files(builder, settings)?;
        builder = client_identity(builder, settings)?;
        if !settings.ssl_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let (builder, base_host, display_address) =
            route(builder, settings, socket.as_deref(), scheme, &host_port)?;
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
    pub(super) fn unscoped(&self, method: Method, path: &str) -> RequestBuilder {
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

    pub(crate) fn partition(&self) -> Option<&str> {
        self.partition.as_deref()
    }

    /// Sends a request and maps transport failures and HTTP statuses to [`BackendError`].
    /// 404 is returned as `Ok` so callers can tell "absent" from failure. With a namespace or
    /// partition set, the first request checks that the agent will honour them.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, BackendError> {
        self.check_scope().await?;
        self.send_checked(req).await
    }

    pub(super) async fn send_checked(&self, req: RequestBuilder) -> Result<Response, BackendError> {
        let response = req.send().await.map_err(|err| self.transport_error(err))?;
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.check_status(response).await
    }

    /// Passes 2xx and 404 through; maps every other status to a [`BackendError`].
    pub(super) async fn check_status(&self, response: Response) -> Result<Response, BackendError> {
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

    pub(super) fn transport_error(&self, err: reqwest::Error) -> BackendError {
        if err.is_timeout() && !err.is_connect() {
            // Connected, then no answer in time: the agent is there.
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
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

/// Adds the CA certificates of `--consul-cacert` / `--consul-capath` as trust roots; a file
/// that cannot be read or holds no PEM certificate is refused now, before any request.
fn trust_ca_files(
    mut builder: reqwest::ClientBuilder,
    settings: &ConsulSettings,
) -> Result<reqwest::ClientBuilder, SettingsError> {
    for path in ca_files(settings)? {
        let pem = std::fs::read(&path).map_err(|err| SettingsError {
            setting: "consul_cacert",
            message: format!("cannot read CA file {}: {err}", path.display()),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| SettingsError {
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
    Ok(builder)
}

/// Adds the client certificate and key for mutual TLS; one without the other is refused.
fn client_identity(
    builder: reqwest::ClientBuilder,
    settings: &ConsulSettings,
) -> Result<reqwest::ClientBuilder, SettingsError> {
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
            Ok(builder.identity(identity))
        }
        (Some(_), None) => Err(SettingsError {
            setting: "consul_client_cert",
            message: "a client certificate needs a client key too (--consul-client-key / CONSUL_CLIENT_KEY)".into(),
        }),
        (None, Some(_)) => Err(SettingsError {
            setting: "consul_client_key",
            message: "a client key needs a client certificate too (--consul-client-cert / CONSUL_CLIENT_CERT)".into(),
        }),
        (None, None) => Ok(builder),
    }
}

/// Where requests go: through the unix socket, or to `host_port`, pinned to the TLS server
/// name when one is set. Returns the builder, the host the URLs name, and the address for
/// messages.
fn route(
    mut builder: reqwest::ClientBuilder,
    settings: &ConsulSettings,
    socket: Option<&std::path::Path>,
    scheme: &str,
    host_port: &str,
) -> Result<(reqwest::ClientBuilder, String, String), SettingsError> {
    // SNI / certificate name override: address the server by that name and pin the name to
    // the real address, so TLS checks the certificate against it.
    let mut base_host = host_port.to_string();
    let mut display_address = format!("{scheme}://{host_port}");
    if let Some(path) = socket {
        // Every connection goes to the socket; the URL's host only fills the Host header
        // (and the TLS name, for an HTTPS listener on a socket).
        builder = builder.unix_socket(path);
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
    Ok((builder, base_host, display_address))
}

/// The `X-Consul-Index` header of a response, if present and numeric.
pub(crate) fn consul_index(response: &Response) -> Option<u64> {
    response
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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
}
