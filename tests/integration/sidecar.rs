//! `lockwrap sidecar` and the `--http-addr` status server (README, "Kubernetes" and "Observability"): readiness follows
//! the lock, `/leader` names the holder everywhere, `/metrics` is Prometheus text whose counters
//! move, the status file is never partial, and the sidecar re-campaigns, exits or steps down.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{lockwrap, scratch, script, unique_key};

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
const SOON: Duration = Duration::from_secs(10);

// ---- a std-only HTTP GET client ----

/// `GET path` on 127.0.0.1:port; `None` when nothing answers (e.g. not listening yet).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

fn status_of(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(s, _)| s)
}

fn leader_of(port: u16) -> Option<Value> {
    match http_get(port, "/leader")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ---- a tiny Prometheus text parser ----

/// Parses Prometheus / OpenMetrics text strictly enough to catch malformed output: every
/// sample is `name{labels} value [timestamp]` with a float value, every `# HELP`/`# TYPE` line
/// is well formed, and every sample belongs to a declared family. Returns series → value.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !known.contains(&kind) {
                        return Err(bad("unknown metric type"));
                    }
                    families.insert(name.to_string(), kind.to_string());
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(bad("malformed HELP/TYPE")),
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(bad("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut series = name.to_string();
        if let Some(after) = rest.strip_prefix('{') {
            let close = after.find('}').ok_or_else(|| bad("unclosed labels"))?;
            let labels = &after[..close];
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').ok_or_else(|| bad("bad label"))?;
                if !valid_name(label) || label.contains(':') {
                    return Err(bad("bad label name"));
                }
                if !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"')) {
                    return Err(bad("label value not quoted"));
                }
            }
            series = format!("{name}{{{labels}}}");
            rest = &after[close + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| bad("value is not a float"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().map_err(|_| bad("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        let family_known = families.contains_key(name)
            || ["_total", "_bucket", "_count", "_sum", "_created"]
                .iter()
                .any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|f| families.contains_key(f))
                });
        if !family_known {
            return Err(bad("sample without a # TYPE line"));
        }
        samples.insert(series, value);
    }
    Ok(samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn metrics_of(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "/metrics status; body:\n{body}");
    parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{body}"))
}

fn metric(port: u16, series: &str) -> f64 {
    let all = metrics_of(port);
    *all.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics: {all:?}"))
}

// ---- sidecar processes, killed on drop ----

struct Instance {
    child: Child,
    port: u16,
    status_file: PathBuf,
    log: PathBuf,
}

impl Instance {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn ready(&self) -> Option<u16> {
        status_of(self.port, "/readyz")
    }

    fn leader(&self) -> Option<Value> {
        leader_of(self.port)
    }

    fn session(&self) -> Option<String> {
        self.leader()?.get("session")?.as_str().map(str::to_string)
    }

    fn is_leader(&self) -> bool {
        self.leader()
            .and_then(|l| l.get("isLeader").and_then(Value::as_bool))
            .unwrap_or(false)
    }

    fn status_file(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.status_file).ok()?).ok()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (bounded); `None` if it is still running.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&self) {
        let _ = kill(self.pid(), Signal::SIGTERM);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `lockwrap <mode> --key KEY --http-addr 127.0.0.1:<free> --status-file …` plus `extra`,
/// with lock-delay 0 so a destroyed session frees the key at once. stderr goes to a file.
fn start(
    consul: &Consul,
    dir: &Path,
    name: &str,
    mode: &str,
    key: &str,
    extra: &[&str],
) -> Instance {
    let port = free_port();
    let status_file = dir.join(format!("{name}-status.json"));
    let log = dir.join(format!("{name}.log"));
    let mut cmd: Command = lockwrap(consul);
    cmd.arg(mode).args(["--key", key]);
    if !extra.contains(&"--lock-delay") {
        cmd.args(["--lock-delay", "0"]);
    }
    cmd.args(["--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--status-file")
        .arg(&status_file)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(&log).expect("log file")));
    let child = cmd.spawn().expect("spawn lockwrap");
    let instance = Instance {
        child,
        port,
        status_file,
        log,
    };
    let up = wait_until(SOON, || instance.ready().is_some());
    assert!(
        up,
        "{name} never served HTTP; stderr:\n{}",
        instance.stderr()
    );
    instance
}

fn sidecar(consul: &Consul, dir: &Path, name: &str, key: &str, extra: &[&str]) -> Instance {
    start(consul, dir, name, "sidecar", key, extra)
}

