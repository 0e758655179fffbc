//! The bad-input suite: a table of bad CLI flags, env vars, YAML files and
//! Consul answers. Each must give the documented exit code (README, "Exit codes"), a one-line error on
//! stderr naming the bad value or setting, no write to Consul (KV keys, sessions and both
//! tables' raft indexes unchanged on a private agent), and never print the ACL token.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::consul::Consul;
use crate::harness::{closed_port, code, http_request, lockwrap, scratch, serve};

/// Sent in every case (`CONSUL_HTTP_TOKEN`); it must never show up in any output.
const SECRET: &str = "s3cr3t-token-value";
/// A second secret, only in a token file.
const FILE_SECRET: &str = "f1le-s3cr3t-value";
/// A valid token on the ACL agent with read-only rights (Consul wants a UUID).
const READ_ONLY_SECRET: &str = "5ec7e700-aaaa-4bbb-8ccc-0000000beef5";

/// Which Consul a case talks to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// The suite's private dev agent.
    Private,
    /// A private agent with ACLs on and default deny; the case's token is unknown to it.
    Acl,
    /// The ACL agent with a known token that may only read (`READ_ONLY_SECRET`).
    AclReadOnly,
    /// A loopback port nothing listens on.
    Closed,
    /// A loopback HTTP server that answers every request `200 <html>`, not Consul's API.
    Garbage,
}

struct Case {
    name: &'static str,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    /// Written to a file passed as `--config FILE`.
    yaml: Option<Vec<u8>>,
    target: Target,
    /// Accepted exit codes (one, except where the contract leaves a choice).
    codes: Vec<i32>,
    /// Strings the error must contain (the bad value and/or the setting's name).
    mentions: Vec<String>,
}

fn case(name: &'static str, code: i32, args: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        yaml: None,
        target: Target::Private,
        codes: vec![code],
        mentions: Vec::new(),
    }
}

impl Case {
    fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    fn yaml(mut self, text: impl Into<Vec<u8>>) -> Self {
        self.yaml = Some(text.into());
        self
    }

    fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    fn mentions(mut self, words: &[&str]) -> Self {
        self.mentions.extend(words.iter().map(|w| w.to_string()));
        self
    }

    fn or_code(mut self, code: i32) -> Self {
        self.codes.push(code);
        self
    }

    fn os_args(mut self, args: Vec<OsString>) -> Self {
        self.args = args;
        self
    }
}

/// Everything a case could have written to: keys, sessions, and the raft indexes of both
/// tables (a session created and destroyed, or a key written and deleted, still moves them).
#[derive(Debug, PartialEq)]
struct Snapshot {
    keys: Vec<String>,
    sessions: Vec<Value>,
    kv_index: Option<u64>,
    session_index: Option<u64>,
}

fn snapshot(consul: &Consul) -> Snapshot {
    Snapshot {
        keys: consul.keys(""),
        sessions: consul.sessions(),
        kv_index: consul_index(consul, "/v1/kv/?recurse"),
        session_index: consul_index(consul, "/v1/session/list"),
    }
}

/// The `X-Consul-Index` header of a GET (with the management token).
fn consul_index(consul: &Consul, path: &str) -> Option<u64> {
    let headers = ["X-Consul-Token: root".to_string()];
    let answer = http_request(
        consul.http_port,
        "GET",
        path,
        &headers,
        "",
        Duration::from_secs(5),
    )?;
    answer.header("x-consul-index")?.parse().ok()
}

/// Creates `READ_ONLY_SECRET` on the ACL agent: it may read keys, sessions and nodes, not write.
fn read_only_token(acl: &Consul) {
    let rules = r#"key_prefix "" { policy = "read" }
session_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#;
    let policy = serde_json::json!({"Name": "read-only", "Rules": rules}).to_string();
    let made = acl.put("/v1/acl/policy", &policy);
    assert!(matches!(made, Some((200, _))), "policy: {made:?}");
    let token = serde_json::json!({
        "SecretID": READ_ONLY_SECRET,
        "Description": "bad-input read-only",
        "Policies": [{"Name": "read-only"}],
    })
    .to_string();
    let made = acl.put("/v1/acl/token", &token);
    assert!(matches!(made, Some((200, _))), "token: {made:?}");
}

