//! Every way users reach Consul (README, "Consul connection"): a unix-socket agent, HTTP basic auth through a
//! proxy that demands it, and Enterprise namespace / partition parameters, recorded by a
//! loopback proxy in front of a real agent.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    code, describe, lockwrap, run_bounded, scratch, serve, stderr, stdout, unique_key, Proc,
};

/// One request as the proxy received it, before any rewriting.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, e.g. `/v1/kv/a?ns=x`.
    target: String,
    authorization: Option<String>,
}

impl Recorded {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((key, value)) if key == name => Some(value),
                None if pair == name => Some(""),
                _ => None,
            })
    }

    /// KV, session and agent-check calls: the requests Consul scopes by namespace.
    fn is_scoped(&self) -> bool {
        ["/v1/kv/", "/v1/session/", "/v1/agent/check"]
            .iter()
            .any(|p| self.path().starts_with(p))
    }
}

/// A loopback HTTP proxy in front of a test agent that records every request, can demand an
/// `Authorization` value (401 otherwise) and can drop query parameters before forwarding.
/// It asks the agent to close each connection after its answer, so every request lockwrap
/// sends arrives on a connection of its own and is seen here. Runs until the binary exits.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

#[derive(Clone, Default)]
struct ProxyRules {
    require_authorization: Option<String>,
    strip_params: Vec<String>,
}

impl Proxy {
    fn start(upstream: u16, rules: ProxyRules) -> Proxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let port = serve(move |stream| {
            let _ = forward(stream, upstream, &rules, &log);
        });
        Proxy { port, seen }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("proxy log").clone()
    }
}

