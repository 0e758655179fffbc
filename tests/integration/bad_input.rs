//! The bad-input suite: a table of bad CLI flags, env vars, YAML files and
//! Consul answers. Each must give the documented exit code (README, "Exit codes"), a one-line error on
//! stderr naming the bad value or setting, no write to Consul (KV keys, sessions and both
//! tables' raft indexes unchanged on a private agent), and never print the ACL token.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::consul::Consul;
use crate::harness::{closed_port, code, http_request, lockwrap, scratch, serve};

mod connection;
mod settings;

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

/// The table. `dir` holds the files some cases point at.
fn cases(dir: &Path) -> Vec<Case> {
    let mut all = settings::cases(dir);
    all.extend(connection::cases(dir));
    all
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