/// Waits until `leader` holds (readyz 200, isLeader) and `standby` waits naming it.
fn wait_settled(consul: &Consul, key: &str, leader: &Instance, standby: &Instance) -> String {
    let settled = wait_until(SOON, || {
        let Some(holder) = consul.holder(key) else {
            return false;
        };
        leader.ready() == Some(200)
            && standby.ready() == Some(503)
            && leader.is_leader()
            && leader.session().as_deref() == Some(holder.as_str())
            && standby.session().as_deref() == Some(holder.as_str())
            && !standby.is_leader()
    });
    assert!(
        settled,
        "leadership did not settle\nleader /leader: {:?} readyz {:?}\nstandby /leader: {:?} readyz {:?}\nholder {:?}\nleader stderr:\n{}\nstandby stderr:\n{}",
        leader.leader(),
        leader.ready(),
        standby.leader(),
        standby.ready(),
        consul.holder(key),
        leader.stderr(),
        standby.stderr()
    );
    consul.holder(key).expect("a holder")
}

fn assert_leader_document(doc: &Value, key: &str, is_leader: bool, session: &str) {
    for field in [
        "key",
        "isLeader",
        "holder",
        "session",
        "fencingToken",
        "since",
    ] {
        assert!(doc.get(field).is_some(), "`{field}` missing in {doc}");
    }
    assert_eq!(doc["key"], key, "{doc}");
    assert_eq!(doc["isLeader"], is_leader, "{doc}");
    assert_eq!(doc["session"], session, "{doc}");
    assert!(
        doc["fencingToken"].as_u64().is_some_and(|t| t > 0),
        "fencingToken: {doc}"
    );
    assert!(
        doc["holder"].get("pid").is_some(),
        "holder names a pid: {doc}"
    );
    if is_leader {
        assert!(
            doc["since"].as_str().is_some_and(|s| s.contains('T')),
            "since: {doc}"
        );
    }
}

// ---- tests ----

#[test]
fn sidecar_readyz_leader_and_metrics_follow_the_lock_across_losses() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-flip");
    let dir = scratch("sidecar-flip");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    wait_until(SOON, || a.ready() == Some(200));
    let b = sidecar(consul, &dir, "b", &key, &[]);
    let first = wait_settled(consul, &key, &a, &b);

    // /leader on both names the holder; only the holder says isLeader.
    let (la, lb) = (a.leader().unwrap(), b.leader().unwrap());
    assert_leader_document(&la, &key, true, &first);
    assert_leader_document(&lb, &key, false, &first);
    assert_eq!(la["fencingToken"], lb["fencingToken"]);
    let first_token = la["fencingToken"].as_u64();
    assert_eq!(la["holder"], lb["holder"]);
    assert_eq!(la["holder"]["pid"], a.child.id(), "holder pid is a's: {la}");
    assert_eq!(status_of(a.port, "/healthz"), Some(200));
    assert_eq!(status_of(b.port, "/healthz"), Some(200));
    assert_eq!(status_of(a.port, "/nonexistent"), Some(404));
    // The status file says what /leader says.
    assert!(
        wait_until(SOON, || a.status_file() == a.leader()),
        "a: {:?} vs {:?}",
        a.status_file(),
        a.leader()
    );
    assert!(
        wait_until(SOON, || b.status_file() == b.leader()),
        "b: {:?} vs {:?}",
        b.status_file(),
        b.leader()
    );

    // Metrics: every documented family is there.
    let ma = metrics_of(a.port);
    for name in [
        "lockwrap_lock_held",
        "lockwrap_acquisitions_total",
        "lockwrap_lock_lost_total",
        "lockwrap_session_renew_failures_total",
        "lockwrap_acquire_wait_seconds_count",
        "lockwrap_acquire_wait_seconds_sum",
        "lockwrap_child_exit_code",
    ] {
        assert!(ma.contains_key(name), "{name} missing: {ma:?}");
    }
    assert!(
        ma.keys()
            .any(|k| k.starts_with("lockwrap_acquire_wait_seconds_bucket{")
                && k.contains("le=\"+Inf\"")),
        "histogram +Inf bucket: {ma:?}"
    );
    assert_eq!(ma["lockwrap_lock_held"], 1.0);
    assert_eq!(ma["lockwrap_acquisitions_total"], 1.0);
    assert_eq!(ma["lockwrap_lock_lost_total"], 0.0);
    assert_eq!(ma["lockwrap_acquire_wait_seconds_count"], 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_acquisitions_total"), 0.0);

    // Loss: destroy a's session → b leads, a re-campaigns and becomes the standby.
    consul.destroy_session(&first);
    let second = wait_settled(consul, &key, &b, &a);
    assert_ne!(first, second);
    let (la, lb) = (a.leader().unwrap(), b.leader().unwrap());
    assert_leader_document(&lb, &key, true, &second);
    assert_leader_document(&la, &key, false, &second);
    assert!(
        lb["fencingToken"].as_u64() > first_token,
        "fencing token increases: {first_token:?} then {lb}"
    );
    assert_eq!(metric(a.port, "lockwrap_lock_lost_total"), 1.0);
    assert_eq!(metric(a.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_acquisitions_total"), 1.0);
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    assert!(wait_until(SOON, || b.status_file() == b.leader()));

    // And back: a re-acquires, its acquisitions counter moves to 2.
    consul.destroy_session(&second);
    let third = wait_settled(consul, &key, &a, &b);
    assert!(!third.is_empty() && third != first && third != second);
    let la = a.leader().unwrap();
    assert_leader_document(&la, &key, true, &third);
    let tokens = [&lb, &la].map(|d| d["fencingToken"].as_u64().unwrap());
    assert!(tokens[0] < tokens[1], "fencing tokens increase: {tokens:?}");
    assert_eq!(metric(a.port, "lockwrap_acquisitions_total"), 2.0);
    assert_eq!(metric(a.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_lost_total"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(status_of(a.port, "/healthz"), Some(200));
    assert_eq!(status_of(b.port, "/healthz"), Some(200));
}

#[test]
fn sidecar_status_file_is_never_partial_while_leadership_flips() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-statusfile");
    let dir = scratch("sidecar-statusfile");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    wait_until(SOON, || a.ready() == Some(200));
    let b = sidecar(consul, &dir, "b", &key, &[]);
    wait_settled(consul, &key, &a, &b);

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [a.status_file.clone(), b.status_file.clone()]
        .into_iter()
        .map(|path| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut reads, mut bad) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    reads += 1;
                    match std::fs::read_to_string(&path) {
                        Ok(text) => match serde_json::from_str::<Value>(&text) {
                            Ok(v) if v.get("isLeader").is_some() && v.get("key").is_some() => {}
                            _ => bad.push(text),
                        },
                        Err(e) => bad.push(format!("read error: {e}")),
                    }
                }
                (reads, bad)
            })
        })
        .collect();

    let (mut leader, mut standby) = (&a, &b);
    for _ in 0..4 {
        let holder = consul.holder(&key).expect("a holder");
        consul.destroy_session(&holder);
        wait_settled(consul, &key, standby, leader);
        std::mem::swap(&mut leader, &mut standby);
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (reads, bad) = reader.join().expect("reader thread");
        assert!(reads > 100, "only {reads} reads");
        assert!(
            bad.is_empty(),
            "{} of {reads} reads were not complete JSON: {:?}",
            bad.len(),
            bad.first()
        );
    }
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    assert!(wait_until(SOON, || b.status_file() == b.leader()));
}

