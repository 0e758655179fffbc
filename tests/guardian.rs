//! The guardian against real process trees: it kills a command's whole tree (group, `setsid`
//! child, double-forked orphan) when its deadline passes unextended or its wrapper goes away,
//! and leaves it alone while extended or disarmed.
//!
//! A binary of its own with one test that runs the scenarios in turn: a firing guardian kills
//! every descendant of its wrapper — here the test process — so nothing may run beside it. No
//! reaper is installed here; std waits for the shell, and orphans re-parented to this process (a
//! subreaper, like lockwrap) stay zombies, which count as dead.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockwrap::testing::guardian::{self, Guardian};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpid, Pid};

/// How long anything the guardian should do may take beyond its deadline and grace.
const SLACK: Duration = Duration::from_secs(2);

/// A shell leading its own group, with a `setsid` child and a double-forked one that left it.
struct TreeUnderTest {
    shell: std::process::Child,
    pids: [Pid; 3],
}

impl TreeUnderTest {
    fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    fn start_with(tag: &str, env: &[(&str, &str)]) -> Self {
        let files = [temp_path(tag, "setsid"), temp_path(tag, "forked")];
        let shell = Command::new("/bin/sh")
            .args([
                "-c",
                r#"setsid sleep 1000 & echo $! > "$1"
( sleep 1000 & echo $! > "$2" )
sleep 1000"#,
                "sh",
            ])
            .args(&files)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the shell");
        let leader = Pid::from_raw(i32::try_from(shell.id()).expect("pids fit in pid_t"));
        let [setsid, forked] = files.map(|file| read_pid(&file));
        TreeUnderTest {
            shell,
            pids: [leader, setsid, forked],
        }
    }

    fn leader(&self) -> Pid {
        self.pids[0]
    }

    fn all_alive(&self) -> bool {
        self.pids.iter().all(|&pid| alive(pid))
    }

    fn all_dead(&self) -> bool {
        self.pids.iter().all(|&pid| !alive(pid))
    }

    /// Kills what a scenario left running, and reaps the shell.
    fn clean_up(mut self) {
        let _ = kill(Pid::from_raw(-self.leader().as_raw()), Signal::SIGKILL);
        for &pid in &self.pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = self.shell.wait();
    }
}

fn temp_path(tag: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lockwrap-guardian-{}-{tag}-{name}", getpid()))
}

