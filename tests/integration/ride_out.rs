//! Consul trouble that lockwrap rides out instead of exiting 8 (docs/timing.md, "Consul
//! trouble"): an agent that has just started, an agent restarted under a standby or a holder,
//! an agent with no leader. Real agents only; every wait is bounded.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::consul::{wait_until, Consul};
use crate::harness::{code, lockwrap, run_bounded, scratch, stderr, unique_key, Proc};

/// SIGTERMs a still-running `proc` and returns its stderr after asserting exit 143.
fn stop_with_sigterm(proc: Proc) -> String {
    proc.signal(Signal::SIGTERM);
    let out = proc.finish(Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(code(&out), 143, "{err}");
    err
}

/// Lines of `text` that contain `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_lock_taken_the_instant_a_fresh_agent_has_a_leader_succeeds() {
    // "Missing node registration" / missing serfHealth: the agent has a leader but has not
    // registered its own node yet. `lock` binds the session to serfHealth, the worst case.
    // Two threads of ten fresh agents each: twenty agents in all.
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for round in 0..10 {
                    let consul = Consul::start();
                    let key = unique_key("fresh-agent");
                    let mut cmd = lockwrap(&consul);
                    cmd.args(["lock", &key]);
                    let out = run_bounded(cmd, Duration::from_secs(30));
                    if code(&out) != 0 {
                        failures.push(format!(
                            "worker {worker} round {round}: exit {} {}",
                            code(&out),
                            stderr(&out)
                        ));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker thread"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_standby_rides_out_an_agent_restart_with_state_loss_and_logs_it_once() {
    let consul = Consul::start();
    let key = unique_key("standby-restart");
    let dir = scratch("standby-restart");
    let marker = dir.join("ran");
    // Someone else holds the lock (a `lock` left behind).
    let mut holder = lockwrap(&consul);
    holder.args(["lock", &key]);
    assert_eq!(code(&run_bounded(holder, Duration::from_secs(20))), 0);

    let mut standby = lockwrap(&consul);
    standby.args([
        "execute",
        "--kill-grace",
        "1s",
        &key,
        &format!("touch {}", marker.display()),
    ]);
    let mut standby = Proc::spawn(standby);
    assert!(wait_until(Duration::from_secs(10), || consul
        .sessions()
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(500));
    // The agent goes away for a while and comes back with no state: the key is gone.
    consul.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        standby.running(),
        "the standby exited while the agent was down"
    );
    consul.restart();
    let out = standby.finish(Duration::from_secs(40));
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "standby should have run its command: {err}");
    assert!(marker.exists(), "the command did not run: {err}");
    // One line when trouble starts and one when it ends, per phase (waiting, acquiring), not
    // one per retry.
    let outage = count(&err, "Consul is not ready");
    let recovery = count(&err, "Consul answers again");
    assert!((1..=2).contains(&outage), "outage lines: {outage}\n{err}");
    assert!(recovery >= 1, "no recovery line\n{err}");
}

#[test]
fn a_holder_rides_out_an_agent_restart_that_keeps_state() {
    let data = scratch("persistent-agent");
    let consul = Consul::start_persistent(&data);
    let key = unique_key("holder-restart");
    let dir = scratch("holder-restart");
    let started = dir.join("started");
    let mut holder = lockwrap(&consul);
    // Lock-delay 30 s: a holder cut off from its agent keeps its command for lock-delay +
    // takeover delay − kill grace − 1 s = 30 s after its last renew (docs/timing.md).
    holder.args([
        "run",
        "--key",
        &key,
        "--lock-delay",
        "30s",
        "--shell",
        "--",
        &format!("touch {}; exec sleep 120", started.display()),
    ]);
    let mut holder = Proc::spawn(holder);
    assert!(wait_until(Duration::from_secs(20), || started.exists()));
    let session = consul.holder(&key).expect("held");

    // Down for 5 s (well below the 30 s this holder's settings give it), then
    // back with its state.
    consul.stop();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        holder.running(),
        "the holder gave up while the agent was down"
    );
    consul.restart();
    // Renewals land again and the same session still holds the key. A restarted server can take
    // longer than 20 s to elect itself while the suite runs four tests at once; a holder that
    // gave up meanwhile fails the checks below.
    let back = Instant::now();
    assert!(wait_until(Duration::from_secs(40), || consul
        .holder(&key)
        .as_deref()
        == Some(session.as_str())));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(back.elapsed()));
    assert!(
        holder.running(),
        "the holder exited after the agent came back"
    );

    let err = stop_with_sigterm(holder);
    assert_eq!(count(&err, "lock lost"), 0, "{err}");
    assert!(count(&err, "session renew failed") <= 1, "{err}");
    assert!(
        wait_until(Duration::from_secs(10), || consul.sessions().is_empty()),
        "session left behind"
    );
}

#[test]
fn a_holder_whose_agent_lost_its_state_stops_its_command_and_exits_101() {
    let consul = Consul::start();
    let key = unique_key("holder-state-loss");
    let dir = scratch("holder-state-loss");
    let started = dir.join("started");
    let mut holder = lockwrap(&consul);
    holder.args([
        "run",
        "--key",
        &key,
        "--kill-grace",
        "1s",
        "--shell",
        "--",
        &format!("touch {}; exec sleep 120", started.display()),
    ]);
    let holder = Proc::spawn(holder);
    assert!(wait_until(Duration::from_secs(20), || started.exists()));
    consul.restart();
    let out = holder.finish(Duration::from_secs(40));
    assert_eq!(code(&out), 101, "{}", stderr(&out));
}

#[test]
fn an_agent_without_a_leader_makes_a_standby_wait_not_exit_8() {
    let data = scratch("leaderless-agent");
    let consul = Consul::start_leaderless(&data);
    let key = unique_key("leaderless");
    // It answers, but with "No cluster leader" (after Consul's RPC hold timeout of ~7 s,
    // during which it waits for a leader to appear).
    let (status, body) = consul.get("/v1/kv/x").expect("agent answers");
    assert_eq!(status, 500, "{body}");

    let mut waiting = lockwrap(&consul);
    waiting.args(["run", "--key", &key, "--", "true"]);
    let mut waiting = Proc::spawn(waiting);
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        waiting.running(),
        "lockwrap run gave up on a leaderless agent"
    );
    let err = stop_with_sigterm(waiting);
    assert_eq!(count(&err, "Consul is not ready"), 1, "{err}");

    // --non-blocking gives up after a bounded time with exit 8.
    let mut once = lockwrap(&consul);
    once.args(["lock", "--non-blocking", &key]);
    let began = Instant::now();
    let out = run_bounded(once, Duration::from_secs(40));
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        began.elapsed() >= Duration::from_secs(5),
        "gave up too soon"
    );

    // An address that never answered still fails at once.
    let mut wrong = lockwrap(&consul);
    wrong.env("CONSUL_HTTP_ADDR", "127.0.0.1:1");
    wrong.args(["run", "--key", &key, "--", "true"]);
    let out = run_bounded(wrong, Duration::from_secs(20));
    assert_eq!(code(&out), 8, "{}", stderr(&out));
}