#[test]
fn sidecar_exit_on_loss_exits_101_and_leaves_no_session() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-exit-on-loss");
    let dir = scratch("sidecar-exit-on-loss");
    let mut a = sidecar(consul, &dir, "a", &key, &["--exit-on-loss"]);
    assert!(
        wait_until(SOON, || a.ready() == Some(200)),
        "{}",
        a.stderr()
    );
    let session = consul.holder(&key).expect("a holds");
    consul.destroy_session(&session);
    let status = a.wait_exit(SOON);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(101),
        "exit after loss; stderr:\n{}",
        a.stderr()
    );
    assert!(
        consul.sessions_for(&key).is_empty(),
        "{:?}",
        consul.sessions_for(&key)
    );
    assert_eq!(consul.holder(&key), None);
}

#[test]
fn sidecar_sigterm_releases_the_lock_so_the_standby_takes_over_at_once() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-sigterm");
    let dir = scratch("sidecar-sigterm");
    // Default lock-delay (15 s) on the holder: a release must not wait for it, a bare
    // session destroy would.
    let mut a = start(consul, &dir, "a", "sidecar", &key, &["--lock-delay", "15s"]);
    assert!(
        wait_until(SOON, || a.ready() == Some(200)),
        "{}",
        a.stderr()
    );
    let b = sidecar(consul, &dir, "b", &key, &[]);
    let first = wait_settled(consul, &key, &a, &b);

    let signalled = Instant::now();
    a.terminate();
    let status = a.wait_exit(SOON);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "a's exit; stderr:\n{}",
        a.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(5), || b.ready() == Some(200)),
        "standby did not take over within 5 s of SIGTERM; b stderr:\n{}",
        b.stderr()
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    assert!(
        !consul
            .sessions()
            .iter()
            .any(|s| s["ID"].as_str() == Some(first.as_str())),
        "a's session {first} is left in Consul"
    );
    assert_eq!(
        consul.sessions_for(&key).len(),
        1,
        "only b's session remains"
    );
    // Whoever reads the status file after a's exit must not think a still leads.
    let last = a.status_file().expect("a's status file after exit");
    assert_eq!(
        last["isLeader"], false,
        "a's status file after SIGTERM: {last}"
    );
}

