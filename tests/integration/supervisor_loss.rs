//! `lockwrap run` losing its lock (README, "The supervisor"): a destroyed session, a deleted key,
//! a frozen or restarted agent stop the child (and its whole tree), SIGKILL after the kill grace.
//! Children write marker files; the tests wait on those files and every test is bounded in time.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    alive, assert_no_sessions, code, describe, hold, ms, now_ns, run_cmd, term_recorder,
    unique_key, Dir, Proc,
};

/// Resumes a frozen agent on drop, whatever happened in between.
struct Thaw<'a>(&'a Consul);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// Holds `key` with a TERM-recording child, applies `lose`, and checks the child got SIGTERM
/// promptly and lockwrap exited 101.
fn loss_stops_child(name: &str, lose: impl FnOnce(&Consul, &str)) {
    let consul = Consul::shared();
    let key = unique_key(name);
    let dir = Dir::new(name);
    let child = term_recorder(&dir);
    let (wrapper, child_pid) = hold(consul, &key, &["--kill-grace", "3s"], &child, &dir);

    let lost_at = now_ns();
    lose(consul, &key);
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 101, "{}", describe(&out));
    let term = dir.ns("term").expect("the child recorded SIGTERM");
    let latency = ms(term - lost_at);
    eprintln!("run {name}: loss → SIGTERM {latency} ms");
    assert!(latency < 2000, "SIGTERM came {latency} ms after the loss");
    assert!(!alive(child_pid), "the child outlived lockwrap");
    assert_no_sessions(consul, &key);
}

/// `sh` with a background grandchild: records both pids in `tree.pid`.
fn tree_command(dir: &Dir, stubborn_grandchild: bool) -> String {
    let grandchild = if stubborn_grandchild {
        "(trap '' TERM; exec sleep 1000)"
    } else {
        "sleep 1000"
    };
    format!(
        "{grandchild} & echo $$ $! > '{}/tree.pid'; wait",
        dir.display()
    )
}

fn tree_pids(dir: &Dir) -> (i32, i32) {
    assert!(
        wait_until(Duration::from_secs(10), || dir.pids("tree.pid").len() >= 2),
        "the shell did not start its grandchild"
    );
    let pids = dir.pids("tree.pid");
    (pids[0], pids[1])
}

#[test]
fn run_stops_child_when_session_is_destroyed() {
    loss_stops_child("run-session-destroyed", |consul, key| {
        let session = consul.holder(key).expect("the key is held");
        consul.destroy_session(&session);
    });
}

#[test]
fn run_stops_child_when_key_is_deleted() {
    loss_stops_child("run-key-deleted", |consul, key| consul.delete_kv(key));
}

#[test]
fn run_sigkills_child_that_ignores_sigterm_after_kill_grace() {
    let consul = Consul::shared();
    let key = unique_key("run-ignore-term");
    let dir = Dir::new("run-ignore-term");
    let child = dir.stubborn_child();
    let (wrapper, child_pid) = hold(consul, &key, &["--kill-grace", "1s"], &child, &dir);

    let session = consul.holder(&key).expect("the key is held");
    let lost = Instant::now();
    consul.destroy_session(&session);
    let out = wrapper.finish(Duration::from_secs(10));
    let took = lost.elapsed();
    eprintln!(
        "run ignore-TERM: loss → lockwrap exit {} ms (kill grace 1 s)",
        took.as_millis()
    );
    assert_eq!(code(&out), 101, "{}", describe(&out));
    assert!(!alive(child_pid), "the stubborn child survived");
    assert!(
        took >= Duration::from_millis(900),
        "SIGKILL came before the 1 s kill grace: {took:?}"
    );
    // grace 1 s + up to 2 s for the killed group's orphans to be reaped by init + release.
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert_no_sessions(consul, &key);
}