/// Runs a case to completion; a case that does not end within `limit` is killed and reported
/// (a failed case, not a panic, so the rest of the table still runs).
fn run_case(mut cmd: Command, limit: Duration) -> (Output, bool) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lockwrap");
    let deadline = Instant::now() + limit;
    let mut overran = false;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            // SIGTERM first so it releases what it took, then SIGKILL.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let grace = Instant::now() + Duration::from_secs(5);
            while child.try_wait().expect("try_wait").is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            overran = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (child.wait_with_output().expect("collect output"), overran)
}

/// An HTTP server that answers everything with an HTML page (a misconfigured address: a
/// web server or proxy where Consul was expected). Runs until the test binary exits.
fn garbage_server() -> u16 {
    serve(|mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 65536];
        let _ = stream.read(&mut buf);
        let body = "<html><body>It works!</body></html>";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

fn non_utf8(prefix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'x']);
    OsString::from_vec(bytes)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A command for the supervising cases: it marks that it ran (no rejected invocation may run it).
fn touch_ran(dir: &Path) -> String {
    format!("touch '{}'", dir.join("ran").display())
}

/// The table. `dir` holds the files some cases point at.
fn cases(dir: &Path) -> Vec<Case> {
    use std::os::unix::fs::PermissionsExt;
    let garbage_pem = dir.join("garbage-ca.pem");
    std::fs::write(
        &garbage_pem,
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write pem");
    let empty_pem = dir.join("empty-ca.pem");
    std::fs::write(&empty_pem, "just some text, no PEM blocks\n").expect("write pem");
    // A directory cannot be read as a file, even by root (the tests may run as root).
    let token_dir = dir.join("token-is-a-directory");
    std::fs::create_dir_all(&token_dir).expect("token dir");
    let empty_token = dir.join("empty-token");
    std::fs::write(&empty_token, "  \n").expect("write token");
    let not_executable = dir.join("not-executable.sh");
    std::fs::write(&not_executable, format!("#!/bin/sh\necho {FILE_SECRET}\n")).expect("write");
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let p = |path: &Path| path.display().to_string();
    let missing_config = p(&dir.join("no-such-config.yaml"));
    // A port that stays taken for the whole suite.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    std::mem::forget(taken);
    let missing_socket = format!("unix://{}", p(&dir.join("no-such-consul.sock")));
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(70 * 1024));
    // `lockwrap run` with settings it must refuse before running its command.
    let write_yaml = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write yaml");
        p(&path)
    };
    let unknown_yaml = write_yaml("unknown.yaml", "session_ttl: 15s\nfavourite_colour: blue\n");
    let wrong_type = write_yaml("wrong-type.yaml", "kill_grace: [1, 2]\n");
    let bad_yaml = write_yaml("bad.yaml", "key: [unclosed\n");
    let touch = touch_ran(dir);
    let run_case = |name: &'static str, code: i32, args: &[&str]| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", &touch]);
        case(name, code, &all)
    };

    vec![
        // ---- `run` refusing its settings (the command never runs) ----
        run_case(
            "run: unknown YAML key",
            2,
            &["--config", &unknown_yaml, "--key", "bad/k"],
        )
        .mentions(&["favourite_colour"]),
        run_case(
            "run: wrong YAML type",
            2,
            &["--config", &wrong_type, "--key", "bad/k"],
        )
        .mentions(&["kill_grace"]),
        run_case(
            "run: unparsable YAML",
            2,
            &["--config", &bad_yaml, "--key", "bad/k"],
        )
        .mentions(&["bad.yaml"]),
        run_case(
            "run: missing config file",
            2,
            &["--config", "/nonexistent/lockwrap.yaml", "--key", "bad/k"],
        )
        .mentions(&["/nonexistent/lockwrap.yaml"]),
        run_case("run: invalid env duration", 2, &["--key", "bad/k"])
            .env("LOCKWRAP_SESSION_TTL", "abc")
            .mentions(&["LOCKWRAP_SESSION_TTL"]),
        run_case("run: invalid env bool", 2, &["--key", "bad/k"])
            .env("LOCKWRAP_SUBREAPER", "maybe")
            .mentions(&["LOCKWRAP_SUBREAPER"]),
        run_case(
            "run: invalid flag duration",
            3,
            &["--key", "bad/k", "--kill-grace", "abc"],
        )
        .mentions(&["--kill-grace"]),
        run_case(
            "run: unknown flag",
            3,
            &["--key", "bad/k", "--no-such-option"],
        )
        .mentions(&["--no-such-option"]),
        run_case(
            "run: lock delay over 60 s",
            3,
            &["--key", "bad/k", "--lock-delay", "61s"],
        )
        .mentions(&["--lock-delay"]),
        run_case("run: limit 0", 3, &["--key", "bad/k", "-n", "0"]).mentions(&["limit"]),
        run_case(
            "run: unknown layout",
            3,
            &["--key", "bad/k", "--layout", "zookeeper"],
        )
        .mentions(&["--layout"]),
        run_case(
            "run: TTL below 10 s",
            7,
            &["--key", "bad/k", "--session-ttl", "5s"],
        )
        .mentions(&["--session-ttl"]),
        run_case(
            "run: serfHealth-bound session with too short a lock-delay",
            3,
            &[
                "--key",
                "bad/k",
                "--session-checks",
                "serfHealth",
                "--lock-delay",
                "1s",
            ],
        )
        // says what would fit
        .mentions(&[
            "--lock-delay 2s or more",
            "--session-checks none",
            "--kill-grace 4s or less",
            "--unsafe-allow-overlap",
        ]),
        run_case("run: invalid key", 6, &["--key", "/leading/slash"]).mentions(&["/leading/slash"]),
        run_case("run: no key", 1, &[]).mentions(&["key"]),
        // No command at all is a missing setting too.
        case("run: no command", 1, &["run", "--key", "bad/k"]),
        // ---- session TTL (exit 7, whatever the source) ----
        case(
            "ttl below 10s (flag)",
            7,
            &["lock", "--session-ttl", "5", "bad/k"],
        )
        .mentions(&["--session-ttl", "5s"]),
        case(
            "ttl above 86400s (flag)",
            7,
            &["lock", "--session-ttl", "90000", "bad/k"],
        )
        .mentions(&["--session-ttl", "90000s"]),
        case(
            "ttl negative (flag)",
            7,
            &["lock", "--session-ttl=-1", "bad/k"],
        )
        .mentions(&["--session-ttl", "negative"]),
        case(
            "ttl negative, separate argument (consullock style)",
            7,
            &["lock", "--session-ttl", "-1", "bad/k"],
        )
        .mentions(&["--session-ttl", "negative"]),
        case(
            "ttl 9.5s (flag)",
            7,
            &[
                "run",
                "--key",
                "bad/k",
                "--session-ttl",
                "9.5",
                "--",
                "true",
            ],
        )
        .mentions(&["--session-ttl", "9.5s"]),
        case(
            "ttl below 10s (env)",
            7,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_SESSION_TTL", "5s")
        .mentions(&["LOCKWRAP_SESSION_TTL", "5s"]),
        case("ttl above 86400s (yaml)", 7, &["lock", "bad/k"])
            .yaml("session_ttl: 90000\n")
            .mentions(&["session_ttl", "90000s"]),
        // ---- durations ----
        case(
            "timeout not a duration",
            3,
            &["lock", "--timeout", "abc", "bad/k"],
        )
        .mentions(&["--timeout", "abc"]),
        case("timeout negative", 3, &["lock", "--timeout=-5", "bad/k"])
            .mentions(&["--timeout", "-5"]),
        case(
            "kill-grace unknown unit",
            3,
            &["run", "--key", "bad/k", "--kill-grace", "5x", "--", "true"],
        )
        .mentions(&["--kill-grace", "5x"]),
        case("lock-delay env not a duration", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOCK_DELAY", "zz")
            .mentions(&["LOCKWRAP_LOCK_DELAY", "zz"]),
        case(
            "lock-delay above 60s (flag)",
            3,
            &["lock", "--lock-delay", "61s", "bad/k"],
        )
        .mentions(&["--lock-delay", "61s"]),
        case("lock-delay above 60s (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOCK_DELAY", "2m")
            .mentions(&["LOCKWRAP_LOCK_DELAY", "120s"]),
        case("poll interval zero", 3, &["lock", "-i", "0", "bad/k"]).mentions(&["--poll-interval"]),
        case(
            "hook timeout zero",
            3,
            &["run", "--key", "bad/k", "--hook-timeout", "0", "--", "true"],
        )
        .mentions(&["--hook-timeout"]),
        case(
            "health-check ttl 100ms (env)",
            2,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_HEALTH_CHECK_TTL", "100ms")
        .mentions(&["LOCKWRAP_HEALTH_CHECK_TTL", "100ms"]),
        case(
            "takeover delay shorter than the kill grace (flags)",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--session-ttl",
                "10",
                "--kill-grace",
                "9",
                "--takeover-delay",
                "2",
                "--",
                "true",
            ],
        )
        .mentions(&["--takeover-delay 10s"]),
        case(
            "serfHealth without lock-delay cannot be held (env)",
            2,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_SESSION_CHECKS", "serfHealth")
        .env("LOCKWRAP_LOCK_DELAY", "0")
        .mentions(&["LOCKWRAP_LOCK_DELAY", "--lock-delay"]),
        case(
            "no TTL with serfHealth in a supervising mode",
            3,
            &[
                "execute",
                "--session-ttl",
                "0",
                "--session-checks",
                "serfHealth",
                "bad/k",
                "true",
            ],
        )
        .mentions(&["--session-ttl"]),
        // ---- keys (exit 6) and regex ----
        case("key with leading slash", 6, &["lock", "/abs/key"]).mentions(&["/abs/key"]),
        case("key with //", 6, &["lock", "a//b"]).mentions(&["a//b"]),
        case("key with .. segment", 6, &["unlock", "a/../b"]).mentions(&["a/../b"]),
        case("empty key", 6, &["lock", ""]).mentions(&["empty"]),
        case("key with control character", 6, &["status", "a\u{1}b"]).mentions(&["control"]),
        case("key from env with . segment", 6, &["run", "--", "true"])
            .env("LOCKWRAP_KEY", "a/./b")
            .mentions(&["a/./b"]),
        case("key from yaml with //", 6, &["sidecar"])
            .yaml("key: \"x//y\"\n")
            .mentions(&["x//y"]),
        case("unlock regex does not compile", 3, &["unlock", "-r", "("]).mentions(&["("]),
        case("status regex does not compile", 3, &["status", "-r", "a[b"]).mentions(&["a[b"]),
        // ---- metadata ----
        case(
            "metadata not JSON (flag)",
            3,
            &["lock", "--metadata", "{bad", "bad/k"],
        )
        .mentions(&["--metadata", "{bad"]),
        case("metadata not JSON (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_METADATA", "[1,")
            .mentions(&["LOCKWRAP_METADATA"]),
        case(
            "metadata over 64 KiB",
            3,
            &["lock", "--metadata", &huge, "bad/k"],
        )
        .mentions(&["--metadata", "bytes"]),
        // ---- YAML config file (exit 2) ----
        case("yaml unknown key", 2, &["lock", "bad/k"])
            .yaml("sesion_ttl: 15s\n")
            .mentions(&["sesion_ttl"]),
        case("yaml session_ttl is a list", 2, &["lock", "bad/k"])
            .yaml("session_ttl: [1]\n")
            .mentions(&["session_ttl"]),
        case("yaml non_blocking: maybe", 2, &["lock", "bad/k"])
            .yaml("non_blocking: maybe\n")
            .mentions(&["non_blocking", "maybe"]),
        case("yaml syntax error", 2, &["lock", "bad/k"])
            .yaml("key: [unclosed\n")
            .mentions(&["YAML"]),
        case("yaml not a mapping", 2, &["lock", "bad/k"])
            .yaml("- just\n- a list\n")
            .mentions(&["config"]),
        case("yaml not UTF-8", 2, &["lock", "bad/k"])
            .yaml(b"key: \"\xff\xfe\"\n".to_vec())
            .mentions(&["config"]),
        case(
            "config file missing (flag)",
            2,
            &["--config", &missing_config, "lock", "bad/k"],
        )
        .mentions(&[&missing_config]),
        case("config file missing (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_CONFIG", &missing_config)
            .mentions(&[&missing_config]),
        case(
            "config file is a directory",
            2,
            &["--config", &p(dir), "lock", "bad/k"],
        )
        .mentions(&[&p(dir)]),
        // ---- enums, numbers, addresses ----
        case("layout weird", 3, &["lock", "--layout", "weird", "bad/k"])
            .mentions(&["--layout", "weird"]),
        case("layout weird (env)", 2, &["status", "bad/k"])
            .env("LOCKWRAP_LAYOUT", "weird")
            .mentions(&["LOCKWRAP_LAYOUT", "weird"]),
        case(
            "session-behavior maybe",
            3,
            &["lock", "--session-behavior", "maybe", "bad/k"],
        )
        .mentions(&["--session-behavior", "maybe"]),
        case("limit zero", 3, &["lock", "-n", "0", "bad/k"]).mentions(&["--limit"]),
        case(
            "limit not a number",
            3,
            &["lock", "--limit", "abc", "bad/k"],
        )
        .mentions(&["--limit", "abc"]),
        case(
            "monitor-retry not a number",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--monitor-retry",
                "x",
                "--",
                "true",
            ],
        )
        .mentions(&["--monitor-retry"]),
        case(
            "http-addr nonsense",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--http-addr",
                "nonsense",
                "--",
                "true",
            ],
        )
        .mentions(&["--http-addr", "nonsense"]),
        case(
            "http-addr port out of range",
            3,
            &[
                "sidecar",
                "--key",
                "bad/k",
                "--http-addr",
                "127.0.0.1:99999",
            ],
        )
        .mentions(&["--http-addr", "99999"]),
        case(
            "http-addr already in use",
            3,
            &["sidecar", "--key", "bad/k", "--http-addr", &taken_addr],
        )
        .mentions(&["--http-addr", &taken_addr]),
        case(
            "LOCKWRAP_HTTP_ADDR nonsense",
            2,
            &["sidecar", "--key", "bad/k"],
        )
        .env("LOCKWRAP_HTTP_ADDR", "localhost")
        .mentions(&["LOCKWRAP_HTTP_ADDR", "localhost"]),
        case(
            "status-file in a missing directory",
            3,
            &[
                "sidecar",
                "--key",
                "bad/k",
                "--status-file",
                "/no/such/dir/status.json",
            ],
        )
        .mentions(&["--status-file", "/no/such/dir"]),
        case(
            "webhook ftp URL",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--webhook",
                "ftp://x",
                "--",
                "true",
            ],
        )
        .mentions(&["--webhook", "ftp://x"]),
        case(
            "log-format xml (flag)",
            3,
            &["--log-format", "xml", "lock", "bad/k"],
        )
        .mentions(&["--log-format", "xml"]),
        case("log-format xml (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOG_FORMAT", "xml")
            .mentions(&["LOCKWRAP_LOG_FORMAT", "xml"]),
        case("non_blocking env maybe", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_NON_BLOCKING", "maybe")
            .mentions(&["LOCKWRAP_NON_BLOCKING", "maybe"]),
        case(
            "consul-ssl maybe",
            3,
            &["lock", "--consul-ssl", "maybe", "bad/k"],
        )
        .mentions(&["--consul-ssl", "maybe"]),
        case("CONSUL_HTTP_SSL_VERIFY perhaps", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_SSL_VERIFY", "perhaps")
            .mentions(&["CONSUL_HTTP_SSL_VERIFY", "perhaps"]),
        // ---- Consul connection settings ----
        case(
            "consul-addr ftp scheme",
            3,
            &["lock", "--consul-addr", "ftp://x", "bad/k"],
        )
        .mentions(&["ftp://x"]),
        // ---- unix sockets, basic auth, namespace and partition ----
        case(
            "unix socket path does not exist (env)",
            2,
            &["lock", "bad/k"],
        )
        .env("CONSUL_HTTP_ADDR", "unix:///x")
        .mentions(&["CONSUL_HTTP_ADDR", "unix:///x"]),
        case(
            "unix socket path does not exist (flag)",
            3,
            &[
                "run",
                "--consul-addr",
                &missing_socket,
                "--key",
                "bad/k",
                "--",
                "true",
            ],
        )
        .mentions(&["--consul-addr", &missing_socket]),
        case(
            "unix socket path is a plain file (env)",
            2,
            &["lock", "bad/k"],
        )
        // LOCKWRAP_CONSUL_ADDR: it outranks the suite's CONSUL_HTTP_ADDR (a YAML value would not).
        .env("LOCKWRAP_CONSUL_ADDR", format!("unix://{}", p(&empty_pem)))
        .mentions(&["LOCKWRAP_CONSUL_ADDR", &p(&empty_pem), "not a unix socket"]),
        case("basic auth without `:` (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_AUTH", SECRET)
            .mentions(&["CONSUL_HTTP_AUTH", "USER:PASSWORD"]),
        case(
            "basic auth with an empty user (flag)",
            3,
            &["lock", "--consul-http-auth", &format!(":{SECRET}"), "bad/k"],
        )
        .mentions(&["--consul-http-auth", "user"]),
        case("basic auth not a string (yaml)", 2, &["lock", "bad/k"])
            .yaml(format!("consul_http_auth: [{SECRET}]\n"))
            .mentions(&["consul_http_auth"]),
        case("credentials in the address (env)", 2, &["lock", "bad/k"])
            .env(
                "CONSUL_HTTP_ADDR",
                format!("http://u:{SECRET}@127.0.0.1:8500"),
            )
            .mentions(&["CONSUL_HTTP_ADDR", "CONSUL_HTTP_AUTH"]),
        case("empty namespace (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_NAMESPACE", "")
            .mentions(&["CONSUL_NAMESPACE", "empty"]),
        case(
            "empty namespace (flag)",
            3,
            &["run", "--namespace", "", "--key", "bad/k", "--", "true"],
        )
        .mentions(&["--namespace", "empty"]),
        case("namespace with a slash (yaml)", 2, &["status", "bad/k"])
            .yaml("namespace: team/a\n")
            .mentions(&["namespace", "team/a"]),
        case("empty partition (env)", 2, &["unlock", "bad/k"])
            .env("LOCKWRAP_PARTITION", " ")
            .mentions(&["LOCKWRAP_PARTITION", "empty"]),
        case(
            "namespace on open-source Consul",
            8,
            &[
                "run",
                "--namespace",
                "team-a",
                "--key",
                "bad/k",
                "--",
                "true",
            ],
        )
        .mentions(&["team-a", "Enterprise"]),
        case(
            "partition with a token that cannot read the agent",
            4,
            &["lock", "--partition", "part-b", "bad/k"],
        )
        .target(Target::AclReadOnly)
        .mentions(&["part-b", "agent:read"]),
        case("partition on Consul 1.8.7", 8, &["lock", "bad/k"])
            .env("CONSUL_PARTITION", "part-b")
            .mentions(&["part-b", "1.8.7", "1.11"]),
        case(
            "consul-addr with a path",
            3,
            &["lock", "--consul-addr", "http://127.0.0.1:8500/v1", "bad/k"],
        )
        .mentions(&["--consul-addr", "127.0.0.1:8500/v1"]),
        case(
            "token file unreadable (flag)",
            3,
            &["lock", "--consul-token-file", &p(&token_dir), "bad/k"],
        )
        .mentions(&["--consul-token-file", &p(&token_dir)]),
        case("token file missing (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_TOKEN_FILE", dir.join("no-such-token"))
            .mentions(&["CONSUL_HTTP_TOKEN_FILE", "no-such-token"]),
        case("token file empty (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_TOKEN_FILE", &empty_token)
            .mentions(&["CONSUL_HTTP_TOKEN_FILE", "empty"]),
        case(
            "CA file garbage PEM (flag)",
            3,
            &["lock", "--consul-cacert", &p(&garbage_pem), "bad/k"],
        )
        .mentions(&["--consul-cacert", &p(&garbage_pem)]),
        case("CA file garbage PEM (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_CACERT", &garbage_pem)
            .mentions(&["CONSUL_CACERT", &p(&garbage_pem)]),
        case("CA file without certificates (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_CACERT", &empty_pem)
            .mentions(&["CONSUL_CACERT", &p(&empty_pem)]),
        case(
            "CA file missing (flag)",
            3,
            &["lock", "--consul-cacert", "/no/such/ca.pem", "bad/k"],
        )
        .mentions(&["--consul-cacert", "/no/such/ca.pem"]),
        case(
            "client cert without key",
            3,
            &["lock", "--consul-client-cert", &p(&garbage_pem), "bad/k"],
        )
        .mentions(&["--consul-client"]),
        // ---- missing settings (exit 1) ----
        case("run without a command", 1, &["run", "--key", "bad/k"]).mentions(&["command"]),
        case("run without a key", 1, &["run", "--", "true"]).mentions(&["key"]),
        case("sidecar without a key", 1, &["sidecar"]).mentions(&["key"]),
        case("lock without a key", 1, &["lock"]).mentions(&["key"]),
        case("execute without a shell string", 1, &["execute", "bad/k"]).mentions(&["command"]),
        // ---- the command (126 / 127): refused before taking the lock ----
        case(
            "run missing executable (path)",
            127,
            &["run", "--key", "bad/k", "--", "/no/such/program"],
        )
        .mentions(&["/no/such/program"]),
        case(
            "run missing executable (PATH lookup)",
            127,
            &["run", "--key", "bad/k", "--", "no-such-program-xyz"],
        )
        .mentions(&["no-such-program-xyz"]),
        case(
            "run non-executable file",
            126,
            &["run", "--key", "bad/k", "--", &p(&not_executable)],
        )
        .mentions(&[&p(&not_executable)]),
        case(
            "run a directory",
            126,
            &["run", "--key", "bad/k", "--", &p(dir)],
        )
        .mentions(&[&p(dir)]),
        // ---- non-UTF-8 input: a clean error, never a panic ----
        case("non-UTF-8 positional key", 3, &[])
            .os_args(vec!["lock".into(), non_utf8("k")])
            .mentions(&["UTF-8"]),
        case("non-UTF-8 --key", 3, &[])
            .os_args(vec![
                "run".into(),
                "--key".into(),
                non_utf8("k"),
                "--".into(),
                "true".into(),
            ])
            .mentions(&["UTF-8"]),
        case("non-UTF-8 LOCKWRAP_KEY", 2, &["run", "--", "true"])
            .env("LOCKWRAP_KEY", non_utf8("k"))
            .mentions(&["LOCKWRAP_KEY"]),
        case("non-UTF-8 --metadata", 3, &[])
            .os_args({
                let mut a = os(&["lock", "--metadata"]);
                a.push(non_utf8("{"));
                a.push("bad/k".into());
                a
            })
            .mentions(&["UTF-8"]),
        // ---- Consul answers ----
        case("consul unreachable (closed port)", 8, &["lock", "bad/k"]).target(Target::Closed),
        case(
            "consul unreachable, run",
            8,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::Closed),
        case("not consul: HTML answers", 8, &["lock", "bad/k"]).target(Target::Garbage),
        case("ACL denied: lock", 4, &["lock", "bad/k"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case(
            "ACL denied: run",
            4,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::Acl)
        .mentions(&["ACL"]),
        case("ACL read-only token: lock", 4, &["lock", "bad/k"])
            .target(Target::AclReadOnly)
            .mentions(&["ACL"]),
        case(
            "ACL read-only token: run",
            4,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::AclReadOnly)
        .mentions(&["ACL"]),
        case("ACL denied: status", 4, &["status", "bad/k"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case("ACL denied: unlock -r", 4, &["unlock", "-r", "bad/.*"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case(
            "unknown datacenter",
            8,
            &["lock", "--datacenter", "nosuchdc", "bad/k"],
        )
        .or_code(3)
        .mentions(&["nosuchdc"]),
        case(
            "session check does not exist",
            3,
            &["lock", "--session-checks", "nosuchcheck", "bad/k"],
        )
        .or_code(8)
        .mentions(&["nosuchcheck"]),
    ]
}

#[test]
fn bad_inputs_fail_cleanly_with_the_documented_code_and_no_consul_write() {
    let private = Consul::start();
    let acl = Consul::start_with(&[
        "-hcl",
        r#"acl { enabled = true, default_policy = "deny", tokens { master = "root", agent = "root" } }"#,
    ]);
    read_only_token(&acl);
    let closed = closed_port();
    let garbage = garbage_server();
    let dir = scratch("bad-input");
    // Something to protect: a key no case may touch.
    private.put_kv("bad/existing", "keep me");
    acl.put_kv("bad/existing", "keep me");

    let table = cases(&dir);
    assert!(table.len() >= 40, "only {} cases", table.len());
    // BAD_INPUT_FILTER=substring runs only the matching cases (for debugging one case).
    let filter = std::env::var("BAD_INPUT_FILTER").unwrap_or_default();
    let table: Vec<Case> = table
        .into_iter()
        .filter(|c| c.name.contains(filter.as_str()))
        .collect();
    let mut failures = Vec::new();
    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    for (n, case) in table.iter().enumerate() {
        let agent = match case.target {
            Target::Acl | Target::AclReadOnly => &acl,
            Target::Private | Target::Closed | Target::Garbage => &private,
        };
        let before = snapshot(agent);
        let mut cmd = lockwrap(agent);
        cmd.env("CONSUL_HTTP_TOKEN", SECRET);
        match case.target {
            Target::Closed => {
                cmd.env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{closed}"));
            }
            Target::Garbage => {
                cmd.env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{garbage}"));
            }
            Target::AclReadOnly => {
                cmd.env("CONSUL_HTTP_TOKEN", READ_ONLY_SECRET);
            }
            Target::Private | Target::Acl => {}
        }
        for (key, value) in &case.env {
            cmd.env(key, value);
        }
        if let Some(yaml) = &case.yaml {
            let path = dir.join(format!("case-{n}.yaml"));
            std::fs::write(&path, yaml).expect("write yaml");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(&case.args);
        let started = Instant::now();
        let (out, overran) = run_case(cmd, Duration::from_secs(20));
        let took = started.elapsed();
        let after = snapshot(agent);
        if before != after {
            // Undo what a failed case left behind, so it cannot disturb the next cases.
            for session in agent.sessions() {
                if let Some(id) = session["ID"].as_str() {
                    agent.destroy_session(id);
                }
            }
            for key in agent.keys("") {
                if !before.keys.contains(&key) {
                    agent.delete_kv(&key);
                }
            }
        }
        let got = code(&out);
        *codes.entry(got).or_default() += 1;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();

        let mut problems = Vec::new();
        if overran {
            problems.push("still running after 20 s (killed)".to_string());
        }
        if !case.codes.contains(&got) {
            problems.push(format!("exit {got}, expected {:?}", case.codes));
        }
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != 1 {
            problems.push(format!("{} stderr lines, expected one", lines.len()));
        }
        // Connection problems must name the address that was tried.
        let address = match case.target {
            Target::Closed => Some(format!("127.0.0.1:{closed}")),
            Target::Garbage => Some(format!("127.0.0.1:{garbage}")),
            _ => None,
        };
        for word in case.mentions.iter().chain(&address) {
            if !stderr.contains(word.as_str()) {
                problems.push(format!("stderr does not mention {word:?}"));
            }
        }
        if dir.join("ran").exists() {
            let _ = std::fs::remove_file(dir.join("ran"));
            problems.push("a rejected invocation ran its command".to_string());
        }
        if stderr.contains("panicked") || got == 101 {
            problems.push("panicked".to_string());
        }
        for secret in [SECRET, FILE_SECRET, READ_ONLY_SECRET] {
            if stdout.contains(secret) || stderr.contains(secret) {
                problems.push(format!("output shows the secret {secret}"));
            }
        }
        if !stdout.trim().is_empty() && stdout.trim() != "null" {
            problems.push(format!("unexpected stdout {:?}", stdout.trim()));
        }
        if before != after {
            problems.push(format!("Consul changed: before {before:?} after {after:?}"));
        }
        let shown: String = stderr.trim().chars().take(300).collect();
        println!(
            "[{}] {:<42} exit {got:<3} {:>5}ms  {shown}",
            if problems.is_empty() { "ok" } else { "FAIL" },
            case.name,
            took.as_millis()
        );
        if !problems.is_empty() {
            println!("       problems: {}", problems.join("; "));
            failures.push(format!(
                "{}: {}\n    stderr: {stderr:?}",
                case.name,
                problems.join("; ")
            ));
        }
    }
    println!(
        "bad-input summary: {} cases, {} passed, {} failed; exit codes seen {codes:?}",
        table.len(),
        table.len() - failures.len(),
        failures.len()
    );
    assert!(private.keys("").contains(&"bad/existing".to_string()));
    assert!(
        failures.is_empty(),
        "{} bad-input case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
