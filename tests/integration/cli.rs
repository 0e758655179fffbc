//! The consullock-compatible CLI (`lock`, `unlock [-r]`, `execute`, `status`) through the built
//! binary against a real Consul agent: the CLI's behaviour (README, "Subcommands"), plus layout and ACL cases.
//!
//! Every test uses its own keys (tests run in parallel against the shared agent), waits on
//! conditions rather than sleeping, and ends by checking that no session of its keys is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::consul::{consul_binary, wait_until, Consul};
use crate::harness::{
    code, lockwrap, run_bounded, scratch, script, stderr, stdout, unique_key, wait_output,
};

/// Consul's own lock flags value (`consul lock`, Go `api.Lock`); lockwrap's entries carry it.
const LOCK_FLAGS: u64 = 3_304_740_253_564_472_344;
/// The semaphore contender flags value: a key with these flags is not a lock.
const SEMAPHORE_FLAGS: u64 = 16_210_313_421_097_356_768;
/// Bound for an invocation that should not wait for anyone (generous for a loaded CI box).
const QUICK: Duration = Duration::from_secs(20);
/// Bound for a background waiter that is expected to finish once the lock is freed; long
/// enough that a slow path (e.g. a 15 s lock-delay) is measured and reported, not killed.
const WAITER: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- helpers

fn cli(consul: &Consul, args: &[&str]) -> Output {
    let mut cmd = lockwrap(consul);
    cmd.args(args);
    run_bounded(cmd, QUICK)
}

