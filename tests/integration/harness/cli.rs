//! Helpers for the consullock-compatible CLI (`lock`, `unlock`, `execute`, `status`): bounded
//! invocations, their one-line JSON, sessions and stored entries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::consul::Consul;
use crate::harness::{assert_no_sessions, code, describe, lockwrap, run_bounded, script};

/// Consul's own lock flags value (`consul lock`, Go `api.Lock`); lockwrap's entries carry it.
pub const LOCK_FLAGS: u64 = 3_304_740_253_564_472_344;

/// Bound for an invocation that should not wait for anyone (generous for a loaded CI box).
pub const QUICK: Duration = Duration::from_secs(20);

pub fn cli(consul: &Consul, args: &[&str]) -> Output {
    let mut cmd = lockwrap(consul);
    cmd.args(args);
    run_bounded(cmd, QUICK)
}

pub fn cli_cmd(consul: &Consul, args: &[&str]) -> Command {
    let mut cmd = lockwrap(consul);
    cmd.args(args);
    cmd
}

/// stdout must be exactly one line of JSON.
pub fn json_line(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "stdout is not exactly one line:\n{}",
        describe(out)
    );
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", describe(out)))
}

/// `lockwrap lock [extra] -- KEY`, which must succeed; returns its JSON.
pub fn lock_ok(consul: &Consul, key: &str, extra: &[&str]) -> Value {
    let mut args = vec!["lock"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", key]);
    let out = cli(consul, &args);
    assert_eq!(code(&out), 0, "lock {key}: {}", describe(&out));
    json_line(&out)
}

pub fn session_of(value: &Value) -> String {
    value["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {value}"))
        .to_string()
}

/// `lockwrap unlock KEY` of a key the test holds, then no session of it may remain.
pub fn unlock_and_check(consul: &Consul, key: &str) {
    let out = cli(consul, &["unlock", "--", key]);
    assert_eq!(code(&out), 0, "unlock {key}: {}", describe(&out));
    assert_no_sessions(consul, key);
}

pub fn session_exists(consul: &Consul, id: &str) -> bool {
    consul
        .sessions()
        .iter()
        .any(|s| s.get("ID").and_then(Value::as_str) == Some(id))
}

pub fn session_info(consul: &Consul, id: &str) -> Value {
    let (status, body) = consul
        .get(&format!("/v1/session/info/{id}"))
        .expect("session info");
    assert_eq!(status, 200, "{body}");
    let parsed: Value = serde_json::from_str(&body).expect("session info JSON");
    parsed[0].clone()
}

pub fn modify_index(consul: &Consul, key: &str) -> u64 {
    consul.kv(key).expect("entry exists")["ModifyIndex"]
        .as_u64()
        .expect("ModifyIndex")
}

/// The keys of the outermost JSON object in `text`, in written order.
pub fn top_level_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut current = String::new();
    let mut last_string = None;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
                current.push(c);
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                last_string = Some(std::mem::take(&mut current));
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ':' if depth == 1 => keys.extend(last_string.take()),
            c if !c.is_whitespace() => last_string = None,
            _ => {}
        }
    }
    keys
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A hook that appends its first argument to `<dir>/<name>.log` (and exits `status`).
pub fn recording_hook(dir: &Path, name: &str, status: i32) -> (PathBuf, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let exe = script(
        dir,
        name,
        &format!("echo \"$1\" >> '{}'\nexit {status}", log.display()),
    );
    (exe, log)
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Parses consullock's `created` (`2017-12-05T12:26:13.717995`, UTC).
pub fn parse_created(created: &str) -> time::OffsetDateTime {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
    );
    time::PrimitiveDateTime::parse(created, &format)
        .unwrap_or_else(|e| panic!("created {created:?} is not ISO-8601: {e}"))
        .assume_utc()
}
