//! `lockwrap sidecar` (README, "Kubernetes"): exits or steps down on loss, releases on SIGTERM so
//! the standby takes over at once, and runs its hooks with the key.

use std::time::{Duration, Instant};

use crate::consul::{wait_until, Consul};
use crate::harness::{
    http_get, metric, parse_prometheus, scratch, script, sidecar, start, status_of, unique_key,
    wait_settled, SOON,
};

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
fn sidecar_sigterm_releases_the_lock_so_the_standby_takes_over_after_its_takeover_delay() {
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
    // A sidecar's release is never clean: b waits the longer of its own takeover delay (2 s with
    // kill grace 1 s) and the one a announced (6 s, a's default), the time a's app gets to stop
    // acting as leader after a's /leader said not leader.
    let b = sidecar(consul, &dir, "b", &key, &["--kill-grace", "1s"]);
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
        wait_until(Duration::from_secs(12), || b.ready() == Some(200)),
        "standby did not take over within 12 s of SIGTERM; b stderr:\n{}",
        b.stderr()
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(12), "takeover took {took:?}");
    assert!(
        took >= Duration::from_secs(6),
        "the standby led before its takeover delay: {took:?}"
    );
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
            // After a loss the sidecar keeps its session for the kill grace (the app's stop
            // time), then campaigns again and waits its takeover delay: 1 s and 2 s here.
            "--kill-grace",
            "1s",
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

/// A long on-acquired hook must not delay the loss watch: the key deleted while the hook runs
/// flips `/leader` at once (a second sidecar may lead 6 s later) and the hook is stopped with
/// the term, not left running beside the next leader.
#[test]
fn a_loss_during_a_long_on_acquired_hook_withdraws_leadership_and_stops_the_hook() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-long-hook");
    let dir = scratch("sidecar-long-hook");
    let pid_file = dir.join("hook.pid");
    let log = dir.join("hooks.log");
    let hook = script(
        &dir,
        "hook",
        &format!(
            "trap 'sleep 0.5; echo stopped >> {log}; exit 0' TERM\necho $$ > {pid}\nsleep 60 & wait",
            log = log.display(),
            pid = pid_file.display()
        ),
    );
    let lost = script(&dir, "lost", &format!("echo lost >> {}", log.display()));
    let (hook, lost) = (
        hook.to_str().expect("utf-8 path"),
        lost.to_str().expect("utf-8 path"),
    );
    let mut a = sidecar(
        consul,
        &dir,
        "a",
        &key,
        &[
            "--kill-grace",
            "2s",
            "--on-acquired",
            hook,
            "--on-lost",
            lost,
        ],
    );
    let hook_pid = || -> Option<i32> {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    };
    assert!(
        wait_until(SOON, || a.is_leader() && hook_pid().is_some()),
        "{}",
        a.stderr()
    );
    let pid = hook_pid().expect("hook pid");
    consul.delete_kv(&key);
    let deleted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || !a.is_leader()),
        "leadership not withdrawn while the hook runs:\n{}",
        a.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(4), || !crate::harness::alive(pid)),
        "the on-acquired hook outlived its term by {:?}:\n{}",
        deleted.elapsed(),
        a.stderr()
    );
    // The on-lost hook runs after the on-acquired one has stopped, never beside it.
    let events = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || events().lines().count() >= 2),
        "{:?}",
        events()
    );
    assert_eq!(
        events().lines().take(2).collect::<Vec<_>>(),
        ["stopped", "lost"]
    );
    a.terminate();
    assert_eq!(
        a.wait_exit(SOON).and_then(|s| s.code()),
        Some(0),
        "{}",
        a.stderr()
    );
}