fn read_pid(path: &Path) -> Pid {
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse().ok())
        {
            let _ = std::fs::remove_file(path);
            return Pid::from_raw(pid);
        }
        assert!(Instant::now() < limit, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Running: present in /proc and not a zombie.
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Polls until `condition` holds or `limit` passes; returns how long it took, if it held.
fn time_until(limit: Duration, condition: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if condition() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_guardian() -> Guardian {
    let guardian = guardian::start().expect("fork the guardian");
    assert!(guardian.pid().is_some());
    guardian
}

#[test]
fn the_guardian_kills_the_tree_only_when_it_must() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    deadline_without_extension_kills_the_whole_tree();
    extensions_keep_the_tree_alive_and_disarm_stops_the_guardian();
    the_wrapper_going_away_while_armed_kills_the_tree_at_once();
    a_worker_younger_than_the_snapshot_dies_with_the_wrapper();
    the_wrapper_going_away_disarmed_kills_nothing();
    a_stop_after_a_loss_is_finished_if_the_wrapper_stalls();
}

/// (a) No extension: TERM at the deadline, everything dead by deadline + grace.
fn deadline_without_extension_kills_the_whole_tree() {
    let tree = TreeUnderTest::start("deadline");
    let guardian = start_guardian();
    let grace = Duration::from_secs(1);
    let armed_at = Instant::now();
    guardian.watch_pgid(tree.leader());
    guardian.arm(armed_at + Duration::from_secs(1), grace);
    std::thread::sleep(Duration::from_millis(600));
    assert!(tree.all_alive(), "killed before the deadline");
    let dead = time_until(SLACK + grace, || tree.all_dead());
    let took = armed_at.elapsed();
    assert!(
        dead.is_some(),
        "the tree outlived its deadline: {:?}",
        tree.pids
    );
    assert!(took >= Duration::from_secs(1), "killed too early: {took:?}");
    eprintln!("guardian: tree dead {took:?} after arming with a 1 s deadline");
    tree.clean_up();
}

/// (b) Extensions move the deadline; (c) disarm leaves the tree alone for good.
fn extensions_keep_the_tree_alive_and_disarm_stops_the_guardian() {
    let tree = TreeUnderTest::start("extend");
    let guardian = start_guardian();
    guardian.watch_pgid(tree.leader());
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        guardian.arm(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(tree.all_alive(), "killed although extended");
    }
    guardian.arm(Instant::now() + Duration::from_millis(500), Duration::ZERO);
    guardian.disarm();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(tree.all_alive(), "killed although disarmed");
    drop(guardian);
    std::thread::sleep(Duration::from_millis(300));
    assert!(tree.all_alive(), "a disarmed guardian killed on EOF");
    tree.clean_up();
}

/// (d) The pipe closes (the wrapper died) while armed: the tree dies at once, long before the
/// deadline, although the double-forked orphan is no longer below the wrapper's children.
fn the_wrapper_going_away_while_armed_kills_the_tree_at_once() {
    let tree = TreeUnderTest::start("eof");
    let guardian = start_guardian();
    guardian.watch_pgid(tree.leader());
    guardian.arm(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(10),
    );
    // Let the guardian take its snapshot of the tree (it refreshes every 500 ms while armed).
    std::thread::sleep(Duration::from_millis(700));
    let closed = Instant::now();
    drop(guardian);
    let took = time_until(SLACK, || tree.all_dead());
    assert!(
        took.is_some(),
        "the tree outlived its wrapper: {:?}",
        tree.pids
    );
    eprintln!(
        "guardian: tree dead {:?} after the pipe closed",
        closed.elapsed()
    );
    tree.clean_up();
}

/// (f) The wrapper dies right after its command forked a `setsid` worker: the worker is in
/// neither the command's group nor the guardian's last snapshot (taken before it existed), and
/// its parent link no longer leads to the wrapper in a real crash. The variable every process of
/// the command inherits finds it.
fn a_worker_younger_than_the_snapshot_dies_with_the_wrapper() {
    let guardian = start_guardian();
    let marker = guardian::tree_marker().expect("a started guardian has a marker");
    guardian.arm(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(10),
    );
    // Arming took the snapshot; the tree starts after it, and the pipe closes at once.
    let tree = TreeUnderTest::start_with("young", &[(marker, "1")]);
    guardian.watch_pgid(tree.leader());
    let closed = Instant::now();
    drop(guardian);
    let took = time_until(SLACK, || tree.all_dead());
    assert!(
        took.is_some(),
        "a worker forked after the last snapshot outlived its wrapper: {:?} (alive: {:?})",
        tree.pids,
        tree.pids.iter().map(|&pid| alive(pid)).collect::<Vec<_>>()
    );
    eprintln!(
        "guardian: young tree dead {:?} after the pipe closed",
        closed.elapsed()
    );
    tree.clean_up();
}

fn the_wrapper_going_away_disarmed_kills_nothing() {
    let tree = TreeUnderTest::start("idle");
    let guardian = start_guardian();
    guardian.watch_pgid(tree.leader());
    drop(guardian);
    std::thread::sleep(Duration::from_millis(500));
    assert!(tree.all_alive(), "an unarmed guardian killed on EOF");
    tree.clean_up();
}

/// (e) After a loss the wrapper calls `stopping(grace)` and stops the tree itself; if it stalls
/// (no disarm), the guardian kills the tree at grace + lag, although the renew deadline it was
/// armed with is far off. A disarm in time leaves the tree alone.
fn a_stop_after_a_loss_is_finished_if_the_wrapper_stalls() {
    let tree = TreeUnderTest::start("stopping");
    let guardian = start_guardian();
    guardian.watch_pgid(tree.leader());
    guardian.arm(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(10),
    );
    let grace = Duration::from_millis(800);
    let lost = Instant::now();
    guardian.stopping(grace);
    std::thread::sleep(Duration::from_millis(500));
    assert!(tree.all_alive(), "killed before the grace ended");
    let dead = time_until(SLACK + grace, || tree.all_dead());
    assert!(
        dead.is_some(),
        "the tree outlived the stop after a loss: {:?}",
        tree.pids
    );
    let took = lost.elapsed();
    assert!(took >= grace, "killed too early: {took:?}");
    eprintln!("guardian: tree dead {took:?} after `stopping` with an 800 ms grace");
    tree.clean_up();

    let tree = TreeUnderTest::start("stopping-disarmed");
    let guardian = start_guardian();
    guardian.watch_pgid(tree.leader());
    guardian.stopping(Duration::from_millis(300));
    guardian.disarm();
    std::thread::sleep(Duration::from_millis(900));
    assert!(tree.all_alive(), "killed although disarmed in time");
    drop(guardian);
    tree.clean_up();
}
