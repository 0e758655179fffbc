//! Helpers for `lockwrap sidecar` and the `--http-addr` status server: instances killed on drop,
//! `/readyz`, `/leader` and `/metrics` getters, and a strict Prometheus text parser.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{free_port, http_get, lockwrap, Proc};

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
pub const SOON: Duration = Duration::from_secs(10);

pub fn status_of(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(s, _)| s)
}

pub fn leader_of(port: u16) -> Option<Value> {
    match http_get(port, "/leader")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Parses Prometheus / OpenMetrics text strictly enough to catch malformed output: every
/// sample is `name{labels} value [timestamp]` with a float value, every `# HELP`/`# TYPE` line
/// is well formed, and every sample belongs to a declared family. Returns series → value.
pub fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, String> {
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

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn metrics_of(port: u16) -> BTreeMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "/metrics status; body:\n{body}");
    parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{body}"))
}

pub fn metric(port: u16, series: &str) -> f64 {
    let all = metrics_of(port);
    *all.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics: {all:?}"))
}

/// A sidecar (or `run --http-addr`) with its status port, status file and stderr log; killed on
/// drop like every [`Proc`].
pub struct Instance {
    pub child: Proc,
    pub port: u16,
    pub status_file: PathBuf,
    pub log: PathBuf,
}

impl Instance {
    pub fn ready(&self) -> Option<u16> {
        status_of(self.port, "/readyz")
    }

    pub fn leader(&self) -> Option<Value> {
        leader_of(self.port)
    }

    pub fn session(&self) -> Option<String> {
        self.leader()?.get("session")?.as_str().map(str::to_string)
    }

    pub fn is_leader(&self) -> bool {
        self.leader()
            .and_then(|l| l.get("isLeader").and_then(Value::as_bool))
            .unwrap_or(false)
    }

    pub fn status_file(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.status_file).ok()?).ok()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (bounded); `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(limit)
    }

    pub fn terminate(&self) {
        self.child.signal(Signal::SIGTERM);
    }
}

/// Starts `lockwrap <mode> --key KEY --http-addr 127.0.0.1:<free> --status-file …` plus `extra`,
/// with lock-delay 0 so a destroyed session frees the key at once. stderr goes to a file.
pub fn start(
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
        .args(extra);
    let child = Proc::spawn_with(
        cmd,
        Stdio::null(),
        Stdio::from(File::create(&log).expect("log file")),
    );
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

pub fn sidecar(consul: &Consul, dir: &Path, name: &str, key: &str, extra: &[&str]) -> Instance {
    start(consul, dir, name, "sidecar", key, extra)
}

/// Waits until `leader` holds (readyz 200, isLeader) and `standby` waits naming it.
pub fn wait_settled(consul: &Consul, key: &str, leader: &Instance, standby: &Instance) -> String {
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
