//! Handoff between wrappers: one child at a time, a standby taking over on release or after a
//! crash (health-check TTL vs session TTL), and `--takeover-delay`.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    alive, assert_no_sessions, cli, code, describe, exclusion_probe, ms, now_ns, run_cmd,
    term_recorder, unique_key, wait_waiting, waiting_opts, Dir, Proc,
};

/// SIGKILLs a holder (its child dies by PDEATHSIG) and measures how long until a standby's child
/// starts; both run with `shared_opts`. Also returns the holder's pid.
fn crash_failover(name: &str, shared_opts: &[&str], limit: Duration) -> (Duration, i32) {
    let consul = Consul::shared();
    let key = unique_key(name);
    let dir = Dir::new(name);
    let holder_child = term_recorder(&dir);
    let mut opts = vec!["--lock-delay", "0"];
    opts.extend_from_slice(shared_opts);
    let holder = Proc::spawn(run_cmd(consul, &key, &opts, &[&holder_child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "holder's child did not start"
    );
    let holder_child_pid = dir.pids("child.pid")[0];
    let marker = dir.path("standby-started").display().to_string();
    let waiting = waiting_opts(&dir, "standby");
    let mut opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    opts.extend(["--lock-delay", "0"]);
    opts.extend_from_slice(shared_opts);
    let standby = Proc::spawn(run_cmd(
        consul,
        &key,
        &opts,
        &["sh", "-c", &format!("date +%s%N > '{marker}'")],
    ));
    wait_waiting(&dir, "standby");

    let holder_pid = holder.pid;
    let killed_at = now_ns();
    holder.signal(Signal::SIGKILL);
    let out = holder.finish(Duration::from_secs(5));
    assert_eq!(out.status.code(), None, "the holder was killed");
    assert!(
        wait_until(Duration::from_secs(3), || !alive(holder_child_pid)),
        "the holder's child survived its parent (PDEATHSIG)"
    );
    assert!(
        wait_until(limit, || dir.ns("standby-started").is_some()),
        "the standby did not take over within {limit:?}"
    );
    let failover =
        Duration::from_nanos((dir.ns("standby-started").expect("marker") - killed_at) as u64);
    let out = standby.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
    (failover, holder_pid)
}

#[test]
fn run_two_wrappers_one_child_at_a_time_and_standby_takes_over() {
    let consul = Consul::shared();
    let key = unique_key("run-exclusion");
    let dir = Dir::new("run-exclusion");
    let probe = exclusion_probe(&dir);

    let first = Proc::spawn(run_cmd(consul, &key, &[], &[&probe, "a"]));
    assert!(
        wait_until(Duration::from_secs(10), || dir.lines("order").len() == 1),
        "the first wrapper's child did not start"
    );
    let waiting = waiting_opts(&dir, "b");
    let opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    let second = Proc::spawn(run_cmd(consul, &key, &opts, &[&probe, "b"]));
    wait_waiting(&dir, "b");
    assert_eq!(
        dir.lines("order"),
        vec!["a"],
        "only the holder's child runs"
    );

    dir.touch("release.a");
    assert!(
        dir.wait_for("start.b", Duration::from_secs(5)),
        "the standby's child did not start within 5 s of the holder's child exiting"
    );
    let end_a = dir.ns("end.a").expect("end.a timestamp");
    let start_b = dir.ns("start.b").expect("start.b timestamp");
    eprintln!(
        "run handoff: {} ms (child a exit → child b start)",
        ms(start_b - end_a)
    );
    assert!(start_b >= end_a, "child b started before child a ended");

    let out_a = first.finish(Duration::from_secs(10));
    assert_eq!(code(&out_a), 0, "{}", describe(&out_a));
    dir.touch("release.b");
    let out_b = second.finish(Duration::from_secs(10));
    assert_eq!(code(&out_b), 0, "{}", describe(&out_b));

    assert!(
        !dir.exists("overlap"),
        "two children ran at once: {:?}",
        dir.lines("overlap")
    );
    assert_eq!(
        dir.lines("order"),
        vec!["a", "b"],
        "each wrapper ran its child exactly once"
    );
    let token_a: u64 = dir.read("token.a").trim().parse().expect("token a");
    let token_b: u64 = dir.read("token.b").trim().parse().expect("token b");
    assert!(
        token_b > token_a,
        "fencing tokens must increase: {token_a} then {token_b}"
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn run_health_check_ttl_frees_a_crashed_holders_lock_fast() {
    let (failover, holder_pid) = crash_failover(
        "run-health-check",
        // The documented fast-failover setting (docs/timing.md): takeover delay 4 s.
        &["--health-check-ttl", "2s", "--kill-grace", "1s"],
        Duration::from_secs(15),
    );
    // The standby removed the dead holder's critical check when it registered its own, and
    // deregistered its own on exit: nothing of either is left on the agent.
    let (status, body) = Consul::shared()
        .get("/v1/agent/checks")
        .expect("agent checks");
    assert_eq!(status, 200, "{body}");
    let checks: serde_json::Value = serde_json::from_str(&body).expect("checks JSON");
    let left: Vec<&String> = checks
        .as_object()
        .expect("checks map")
        .keys()
        .filter(|id| id.contains(&format!(":{holder_pid}:")))
        .collect();
    assert!(
        left.is_empty(),
        "the crashed holder's check is left: {left:?}"
    );
    eprintln!(
        "run crash failover with --health-check-ttl 2s: {} ms",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?}"
    );
}

#[test]
fn run_crash_failover_without_health_check_waits_for_session_ttl() {
    let (failover, _) = crash_failover(
        "run-no-health-check",
        &["--session-ttl", "10s", "--kill-grace", "1s"],
        Duration::from_secs(45),
    );
    eprintln!(
        "run crash failover without health check (TTL 10 s): {} ms",
        failover.as_millis()
    );
    assert!(
        failover > Duration::from_secs(8),
        "without a health check the session should live about TTL…2×TTL: {failover:?}"
    );
}

#[test]
fn takeover_delay_waits_only_after_an_unclean_release() {
    let consul = Consul::shared();
    let key = unique_key("run-takeover");
    let dir = Dir::new("run-takeover");
    // The command takes most of its 1 s kill grace to stop: its holder's session is alive while
    // it does, which is what tells the next holder to wait.
    let child = dir.script(
        "child.sh",
        &format!(
            "D='{}'\ntrap 'sleep 0.7; date +%s%N > \"$D/end.$1\"; exit 0' TERM\n\
             date +%s%N > \"$D/start.$1\"\n\
             while [ ! -e \"$D/release.$1\" ]; do sleep 0.02; done\n\
             date +%s%N > \"$D/end.$1\"",
            dir.display()
        ),
    );
    // Lock-delay 0 and grace 1 s: the least takeover delay the timing model accepts is 4 s.
    let opts = [
        "--takeover-delay",
        "4s",
        "--kill-grace",
        "1s",
        "--lock-delay",
        "0",
    ];

    // First holder on a fresh key: no entry and no live session named for it, so no wait.
    let a = Proc::spawn(run_cmd(consul, &key, &opts, &[&child, "a"]));
    assert!(dir.wait_for("start.a", Duration::from_secs(10)));
    let waiting = waiting_opts(&dir, "b");
    let mut b_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    b_opts.extend(opts);
    let b = Proc::spawn(run_cmd(consul, &key, &b_opts, &[&child, "b"]));
    wait_waiting(&dir, "b");

    // A clean release: the standby starts at once.
    dir.touch("release.a");
    assert!(dir.wait_for("start.b", Duration::from_secs(5)));
    let handoff = dir.ns("start.b").expect("start.b") - dir.ns("end.a").expect("end.a");
    eprintln!("takeover after a clean release: {} ms", ms(handoff));
    assert!(
        handoff < 1_500_000_000,
        "clean handoff waited {} ms",
        ms(handoff)
    );
    assert_eq!(a.finish(Duration::from_secs(10)).status.code(), Some(0));

    // An unclean break (the key deleted under the holder): the next holder waits the delay,
    // and its command never overlaps the old one.
    let waiting = waiting_opts(&dir, "c");
    let mut c_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    c_opts.extend(opts);
    let c = Proc::spawn(run_cmd(consul, &key, &c_opts, &[&child, "c"]));
    wait_waiting(&dir, "c");
    let deleted_at = now_ns();
    consul.delete_kv(&key);
    assert!(dir.wait_for("start.c", Duration::from_secs(10)));
    let start_c = dir.ns("start.c").expect("start.c");
    let end_b = dir.ns("end.b").expect("b's command stopped");
    eprintln!(
        "takeover after a deleted key: b stopped {} ms after the delete, c started {} ms after it",
        ms(end_b - deleted_at),
        ms(start_c - deleted_at)
    );
    assert!(start_c > end_b, "c started before b's command ended");
    assert!(
        start_c - deleted_at >= 4_000_000_000,
        "c did not wait the takeover delay"
    );
    assert_eq!(b.finish(Duration::from_secs(10)).status.code(), Some(101));
    dir.touch("release.c");
    assert_eq!(c.finish(Duration::from_secs(10)).status.code(), Some(0));
    assert!(consul.sessions_for(&key).is_empty());
}

/// The session is bound to exactly the checks the timing model assumes (docs/timing.md):
/// a health-check session with `--session-checks none` must not be bound to `serfHealth`
/// too, or a gossip flap could end it at any moment.
#[test]
fn sessions_are_bound_to_exactly_the_configured_checks() {
    let consul = Consul::shared();
    let cases: [(&[&str], &[&str]); 4] = [
        (&[], &[]),
        (&["--health-check-ttl", "3s"], &["lockwrap:"]),
        (
            &[
                "--session-checks",
                "serfHealth",
                "--health-check-ttl",
                "3s",
                "--lock-delay",
                "5s",
            ],
            &["serfHealth", "lockwrap:"],
        ),
        (
            &["--session-checks", "serfHealth", "--lock-delay", "5s"],
            &["serfHealth"],
        ),
    ];
    for (opts, want) in cases {
        let key = unique_key("bound-checks");
        let dir = Dir::new("bound-checks");
        let child = term_recorder(&dir);
        let holder = Proc::spawn(run_cmd(consul, &key, opts, &[&child]));
        if !dir.wait_for("ready", Duration::from_secs(20)) {
            holder.signal(Signal::SIGTERM);
            let out = holder.finish(Duration::from_secs(20));
            panic!("{opts:?}: child did not start: {}", describe(&out));
        }
        let session = consul.holder(&key).expect("held");
        let (_, body) = consul
            .get(&format!("/v1/session/info/{session}"))
            .expect("session info");
        let info: serde_json::Value = serde_json::from_str(&body).expect("session JSON");
        let bound: Vec<String> = info[0]["NodeChecks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(bound.len(), want.len(), "{opts:?}: {info}");
        for (got, prefix) in bound.iter().zip(want) {
            assert!(got.starts_with(prefix), "{opts:?}: {info}");
        }
        assert!(
            info[0]["Checks"].is_null() || info[0]["Checks"] == serde_json::json!([]),
            "{opts:?}: {info}"
        );
        holder.signal(Signal::SIGTERM);
        let _ = holder.finish(Duration::from_secs(20));
    }
}

#[test]
fn first_use_starts_at_once_and_a_forced_unlock_hands_over_after_the_takeover_delay() {
    let consul = Consul::shared();
    let key = unique_key("first-use");
    let dir = Dir::new("first-use");
    // A command that takes 2 s of its 3 s kill grace to stop.
    let child = dir.script(
        "child.sh",
        &format!(
            "D='{}'\ntrap 'sleep 2; date +%s%N > \"$D/end.$1\"; exit 0' TERM\n\
             date +%s%N > \"$D/start.$1\"\n\
             while [ ! -e \"$D/release.$1\" ]; do sleep 0.02; done\n\
             date +%s%N > \"$D/end.$1\"",
            dir.display()
        ),
    );
    // Lock-delay 15 s (the default), kill grace 3 s: takeover delay 4 s.
    let opts = ["--kill-grace", "3s"];

    // A key never used: no entry and no session that could hold it, so no takeover wait.
    let spawned = now_ns();
    let a = Proc::spawn(run_cmd(consul, &key, &opts, &[&child, "a"]));
    assert!(dir.wait_for("start.a", Duration::from_secs(10)));
    let first_use = dir.ns("start.a").expect("start.a") - spawned;
    eprintln!("first use of a fresh key: {} ms", ms(first_use));
    assert!(
        first_use < 3_000_000_000,
        "the first use waited {} ms",
        ms(first_use)
    );

    let waiting = waiting_opts(&dir, "b");
    let mut b_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    b_opts.extend(opts);
    let b = Proc::spawn(run_cmd(consul, &key, &b_opts, &[&child, "b"]));
    wait_waiting(&dir, "b");

    // `unlock` of a running holder: released without lock-delay, the entry kept unclean, so b
    // waits its takeover delay (not lock-delay + takeover delay) and never overlaps a.
    let unlocked_at = now_ns();
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(dir.wait_for("start.b", Duration::from_secs(15)));
    let start_b = dir.ns("start.b").expect("start.b");
    let end_a = dir.ns("end.a").expect("a's command stopped");
    eprintln!(
        "forced unlock: a stopped {} ms after it, b started {} ms after it",
        ms(end_a - unlocked_at),
        ms(start_b - unlocked_at)
    );
    assert!(start_b > end_a, "b started before a's command ended");
    assert!(
        start_b - unlocked_at >= 4_000_000_000,
        "b did not wait the takeover delay"
    );
    assert!(
        start_b - unlocked_at < 12_000_000_000,
        "b waited a lock-delay as well"
    );
    assert_eq!(a.finish(Duration::from_secs(10)).status.code(), Some(101));
    dir.touch("release.b");
    assert_eq!(b.finish(Duration::from_secs(10)).status.code(), Some(0));
    assert_no_sessions(consul, &key);
}

/// A rollout that lowers the kill grace: the holder (grace 5 s, a command that takes 4.5 s to
/// stop) announces its 8 s takeover delay in its session name; its key is deleted; the new
/// contender (grace 1 s, takeover 4 s) finds the old session alive and waits the longer delay,
/// so its command starts only after the old one ended (docs/timing.md, "Contenders with
/// different settings"). Its own 4 s would have started it while the old command still ran.
#[test]
fn a_contender_with_a_shorter_grace_waits_the_live_holders_announced_takeover() {
    let consul = Consul::shared();
    let key = unique_key("mixed-grace");
    let dir = Dir::new("mixed-grace");
    let child = dir.slow_stopper(4.5);
    let old = [
        "--kill-grace",
        "5s",
        "--takeover-delay",
        "8s",
        "--lock-delay",
        "0",
    ];
    let new = [
        "--kill-grace",
        "1s",
        "--takeover-delay",
        "4s",
        "--lock-delay",
        "0",
    ];
    let a = Proc::spawn(run_cmd(consul, &key, &old, &[&child, "a"]));
    assert!(dir.wait_for("start.a", Duration::from_secs(10)));
    let waiting = waiting_opts(&dir, "b");
    let mut b_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    b_opts.extend(new);
    let b = Proc::spawn(run_cmd(consul, &key, &b_opts, &[&child, "b"]));
    wait_waiting(&dir, "b");

    let deleted_at = now_ns();
    consul.delete_kv(&key);
    assert!(dir.wait_for("start.b", Duration::from_secs(15)));
    let start_b = dir.ns("start.b").expect("start.b");
    let end_a = dir
        .ns("end.a")
        .expect("b started while a's command still ran (no end.a yet)");
    eprintln!(
        "mixed graces: a stopped {} ms after the delete, b started {} ms after it",
        ms(end_a - deleted_at),
        ms(start_b - deleted_at)
    );
    assert!(start_b > end_a, "b started before a's command ended");
    assert!(
        start_b - deleted_at >= 8_000_000_000,
        "b waited {} ms, not a's announced 8 s",
        ms(start_b - deleted_at)
    );
    assert_eq!(a.finish(Duration::from_secs(10)).status.code(), Some(101));
    dir.touch("release.b");
    assert_eq!(b.finish(Duration::from_secs(10)).status.code(), Some(0));
    assert_no_sessions(consul, &key);
}
