//! Waiting for a taken lock: blocking until it is freed (and how fast), `--non-blocking`,
//! `--timeout`, SIGTERM while waiting, a dead holder's TTL, and `--poll-interval` pacing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    cli, cli_cmd, code, describe, json_line, lines, lock_ok, parse_created, path_str,
    recording_hook, scratch, session_exists, session_info, session_of, stdout, unique_key,
    unlock_and_check, wait_output, Proc, QUICK,
};

/// Bound for a background waiter that is expected to finish once the lock is freed; long
/// enough that a slow path (e.g. a 15 s lock-delay) is measured and reported, not killed.
const WAITER: Duration = Duration::from_secs(40);

/// `lockwrap lock KEY` started while KEY is held; returns once it has found the lock taken
/// (its `--on-already-locked` hook ran) and is still waiting.
fn waiting_lock(consul: &Consul, dir: &std::path::Path, key: &str) -> Proc {
    let (hook, seen_locked) = recording_hook(dir, "already", 0);
    let mut waiter = Proc::spawn(cli_cmd(
        consul,
        &["lock", "--on-already-locked", path_str(&hook), "--", key],
    ));
    assert!(
        wait_until(QUICK, || !lines(&seen_locked).is_empty()),
        "the waiter never found the lock taken"
    );
    assert!(
        waiter.running(),
        "the waiter returned while the lock was held"
    );
    waiter
}

#[test]
fn lock_when_locked_blocks_until_unlocked() {
    let consul = Consul::shared();
    let key = unique_key("lock_blocks");
    let dir = scratch("lock_blocks");
    let first = lock_ok(consul, &key, &[]);
    let waiter = waiting_lock(consul, &dir, &key);
    assert_eq!(consul.holder(&key), Some(session_of(&first)));

    let out = cli(consul, &["unlock", &key]);
    let released = Instant::now();
    assert_eq!(stdout(&out), format!("\"{key}\""), "{}", describe(&out));
    let (out, acquired) = waiter.finish_at(WAITER);
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
    let waiter = waiting_lock(consul, &dir, &key);
    let pid = nix::unistd::Pid::from_raw(waiter.pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let sent = Instant::now();
    let (out, exited) = waiter.finish_at(QUICK);
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
fn poll_interval_paces_attempts_while_the_lock_is_taken() {
    let consul = Consul::shared();
    let key = unique_key("poll_interval");
    let dir = scratch("poll_interval");
    let (before, before_log) = recording_hook(&dir, "before", 0);
    let (already, already_log) = recording_hook(&dir, "already", 0);
    lock_ok(consul, &key, &["--lock-delay", "0"]);

    let started = Instant::now();
    let mut waiter = Proc::spawn(cli_cmd(
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
    let (out, _) = waiter.finish_at(WAITER);
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

    let mut waiter = Proc::spawn(cli_cmd(
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
    let (out, _) = waiter.finish_at(WAITER);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        lines(&before_log).len(),
        2,
        "one refused attempt, one after the wake"
    );
    assert_eq!(lines(&already_log).len(), 1);
    unlock_and_check(consul, &key);
}

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
        let mut waiter = Proc::spawn(cli_cmd(
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
        let (out, exited) = waiter.finish_at(WAITER);
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