/// A key deleted under the holder, and the wrapper frozen (SIGSTOP) right after it sent SIGTERM:
/// the guardian still SIGKILLs the command at the end of the kill grace. Before, it waited for the
/// renew deadline, which the renews keep moving: the next holder started long before that.
#[test]
fn run_frozen_mid_stop_after_a_loss_still_loses_its_command() {
    let consul = Consul::shared();
    let key = unique_key("run-frozen-mid-stop");
    let dir = Dir::new("run-frozen-mid-stop");
    let child = dir.stubborn_child();
    let (wrapper, child_pid) = hold(consul, &key, &["--kill-grace", "1s"], &child, &dir);
    let lost = Instant::now();
    consul.delete_kv(&key);
    std::thread::sleep(Duration::from_millis(200));
    wrapper.signal(Signal::SIGSTOP);
    let dead = wait_until(Duration::from_secs(6), || !alive(child_pid));
    let took = lost.elapsed();
    wrapper.signal(Signal::SIGCONT);
    let out = wrapper.finish(Duration::from_secs(10));
    eprintln!(
        "run frozen mid-stop: key delete → command dead {} ms (kill grace 1 s)",
        took.as_millis()
    );
    assert!(
        dead,
        "the command outlived its frozen wrapper's stop: {}",
        describe(&out)
    );
    // The guardian acts at grace + 250 ms; the renew deadline it held before was 3.2 s away here.
    assert!(
        took < Duration::from_millis(2500),
        "the command died only {took:?} after the loss"
    );
    assert_eq!(code(&out), 101, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

/// `lockwrap run` holding `key` with a shell and its grandchild (`tree_command`), given as a
/// `--shell` string (`form` "shell") or as `sh -c` (`exec`); returns the wrapper and both pids.
fn run_tree(consul: &Consul, key: &str, dir: &Dir, form: &str, stubborn: bool) -> (Proc, i32, i32) {
    let line = tree_command(dir, stubborn);
    let cmd = if form == "shell" {
        run_cmd(consul, key, &["--shell", "--kill-grace", "1s"], &[&line])
    } else {
        run_cmd(consul, key, &["--kill-grace", "1s"], &["sh", "-c", &line])
    };
    let wrapper = Proc::spawn(cmd);
    let (sh, sleep) = tree_pids(dir);
    (wrapper, sh, sleep)
}

#[test]
fn run_shell_child_and_grandchild_are_gone_after_loss() {
    let consul = Consul::shared();
    for (form, stubborn) in [("shell", false), ("exec", true)] {
        let key = unique_key("run-tree-loss");
        let dir = Dir::new("run-tree-loss");
        let (wrapper, sh, sleep) = run_tree(consul, &key, &dir, form, stubborn);
        assert!(alive(sh) && alive(sleep));

        consul.delete_kv(&key);
        let out = wrapper.finish(Duration::from_secs(10));
        assert_eq!(code(&out), 101, "{form}: {}", describe(&out));
        assert!(!alive(sh), "{form}: the shell outlived the lock");
        assert!(
            !alive(sleep),
            "{form}: the grandchild (stubborn: {stubborn}) outlived the lock"
        );
        assert_no_sessions(consul, &key);
    }
}

#[test]
fn run_shell_child_and_grandchild_are_gone_after_sigterm() {
    let consul = Consul::shared();
    for (form, stubborn) in [("shell", false), ("exec", false), ("exec", true)] {
        let key = unique_key("run-tree-term");
        let dir = Dir::new("run-tree-term");
        let (wrapper, sh, sleep) = run_tree(consul, &key, &dir, form, stubborn);

        wrapper.signal(Signal::SIGTERM);
        let out = wrapper.finish(Duration::from_secs(10));
        // sh has no TERM trap: it dies of the forwarded TERM, and lockwrap reports 128+15.
        assert_eq!(code(&out), 143, "{form}: {}", describe(&out));
        assert!(!alive(sh), "{form}: the shell outlived lockwrap");
        assert!(
            !alive(sleep),
            "{form}: the grandchild (stubborn: {stubborn}) outlived lockwrap"
        );
        assert_no_sessions(consul, &key);
    }
}

#[test]
fn run_stops_child_before_ttl_when_consul_is_frozen() {
    let consul = Consul::start();
    let key = unique_key("run-frozen");
    let dir = Dir::new("run-frozen");
    let child = term_recorder(&dir);
    let (wrapper, child_pid) = hold(
        &consul,
        &key,
        &["--session-ttl", "10s", "--kill-grace", "2s"],
        &child,
        &dir,
    );

    let thaw = Thaw(&consul);
    let frozen_at = now_ns();
    consul.freeze();
    let termed = dir.wait_for("term", Duration::from_secs(12));
    let dead = wait_until(Duration::from_secs(3), || !alive(child_pid));
    let dead_ms = ms(now_ns() - frozen_at);
    // The agent stays frozen until lockwrap exits: a dead agent must not keep lockwrap alive.
    let out = wrapper.finish(Duration::from_secs(30));
    let exit_ms = ms(now_ns() - frozen_at);
    drop(thaw);

    assert!(termed, "the child got no SIGTERM within 12 s of the freeze");
    let term_ms = ms(dir.ns("term").expect("term timestamp") - frozen_at);
    eprintln!(
        "run frozen agent (TTL 10 s, grace 2 s): freeze → SIGTERM {term_ms} ms, \
         child dead ≤ {dead_ms} ms, lockwrap exit ≤ {exit_ms} ms"
    );
    assert!(
        term_ms < 10_000,
        "the child was stopped {term_ms} ms after the freeze (TTL 10 s)"
    );
    assert!(dead && dead_ms < 10_000, "the child outlived the TTL");
    assert_eq!(code(&out), 101, "{}", describe(&out));
    // lockwrap could not destroy its session while the agent was frozen; Consul expires it.
    let thawed = Instant::now();
    let expired = wait_until(Duration::from_secs(30), || consul.sessions().is_empty());
    eprintln!(
        "run frozen agent: session gone {} ms after the thaw",
        thawed.elapsed().as_millis()
    );
    assert!(expired, "sessions left: {:?}", consul.sessions());
}

#[test]
fn run_stops_child_when_consul_restarts() {
    let consul = Consul::start();
    let key = unique_key("run-restart");
    let dir = Dir::new("run-restart");
    let child = term_recorder(&dir);
    let (wrapper, child_pid) = hold(
        &consul,
        &key,
        &["--session-ttl", "10s", "--kill-grace", "1s"],
        &child,
        &dir,
    );

    let restarted = Instant::now();
    consul.restart();
    let out = wrapper.finish(Duration::from_secs(30));
    eprintln!(
        "run consul restart: restart begin → lockwrap exit {} ms",
        restarted.elapsed().as_millis()
    );
    assert_eq!(code(&out), 101, "{}", describe(&out));
    assert!(dir.exists("term"), "the child got no SIGTERM");
    assert!(!alive(child_pid));
    assert_no_sessions(&consul, &key);
}

/// The wrapper is `kill -9`ed moments after its command started a worker that left its group
/// (`setsid`) and cleared its environment (`env -i`): the worker is not in the command's group,
/// carries no tree marker, and is (most likely) younger than the guardian's last snapshot. Where
/// lockwrap could give the command a cgroup v2, the guardian kills what is left in it, so the
/// worker dies with the wrapper (docs/timing.md, "What the model assumes"). Without a writable
/// cgroup v2 there is nothing to test: the test says so and passes.
#[test]
fn a_marker_less_worker_dies_with_a_killed_wrapper_through_the_commands_cgroup() {
    let consul = Consul::shared();
    let key = unique_key("cgroup-escape");
    let dir = Dir::new("cgroup-escape");
    let child = dir.script(
        "child.sh",
        &format!(
            "D='{}'\nsleep 0.7\n\
             setsid env -i /bin/sh -c 'echo $$ > \"$0/worker.pid\"; exec sleep 30' \"$D\" &\n\
             sleep 30",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("worker.pid", Duration::from_secs(15)),
        "the worker never started"
    );
    let worker = dir.pids("worker.pid")[0];
    let cgroup = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap_or_default();
    wrapper.signal(nix::sys::signal::Signal::SIGKILL);
    if !cgroup.contains("/lockwrap-") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker),
            nix::sys::signal::Signal::SIGKILL,
        );
        eprintln!("no command cgroup here ({cgroup:?}): the cgroup path is not exercised");
        return;
    }
    let gone = wait_until(Duration::from_secs(5), || !crate::harness::alive(worker));
    if !gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        gone,
        "the worker in the command's cgroup outlived its killed wrapper"
    );
    let _ = wrapper.finish(Duration::from_secs(10));
}