#[test]
fn sidecar_sigterm_on_a_standby_exits_0_without_a_session() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-sigterm-standby");
    let dir = scratch("sidecar-sigterm-standby");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    assert!(wait_until(SOON, || a.ready() == Some(200)));
    let mut b = sidecar(consul, &dir, "b", &key, &[]);
    let holder = wait_settled(consul, &key, &a, &b);
    b.terminate();
    let status = b.wait_exit(SOON);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", b.stderr());
    let left: Vec<_> = consul
        .sessions_for(&key)
        .into_iter()
        .filter_map(|s| s["ID"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, vec![holder], "only the holder's session remains");
}

#[test]
fn sidecar_ready_always_answers_200_on_a_standby() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-ready-always");
    let dir = scratch("sidecar-ready-always");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    assert!(wait_until(SOON, || a.ready() == Some(200)));
    let b = sidecar(consul, &dir, "b", &key, &["--ready-always"]);
    let holder = consul.holder(&key).expect("a holds");
    assert!(
        wait_until(SOON, || b.session().as_deref() == Some(holder.as_str())),
        "{:?}",
        b.leader()
    );
    assert_eq!(b.ready(), Some(200), "--ready-always standby");
    assert!(!b.is_leader());
    assert_eq!(a.ready(), Some(200));
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
}

#[test]
fn run_with_http_addr_serves_readyz_while_holding() {
    let consul = Consul::shared();
    let key = unique_key("run-http");
    let dir = scratch("run-http");
    let mut r = start(consul, &dir, "run", "run", &key, &["--", "sleep", "60"]);
    assert!(
        wait_until(SOON, || r.ready() == Some(200)),
        "/readyz while holding: {:?}\n{}",
        r.ready(),
        r.stderr()
    );
    let session = consul.holder(&key).expect("run holds");
    let doc = r.leader().expect("/leader");
    assert_leader_document(&doc, &key, true, &session);
    assert_eq!(status_of(r.port, "/healthz"), Some(200));
    assert_eq!(metric(r.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(r.port, "lockwrap_acquisitions_total"), 1.0);
    assert!(wait_until(SOON, || r.status_file() == r.leader()));
    r.terminate();
    assert!(
        r.wait_exit(SOON).is_some(),
        "run did not stop on SIGTERM:\n{}",
        r.stderr()
    );
    assert_eq!(consul.holder(&key), None);
}

#[test]
fn sidecar_exit_on_loss_leaves_a_status_file_saying_not_leader() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-exit-status");
    let dir = scratch("sidecar-exit-status");
    let mut a = sidecar(consul, &dir, "a", &key, &["--exit-on-loss"]);
    assert!(
        wait_until(SOON, || a.ready() == Some(200)),
        "{}",
        a.stderr()
    );
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    consul.destroy_session(&consul.holder(&key).expect("a holds"));
    assert_eq!(a.wait_exit(SOON).and_then(|s| s.code()), Some(101));
    let last = a.status_file().expect("status file after exit");
    assert_eq!(
        last["isLeader"], false,
        "status file after loss + exit: {last}"
    );
}