fn cli_cmd(consul: &Consul, args: &[&str]) -> Command {
    let mut cmd = lockwrap(consul);
    cmd.args(args);
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        code(out),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

/// stdout must be exactly one line of JSON.
fn json_line(out: &Output) -> Value {
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
fn lock_ok(consul: &Consul, key: &str, extra: &[&str]) -> Value {
    let mut args = vec!["lock"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", key]);
    let out = cli(consul, &args);
    assert_eq!(code(&out), 0, "lock {key}: {}", describe(&out));
    json_line(&out)
}

fn session_of(value: &Value) -> String {
    value["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {value}"))
        .to_string()
}

/// `lockwrap unlock KEY` of a key the test holds, then no session of it may remain.
fn unlock_and_check(consul: &Consul, key: &str) {
    let out = cli(consul, &["unlock", "--", key]);
    assert_eq!(code(&out), 0, "unlock {key}: {}", describe(&out));
    assert_no_sessions(consul, key);
}

fn assert_no_sessions(consul: &Consul, key: &str) {
    let clean = wait_until(Duration::from_secs(5), || {
        consul.sessions_for(key).is_empty()
    });
    assert!(
        clean,
        "sessions left for {key}: {:?}",
        consul.sessions_for(key)
    );
}

fn session_exists(consul: &Consul, id: &str) -> bool {
    consul
        .sessions()
        .iter()
        .any(|s| s.get("ID").and_then(Value::as_str) == Some(id))
}

fn session_info(consul: &Consul, id: &str) -> Value {
    let (status, body) = consul
        .get(&format!("/v1/session/info/{id}"))
        .expect("session info");
    assert_eq!(status, 200, "{body}");
    let parsed: Value = serde_json::from_str(&body).expect("session info JSON");
    parsed[0].clone()
}

fn modify_index(consul: &Consul, key: &str) -> u64 {
    consul.kv(key).expect("entry exists")["ModifyIndex"]
        .as_u64()
        .expect("ModifyIndex")
}

/// The keys of the outermost JSON object in `text`, in written order.
fn top_level_keys(text: &str) -> Vec<String> {
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

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A hook that appends its first argument to `<dir>/<name>.log` (and exits `status`).
fn recording_hook(dir: &Path, name: &str, status: i32) -> (PathBuf, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let exe = script(
        dir,
        name,
        &format!("echo \"$1\" >> '{}'\nexit {status}", log.display()),
    );
    (exe, log)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A lockwrap (or other) process running in the background; killed if the test panics.
struct Background(Option<Child>);

impl Background {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Background(Some(cmd.spawn().expect("spawn background process")))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("process not collected yet")
    }

    fn running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Waits for the exit (bounded), returning the output and when the exit was noticed
    /// (polled every 2 ms, so the figure is exact to a few ms).
    fn finish(mut self, limit: Duration) -> (Output, Instant) {
        let deadline = Instant::now() + limit;
        let mut child = self.0.take().expect("process not collected yet");
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    let at = Instant::now();
                    return (child.wait_with_output().expect("collect output"), at);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("collect output");
                    panic!("background process overran {limit:?}:\n{}", describe(&out));
                }
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parses consullock's `created` (`2017-12-05T12:26:13.717995`, UTC).
fn parse_created(created: &str) -> time::OffsetDateTime {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
    );
    time::PrimitiveDateTime::parse(created, &format)
        .unwrap_or_else(|e| panic!("created {created:?} is not ISO-8601: {e}"))
        .assume_utc()
}

/// A closed loopback port: bound then released, so connecting is refused.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------- lock

#[test]
fn lock_when_unlocked_prints_sorted_json_and_stores_pretty_value() {
    let consul = Consul::shared();
    let key = unique_key("lock_unlocked");
    let mut cmd = cli_cmd(consul, &["lock", &key]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn lockwrap");
    let pid = child.id();
    let out = wait_output(child, QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));

    let printed = json_line(&out);
    let text = stdout(&out);
    assert_eq!(
        top_level_keys(&text),
        ["created", "fencingToken", "key", "secondsToLock", "session"],
        "{text}"
    );
    assert_eq!(printed["key"], json!(key));
    let session = session_of(&printed);
    assert!(printed["secondsToLock"].as_f64().is_some_and(|s| s >= 0.0));
    let created = parse_created(printed["created"].as_str().expect("created"));
    let age = time::OffsetDateTime::now_utc() - created;
    assert!(
        age.whole_seconds().abs() < 60,
        "created is not now in UTC: {created}"
    );

    // Held in Consul by that session, with Consul's lock flags; the token is ModifyIndex.
    let entry = consul.kv(&key).expect("lock entry stored");
    assert_eq!(entry["Session"], json!(session));
    assert_eq!(entry["Flags"].as_u64(), Some(LOCK_FLAGS), "{entry}");
    assert_eq!(printed["fencingToken"], entry["ModifyIndex"]);

    // The value: pretty JSON with sorted keys, consullock's fields plus holder{hostname,pid}.
    let (_, raw) = consul.get(&format!("/v1/kv/{key}?raw")).expect("raw value");
    assert!(raw.contains("\n  \""), "value is not pretty-printed: {raw}");
    assert_eq!(
        top_level_keys(&raw),
        ["created", "holder", "key", "secondsToLock", "session"],
        "{raw}"
    );
    let value: Value = serde_json::from_str(&raw).expect("value is JSON");
    assert_eq!(value["key"], json!(key));
    assert_eq!(value["session"], json!(session));
    assert_eq!(value["created"], printed["created"]);
    assert_eq!(value["secondsToLock"], printed["secondsToLock"]);
    let hostname = nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("utf-8 hostname");
    assert_eq!(value["holder"], json!({"hostname": hostname, "pid": pid}));

    // consullock's session defaults for `lock`: TTL 86400 s, behaviour delete.
    let info = session_info(consul, &session);
    assert_eq!(info["TTL"], json!("86400s"), "{info}");
    assert_eq!(info["Behavior"], json!("delete"), "{info}");

    // `lock` leaves the lock held on purpose.
    assert_eq!(consul.sessions_for(&key).len(), 1);
    unlock_and_check(consul, &key);
}

#[test]
fn lock_when_locked_blocks_until_unlocked() {
    let consul = Consul::shared();
    let key = unique_key("lock_blocks");
    let dir = scratch("lock_blocks");
    let first = lock_ok(consul, &key, &[]);
    let (hook, seen_locked) = recording_hook(&dir, "already", 0);

    let mut waiter = Background::spawn(cli_cmd(
        consul,
        &["lock", "--on-already-locked", path_str(&hook), "--", &key],
    ));
    assert!(
        wait_until(QUICK, || !lines(&seen_locked).is_empty()),
        "the waiter never found the lock taken"
    );
    assert!(
        waiter.running(),
        "the waiter returned while the lock was held"
    );
    assert_eq!(consul.holder(&key), Some(session_of(&first)));

    let out = cli(consul, &["unlock", &key]);
    let released = Instant::now();
    assert_eq!(stdout(&out), format!("\"{key}\""), "{}", describe(&out));
    let (out, acquired) = waiter.finish(WAITER);
    let waited = acquired - released;
    eprintln!("lock_when_locked_blocks_until_unlocked: waiter acquired {waited:?} after `unlock`");
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let second = json_line(&out);
    assert_ne!(second["session"], first["session"]);
    assert_eq!(consul.holder(&key), Some(session_of(&second)));
    assert!(second["fencingToken"].as_u64() > first["fencingToken"].as_u64());
    assert!(
        waited < Duration::from_secs(5),
        "the waiter took {waited:?} after `unlock` (consullock's sessions have lock-delay 0; \
         lockwrap's `unlock` should not leave the key in a 15 s lock-delay)"
    );
    unlock_and_check(consul, &key);
}

#[test]
fn lock_wait_cancelled_by_sigterm_exits_143_and_destroys_its_session() {
    let consul = Consul::shared();
    let key = unique_key("lock_sigterm");
    let dir = scratch("lock_sigterm");
    let held = lock_ok(consul, &key, &[]);
    let (hook, seen_locked) = recording_hook(&dir, "already", 0);
    let mut waiter = Background::spawn(cli_cmd(
        consul,
        &["lock", "--on-already-locked", path_str(&hook), "--", &key],
    ));
    assert!(wait_until(QUICK, || !lines(&seen_locked).is_empty()));
    assert!(waiter.running());
    let pid = nix::unistd::Pid::from_raw(waiter.child().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let sent = Instant::now();
    let (out, exited) = waiter.finish(QUICK);
    assert_eq!(code(&out), 128 + 15, "{}", describe(&out));
    assert!(
        exited - sent < Duration::from_secs(2),
        "the wait ended {:?} after SIGTERM",
        exited - sent
    );
    assert_eq!(consul.holder(&key), Some(session_of(&held)));
    assert_eq!(
        consul.sessions_for(&key).len(),
        1,
        "only the holder's session"
    );
    unlock_and_check(consul, &key);
}

#[test]
fn lock_non_blocking_when_locked_prints_null_and_exits_100() {
    let consul = Consul::shared();
    let key = unique_key("lock_non_blocking");
    let first = lock_ok(consul, &key, &[]);
    let started = Instant::now();
    let out = cli(consul, &["lock", "--non-blocking", &key]);
    assert_eq!(code(&out), 100, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(consul.holder(&key), Some(session_of(&first)));
    // Only the holder's session exists: the refused attempt destroyed its own.
    assert_eq!(consul.sessions_for(&key).len(), 1);
    unlock_and_check(consul, &key);
}

#[test]
fn lock_timeout_prints_null_and_exits_5_within_timeout_plus_one_second() {
    let consul = Consul::shared();
    let key = unique_key("lock_timeout");
    let first = lock_ok(consul, &key, &[]);
    for (flag, timeout) in [
        ("1", Duration::from_secs(1)),
        ("0.5", Duration::from_millis(500)),
        ("700ms", Duration::from_millis(700)),
    ] {
        let started = Instant::now();
        let out = cli(consul, &["lock", "--timeout", flag, &key]);
        let took = started.elapsed();
        assert_eq!(code(&out), 5, "--timeout {flag}: {}", describe(&out));
        assert_eq!(stdout(&out), "null");
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(1),
            "--timeout {flag} returned after {took:?}"
        );
        assert_eq!(consul.sessions_for(&key).len(), 1, "--timeout {flag}");
    }
    assert_eq!(consul.holder(&key), Some(session_of(&first)));
    unlock_and_check(consul, &key);
}

#[test]
fn lock_succeeds_once_the_first_holders_session_ttl_expires() {
    let consul = Consul::shared();
    let key = unique_key("lock_ttl");
    // Lock-delay 0 (consullock's) so the test measures the TTL, not Consul's lock-delay.
    let first = lock_ok(consul, &key, &["--session-ttl", "10", "--lock-delay", "0"]);
    let first_session = session_of(&first);
    assert_eq!(session_info(consul, &first_session)["TTL"], json!("10s"));

    let started = Instant::now();
    let mut cmd = cli_cmd(consul, &["lock", &key]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Consul invalidates a TTL session between TTL and 2×TTL after its last renew.
    let out = wait_output(cmd.spawn().expect("spawn"), Duration::from_secs(35));
    let took = started.elapsed();
    eprintln!(
        "lock_succeeds_once_the_first_holders_session_ttl_expires: second lock after {took:?}"
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        took >= Duration::from_secs(9),
        "acquired after {took:?}, before the 10 s TTL"
    );
    let second = json_line(&out);
    assert_ne!(session_of(&second), first_session);
    assert!(!session_exists(consul, &first_session));
    unlock_and_check(consul, &key);
}

#[test]
fn lock_rejects_invalid_session_ttl_with_exit_7_and_writes_nothing() {
    let consul = Consul::shared();
    let key = unique_key("lock_bad_ttl");
    let dir = scratch("lock_bad_ttl");
    let marker = dir.join("ran");
    for ttl in ["5", "90000", "9.5", "86401"] {
        let out = cli(consul, &["lock", "--session-ttl", ttl, &key]);
        assert_eq!(code(&out), 7, "--session-ttl {ttl}: {}", describe(&out));
        let out = cli(
            consul,
            &[
                "execute",
                "--session-ttl",
                ttl,
                &key,
                &format!("touch '{}'", marker.display()),
            ],
        );
        assert_eq!(
            code(&out),
            7,
            "execute --session-ttl {ttl}: {}",
            describe(&out)
        );
    }
    assert!(consul.kv(&key).is_none(), "something was written");
    assert!(!marker.exists(), "execute ran the command");
    assert_no_sessions(consul, &key);

    // 0 means a session without TTL (consullock), and is accepted.
    let held = lock_ok(consul, &key, &["--session-ttl", "0"]);
    assert_eq!(session_info(consul, &session_of(&held))["TTL"], json!(""));
    unlock_and_check(consul, &key);
}

#[test]
fn invalid_keys_exit_6_for_every_subcommand() {
    let consul = Consul::shared();
    let base = unique_key("invalid_keys");
    let dir = scratch("invalid_keys");
    let marker = dir.join("ran");
    let touch = format!("touch '{}'", marker.display());
    let bad = [
        format!("{base}/a//b"),
        format!("/{base}/a"),
        format!("{base}/a/./b"),
        format!("{base}/a/../b"),
        String::new(),
    ];
    for key in &bad {
        for args in [
            vec!["lock", key.as_str()],
            vec!["lock", "--non-blocking", key.as_str()],
            vec!["unlock", key.as_str()],
            vec!["status", key.as_str()],
            vec!["execute", key.as_str(), touch.as_str()],
        ] {
            let out = cli(consul, &args);
            assert_eq!(code(&out), 6, "{args:?}: {}", describe(&out));
            assert!(
                stderr(&out).to_lowercase().contains("key"),
                "{args:?}: the message should name the key problem: {}",
                describe(&out)
            );
        }
        assert!(consul.sessions_for(key).is_empty(), "session for {key:?}");
    }
    assert!(consul.keys(&base).is_empty(), "{:?}", consul.keys(&base));
    assert!(!marker.exists(), "execute ran the command");
}

// ---------------------------------------------------------------- unlock

#[test]
fn unlock_when_unlocked_prints_null_and_touches_nothing() {
    let consul = Consul::shared();
    let key = unique_key("unlock_unlocked");
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");

    // A plain, unheld value under that name is not a lock: left alone.
    consul.put_kv(&key, "plain value");
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    let (_, raw) = consul.get(&format!("/v1/kv/{key}?raw")).expect("raw");
    assert_eq!(raw, "plain value");
    consul.delete_kv(&key);
    assert_no_sessions(consul, &key);
}

#[test]
fn unlock_when_locked_prints_the_key_and_destroys_the_holders_session() {
    let consul = Consul::shared();
    let key = unique_key("unlock_locked");
    let held = lock_ok(consul, &key, &[]);
    let session = session_of(&held);
    assert!(session_exists(consul, &session));

    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), json!(key).to_string());
    assert!(
        !session_exists(consul, &session),
        "holder's session survives"
    );
    assert_eq!(consul.holder(&key), None);
    let out = cli(consul, &["status", &key]);
    assert_eq!(stdout(&out), "null", "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn unlock_regex_releases_whole_matches_and_leaves_distractors() {
    let consul = Consul::shared();
    let base = unique_key("unlock_regex");
    let matching = [
        format!("{base}/r/a"),
        format!("{base}/r/b"),
        format!("{base}/r/sub/c"),
    ];
    let distractors = [
        format!("{base}/x/r/a"), // the regex must match the whole key
        format!("{base}/ra"),
        format!("{base}/r"),
        format!("{base}/rr/a"),
    ];
    let mut sessions = std::collections::BTreeMap::new();
    for key in matching.iter().chain(&distractors) {
        sessions.insert(key.clone(), session_of(&lock_ok(consul, key, &[])));
    }
    // A plain value that matches the regex but is not held: not a lock, not touched.
    let plain = format!("{base}/r/plain");
    consul.put_kv(&plain, "plain value");

    let out = cli(consul, &["unlock", "-r", &format!("{base}/r/.*")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        json_line(&out),
        json!(matching),
        "sorted list of released keys"
    );

    for key in &matching {
        assert_eq!(consul.holder(key), None, "{key} still held");
        assert!(!session_exists(consul, &sessions[key]), "{key}'s session");
    }
    for key in &distractors {
        assert_eq!(
            consul.holder(key).as_ref(),
            Some(&sessions[key]),
            "distractor {key} was touched"
        );
    }
    let (_, raw) = consul.get(&format!("/v1/kv/{plain}?raw")).expect("raw");
    assert_eq!(raw, "plain value", "the unheld matching value was touched");

    // Nothing left to release: an empty list.
    let out = cli(consul, &["unlock", "-r", &format!("{base}/r/.*")]);
    assert_eq!(json_line(&out), json!([]), "{}", describe(&out));

    for key in &distractors {
        unlock_and_check(consul, key);
    }
    consul.delete_kv(&plain);
    for key in &matching {
        assert_no_sessions(consul, key);
    }
}

// ---------------------------------------------------------------- hooks and polling

#[test]
fn hooks_get_the_key_once_per_attempt_and_failures_are_ignored() {
    let consul = Consul::shared();
    let key = unique_key("hooks");
    let dir = scratch("hooks");
    let (before_a, before_a_log) = recording_hook(&dir, "before_a", 0);
    let (before_b, before_b_log) = recording_hook(&dir, "before_b", 0);
    let (failing, failing_log) = recording_hook(&dir, "failing", 3);
    let (already, already_log) = recording_hook(&dir, "already", 0);
    let once = vec![key.clone()];
    let twice = vec![key.clone(), key.clone()];

    // Free lock: every before-lock hook runs once (several per flag); no already-locked call.
    let out = cli(
        consul,
        &[
            "lock",
            "--on-before-lock",
            path_str(&before_a),
            path_str(&before_b),
            path_str(&failing),
            "--on-already-locked",
            path_str(&already),
            "--",
            &key,
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "a failing hook must be ignored: {}",
        describe(&out)
    );
    json_line(&out);
    assert_eq!(lines(&before_a_log), once);
    assert_eq!(lines(&before_b_log), once);
    assert_eq!(lines(&failing_log), once);
    assert!(lines(&already_log).is_empty(), "{:?}", lines(&already_log));

    // Taken lock, non-blocking: one attempt, so one call of each, the failing one included.
    let out = cli(
        consul,
        &[
            "lock",
            "--non-blocking",
            "--on-before-lock",
            path_str(&before_a),
            "--on-already-locked",
            path_str(&already),
            path_str(&failing),
            "--",
            &key,
        ],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    assert_eq!(lines(&before_a_log), twice);
    assert_eq!(lines(&before_b_log), once);
    assert_eq!(lines(&already_log), once);
    assert_eq!(lines(&failing_log), twice);
    unlock_and_check(consul, &key);
}

#[test]
fn poll_interval_paces_attempts_while_the_lock_is_taken() {
    let consul = Consul::shared();
    let key = unique_key("poll_interval");
    let dir = scratch("poll_interval");
    let (before, before_log) = recording_hook(&dir, "before", 0);
    let (already, already_log) = recording_hook(&dir, "already", 0);
    lock_ok(consul, &key, &["--lock-delay", "0"]);

    let started = Instant::now();
    let mut waiter = Background::spawn(cli_cmd(
        consul,
        &[
            "lock",
            "-i",
            "0.3",
            "--on-before-lock",
            path_str(&before),
            "--on-already-locked",
            path_str(&already),
            "--",
            &key,
        ],
    ));
    // Hold it ~1 s: four attempts at 0, 0.3, 0.6 and 0.9 s.
    assert!(
        wait_until(QUICK, || lines(&already_log).len() >= 4),
        "attempts: {:?}",
        lines(&before_log)
    );
    let held_for = started.elapsed();
    assert!(waiter.running());
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let (out, _) = waiter.finish(WAITER);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let waiter_json = json_line(&out);

    let attempts = lines(&before_log).len();
    let refused = lines(&already_log).len();
    eprintln!(
        "poll_interval_paces_attempts_while_the_lock_is_taken: held {held_for:?}, \
         {attempts} attempts, {refused} found it taken"
    );
    assert!(lines(&before_log).iter().all(|k| *k == key));
    assert_eq!(
        refused + 1,
        attempts,
        "every attempt but the last found it taken"
    );
    // ~1 s at 0.3 s: 4 refused attempts, maybe a 5th before the unlock landed, then success.
    assert!(
        (5..=6).contains(&attempts),
        "{attempts} attempts in {held_for:?} with -i 0.3"
    );
    assert!(
        held_for >= Duration::from_millis(850),
        "4 attempts took only {held_for:?}: -i 0.3 not honoured"
    );
    let waiter_session = session_of(&waiter_json);
    assert_eq!(consul.holder(&key), Some(waiter_session));
    unlock_and_check(consul, &key);
}

#[test]
fn blocking_wait_without_poll_interval_does_not_poll() {
    let consul = Consul::shared();
    let key = unique_key("no_poll");
    let dir = scratch("no_poll");
    let (before, before_log) = recording_hook(&dir, "before", 0);
    let (already, already_log) = recording_hook(&dir, "already", 0);
    lock_ok(consul, &key, &["--lock-delay", "0"]);

    let mut waiter = Background::spawn(cli_cmd(
        consul,
        &[
            "lock",
            "--on-before-lock",
            path_str(&before),
            "--on-already-locked",
            path_str(&already),
            "--",
            &key,
        ],
    ));
    assert!(wait_until(QUICK, || !lines(&already_log).is_empty()));
    // Nothing to observe for "it did not poll": give a poller ample time to show itself.
    let polled = wait_until(Duration::from_millis(1500), || lines(&before_log).len() > 1);
    assert!(!polled, "attempts while parked: {:?}", lines(&before_log));
    assert!(waiter.running());
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let (out, _) = waiter.finish(WAITER);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        lines(&before_log).len(),
        2,
        "one refused attempt, one after the wake"
    );
    assert_eq!(lines(&already_log).len(), 1);
    unlock_and_check(consul, &key);
}

// ---------------------------------------------------------------- execute

#[test]
fn execute_exits_with_the_commands_code_and_passes_its_output_through() {
    let consul = Consul::shared();
    let key = unique_key("execute_code");
    let dir = scratch("execute_code");
    let runs = dir.join("runs");
    let shell = format!(
        "echo out-line; echo err-line >&2; echo run >> '{}'; exit 7",
        runs.display()
    );
    let out = cli(consul, &["execute", &key, &shell]);
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "out-line",
        "stdout carries the command's output only"
    );
    assert_eq!(
        stderr(&out).matches("err-line").count(),
        1,
        "{}",
        describe(&out)
    );
    assert_eq!(
        lines(&runs).len(),
        1,
        "the command ran {} times",
        lines(&runs).len()
    );
    assert_eq!(
        consul.holder(&key),
        None,
        "the lock is released after the command"
    );
    assert_no_sessions(consul, &key);

    let out = cli(consul, &["execute", &key, "true"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = cli(consul, &["execute", &key, "kill -TERM $$"]);
    assert_eq!(
        code(&out),
        128 + 15,
        "killed by SIGTERM: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn execute_runs_the_command_while_holding_the_lock_with_lock_env() {
    let consul = Consul::shared();
    let key = unique_key("execute_env");
    let dir = scratch("execute_env");
    let env_file = dir.join("env");
    let go = dir.join("go");
    let shell = format!(
        "echo \"$CONSUL_LOCK_HELD $LOCKWRAP_FENCING_TOKEN $LOCKWRAP_SESSION $LOCKWRAP_KEY\" > '{env}.tmp' \
         && mv '{env}.tmp' '{env}'; while [ ! -f '{go}' ]; do sleep 0.05; done",
        env = env_file.display(),
        go = go.display()
    );
    let mut running = Background::spawn(cli_cmd(consul, &["execute", &key, &shell]));
    assert!(
        wait_until(QUICK, || env_file.exists()),
        "the command never started"
    );
    let env = std::fs::read_to_string(&env_file).expect("env file");
    let fields: Vec<&str> = env.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{env}");
    assert_eq!(fields[0], "true", "CONSUL_LOCK_HELD");
    let token: u64 = fields[1]
        .parse()
        .expect("LOCKWRAP_FENCING_TOKEN is a number");
    assert_eq!(fields[3], key, "LOCKWRAP_KEY");
    // While the command runs, its session holds the key and the token is the entry's index.
    assert_eq!(consul.holder(&key).as_deref(), Some(fields[2]));
    assert_eq!(modify_index(consul, &key), token);
    assert!(running.running());

    std::fs::write(&go, "").expect("go file");
    let (out, _) = running.finish(QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(consul.holder(&key), None);
    assert!(!session_exists(consul, fields[2]));
    assert_no_sessions(consul, &key);
}

#[test]
fn execute_non_blocking_when_locked_exits_100_without_running_the_command() {
    let consul = Consul::shared();
    let key = unique_key("execute_locked");
    let dir = scratch("execute_locked");
    let marker = dir.join("ran");
    let held = lock_ok(consul, &key, &[]);
    let out = cli(
        consul,
        &[
            "execute",
            "--non-blocking",
            &key,
            &format!("touch '{}'", marker.display()),
        ],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    assert!(!marker.exists(), "the command ran without the lock");
    assert_eq!(consul.holder(&key), Some(session_of(&held)));
    assert_eq!(
        consul.sessions_for(&key).len(),
        1,
        "only the holder's session"
    );
    unlock_and_check(consul, &key);
}

// ---------------------------------------------------------------- metadata, status, tokens

#[test]
fn metadata_round_trips_through_lock_output_value_and_status() {
    let consul = Consul::shared();
    let key = unique_key("metadata");
    let out = cli(
        consul,
        &["lock", "--metadata", r#"{"a":1,"b":[true,"x"]}"#, &key],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let printed = json_line(&out);
    let metadata = json!({"a": 1, "b": [true, "x"]});
    assert_eq!(printed["metadata"], metadata);
    assert_eq!(
        top_level_keys(&stdout(&out)),
        [
            "created",
            "fencingToken",
            "key",
            "metadata",
            "secondsToLock",
            "session"
        ]
    );
    assert_eq!(consul.kv_json(&key).expect("value")["metadata"], metadata);

    let out = cli(consul, &["status", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let status = json_line(&out);
    assert_eq!(status["metadata"], metadata);
    assert_eq!(status["session"], printed["session"]);
    assert_eq!(status["fencingToken"], printed["fencingToken"]);
    assert_eq!(status["created"], printed["created"]);
    assert_eq!(status["key"], json!(key));
    assert!(status["holder"]["pid"].as_u64().is_some(), "{status}");

    // Not JSON: a bad argument, nothing written.
    let other = unique_key("metadata_bad");
    let out = cli(consul, &["lock", "--metadata", "{not json", &other]);
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(consul.kv(&other).is_none());
    assert_no_sessions(consul, &other);
    unlock_and_check(consul, &key);
}

#[test]
fn status_reports_holders_and_status_regex_maps_whole_matches() {
    let consul = Consul::shared();
    let base = unique_key("status");
    let a = format!("{base}/s/a");
    let b = format!("{base}/s/b");
    let plain = format!("{base}/s/plain");
    let distractor = format!("{base}/t/a");

    let out = cli(consul, &["status", &a]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "null".to_string()),
        "{}",
        describe(&out)
    );

    let held_a = lock_ok(consul, &a, &[]);
    let held_b = lock_ok(consul, &b, &["--metadata", r#""job-b""#]);
    lock_ok(consul, &distractor, &[]);
    consul.put_kv(&plain, "not a lock");

    let out = cli(consul, &["status", &a]);
    let status = json_line(&out);
    assert_eq!(status["session"], held_a["session"]);
    assert_eq!(status["key"], json!(a));
    assert_eq!(status["fencingToken"], held_a["fencingToken"]);

    let out = cli(consul, &["status", "-r", &format!("{base}/s/.*")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let map = json_line(&out);
    let found: Vec<&String> = map.as_object().expect("a JSON object").keys().collect();
    assert_eq!(found, [&a, &b, &plain], "{map}");
    assert_eq!(map[&a]["session"], held_a["session"]);
    assert_eq!(map[&b]["session"], held_b["session"]);
    assert_eq!(map[&b]["metadata"], json!("job-b"));
    assert_eq!(map[&plain], Value::Null, "an unheld key has no holder");
    assert_eq!(
        top_level_keys(&stdout(&out)),
        [a.clone(), b.clone(), plain.clone()],
        "keys sorted"
    );

    for key in [&a, &b, &distractor] {
        unlock_and_check(consul, key);
    }
    consul.delete_kv(&plain);
}

#[test]
fn fencing_tokens_strictly_increase_across_holders_even_after_deletion() {
    let consul = Consul::shared();
    let key = unique_key("fencing");
    let dir = scratch("fencing");
    let token_file = dir.join("token");
    let mut tokens = Vec::new();
    // Lock-delay 0: each next holder follows at once (this test is about the tokens).
    for round in 0..3 {
        let held = lock_ok(consul, &key, &["--lock-delay", "0"]);
        tokens.push(held["fencingToken"].as_u64().expect("fencingToken"));
        if round == 1 {
            // Delete the entry behind the holder's back, then recreate and delete it again.
            consul.destroy_session(&session_of(&held));
            consul.delete_kv(&key);
            consul.put_kv(&key, "x");
            consul.delete_kv(&key);
        } else {
            let out = cli(consul, &["unlock", &key]);
            assert_eq!(code(&out), 0, "{}", describe(&out));
        }
        assert!(consul.kv(&key).is_none(), "round {round}: key not deleted");
    }
    let out = cli(
        consul,
        &[
            "execute",
            "--lock-delay",
            "0",
            &key,
            &format!("echo $LOCKWRAP_FENCING_TOKEN > '{}'", token_file.display()),
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let executed = std::fs::read_to_string(&token_file).expect("token file");
    tokens.push(executed.trim().parse().expect("a number"));
    eprintln!("fencing tokens: {tokens:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {tokens:?}"
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn status_reads_values_written_by_consullock() {
    let consul = Consul::shared();
    let key = unique_key("consullock_value");
    // A session and value as consullock makes them (lock_delay 0, behavior delete, flags 0).
    let (status, body) = consul
        .put(
            "/v1/session/create",
            &json!({"Name": format!("consullock {key} test"), "LockDelay": "0s", "Behavior": "delete", "TTL": "60s"})
                .to_string(),
        )
        .expect("session create");
    assert_eq!(status, 200, "{body}");
    let session = serde_json::from_str::<Value>(&body).expect("JSON")["ID"]
        .as_str()
        .expect("ID")
        .to_string();
    let value = format!(
        "{{\n    \"created\": \"2017-12-05T12:26:13.717995\",\n    \"key\": \"{key}\",\n    \
         \"metadata\": {{\n        \"testing\": 123\n    }},\n    \"secondsToLock\": 4.3,\n    \
         \"session\": \"{session}\"\n}}"
    );
    let (status, body) = consul
        .put(&format!("/v1/kv/{key}?acquire={session}"), &value)
        .expect("acquire");
    assert_eq!((status, body.trim()), (200, "true"));

    let out = cli(consul, &["status", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let info = json_line(&out);
    assert_eq!(info["session"], json!(session));
    assert_eq!(info["key"], json!(key));
    assert_eq!(info["created"], json!("2017-12-05T12:26:13.717995"));
    assert_eq!(info["secondsToLock"], json!(4.3));
    assert_eq!(info["metadata"], json!({"testing": 123}));
    assert_eq!(
        info["fencingToken"].as_u64(),
        Some(modify_index(consul, &key))
    );
    assert!(
        info["holder"].is_null(),
        "consullock writes no holder: {info}"
    );

    let out = cli(consul, &["status", "-r", &format!("{key}.*")]);
    assert_eq!(
        json_line(&out)[&key]["session"],
        json!(session),
        "{}",
        describe(&out)
    );

    // lockwrap respects a consullock holder, and can release it.
    let out = cli(consul, &["lock", "--non-blocking", &key]);
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(stdout(&out), json!(key).to_string(), "{}", describe(&out));
    assert!(!session_exists(consul, &session));
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------- ACL and connectivity

/// A UUID-shaped secret that cannot appear in output by accident.
fn distinctive_secret(tag: u16) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!(
        "{:08x}-{tag:04x}-4bee-8f00-{nanos:012x}",
        std::process::id()
    )
}

fn create_token(consul: &Consul, secret: &str, policy_id: &str) {
    let body = json!({"SecretID": secret, "Description": "lockwrap test", "Policies": [{"ID": policy_id}]});
    let (status, text) = consul
        .put("/v1/acl/token", &body.to_string())
        .expect("create token");
    assert_eq!(status, 200, "{text}");
}

#[test]
fn acl_denied_tokens_exit_4_and_tokens_never_appear_in_output() {
    let consul = Consul::start_with(&[
        "-hcl",
        r#"acl { enabled = true, default_policy = "deny", enable_token_persistence = false, tokens { master = "root", agent = "root" } }"#,
    ]);
    let key = unique_key("acl");
    let dir = scratch("acl");

    // A full-rights token with a distinctive secret (the master is "root", too common a word).
    let admin = distinctive_secret(1);
    create_token(&consul, &admin, "00000000-0000-0000-0000-000000000001");
    // A read-only token: may read the KV store, may not take a lock.
    let rules = "key_prefix \"\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }";
    let (status, body) = consul
        .put(
            "/v1/acl/policy",
            &json!({"Name": "kv-read", "Rules": rules}).to_string(),
        )
        .expect("create policy");
    assert_eq!(status, 200, "{body}");
    let policy_id = serde_json::from_str::<Value>(&body).expect("JSON")["ID"]
        .as_str()
        .expect("policy ID")
        .to_string();
    let reader = distinctive_secret(2);
    create_token(&consul, &reader, &policy_id);
    let unknown = distinctive_secret(3);

    let run = |token: Option<&str>, args: &[&str]| {
        let mut cmd = lockwrap(&consul);
        cmd.arg("-vv").args(args);
        if let Some(token) = token {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        let out = run_bounded(cmd, QUICK);
        for secret in [&admin, &reader, &unknown] {
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains(secret.as_str())
                    && !stderr(&out).contains(secret.as_str()),
                "a token leaked into the output of {args:?}: {}",
                describe(&out)
            );
        }
        out
    };
    let denied = |out: &Output, what: &str| {
        assert_eq!(code(out), 4, "{what}: {}", describe(out));
        assert!(
            stderr(out).to_lowercase().contains("permission"),
            "{what}: the message should mention permission: {}",
            describe(out)
        );
    };

    // No rights: an unknown token, and no token at all (anonymous, default deny).
    denied(&run(Some(&unknown), &["lock", &key]), "unknown token, lock");
    denied(
        &run(Some(&unknown), &["status", &key]),
        "unknown token, status",
    );
    denied(
        &run(Some(&unknown), &["unlock", &key]),
        "unknown token, unlock",
    );
    denied(
        &run(Some(&unknown), &["execute", &key, "true"]),
        "unknown token, execute",
    );
    denied(&run(None, &["lock", &key]), "anonymous lock");
    // Read-only: status works, taking the lock is denied.
    let out = run(Some(&reader), &["status", &key]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "null".to_string()),
        "{}",
        describe(&out)
    );
    denied(
        &run(Some(&reader), &["lock", &key]),
        "read-only token, lock",
    );
    assert!(consul.kv(&key).is_none());
    assert_no_sessions(&consul, &key);

    // Full rights: the admin token, the master token, the token file and the flag all work.
    let out = run(Some(&admin), &["lock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    assert_eq!(consul.holder(&key), Some(session_of(&held)));
    let out = run(Some("root"), &["status", &key]);
    assert_eq!(
        json_line(&out)["session"],
        held["session"],
        "{}",
        describe(&out)
    );

    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{admin}\n")).expect("token file");
    let mut cmd = lockwrap(&consul);
    cmd.args(["-vv", "unlock", &key])
        .env("CONSUL_HTTP_TOKEN_FILE", &token_file);
    let out = run_bounded(cmd, QUICK);
    assert_eq!(
        stdout(&out),
        json!(key).to_string(),
        "token file: {}",
        describe(&out)
    );
    assert!(
        !stderr(&out).contains(&admin),
        "token leaked: {}",
        describe(&out)
    );

    let out = run(
        None,
        &["--consul-token", &admin, "execute", &key, "echo in-acl"],
    );
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "in-acl".to_string()),
        "{}",
        describe(&out)
    );
    assert_no_sessions(&consul, &key);
}

#[test]
fn unreachable_consul_exits_8_quickly_naming_the_address() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let key = unique_key("unreachable");
    for args in [
        vec!["lock", key.as_str()],
        vec!["lock", "--non-blocking", key.as_str()],
        vec!["unlock", key.as_str()],
        vec!["unlock", "-r", "x/.*"],
        vec!["status", key.as_str()],
        vec!["execute", key.as_str(), "true"],
    ] {
        let mut cmd = lockwrap(Consul::shared());
        cmd.env("CONSUL_HTTP_ADDR", &addr).args(&args);
        let started = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(30));
        let took = started.elapsed();
        assert_eq!(code(&out), 8, "{args:?}: {}", describe(&out));
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
        assert!(
            stderr(&out).contains(&addr),
            "{args:?}: the message should name {addr}: {}",
            describe(&out)
        );
    }
}

// ---------------------------------------------------------------- wake latency

#[test]
fn blocking_waiter_acquires_within_a_second_of_the_holders_release() {
    let consul = Consul::shared();
    let dir = scratch("wake");
    let mut acquired_after = Vec::new();
    let mut exited_after = Vec::new();
    for round in 0..5 {
        let key = unique_key("wake");
        let holder = lock_ok(consul, &key, &["--lock-delay", "0"]);
        let holder_session = session_of(&holder);
        let (hook, seen_locked) = recording_hook(&dir, &format!("already{round}"), 0);
        let mut waiter = Background::spawn(cli_cmd(
            consul,
            &["lock", "--on-already-locked", path_str(&hook), "--", &key],
        ));
        assert!(wait_until(QUICK, || !lines(&seen_locked).is_empty()));
        // The waiter now enters its blocking query; that is not observable from outside, so
        // give it a moment (a wake from an already-changed index would only flatter the figure).
        std::thread::sleep(Duration::from_millis(200));
        assert!(waiter.running());

        // The holder releases (`?release=`, what a holder's own release sends).
        let released_wall = time::OffsetDateTime::now_utc();
        let released = Instant::now();
        let (status, body) = consul
            .put(&format!("/v1/kv/{key}?release={holder_session}"), "")
            .expect("release");
        assert_eq!((status, body.trim()), (200, "true"));
        let (out, exited) = waiter.finish(WAITER);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        let taken = json_line(&out);
        // `created` is written right before the waiter's acquire request.
        let created = parse_created(taken["created"].as_str().expect("created"));
        let wake = (created - released_wall).as_seconds_f64();
        acquired_after.push(wake.max(0.0));
        exited_after.push((exited - released).as_secs_f64());
        consul.destroy_session(&holder_session);
        unlock_and_check(consul, &key);
    }
    let ms = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.1}", s * 1000.0))
            .collect::<Vec<_>>()
    };
    eprintln!(
        "wake latency (ms), holder release → waiter's acquire request: {:?}; → waiter exited: {:?}",
        ms(&acquired_after),
        ms(&exited_after)
    );
    let worst = exited_after.iter().cloned().fold(0.0, f64::max);
    assert!(
        worst < 1.0,
        "a waiter took {worst:.3}s to acquire after the release"
    );
}

// ---------------------------------------------------------------- consul-lock layout

#[test]
fn consul_lock_layout_uses_the_dot_lock_entry_with_consuls_flags() {
    let consul = Consul::shared();
    let prefix = unique_key("layout");
    let lock_entry = format!("{prefix}/.lock");
    let out = cli(consul, &["lock", "--layout", "consul-lock", &prefix]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    let entry = consul.kv(&lock_entry).expect("<prefix>/.lock written");
    assert_eq!(entry["Flags"].as_u64(), Some(LOCK_FLAGS), "{entry}");
    assert_eq!(entry["Session"], held["session"]);
    assert_eq!(held["fencingToken"], entry["ModifyIndex"]);
    assert!(
        consul.kv(&prefix).is_none(),
        "the prefix itself is not written"
    );

    let out = cli(consul, &["status", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        json_line(&out)["session"],
        held["session"],
        "{}",
        describe(&out)
    );
    let out = cli(
        consul,
        &["lock", "--layout", "consul-lock", "--non-blocking", &prefix],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["unlock", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        stdout(&out),
        json!(prefix).to_string(),
        "{}",
        describe(&out)
    );
    assert_eq!(consul.holder(&lock_entry), None);
    assert_no_sessions(consul, &prefix);
}

#[test]
fn a_lock_entry_with_foreign_flags_is_a_conflict_and_left_untouched() {
    let consul = Consul::shared();
    let prefix = unique_key("layout_conflict");
    let lock_entry = format!("{prefix}/.lock");
    consul.put(&format!("/v1/kv/{lock_entry}?flags=42"), "foreign");
    let plain = unique_key("flags_conflict");
    consul.put(
        &format!("/v1/kv/{plain}?flags={SEMAPHORE_FLAGS}"),
        "semaphore",
    );
    let before = (consul.kv(&lock_entry), consul.kv(&plain));

    for args in [
        vec!["lock", "--layout", "consul-lock", prefix.as_str()],
        vec![
            "lock",
            "--layout",
            "consul-lock",
            "--non-blocking",
            prefix.as_str(),
        ],
        vec![
            "execute",
            "--layout",
            "consul-lock",
            prefix.as_str(),
            "true",
        ],
        vec!["unlock", "--layout", "consul-lock", prefix.as_str()],
        vec!["lock", plain.as_str()],
        vec!["lock", "--non-blocking", plain.as_str()],
    ] {
        let out = cli(consul, &args);
        assert_eq!(code(&out), 3, "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("flags"),
            "{args:?}: the message should explain the flags conflict: {}",
            describe(&out)
        );
    }
    assert_eq!(
        (consul.kv(&lock_entry), consul.kv(&plain)),
        before,
        "entries were touched"
    );
    assert_no_sessions(consul, &prefix);
    assert_no_sessions(consul, &plain);
    consul.delete_kv(&lock_entry);
    consul.delete_kv(&plain);
}

#[test]
fn consul_lock_layout_interoperates_with_hashicorp_consul_lock() {
    let consul = Consul::shared();
    let prefix = unique_key("interop");
    let dir = scratch("interop");
    let go = dir.join("go");
    let lock_entry = format!("{prefix}/.lock");

    // HashiCorp's `consul lock` holds the prefix: lockwrap sees it as taken.
    let mut theirs = Command::new(consul_binary());
    theirs.args([
        "lock",
        &format!("-http-addr={}", consul.addr()),
        &prefix,
        &format!("while [ ! -f '{}' ]; do sleep 0.05; done", go.display()),
    ]);
    let theirs = Background::spawn(theirs);
    assert!(
        wait_until(QUICK, || consul.holder(&lock_entry).is_some()),
        "consul lock never took {lock_entry}"
    );
    let out = cli(
        consul,
        &["lock", "--layout", "consul-lock", "--non-blocking", &prefix],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["status", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        json_line(&out)["session"].as_str(),
        consul.holder(&lock_entry).as_deref()
    );

    // Once it lets go, lockwrap takes the same entry; then `consul lock` cannot.
    std::fs::write(&go, "").expect("go file");
    let (out, _) = theirs.finish(QUICK);
    assert!(out.status.success(), "consul lock: {}", describe(&out));
    let out = cli(
        consul,
        &[
            "lock",
            "--layout",
            "consul-lock",
            "--timeout",
            "10",
            &prefix,
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    assert_eq!(consul.holder(&lock_entry), Some(session_of(&held)));

    let marker = dir.join("theirs-ran");
    let mut theirs = Command::new(consul_binary());
    theirs.args([
        "lock",
        &format!("-http-addr={}", consul.addr()),
        "-try=1s",
        &prefix,
        &format!("touch '{}'", marker.display()),
    ]);
    let out = run_bounded(theirs, QUICK);
    assert!(
        !out.status.success(),
        "consul lock got a held lock: {}",
        describe(&out)
    );
    assert!(!marker.exists());

    let out = cli(consul, &["unlock", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        stdout(&out),
        json!(prefix).to_string(),
        "{}",
        describe(&out)
    );
    assert_no_sessions(consul, &prefix);
}

// ---------------------------------------------------------------- install

/// `install` copies the binary for an init container: JSON on stdout, a runnable copy, nothing
/// in Consul; a missing destination directory is exit 3 naming it.
#[test]
fn install_copies_a_runnable_binary_and_names_a_bad_destination() {
    let consul = Consul::shared();
    let dir = scratch("install");
    let out = cli(consul, &["install", &dir.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed: Value = serde_json::from_str(stdout(&out).trim()).expect("JSON on stdout");
    let copy = dir.join("lockwrap");
    assert_eq!(printed["installed"], json!(copy.display().to_string()));
    let out = run_bounded(
        {
            let mut cmd = Command::new(&copy);
            cmd.arg("--version");
            cmd
        },
        QUICK,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("lockwrap "), "{}", stdout(&out));

    let missing = dir.join("no-such-dir").join("lockwrap");
    let out = cli(consul, &["install", &missing.display().to_string()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}

/// The library example (`cargo run --example library`), built by `cargo test --all-targets`:
/// every library operation end to end, `execute` through the supervisor's spawner.
#[test]
fn library_example_runs_every_operation_and_leaves_nothing_behind() {
    let Some(example) = std::env::current_exe().ok().and_then(|exe| {
        let path = exe.parent()?.parent()?.join("examples").join("library");
        path.exists().then_some(path)
    }) else {
        eprintln!("examples/library not built (run cargo test --all-targets); skipped");
        return;
    };
    let consul = Consul::start();
    let out = std::process::Command::new(example)
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the library example");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-> exit code 3"), "{text}");
    assert!(text.contains("CONSUL_LOCK_HELD=true"), "{text}");
    assert!(consul.sessions().is_empty(), "{:?}", consul.sessions());
}
