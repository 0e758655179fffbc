//! Signals to `lockwrap run`: forwarded to the child, the child's code on exit, SIGKILL after the
//! kill grace, and a waiting standby leaving at once on SIGTERM / SIGINT.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    alive, assert_no_sessions, code, describe, run_cmd, term_recorder, unique_key, wait_waiting,
    waiting_opts, Dir, Proc,
};

/// A child that traps every forwarded signal and records its name; TERM exits 7, INT exits 9.
fn signal_recorder(dir: &Dir) -> String {
    dir.script(
        "signals.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\n\
             for s in HUP USR1 USR2 WINCH CONT QUIT ALRM; do trap \"echo $s >> '$D/signals'\" $s; done\n\
             trap 'echo TERM >> \"$D/signals\"; exit 7' TERM\n\
             trap 'echo INT >> \"$D/signals\"; exit 9' INT\n\
             echo ready > \"$D/ready\"\nwhile :; do sleep 0.1; done",
            dir.display()
        ),
    )
}

fn standby_exits_at_once_on(sig: Signal, expected: i32) {
    let consul = Consul::shared();
    let key = unique_key("run-standby-signal");
    let dir = Dir::new("run-standby-signal");
    let child = term_recorder(&dir);
    let holder = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "holder's child did not start"
    );
    let holder_session = consul.holder(&key).expect("held");

    let waiting = waiting_opts(&dir, "standby");
    let opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    let standby = Proc::spawn(run_cmd(consul, &key, &opts, &["sh", "-c", "exit 0"]));
    wait_waiting(&dir, "standby");
    let sent = Instant::now();
    standby.signal(sig);
    let out = standby.finish(Duration::from_secs(5));
    let took = sent.elapsed();
    eprintln!("run standby {sig:?} → exit {} ms", took.as_millis());
    assert_eq!(code(&out), expected, "{}", describe(&out));
    assert!(
        took < Duration::from_secs(1),
        "the standby took {took:?} to exit"
    );
    let left: Vec<String> = consul
        .sessions_for(&key)
        .iter()
        .filter_map(|s| s.get("ID").and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    assert_eq!(
        left,
        vec![holder_session],
        "the standby's session must be destroyed"
    );

    dir.touch("release");
    let out = holder.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn run_forwards_every_signal_and_exits_with_childs_code_on_term() {
    let consul = Consul::shared();
    let key = unique_key("run-signals");
    let dir = Dir::new("run-signals");
    let child = signal_recorder(&dir);
    let wrapper = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );

    let forwarded = [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
        (Signal::SIGCONT, "CONT"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGALRM, "ALRM"),
    ];
    let mut missing = Vec::new();
    for (sig, name) in forwarded {
        wrapper.signal(sig);
        let seen = wait_until(Duration::from_secs(3), || {
            dir.lines("signals").iter().any(|l| l == name)
        });
        if !seen {
            missing.push(name);
        }
    }
    wrapper.signal(Signal::SIGTERM);
    let out = wrapper.finish(Duration::from_secs(10));
    assert!(missing.is_empty(), "signals not forwarded: {missing:?}");
    assert!(
        dir.lines("signals").iter().any(|l| l == "TERM"),
        "TERM not forwarded"
    );
    assert_eq!(
        code(&out),
        7,
        "lockwrap must exit with the child's code: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn run_forwards_sigint_and_exits_with_childs_code() {
    let consul = Consul::shared();
    let key = unique_key("run-sigint");
    let dir = Dir::new("run-sigint");
    let child = signal_recorder(&dir);
    let wrapper = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    wrapper.signal(Signal::SIGINT);
    let out = wrapper.finish(Duration::from_secs(10));
    assert!(
        dir.lines("signals").iter().any(|l| l == "INT"),
        "INT not forwarded"
    );
    assert_eq!(code(&out), 9, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn run_sigterm_kills_child_ignoring_it_after_kill_grace() {
    let consul = Consul::shared();
    let key = unique_key("run-term-stubborn");
    let dir = Dir::new("run-term-stubborn");
    let child = dir.stubborn_child();
    let wrapper = Proc::spawn(run_cmd(consul, &key, &["--kill-grace", "1s"], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    let child_pid = dir.pids("child.pid")[0];
    let sent = Instant::now();
    wrapper.signal(Signal::SIGTERM);
    let out = wrapper.finish(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(
        code(&out),
        137,
        "SIGKILLed child → 128+9: {}",
        describe(&out)
    );
    assert!(!alive(child_pid));
    assert!(
        took >= Duration::from_millis(900),
        "grace not honoured: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert_no_sessions(consul, &key);
}

#[test]
fn run_standby_exits_at_once_on_sigterm() {
    standby_exits_at_once_on(Signal::SIGTERM, 143);
}

#[test]
fn run_standby_exits_at_once_on_sigint() {
    standby_exits_at_once_on(Signal::SIGINT, 130);
}