/// Partition: the agent stops answering (SIGSTOP) for a minute. The holder cannot renew, so
/// it must stop claiming leadership (/readyz 503) before its TTL could run out in Consul,
/// report itself unhealthy (/healthz 503: no healthy session), keep campaigning instead of
/// exiting, and lead again once the agent is back.
#[test]
fn sidecar_steps_down_before_the_ttl_when_consul_stops_answering() {
    let consul = Consul::start();
    let key = unique_key("sidecar-partition");
    let dir = scratch("sidecar-partition");
    let ttl = Duration::from_secs(10);
    let mut a = sidecar(&consul, &dir, "a", &key, &["--session-ttl", "10s"]);
    assert!(
        wait_until(SOON, || a.ready() == Some(200)),
        "{}",
        a.stderr()
    );
    assert_eq!(status_of(a.port, "/healthz"), Some(200));

    consul.freeze();
    let frozen = Instant::now();
    // The last successful renew was before the freeze, so Consul may expire the session
    // as early as `frozen + ttl`: /readyz must say 503 before that.
    let stepped_down = wait_until(ttl, || a.ready() == Some(503));
    let took = frozen.elapsed();
    let leader_doc = a.leader();
    let unhealthy = wait_until(Duration::from_secs(20), || {
        status_of(a.port, "/healthz") == Some(503)
    });
    let renew_failures = http_get(a.port, "/metrics")
        .and_then(|(_, body)| parse_prometheus(&body).ok())
        .and_then(|m| m.get("lockwrap_session_renew_failures_total").copied());
    // A Consul outage of a minute is not a reason for a sidecar to exit.
    let exited = loop {
        if let Ok(Some(status)) = a.child.try_wait() {
            break Some((status, frozen.elapsed()));
        }
        if frozen.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    consul.thaw();
    let stderr = a.stderr();
    assert!(
        stepped_down,
        "still ready {took:?} after the agent froze (TTL {ttl:?}); stderr:\n{stderr}"
    );
    assert!(
        !leader_doc.as_ref().is_some_and(|d| d["isLeader"] == true),
        "{leader_doc:?}"
    );
    assert!(
        renew_failures.is_some_and(|n| n >= 1.0),
        "renew failures counted: {renew_failures:?}"
    );
    assert!(
        exited.is_none(),
        "the sidecar exited during the Consul outage: {exited:?}; stderr:\n{stderr}"
    );
    assert!(
        unhealthy,
        "/healthz stayed 200 for 20 s after losing the lock to a frozen Consul; stderr:\n{stderr}"
    );
    assert_eq!(metric(a.port, "lockwrap_lock_lost_total"), 1.0);

    // Back: the sidecar leads again and is healthy.
    assert!(
        wait_until(Duration::from_secs(60), || a.ready() == Some(200)),
        "no re-acquire after thaw; stderr:\n{}",
        a.stderr()
    );
    assert!(wait_until(SOON, || status_of(a.port, "/healthz") == Some(200)));
    assert_eq!(metric(a.port, "lockwrap_acquisitions_total"), 2.0);
}

#[test]
fn sidecar_runs_acquired_lost_and_released_hooks_with_the_key() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-hooks");
    let dir = scratch("sidecar-hooks");
    let log = dir.join("hooks.log");
    let hook = script(
        &dir,
        "hook",
        &format!(
            "echo \"$LOCKWRAP_EVENT $1 $LOCKWRAP_SESSION $LOCKWRAP_FENCING_TOKEN\" >> {}",
            log.display()
        ),
    );
    let hook = hook.to_str().expect("utf-8 path");
    let mut a = sidecar(
        consul,
        &dir,
        "a",
        &key,
        &[
            "--on-acquired",
            hook,
            "--on-lost",
            hook,
            "--on-released",
            hook,
        ],
    );
    let events = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    };
    assert!(wait_until(SOON, || events().len() == 1), "{:?}", events());
    let first = consul.holder(&key).expect("a holds");
    consul.destroy_session(&first);
    assert!(
        wait_until(SOON, || events().len() == 3),
        "{:?}\n{}",
        events(),
        a.stderr()
    );
    let second = consul.holder(&key).expect("a holds again");
    a.terminate();
    assert_eq!(a.wait_exit(SOON).and_then(|s| s.code()), Some(0));
    assert!(wait_until(SOON, || events().len() == 4), "{:?}", events());
    let got = events();
    let names: Vec<&str> = got.iter().map(|e| e[0].as_str()).collect();
    assert_eq!(
        names,
        ["acquired", "lost", "acquired", "released"],
        "{got:?}"
    );
    for (event, session) in got.iter().zip([&first, &first, &second, &second]) {
        assert_eq!(event[1], key, "hook argument is the key: {event:?}");
        assert_eq!(&event[2], session, "LOCKWRAP_SESSION: {event:?}");
        assert!(
            event[3].parse::<u64>().is_ok(),
            "LOCKWRAP_FENCING_TOKEN: {event:?}"
        );
    }
}

#[test]
fn prometheus_parser_rejects_malformed_text() {
    let good = "# HELP x_total Things.\n# TYPE x counter\nx_total 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
    let parsed = parse_prometheus(good).expect("good text");
    assert_eq!(parsed["x_total"], 3.0);
    assert_eq!(parsed["h_bucket{le=\"+Inf\"}"], 1.0);
    for bad in [
        "# TYPE x counter\nx_total abc\n",
        "# TYPE x counter\nx_total\n",
        "# TYPE x bogus\n",
        "# HELP\n",
        "y 1\n",
        "# TYPE x gauge\nx{a=b} 1\n",
        "# TYPE x gauge\nx{a=\"b\" 1\n",
        "# TYPE x gauge\n9x 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}
