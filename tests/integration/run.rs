//! `lockwrap run` / `lockwrap execute` (README, "The supervisor" and "Exit codes"): the supervisor through the
//! built binary, real processes and a real Consul agent. Children write marker files; the tests
//! wait on those files (never on fixed sleeps) and every test is bounded in time.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::consul::{consul_binary, wait_until, Consul};
use crate::harness::{alive, code, lockwrap, run_bounded, scratch, script, unique_key, Proc};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A scratch directory whose children record their pids in `*.pid` files (whitespace-separated);
/// on drop every recorded process and process group still around is SIGKILLed.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        Dir(scratch(name))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn display(&self) -> String {
        self.0.display().to_string()
    }

    fn touch(&self, name: &str) {
        std::fs::write(self.path(name), b"").expect("touch");
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        self.read(name)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every pid in `name` (whitespace-separated).
    fn pids(&self, name: &str) -> Vec<i32> {
        self.read(name)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// A nanosecond timestamp written by `date +%s%N`.
    fn ns(&self, name: &str) -> Option<i128> {
        self.read(name).trim().parse().ok()
    }

    /// Waits until a marker holds content: shells create a file (`> f`) before writing it, so
    /// existence alone can be seen before the timestamp or pid is in it.
    fn wait_for(&self, name: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            self.exists(name) && !self.read(name).trim().is_empty()
        })
    }

    fn script(&self, name: &str, body: &str) -> String {
        script(&self.0, name, body).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.ends_with(".pid") {
                continue;
            }
            for pid in self.pids(&name) {
                if pid > 1 && alive(pid) {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Resumes a frozen agent on drop, whatever happened in between.
struct Thaw<'a>(&'a Consul);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// `lockwrap run --key KEY --lock-delay 0 OPTS… -- COMMAND…`.
fn run_cmd(consul: &Consul, key: &str, opts: &[&str], command: &[&str]) -> Command {
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--key", key])
        .args(opts)
        .arg("--")
        .args(command);
    if !opts.contains(&"--lock-delay") {
        // A session invalidated by a test must not block the next holder for Consul's 15 s.
        cmd.env("LOCKWRAP_LOCK_DELAY", "0");
    }
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn err_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

fn ms(ns: i128) -> i128 {
    ns / 1_000_000
}

/// No session of `key` is left in Consul (lockwrap destroys its session on every exit path).
fn assert_no_sessions(consul: &Consul, key: &str) {
    let clean = wait_until(Duration::from_secs(5), || {
        consul.sessions_for(key).is_empty()
    });
    assert!(
        clean,
        "sessions left behind for {key}: {:?}",
        consul.sessions_for(key)
    );
}

/// `(state, ppid)` from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Zombies whose parent is `parent`.
fn zombies_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some(('Z', ppid)) if ppid == parent))
        .collect()
}

/// `--on-already-locked HOOK`: the hook appends to `waiting.<name>` each time the wrapper finds
/// the lock taken, which proves it is waiting (a lockwrap standby keeps no session while it
/// waits, so sessions cannot show it).
fn waiting_opts(dir: &Dir, name: &str) -> Vec<String> {
    let hook = dir.script(
        &format!("waiting-{name}.sh"),
        &format!("echo \"$1\" >> '{}/waiting.{name}'", dir.display()),
    );
    vec!["--on-already-locked".to_string(), hook]
}

fn wait_waiting(dir: &Dir, name: &str) {
    assert!(
        dir.wait_for(&format!("waiting.{name}"), Duration::from_secs(10)),
        "wrapper {name} never reported the lock as taken (it is not waiting)"
    );
}

/// A child that records `$$`, marks `ready`, and loops until `release` exists.
const WAIT_FOR_RELEASE: &str = "while [ ! -e \"$D/release\" ]; do sleep 0.1; done";

/// A child that records its pid and when it got SIGTERM, then exits 0.
fn term_recorder(dir: &Dir) -> String {
    dir.script(
        "child.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\n\
             trap 'date +%s%N > \"$D/term\"; exit 0' TERM\n\
             echo ready > \"$D/ready\"\n{WAIT_FOR_RELEASE}",
            dir.display()
        ),
    )
}

