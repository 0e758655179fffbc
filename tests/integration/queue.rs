//! The fair queue (`--queue`, README "Fair queue"): arrival order, status, and nothing left
//! behind by cancelled, timed-out or crashed waiters. Real agent, bounded waits.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{code, lockwrap, run_bounded, scratch, stderr, stdout, unique_key, Proc};

/// Live queue entries of `key` (those still held by a session).
fn queued(consul: &Consul, key: &str) -> usize {
    consul
        .keys(&format!("{key}/.queue/"))
        .iter()
        .filter(|k| consul.holder(k).is_some())
        .count()
}

/// A queued `execute` that appends `tag` to `log` when it gets the lock.
fn waiter(consul: &Consul, key: &str, log: &std::path::Path, tag: &str, extra: &[&str]) -> Proc {
    let mut cmd = lockwrap(consul);
    cmd.args(["-v", "execute", "--queue", "--kill-grace", "1s"])
        .args(extra)
        .args([key, &format!("echo {tag} >> {}", log.display())]);
    Proc::spawn(cmd)
}

fn hold_with_lock(consul: &Consul, key: &str) {
    let mut cmd = lockwrap(consul);
    cmd.args(["lock", "--session-ttl", "0", key]);
    assert_eq!(code(&run_bounded(cmd, Duration::from_secs(20))), 0);
}

fn unlock(consul: &Consul, key: &str) {
    let mut cmd = lockwrap(consul);
    cmd.args(["unlock", key]);
    assert_eq!(code(&run_bounded(cmd, Duration::from_secs(20))), 0);
}

#[test]
fn queued_waiters_get_the_lock_in_arrival_order_and_status_shows_the_queue() {
    let consul = Consul::shared();
    let key = unique_key("queue-fifo");
    let dir = scratch("queue-fifo");
    let log = dir.join("order");
    hold_with_lock(consul, &key);
    let mut waiters = Vec::new();
    for i in 0..6 {
        waiters.push(waiter(consul, &key, &log, &format!("w{i}"), &[]));
        assert!(
            wait_until(Duration::from_secs(15), || queued(consul, &key) == i + 1),
            "waiter {i} did not join the queue"
        );
    }
    // status: the holder, and the queue in order with who and since when.
    let mut status = lockwrap(consul);
    status.args(["status", &key]);
    let out = run_bounded(status, Duration::from_secs(10));
    let info: Value = serde_json::from_str(&stdout(&out)).expect("status JSON");
    let queue = info["queue"].as_array().expect("queue listed");
    assert_eq!(queue.len(), 6, "{info}");
    for (i, entry) in queue.iter().enumerate() {
        assert_eq!(entry["position"], i + 1, "{info}");
        assert!(entry["holder"]["pid"].is_u64(), "{info}");
        assert!(entry["since"].is_string(), "{info}");
    }
    assert_eq!(queue[0]["holder"]["pid"], waiters[0].pid, "{info}");

    unlock(consul, &key);
    let mut errors = Vec::new();
    for w in waiters {
        let out = w.finish(Duration::from_secs(60));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        errors.push(stderr(&out));
    }
    let order = std::fs::read_to_string(&log).expect("order log");
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order, ["w0", "w1", "w2", "w3", "w4", "w5"]);
    // The last waiter logged its position as it moved up.
    for position in ["position 6 of 6", "position 1 of"] {
        assert!(errors[5].contains(position), "{}", errors[5]);
    }
    assert!(wait_until(Duration::from_secs(10), || consul
        .keys(&format!("{key}/.queue/"))
        .is_empty()));
    assert!(consul.sessions_for(&key).is_empty());
}

#[test]
fn cancelled_timed_out_and_crashed_waiters_leave_nothing_behind() {
    let consul = Consul::start();
    let key = unique_key("queue-leave");
    let dir = scratch("queue-leave");
    let log = dir.join("order");
    hold_with_lock(&consul, &key);

    // SIGTERM while queued: exits 143 at once and removes its entry and session.
    let cancelled = waiter(&consul, &key, &log, "cancelled", &[]);
    assert!(wait_until(Duration::from_secs(15), || queued(
        &consul, &key
    ) == 1));
    cancelled.signal(Signal::SIGTERM);
    let out = cancelled.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 143, "{}", stderr(&out));
    assert!(consul.keys(&format!("{key}/.queue/")).is_empty());
    // Only the holder's session is left.
    assert_eq!(consul.sessions().len(), 1, "{:?}", consul.sessions());

    // --timeout while queued: exit 5, nothing left.
    let timed = waiter(&consul, &key, &log, "timed", &["--timeout", "2s"]);
    let out = timed.finish(Duration::from_secs(20));
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(consul.keys(&format!("{key}/.queue/")).is_empty());
    // Only the holder's session is left.
    assert_eq!(consul.sessions().len(), 1, "{:?}", consul.sessions());

    // --non-blocking behind a holder: exit 100, nothing left.
    let mut once = lockwrap(&consul);
    once.args(["lock", "--queue", "--non-blocking", &key]);
    let out = run_bounded(once, Duration::from_secs(20));
    assert_eq!(code(&out), 100, "{}", stderr(&out));
    assert!(consul.keys(&format!("{key}/.queue/")).is_empty());

    // kill -9 of a queued waiter: its entry goes with its session (TTL 10 s: within 20 s),
    // and the waiter behind it is served.
    let crashed = waiter(&consul, &key, &log, "crashed", &["--session-ttl", "10s"]);
    assert!(wait_until(Duration::from_secs(15), || queued(
        &consul, &key
    ) == 1));
    let behind = waiter(&consul, &key, &log, "behind", &["--session-ttl", "10s"]);
    assert!(wait_until(Duration::from_secs(15), || queued(
        &consul, &key
    ) == 2));
    crashed.signal(Signal::SIGKILL);
    let _ = crashed.finish(Duration::from_secs(5));
    unlock(&consul, &key);
    let out = behind.finish(Duration::from_secs(45));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&log).expect("log").trim(), "behind");
    assert!(wait_until(Duration::from_secs(25), || consul
        .keys(&format!("{key}/.queue/"))
        .is_empty()));
    assert!(wait_until(Duration::from_secs(25), || consul
        .sessions()
        .is_empty()));
}

#[test]
fn queue_cannot_be_combined_with_a_semaphore() {
    let consul = Consul::shared();
    let key = unique_key("queue-semaphore");
    let mut cmd = lockwrap(consul);
    cmd.args(["lock", "--queue", "-n", "2", &key]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("-n 2"), "{}", stderr(&out));
    assert!(consul.keys(&key).is_empty());
}