fn forward(
    mut client: TcpStream,
    upstream: u16,
    rules: &ProxyRules,
    log: &Mutex<Vec<Recorded>>,
) -> io::Result<()> {
    // The head byte by byte, so no body byte is read past it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or("HTTP/1.1").to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    let authorization = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone());
    log.lock().expect("proxy log").push(Recorded {
        method: method.clone(),
        target: target.clone(),
        authorization: authorization.clone(),
    });
    if let Some(want) = &rules.require_authorization {
        if authorization.as_ref() != Some(want) {
            let body = "Unauthorized";
            write!(
                client,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"consul\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
    }
    let mut out = format!(
        "{method} {} {version}\r\n",
        strip_params(&target, &rules.strip_params)
    );
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut agent = TcpStream::connect(("127.0.0.1", upstream))?;
    agent.write_all(out.as_bytes())?;
    // Any body goes up, the answer comes down until the agent closes after it.
    let (mut body_in, mut body_out) = (client.try_clone()?, agent.try_clone()?);
    std::thread::spawn(move || {
        let _ = io::copy(&mut body_in, &mut body_out);
    });
    let _ = io::copy(&mut agent, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = agent.shutdown(Shutdown::Both);
    Ok(())
}

fn strip_params(target: &str, strip: &[String]) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !strip.iter().any(|s| pair.split('=').next() == Some(s)))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// A `run` whose command signals it started and exits once `stop` exists in `dir`.
fn holder(mut cmd: Command, dir: &Path, key: &str, extra: &[&str]) -> Proc {
    let script = format!(
        "touch {0}/started; while [ ! -e {0}/stop ]; do sleep 0.05; done",
        dir.display()
    );
    cmd.args(["run", "--key", key])
        .args(extra)
        .args(["--", "sh", "-c", &script]);
    Proc::spawn(cmd)
}

fn finish(holder: Proc) -> Output {
    holder.finish(Duration::from_secs(30))
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

fn agent_check_ids(consul: &Consul) -> Vec<String> {
    match consul.get("/v1/agent/checks") {
        Some((200, body)) => serde_json::from_str::<serde_json::Map<String, Value>>(&body)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[test]
fn unix_socket_agent_serves_sessions_kv_blocking_queries_and_checks() {
    let dir = scratch("unix");
    let socket = dir.join("consul.sock");
    // TCP too, for the test's own assertions; lockwrap only gets the socket.
    let consul = Consul::start_with(&[
        "-hcl",
        &format!(
            r#"addresses {{ http = "127.0.0.1 unix://{}" }}"#,
            socket.display()
        ),
    ]);
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let via_socket = || {
        let mut cmd = lockwrap(&consul);
        cmd.env("CONSUL_HTTP_ADDR", format!("unix://{}", socket.display()));
        cmd
    };
    let key = unique_key("unix");

    // A supervised holder: session with an agent TTL check, KV acquire, renewals.
    let checks_before = agent_check_ids(&consul);
    let first = holder(via_socket(), &dir, &key, &["--health-check-ttl", "2s"]);
    assert!(
        wait_until(Duration::from_secs(15), || dir.join("started").exists()),
        "the holder never started its command over the socket"
    );
    let session = consul.holder(&key).expect("held through the socket");
    assert!(
        agent_check_ids(&consul).len() > checks_before.len(),
        "no agent check registered through the socket"
    );

    // The YAML key and the flag reach the socket too (CONSUL_HTTP_ADDR would outrank the file).
    let yaml = dir.join("socket.yaml");
    std::fs::write(&yaml, format!("consul_addr: unix://{}\n", socket.display()))
        .expect("write yaml");
    let mut status = lockwrap(&consul);
    status.env_remove("CONSUL_HTTP_ADDR");
    status.arg("--config").arg(&yaml).args(["status", &key]);
    let status = run_bounded(status, Duration::from_secs(15));
    assert_eq!(code(&status), 0, "{}", describe(&status));
    assert_eq!(json(&status)["session"], session.as_str());

    // A contender waits with blocking queries over the socket, and takes over on release.
    let mut second = via_socket();
    second.args(["lock", "--timeout", "30s", &key]);
    let second = Proc::spawn(second);
    std::fs::write(dir.join("stop"), "").expect("touch stop");
    let first = finish(first);
    assert_eq!(code(&first), 0, "holder: {}", describe(&first));
    let second = finish(second);
    assert_eq!(code(&second), 0, "contender: {}", describe(&second));
    let taken = json(&second)["session"].as_str().map(str::to_string);
    assert!(taken.is_some() && taken != Some(session));
    assert_eq!(consul.holder(&key), taken);

    let mut unlock = lockwrap(&consul);
    unlock.env("CONSUL_HTTP_ADDR", "127.0.0.1:1").args([
        "--consul-addr",
        &format!("unix://{}", socket.display()),
        "unlock",
        &key,
    ]);
    let unlock = run_bounded(unlock, Duration::from_secs(15));
    assert_eq!(code(&unlock), 0, "{}", describe(&unlock));
    assert_eq!(consul.holder(&key), None);
}

const AUTH_USER: &str = "lw-user";
const AUTH_PASSWORD: &str = "pa55-w0rd-x9";
/// `Basic base64("lw-user:pa55-w0rd-x9")`.
const AUTH_HEADER: &str = "Basic bHctdXNlcjpwYTU1LXcwcmQteDk=";

#[test]
fn basic_auth_goes_on_every_request_and_is_never_shown() {
    let consul = Consul::shared();
    let proxy = Proxy::start(
        consul.http_port,
        ProxyRules {
            require_authorization: Some(AUTH_HEADER.into()),
            ..Default::default()
        },
    );
    let dir = scratch("basic-auth");
    let key = unique_key("basic-auth");
    let auth = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    let through_proxy = || {
        let mut cmd = lockwrap(consul);
        cmd.env("CONSUL_HTTP_ADDR", proxy.addr());
        cmd.arg("-vvv");
        cmd
    };
    let mut outputs = Vec::new();

    // Flag: a supervised run with renewals and an agent check.
    let mut cmd = through_proxy();
    cmd.args(["--consul-http-auth", &auth]);
    let run = holder(cmd, &dir, &key, &["--health-check-ttl", "2s"]);
    assert!(wait_until(Duration::from_secs(15), || dir
        .join("started")
        .exists()));
    // Environment: status. YAML: nothing else set, the file alone authenticates.
    let mut status = through_proxy();
    status.env("CONSUL_HTTP_AUTH", &auth).args(["status", &key]);
    let status = run_bounded(status, Duration::from_secs(15));
    assert_eq!(code(&status), 0, "{}", describe(&status));
    assert_eq!(json(&status)["key"], key.as_str());
    std::fs::write(dir.join("stop"), "").expect("touch stop");
    let run = finish(run);
    assert_eq!(code(&run), 0, "{}", describe(&run));
    let yaml = dir.join("auth.yaml");
    std::fs::write(&yaml, format!("consul_http_auth: \"{auth}\"\n")).expect("write yaml");
    let mut lock = through_proxy();
    lock.arg("--config").arg(&yaml).args(["lock", &key]);
    let lock = run_bounded(lock, Duration::from_secs(15));
    assert_eq!(code(&lock), 0, "{}", describe(&lock));
    let mut unlock = through_proxy();
    unlock
        .env("LOCKWRAP_CONSUL_HTTP_AUTH", &auth)
        .args(["unlock", &key]);
    let unlock = run_bounded(unlock, Duration::from_secs(15));
    assert_eq!(code(&unlock), 0, "{}", describe(&unlock));
    outputs.extend([run, status, lock, unlock]);

    let seen = proxy.seen();
    let paths: Vec<String> = seen
        .iter()
        .map(|r| format!("{} {}", r.method, r.path()))
        .collect();
    for wanted in [
        "PUT /v1/session/create",
        "PUT /v1/agent/check/register",
        "PUT /v1/session/destroy/",
        "GET /v1/kv/",
        "PUT /v1/kv/",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(wanted)),
            "no {wanted} among {paths:?}"
        );
    }
    let without: Vec<&Recorded> = seen
        .iter()
        .filter(|r| r.authorization.as_deref() != Some(AUTH_HEADER))
        .collect();
    assert!(
        without.is_empty(),
        "requests without basic auth: {without:?}"
    );

    // Wrong and missing credentials: exit 4 (denied), one line, nothing written.
    for (name, value) in [
        ("wrong", format!("{AUTH_USER}:b4d-pa55")),
        ("missing", String::new()),
    ] {
        let bad_key = unique_key("basic-auth-bad");
        let mut cmd_quiet = lockwrap(consul);
        cmd_quiet
            .env("CONSUL_HTTP_ADDR", proxy.addr())
            .env("CONSUL_HTTP_AUTH", &value)
            .args(["lock", &bad_key]);
        let out = run_bounded(cmd_quiet, Duration::from_secs(20));
        assert_eq!(code(&out), 4, "{name}: {}", describe(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(
            err.contains("401") && err.contains("CONSUL_HTTP_AUTH"),
            "{name}: {err}"
        );
        assert!(!err.contains("b4d-pa55"), "{name}: {err}");
        assert_eq!(consul.kv(&bad_key), None);
        outputs.push(out);
    }
    for out in &outputs {
        for text in [stdout(out), stderr(out)] {
            assert!(
                !text.contains(AUTH_PASSWORD) && !text.contains(AUTH_HEADER),
                "the credentials were shown: {text}"
            );
        }
    }
}

#[test]
fn namespace_goes_on_every_kv_session_and_check_request_and_into_the_holder_info() {
    let consul = Consul::shared();
    // The open-source test agent refuses `ns`; dropping it after recording lets the whole
    // flow run, so every request lockwrap makes can be checked.
    let proxy = Proxy::start(
        consul.http_port,
        ProxyRules {
            strip_params: vec!["ns".into()],
            ..Default::default()
        },
    );
    let dir = scratch("namespace");
    let key = unique_key("namespace");
    let scoped = || {
        let mut cmd = lockwrap(consul);
        cmd.env("CONSUL_HTTP_ADDR", proxy.addr());
        cmd.env("CONSUL_NAMESPACE", "team-a");
        cmd
    };
    let run = holder(
        scoped(),
        &dir,
        &key,
        &["--health-check-ttl", "2s", "--session-ttl", "10s"],
    );
    assert!(wait_until(Duration::from_secs(15), || dir
        .join("started")
        .exists()));
    // Hold until a renewal and a check update went through the proxy too.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let seen = proxy.seen();
            seen.iter()
                .any(|r| r.path().starts_with("/v1/session/renew/"))
                && seen
                    .iter()
                    .any(|r| r.path().starts_with("/v1/agent/check/pass/"))
        }),
        "no renewal seen: {:?}",
        proxy.seen()
    );
    let mut status = scoped();
    status.args(["status", &key]);
    let status = run_bounded(status, Duration::from_secs(15));
    assert_eq!(code(&status), 0, "{}", describe(&status));
    assert_eq!(json(&status)["holder"]["namespace"], "team-a");
    std::fs::write(dir.join("stop"), "").expect("touch stop");
    let run = finish(run);
    assert_eq!(code(&run), 0, "{}", describe(&run));
    let mut unlock = scoped();
    unlock.args(["--namespace", "team-b", "unlock", &key]);
    let unlock = run_bounded(unlock, Duration::from_secs(15));
    assert_eq!(code(&unlock), 0, "{}", describe(&unlock));

    let seen = proxy.seen();
    for r in &seen {
        println!("recorded {} {}", r.method, r.target);
    }
    let scoped_requests: Vec<&Recorded> = seen.iter().filter(|r| r.is_scoped()).collect();
    assert!(scoped_requests.len() >= 8, "{seen:?}");
    let unscoped: Vec<&&Recorded> = scoped_requests
        .iter()
        .filter(|r| !matches!(r.param("ns"), Some("team-a" | "team-b")))
        .collect();
    assert!(unscoped.is_empty(), "requests without ns: {unscoped:?}");
    // The flag wins over CONSUL_NAMESPACE (README precedence).
    let last = scoped_requests.last().expect("the unlock's requests");
    assert_eq!(last.param("ns"), Some("team-b"), "{last:?}");
    assert!(
        scoped_requests
            .iter()
            .any(|r| r.method == "GET" && r.param("index").is_some()),
        "no blocking query recorded: {seen:?}"
    );
}

#[test]
fn open_source_agent_refuses_namespace_and_partition_in_one_line_before_any_write() {
    let consul = Consul::shared();
    let proxy = Proxy::start(consul.http_port, ProxyRules::default());
    for (setting, value, says) in [
        (
            "--namespace",
            "team-a",
            "Namespaces are a Consul Enterprise feature",
        ),
        ("--partition", "part-b", "predates admin partitions"),
    ] {
        let key = unique_key("scope-refused");
        let mut cmd = lockwrap(consul);
        cmd.env("CONSUL_HTTP_ADDR", proxy.addr())
            .args([setting, value, "run", "--key", &key, "--", "true"]);
        let out = run_bounded(cmd, Duration::from_secs(20));
        assert_eq!(code(&out), 8, "{setting}: {}", describe(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(says) && err.contains(value), "{err}");
        assert_eq!(consul.kv(&key), None);
        assert!(consul.sessions_for(&key).is_empty());
    }
    let seen = proxy.seen();
    let param = |r: &Recorded| r.param("ns").or(r.param("partition")).map(str::to_string);
    // The namespace reached the agent on the first request, which it refused; the partition
    // never left lockwrap: 1.8.7 would have ignored it.
    let scoped: Vec<&Recorded> = seen.iter().filter(|r| r.is_scoped()).collect();
    assert!(
        scoped.iter().all(|r| param(r).as_deref() == Some("team-a")),
        "{seen:?}"
    );
    assert!(!scoped.is_empty(), "{seen:?}");
    assert!(
        seen.iter().any(|r| r.path() == "/v1/agent/self"),
        "{seen:?}"
    );
}