/// The exclusion probe: `mkdir inside` fails if another child is inside; records order, start and
/// end times, and the fencing token; leaves when `release.$1` exists.
fn exclusion_probe(dir: &Dir) -> String {
    dir.script(
        "probe.sh",
        &format!(
            "D='{}'\nID=\"$1\"\necho $$ >> \"$D/child.pid\"\n\
             date +%s%N > \"$D/start.$ID\"\n\
             mkdir \"$D/inside\" 2>/dev/null || echo \"$ID\" >> \"$D/overlap\"\n\
             echo \"$ID\" >> \"$D/order\"\n\
             echo \"$LOCKWRAP_FENCING_TOKEN\" > \"$D/token.$ID\"\n\
             while [ ! -e \"$D/release.$ID\" ]; do sleep 0.05; done\n\
             rmdir \"$D/inside\" 2>/dev/null\n\
             date +%s%N > \"$D/end.$ID\"",
            dir.display()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Mutual exclusion and handoff
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Lock loss
// ---------------------------------------------------------------------------------------------

/// Holds `key` with a TERM-recording child, applies `lose`, and checks the child got SIGTERM
/// promptly and lockwrap exited 101.
fn loss_stops_child(name: &str, lose: impl FnOnce(&Consul, &str)) {
    let consul = Consul::shared();
    let key = unique_key(name);
    let dir = Dir::new(name);
    let child = term_recorder(&dir);
    let wrapper = Proc::spawn(run_cmd(consul, &key, &["--kill-grace", "3s"], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    let child_pid = dir.pids("child.pid")[0];

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
    let child = dir.script(
        "stubborn.sh",
        &format!(
            "D='{}'\ntrap '' TERM\necho $$ >> \"$D/child.pid\"\necho ready > \"$D/ready\"\n\
             while :; do sleep 0.1; done",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &["--kill-grace", "1s"], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    let child_pid = dir.pids("child.pid")[0];

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
fn run_shell_child_and_grandchild_are_gone_after_loss() {
    let consul = Consul::shared();
    for (form, stubborn) in [("shell", false), ("exec", true)] {
        let key = unique_key("run-tree-loss");
        let dir = Dir::new("run-tree-loss");
        let line = tree_command(&dir, stubborn);
        let cmd = if form == "shell" {
            run_cmd(consul, &key, &["--shell", "--kill-grace", "1s"], &[&line])
        } else {
            run_cmd(consul, &key, &["--kill-grace", "1s"], &["sh", "-c", &line])
        };
        let wrapper = Proc::spawn(cmd);
        let (sh, sleep) = tree_pids(&dir);
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
        let line = tree_command(&dir, stubborn);
        let cmd = if form == "shell" {
            run_cmd(consul, &key, &["--shell", "--kill-grace", "1s"], &[&line])
        } else {
            run_cmd(consul, &key, &["--kill-grace", "1s"], &["sh", "-c", &line])
        };
        let wrapper = Proc::spawn(cmd);
        let (sh, sleep) = tree_pids(&dir);

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

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

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
    let child = dir.script(
        "stubborn.sh",
        &format!(
            "D='{}'\ntrap '' TERM\necho $$ >> \"$D/child.pid\"\necho ready > \"$D/ready\"\n\
             while :; do sleep 0.1; done",
            dir.display()
        ),
    );
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

// ---------------------------------------------------------------------------------------------
// Exit codes and environment
// ---------------------------------------------------------------------------------------------

#[test]
fn run_passes_exit_codes_through() {
    let consul = Consul::shared();
    let dir = Dir::new("run-exit-codes");
    let not_executable = dir.path("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write");
    let not_executable = not_executable.display().to_string();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["sh", "-c", "exit 0"], 0),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "exit 42"], 42),
        (vec!["sh", "-c", "kill -KILL $$"], 137),
        (vec!["sh", "-c", "kill -USR1 $$"], 138),
        (vec![&not_executable], 126),
        (vec!["/nonexistent/lockwrap-test-program"], 127),
        (vec!["lockwrap-test-no-such-program-on-path"], 127),
    ];
    for (command, expected) in cases {
        let key = unique_key("run-exit-codes");
        let out = run_bounded(
            run_cmd(consul, &key, &[], &command),
            Duration::from_secs(20),
        );
        assert_eq!(code(&out), expected, "{command:?}: {}", describe(&out));
        assert_no_sessions(consul, &key);
        assert!(consul.holder(&key).is_none(), "{command:?}: key still held");
    }
    // Through the shell, the shell's own 127 for a missing program passes through.
    let key = unique_key("run-exit-codes");
    let out = run_bounded(
        run_cmd(consul, &key, &["--shell"], &["/nonexistent/prog"]),
        Duration::from_secs(20),
    );
    assert_eq!(code(&out), 127, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn run_gives_the_child_the_lock_environment() {
    let consul = Consul::shared();
    let key = unique_key("run-env");
    let dir = Dir::new("run-env");
    let child = dir.script(
        "env.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\nenv > \"$D/env.tmp\" && mv \"$D/env.tmp\" \"$D/env\"\n{WAIT_FOR_RELEASE}",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("env", Duration::from_secs(10)),
        "child did not start"
    );
    let env: std::collections::HashMap<String, String> = dir
        .lines("env")
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let holder = consul.holder(&key).expect("held while the child runs");
    let modify_index = consul
        .kv(&key)
        .and_then(|e| e.get("ModifyIndex").and_then(|v| v.as_u64()))
        .expect("ModifyIndex");
    dir.touch("release");
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));

    assert_eq!(
        env.get("CONSUL_LOCK_HELD").map(String::as_str),
        Some("true")
    );
    assert_eq!(env.get("LOCKWRAP_KEY"), Some(&key));
    assert_eq!(env.get("LOCKWRAP_SESSION"), Some(&holder));
    assert_eq!(
        env.get("LOCKWRAP_FENCING_TOKEN"),
        Some(&modify_index.to_string()),
        "the fencing token is the entry's ModifyIndex at acquisition"
    );
    assert!(
        env.contains_key("PATH"),
        "the rest of the environment is inherited"
    );
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// Reaping
// ---------------------------------------------------------------------------------------------

#[test]
fn run_subreaper_reaps_orphaned_grandchildren() {
    let consul = Consul::shared();
    let key = unique_key("run-subreaper");
    let dir = Dir::new("run-subreaper");
    let child = dir.script(
        "orphaner.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\n\
             ( sh -c 'echo $$ > \"$0/orphan.pid\"; while [ ! -e \"$0/orphan.go\" ]; do sleep 0.05; done' \"$D\" & )\n\
             {WAIT_FOR_RELEASE}",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &["--subreaper"], &[&child]));
    let lockwrap_pid = wrapper.pid;
    assert!(
        wait_until(Duration::from_secs(10), || !dir
            .pids("orphan.pid")
            .is_empty()),
        "the orphan did not start"
    );
    let orphan = dir.pids("orphan.pid")[0];
    assert!(
        wait_until(Duration::from_secs(5), || {
            proc_stat(orphan).is_some_and(|(_, ppid)| ppid == lockwrap_pid)
        }),
        "the orphan was not re-parented to lockwrap (stat {:?})",
        proc_stat(orphan)
    );
    dir.touch("orphan.go");
    let reaped = wait_until(Duration::from_secs(5), || proc_stat(orphan).is_none());
    let zombies = zombies_of(lockwrap_pid);
    let mut wrapper = wrapper;
    assert!(wrapper.running(), "lockwrap must still run");
    assert!(
        reaped,
        "the orphan stayed a zombie: {:?}",
        proc_stat(orphan)
    );
    assert!(zombies.is_empty(), "zombies under lockwrap: {zombies:?}");

    dir.touch("release");
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// Consul failures while holding
// ---------------------------------------------------------------------------------------------

#[test]
fn run_stops_child_before_ttl_when_consul_is_frozen() {
    let consul = Consul::start();
    let key = unique_key("run-frozen");
    let dir = Dir::new("run-frozen");
    let child = term_recorder(&dir);
    let wrapper = Proc::spawn(run_cmd(
        &consul,
        &key,
        &["--session-ttl", "10s", "--kill-grace", "2s"],
        &[&child],
    ));
    assert!(
        dir.wait_for("ready", Duration::from_secs(15)),
        "child did not start"
    );
    let child_pid = dir.pids("child.pid")[0];

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
    let wrapper = Proc::spawn(run_cmd(
        &consul,
        &key,
        &["--session-ttl", "10s", "--kill-grace", "1s"],
        &[&child],
    ));
    assert!(
        dir.wait_for("ready", Duration::from_secs(15)),
        "child did not start"
    );
    let child_pid = dir.pids("child.pid")[0];

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

// ---------------------------------------------------------------------------------------------
// Standby
// ---------------------------------------------------------------------------------------------

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
fn run_standby_exits_at_once_on_sigterm() {
    standby_exits_at_once_on(Signal::SIGTERM, 143);
}

#[test]
fn run_standby_exits_at_once_on_sigint() {
    standby_exits_at_once_on(Signal::SIGINT, 130);
}

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
fn run_health_check_ttl_frees_a_crashed_holders_lock_fast() {
    let (failover, holder_pid) = crash_failover(
        "run-health-check",
        &["--health-check-ttl", "2s"],
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

// ---------------------------------------------------------------------------------------------
// Semaphore and consul lock interoperability
// ---------------------------------------------------------------------------------------------

#[test]
fn run_semaphore_runs_at_most_limit_children() {
    let consul = Consul::shared();
    let key = unique_key("run-semaphore");
    let dir = Dir::new("run-semaphore");
    let child = dir.script(
        "slot.sh",
        &format!(
            "D='{}'\nID=\"$1\"\necho $$ >> \"$D/child.pid\"\n\
             touch \"$D/running.$ID\"\nls \"$D\" | grep -c '^running\\.' >> \"$D/counts\"\n\
             echo \"$ID\" >> \"$D/order\"\n\
             while [ ! -e \"$D/release.$ID\" ]; do sleep 0.05; done\nrm -f \"$D/running.$ID\"",
            dir.display()
        ),
    );
    let mut wrappers: Vec<(String, Proc)> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child, id])),
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || dir.lines("order").len() >= 2),
        "two slots were not filled"
    );
    assert!(
        wait_until(Duration::from_secs(10), || consul.sessions_for(&key).len()
            == 3),
        "the third contender is not waiting: {:?}",
        consul.sessions_for(&key)
    );
    let running = dir.lines("order");
    assert_eq!(
        running.len(),
        2,
        "at most two children at once: {running:?}"
    );

    let first = running[0].clone();
    dir.touch(&format!("release.{first}"));
    assert!(
        wait_until(Duration::from_secs(5), || dir.lines("order").len() == 3),
        "the waiting contender did not get the freed slot"
    );
    for id in ["a", "b", "c"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper) in wrappers.drain(..) {
        let out = wrapper.finish(Duration::from_secs(10));
        assert_eq!(code(&out), 0, "{id}: {}", describe(&out));
    }
    let counts: Vec<u32> = dir
        .lines("counts")
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert!(
        counts.iter().all(|c| *c <= 2),
        "more than two children at once: {counts:?}"
    );
    assert_eq!(counts.len(), 3, "each wrapper ran its child once");
    assert_no_sessions(consul, &key);
}

#[test]
fn run_semaphore_with_a_different_limit_is_a_conflict() {
    let consul = Consul::shared();
    let key = unique_key("run-semaphore-conflict");
    let dir = Dir::new("run-semaphore-conflict");
    let child = term_recorder(&dir);
    let holder = Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "holder's child did not start"
    );

    let marker = dir.path("conflict-ran");
    let out = run_bounded(
        run_cmd(
            consul,
            &key,
            &["-n", "3"],
            &["sh", "-c", &format!("touch '{}'", marker.display())],
        ),
        Duration::from_secs(15),
    );
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(
        err_text(&out).to_lowercase().contains("limit"),
        "{}",
        describe(&out)
    );
    assert!(
        !marker.exists(),
        "the conflicting contender ran its command"
    );

    dir.touch("release");
    let out = holder.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

/// `consul lock -http-addr=… PREFIX 'probe ID'`.
fn consul_lock(consul: &Consul, prefix: &str, probe: &str, id: &str) -> Proc {
    let mut cmd = Command::new(consul_binary());
    cmd.args([
        "lock",
        &format!("-http-addr=127.0.0.1:{}", consul.http_port),
        prefix,
        &format!("{probe} {id}"),
    ])
    .env("CONSUL_HTTP_TOKEN", "root")
    .stdin(Stdio::null());
    Proc::spawn(cmd)
}

#[test]
fn run_consul_lock_layout_excludes_hashicorp_consul_lock_both_ways() {
    // A private agent: `consul lock`'s session has its own name, so count every session (a
    // waiting `consul lock` keeps its session, which shows it is waiting).
    let consul = Consul::start();
    let prefix = unique_key("run-consul-lock");
    let dir = Dir::new("run-consul-lock");
    let probe = exclusion_probe(&dir);
    let waiting = waiting_opts(&dir, "lw1");
    let mut opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    opts.extend(["--layout", "consul-lock"]);

    // consul lock holds; lockwrap waits (its --on-already-locked hook proves it).
    let hashicorp = consul_lock(&consul, &prefix, &probe, "consul1");
    assert!(
        wait_until(Duration::from_secs(15), || dir.lines("order")
            == ["consul1"]),
        "consul lock's child did not start"
    );
    let ours = Proc::spawn(run_cmd(&consul, &prefix, &opts, &[&probe, "lw1"]));
    wait_waiting(&dir, "lw1");
    assert_eq!(
        dir.lines("order"),
        vec!["consul1"],
        "lockwrap ran while consul lock held"
    );
    dir.touch("release.consul1");
    let out = hashicorp.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "consul lock: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || dir.exists("start.lw1")),
        "lockwrap did not take over from consul lock"
    );

    // lockwrap holds; consul lock waits.
    let hashicorp = consul_lock(&consul, &prefix, &probe, "consul2");
    assert!(
        wait_until(Duration::from_secs(10), || consul.sessions().len() == 2),
        "consul lock is not waiting: {:?}",
        consul.sessions()
    );
    assert_eq!(
        dir.lines("order"),
        vec!["consul1", "lw1"],
        "consul lock ran while lockwrap held"
    );
    dir.touch("release.lw1");
    let out = ours.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "lockwrap: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || dir.exists("start.consul2")),
        "consul lock did not take over from lockwrap"
    );
    dir.touch("release.consul2");
    let out = hashicorp.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "consul lock: {}", describe(&out));

    assert!(
        !dir.exists("overlap"),
        "two holders at once: {:?}",
        dir.lines("overlap")
    );
    assert!(
        wait_until(Duration::from_secs(5), || consul.sessions().is_empty()),
        "sessions left: {:?}",
        consul.sessions()
    );
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

/// A hook that appends `EVENT KEY-ARG LOCKWRAP_KEY LOCKWRAP_EVENT` to `hooks`.
fn hook(dir: &Dir, event: &str) -> String {
    dir.script(
        &format!("hook-{event}.sh"),
        &format!(
            "echo \"{event} $1 $LOCKWRAP_KEY $LOCKWRAP_EVENT\" >> '{}/hooks'",
            dir.display()
        ),
    )
}

#[test]
fn run_calls_acquired_released_and_lost_hooks() {
    let consul = Consul::shared();

    // Normal exit: acquired, then released.
    let key = unique_key("run-hooks");
    let dir = Dir::new("run-hooks");
    let (acquired, released, lost) = (
        hook(&dir, "acquired"),
        hook(&dir, "released"),
        hook(&dir, "lost"),
    );
    let opts = [
        "--on-acquired",
        &acquired,
        "--on-released",
        &released,
        "--on-lost",
        &lost,
    ];
    let out = run_bounded(
        run_cmd(consul, &key, &opts, &["sh", "-c", "exit 0"]),
        Duration::from_secs(20),
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let lines = dir.lines("hooks");
    assert!(
        lines.contains(&format!("acquired {key} {key} acquired")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("released {key} {key} released")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("lost")), "{lines:?}");
    assert_no_sessions(consul, &key);

    // Loss: the lost hook runs too.
    let key = unique_key("run-hooks");
    let dir = Dir::new("run-hooks-lost");
    let (acquired, lost) = (hook(&dir, "acquired"), hook(&dir, "lost"));
    let child = term_recorder(&dir);
    let opts = ["--on-acquired", &acquired, "--on-lost", &lost];
    let wrapper = Proc::spawn(run_cmd(consul, &key, &opts, &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    consul.delete_kv(&key);
    let out = wrapper.finish(Duration::from_secs(15));
    assert_eq!(code(&out), 101, "{}", describe(&out));
    let lines = dir.lines("hooks");
    assert!(
        lines.contains(&format!("lost {key} {key} lost")),
        "{lines:?}"
    );
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// execute
// ---------------------------------------------------------------------------------------------

#[test]
fn execute_runs_shell_string_under_the_supervisor() {
    let consul = Consul::shared();
    let dir = Dir::new("execute");

    let key = unique_key("execute");
    let mut cmd = lockwrap(consul);
    cmd.args(["execute", "--lock-delay", "0", &key, "exit 4"]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert_no_sessions(consul, &key);

    let key = unique_key("execute");
    let env_file = dir.path("env");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "execute",
        "--lock-delay",
        "0",
        &key,
        &format!(
            "echo \"$CONSUL_LOCK_HELD $LOCKWRAP_KEY\" > '{}'; kill -USR1 $$",
            env_file.display()
        ),
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 138, "{}", describe(&out));
    assert_eq!(dir.read("env").trim(), format!("true {key}"));
    assert_no_sessions(consul, &key);

    // Signals and the TERM → child's code path are the same as run's.
    let key = unique_key("execute");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "execute",
        "--lock-delay",
        "0",
        &key,
        &format!(
            "echo $$ >> '{d}/child.pid'; trap 'exit 7' TERM; echo ready > '{d}/ready'; while :; do sleep 0.1; done",
            d = dir.display()
        ),
    ]);
    let wrapper = Proc::spawn(cmd);
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    wrapper.signal(Signal::SIGTERM);
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// Configuration: precedence and rejections
// ---------------------------------------------------------------------------------------------

fn write_yaml(dir: &Dir, name: &str, text: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, text).expect("write yaml");
    path.display().to_string()
}

/// The key the child saw, with `yaml`, `env` and `flag` keys given or not.
fn key_seen(
    consul: &Consul,
    dir: &Dir,
    yaml: &str,
    env: Option<&str>,
    flag: Option<&str>,
) -> String {
    let out_file = dir.path("seen-key");
    let _ = std::fs::remove_file(&out_file);
    let config = write_yaml(dir, "key.yaml", &format!("key: {yaml}\nlock_delay: 0s\n"));
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--config", &config]);
    if let Some(flag) = flag {
        cmd.args(["--key", flag]);
    }
    if let Some(env) = env {
        cmd.env("LOCKWRAP_KEY", env);
    }
    cmd.args([
        "--",
        "sh",
        "-c",
        &format!("echo \"$LOCKWRAP_KEY\" >> '{}'", out_file.display()),
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    dir.lines("seen-key").first().cloned().unwrap_or_default()
}

#[test]
fn run_config_precedence_file_then_env_then_flags() {
    let consul = Consul::shared();
    let dir = Dir::new("run-config-precedence");
    let (from_file, from_env, from_flag) = (
        unique_key("cfg-file"),
        unique_key("cfg-env"),
        unique_key("cfg-flag"),
    );
    assert_eq!(key_seen(consul, &dir, &from_file, None, None), from_file);
    assert_eq!(
        key_seen(consul, &dir, &from_file, Some(&from_env), None),
        from_env
    );
    assert_eq!(
        key_seen(consul, &dir, &from_file, Some(&from_env), Some(&from_flag)),
        from_flag
    );

    // LOCKWRAP_CONFIG names the file when --config is absent.
    let key = unique_key("cfg-env-file");
    let config = write_yaml(
        &dir,
        "via-env.yaml",
        &format!("key: {key}\nlock_delay: 0\n"),
    );
    let mut cmd = lockwrap(consul);
    cmd.env("LOCKWRAP_CONFIG", &config).args([
        "run",
        "--",
        "sh",
        "-c",
        "test \"$LOCKWRAP_KEY\" = \"$0\"",
        &key,
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));

    // Timing: a configuration the timing model refuses (serfHealth with no lock-delay) in the
    // file is named as the file's; env fixes it; a flag breaks it again and is named as the flag.
    let key = unique_key("cfg-timing");
    let config = write_yaml(
        &dir,
        "timing.yaml",
        &format!("key: {key}\nsession_ttl: 10s\nsession_checks: serfHealth\nlock_delay: 0\n"),
    );
    let base = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = lockwrap(consul);
        cmd.args(["run", "--config", &config]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--", "true"]);
        run_bounded(cmd, Duration::from_secs(20))
    };
    let out = base(&[], &[]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    assert!(
        err_text(&out).contains(&config),
        "names the file: {}",
        describe(&out)
    );
    let out = base(&[], &[("LOCKWRAP_LOCK_DELAY", "5s")]);
    assert_eq!(code(&out), 0, "env overrides the file: {}", describe(&out));
    let out = base(&["--lock-delay", "0"], &[("LOCKWRAP_LOCK_DELAY", "5s")]);
    assert_eq!(code(&out), 3, "the flag overrides env: {}", describe(&out));
    assert!(
        err_text(&out).contains("--lock-delay"),
        "{}",
        describe(&out)
    );
    let out = base(
        &["--session-ttl", "20s", "--lock-delay", "5s"],
        &[("LOCKWRAP_SESSION_TTL", "abc")],
    );
    assert_eq!(
        code(&out),
        0,
        "a flag hides a bad env value: {}",
        describe(&out)
    );
    let out = base(&[], &[("LOCKWRAP_SESSION_TTL", "5s")]);
    assert_eq!(code(&out), 7, "TTL out of range: {}", describe(&out));
    assert!(
        err_text(&out).contains("LOCKWRAP_SESSION_TTL"),
        "{}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);

    // Consul's address: YAML < CONSUL_HTTP_ADDR < --consul-addr (127.0.0.1:1 refuses connections).
    let key = unique_key("cfg-addr");
    let config = write_yaml(
        &dir,
        "addr.yaml",
        &format!("key: {key}\nlock_delay: 0\nconsul_addr: 127.0.0.1:1\n"),
    );
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--config", &config, "--", "true"]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        0,
        "CONSUL_HTTP_ADDR beats the file: {}",
        describe(&out)
    );
    let mut cmd = lockwrap(consul);
    cmd.env("CONSUL_HTTP_ADDR", "127.0.0.1:1").args([
        "run",
        "--config",
        &config,
        "--consul-addr",
        &consul.addr(),
        "--",
        "true",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        0,
        "--consul-addr beats the env: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn run_rejects_bad_settings_with_documented_exit_codes() {
    let consul = Consul::shared();
    let dir = Dir::new("run-rejections");
    let key = unique_key("run-rejections");
    let marker = dir.path("ran");
    let touch = format!("touch '{}'", marker.display());

    struct Case {
        what: &'static str,
        args: Vec<String>,
        env: Vec<(&'static str, String)>,
        code: i32,
        mentions: Vec<&'static str>,
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let unknown_yaml = write_yaml(
        &dir,
        "unknown.yaml",
        "session_ttl: 15s\nfavourite_colour: blue\n",
    );
    let wrong_type = write_yaml(&dir, "wrong-type.yaml", "kill_grace: [1, 2]\n");
    let bad_yaml = write_yaml(&dir, "bad.yaml", "key: [unclosed\n");
    let cases = vec![
        Case {
            what: "unknown YAML key",
            args: s(&["--config", &unknown_yaml, "--key", &key]),
            env: vec![],
            code: 2,
            mentions: vec!["favourite_colour"],
        },
        Case {
            what: "wrong YAML type",
            args: s(&["--config", &wrong_type, "--key", &key]),
            env: vec![],
            code: 2,
            mentions: vec!["kill_grace"],
        },
        Case {
            what: "unparsable YAML",
            args: s(&["--config", &bad_yaml, "--key", &key]),
            env: vec![],
            code: 2,
            mentions: vec!["bad.yaml"],
        },
        Case {
            what: "missing config file",
            args: s(&["--config", "/nonexistent/lockwrap.yaml", "--key", &key]),
            env: vec![],
            code: 2,
            mentions: vec!["/nonexistent/lockwrap.yaml"],
        },
        Case {
            what: "invalid env duration",
            args: s(&["--key", &key]),
            env: vec![("LOCKWRAP_SESSION_TTL", "abc".into())],
            code: 2,
            mentions: vec!["LOCKWRAP_SESSION_TTL"],
        },
        Case {
            what: "invalid env bool",
            args: s(&["--key", &key]),
            env: vec![("LOCKWRAP_SUBREAPER", "maybe".into())],
            code: 2,
            mentions: vec!["LOCKWRAP_SUBREAPER"],
        },
        Case {
            what: "invalid flag duration",
            args: s(&["--key", &key, "--kill-grace", "abc"]),
            env: vec![],
            code: 3,
            mentions: vec!["--kill-grace"],
        },
        Case {
            what: "unknown flag",
            args: s(&["--key", &key, "--no-such-option"]),
            env: vec![],
            code: 3,
            mentions: vec!["--no-such-option"],
        },
        Case {
            what: "lock delay over 60 s",
            args: s(&["--key", &key, "--lock-delay", "61s"]),
            env: vec![],
            code: 3,
            mentions: vec!["--lock-delay"],
        },
        Case {
            what: "limit 0",
            args: s(&["--key", &key, "-n", "0"]),
            env: vec![],
            code: 3,
            mentions: vec!["limit"],
        },
        Case {
            what: "unknown layout",
            args: s(&["--key", &key, "--layout", "zookeeper"]),
            env: vec![],
            code: 3,
            mentions: vec!["--layout"],
        },
        Case {
            what: "TTL below 10 s",
            args: s(&["--key", &key, "--session-ttl", "5s"]),
            env: vec![],
            code: 7,
            mentions: vec!["--session-ttl"],
        },
        Case {
            what: "serfHealth-bound session with too short a lock-delay",
            args: s(&[
                "--key",
                &key,
                "--session-checks",
                "serfHealth",
                "--lock-delay",
                "1s",
            ]),
            env: vec![],
            code: 3,
            // says what would fit
            mentions: vec![
                "--lock-delay 2s or more",
                "--session-checks none",
                "--kill-grace 4s or less",
                "--unsafe-allow-overlap",
            ],
        },
        Case {
            what: "invalid key",
            args: s(&["--key", "/leading/slash"]),
            env: vec![],
            code: 6,
            mentions: vec!["/leading/slash"],
        },
        Case {
            what: "no key",
            args: vec![],
            env: vec![],
            code: 1,
            mentions: vec!["key"],
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let mut cmd = lockwrap(consul);
        cmd.arg("run").args(&case.args);
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        cmd.args(["--", "sh", "-c", &touch]);
        let out = run_bounded(cmd, Duration::from_secs(20));
        let text = err_text(&out);
        if code(&out) != case.code || !case.mentions.iter().all(|m| text.contains(m)) {
            failures.push(format!(
                "{}: expected exit {} mentioning {:?}; {}",
                case.what,
                case.code,
                case.mentions,
                describe(&out)
            ));
        }
    }
    // No command at all is a missing setting too.
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--key", &key]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    if code(&out) != 1 {
        failures.push(format!("no command: expected exit 1; {}", describe(&out)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(!marker.exists(), "a rejected invocation ran its command");
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// examples/lockwrap.yaml
// ---------------------------------------------------------------------------------------------

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lockwrap.yaml");

/// The names in `config::SETTINGS`, read from the source so the example cannot fall behind.
fn settings() -> Vec<String> {
    let source = include_str!("../../src/config/mod.rs");
    let start = source
        .find("pub const SETTINGS")
        .expect("SETTINGS in src/config.rs");
    let body = &source[start..];
    let body = &body[..body.find("];").expect("end of SETTINGS")];
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn run_example_config_documents_every_setting_and_is_valid() {
    let text = std::fs::read_to_string(EXAMPLE).expect("examples/lockwrap.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let names = settings();
    assert!(names.len() > 30, "SETTINGS parsed: {names:?}");
    for name in &names {
        let index = lines
            .iter()
            .position(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("examples/lockwrap.yaml does not set `{name}`"));
        assert!(
            index > 0 && lines[index - 1].trim_start().starts_with('#'),
            "`{name}` in examples/lockwrap.yaml has no comment above it"
        );
    }

    let consul = Consul::shared();
    let key = unique_key("run-example-config");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "run", "--config", EXAMPLE, "--key", &key, "--", "sh", "-c", "exit 5",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        5,
        "the example must be valid for `run`: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

// ---------------------------------------------------------------------------------------------
// --takeover-delay
// ---------------------------------------------------------------------------------------------

#[test]
fn takeover_delay_waits_only_after_an_unclean_release() {
    let consul = Consul::shared();
    let key = unique_key("run-takeover");
    let dir = Dir::new("run-takeover");
    let child = dir.script(
        "child.sh",
        &format!(
            "D='{}'\ntrap 'date +%s%N > \"$D/end.$1\"; exit 0' TERM\n\
             date +%s%N > \"$D/start.$1\"\n\
             while [ ! -e \"$D/release.$1\" ]; do sleep 0.02; done\n\
             date +%s%N > \"$D/end.$1\"",
            dir.display()
        ),
    );
    let opts = [
        "--takeover-delay",
        "2s",
        "--kill-grace",
        "1s",
        "--lock-delay",
        "0",
    ];

    // First holder on a fresh key: an absent key counts as unclean, so it waits too.
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
        start_c - deleted_at >= 2_000_000_000,
        "c did not wait the takeover delay"
    );
    assert_eq!(b.finish(Duration::from_secs(10)).status.code(), Some(101));
    dir.touch("release.c");
    assert_eq!(c.finish(Duration::from_secs(10)).status.code(), Some(0));
    assert!(consul.sessions_for(&key).is_empty());
}
