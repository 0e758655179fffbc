//! Integration tests for `lockwrap::supervisor` with real processes (`/bin/sh`, `sleep`).
//!
//! The whole binary shares one `install(true)`: handlers and the reaper are process-wide, and
//! being a subreaper lets the orphan tests check that re-parented grandchildren are reaped.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockwrap::supervisor::{self, Signal, Spawner};
use lockwrap::testing::{Child, CommandSpec, ExitStatus, SpawnError, StdinMode};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{getpgid, getpid, Pid};
use tokio::sync::mpsc::UnboundedReceiver;

/// Upper bound for any single test; generous because CI machines can be slow, and every test
/// finishes in well under a second when things work.
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// How long a condition may take to become true (reaps, file writes by a child shell).
const CONDITION_LIMIT: Duration = Duration::from_secs(10);

struct Shared {
    spawner: Spawner,
    signals: tokio::sync::Mutex<UnboundedReceiver<Signal>>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let control = supervisor::install(true).expect("install runs once per test binary");
        Shared {
            spawner: control.spawner(),
            signals: tokio::sync::Mutex::new(control.signals),
        }
    })
}

/// Runs a test body under [`TEST_LIMIT`].
/// One test at a time: a tree stop takes every orphan re-parented to this process, the
/// subreaper, whichever test's command left it (docs/design.md, the supervisor).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded<F: Future>(body: F) -> F::Output {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test exceeded its time limit")
}

/// `/bin/sh -c script sh args…`, with stdin from /dev/null so no test touches the terminal.
fn sh(script: &str, args: &[&Path]) -> CommandSpec {
    let mut spec = CommandSpec::new("/bin/sh");
    spec.args = ["-c", script, "sh"].iter().map(OsString::from).collect();
    spec.args
        .extend(args.iter().map(|path| path.as_os_str().to_owned()));
    spec.stdin = StdinMode::Null;
    spec
}

fn spawn(spec: &CommandSpec) -> Child {
    shared()
        .spawner
        .spawn(spec)
        .expect("spawn the test command")
}

/// A path in the temp dir unique to this process and call.
fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("lockwrap-supervisor-{}-{tag}-{n}", getpid()))
}

/// Polls `condition` until it holds or [`CONDITION_LIMIT`] passes; returns whether it held.
async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for a child shell to write a pid (followed by a newline) into `path`.
async fn read_pid_file(path: &Path) -> Pid {
    let mut pid = None;
    let written = wait_until(|| {
        pid = std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    })
    .await;
    assert!(written, "no pid written to {}", path.display());
    let _ = std::fs::remove_file(path);
    Pid::from_raw(pid.expect("checked above"))
}

/// `(state, ppid)` from `/proc/PID/stat`, or `None` once the process has been reaped.
fn proc_state(pid: Pid) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether the process is completely gone: not running and not a zombie.
fn reaped(pid: Pid) -> bool {
    proc_state(pid).is_none() && kill(pid, None) == Err(Errno::ESRCH)
}

/// Zombies whose parent is this test process, i.e. exits our reaper has not collected.
fn our_zombies() -> Vec<i32> {
    let me = getpid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_state(Pid::from_raw(pid)) == Some(('Z', me)))
        .collect()
}

#[tokio::test]
async fn exit_code_zero_is_reported() {
    bounded(async {
        let status = spawn(&sh("exit 0", &[])).wait().await;
        assert_eq!(status, ExitStatus::Exited(0));
        assert_eq!(status.code(), 0);
    })
    .await;
}

#[tokio::test]
async fn exit_code_three_is_passed_through() {
    bounded(async {
        let status = spawn(&sh("exit 3", &[])).wait().await;
        assert_eq!(status, ExitStatus::Exited(3));
        assert_eq!(status.code(), 3);
    })
    .await;
}

#[tokio::test]
async fn child_killed_by_a_signal_gives_128_plus_signal() {
    bounded(async {
        let status = spawn(&sh("kill -KILL $$", &[])).wait().await;
        assert_eq!(status, ExitStatus::Signaled(9));
        assert_eq!(status.code(), 137);
        let status = spawn(&sh("kill -TERM $$", &[])).wait().await;
        assert_eq!(status.code(), 143);
    })
    .await;
}

#[tokio::test]
async fn missing_program_is_not_found_127() {
    for program in [
        "/nonexistent/lockwrap-test-program",
        "lockwrap-test-no-such-program",
    ] {
        let error = shared()
            .spawner
            .spawn(&CommandSpec::new(program))
            .expect_err("the program does not exist");
        assert!(matches!(error, SpawnError::NotFound { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 127);
        assert!(error.to_string().contains(program), "{error}");
    }
}

#[tokio::test]
async fn non_executable_file_or_directory_is_126() {
    let file = temp_path("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").expect("write temp file");
    let error = shared()
        .spawner
        .spawn(&CommandSpec::new(&file))
        .expect_err("the file has no execute bit");
    let _ = std::fs::remove_file(&file);
    assert!(
        matches!(error, SpawnError::NotExecutable { .. }),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), 126);

    let error = shared()
        .spawner
        .spawn(&CommandSpec::new(std::env::temp_dir()))
        .expect_err("a directory cannot be executed");
    assert_eq!(error.exit_code(), 126, "{error:?}");
}

#[tokio::test]
async fn env_is_added_to_the_inherited_environment() {
    bounded(async {
        let mut spec = sh(r#"test "$LOCKWRAP_TEST_VAR" = yes && test -n "$PATH""#, &[]);
        spec.env.push(("LOCKWRAP_TEST_VAR".into(), "yes".into()));
        assert_eq!(spawn(&spec).wait().await, ExitStatus::Exited(0));
    })
    .await;
}

#[tokio::test]
async fn child_leads_its_own_group_with_null_stdin_and_stdout_on_stderr() {
    bounded(async {
        let mut spec = CommandSpec::new("sleep");
        spec.args = vec!["1000".into()];
        spec.stdin = StdinMode::Null;
        spec.stdout_to_stderr = true;
        let mut child = spawn(&spec);
        assert_eq!(child.pgid(), Some(child.pid));
        assert_eq!(getpgid(Some(child.pid)), Ok(child.pid));
        let fd = |n: u32| std::fs::read_link(format!("/proc/{}/fd/{n}", child.pid)).ok();
        assert_eq!(fd(0), Some(PathBuf::from("/dev/null")));
        assert_eq!(fd(1), std::fs::read_link("/proc/self/fd/2").ok());
        assert_eq!(child.try_status(), None);
        assert_eq!(
            child.stop(Duration::from_secs(5)).await.status,
            ExitStatus::Signaled(15)
        );
        assert_eq!(child.try_status(), Some(ExitStatus::Signaled(15)));
    })
    .await;
}

#[tokio::test]
async fn child_starts_with_default_ttin_and_ttou_although_lockwrap_ignores_them() {
    bounded(async {
        let mut spec = CommandSpec::new("sleep");
        spec.args = vec!["1000".into()];
        spec.stdin = StdinMode::Null;
        let mut child = spawn(&spec);
        let ignored_mask = |pid: Pid| -> Option<u64> {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("SigIgn:"))?;
            u64::from_str_radix(line["SigIgn:".len()..].trim(), 16).ok()
        };
        let bit = |signal: i32| 1u64 << (signal - 1);
        let ttin_ttou = bit(nix::sys::signal::Signal::SIGTTIN as i32)
            | bit(nix::sys::signal::Signal::SIGTTOU as i32);
        let ours = ignored_mask(getpid()).expect("read our own SigIgn");
        assert_eq!(
            ours & ttin_ttou,
            ttin_ttou,
            "lockwrap ignores TTIN and TTOU"
        );
        let theirs = ignored_mask(child.pid).expect("read the child's SigIgn");
        assert_eq!(
            theirs & ttin_ttou,
            0,
            "the child must get the default dispositions"
        );
        child.stop(Duration::from_secs(5)).await;
    })
    .await;
}

#[tokio::test]
async fn child_survives_the_exit_of_the_thread_that_asked_for_it() {
    bounded(async {
        // PR_SET_PDEATHSIG fires when the forking *thread* exits; spawning on the long-lived
        // spawner thread keeps a short-lived caller thread from killing the command.
        let mut child = std::thread::spawn(|| {
            let mut spec = CommandSpec::new("sleep");
            spec.args = vec!["1000".into()];
            spec.stdin = StdinMode::Null;
            spawn(&spec)
        })
        .join()
        .expect("the spawning thread does not panic");
        // Give a wrongly aimed SIGKILL time to land: another spawn + reap takes a few ms.
        assert_eq!(
            spawn(&sh("exit 0", &[])).wait().await,
            ExitStatus::Exited(0)
        );
        assert_eq!(
            child.try_status(),
            None,
            "the child died with its spawning thread"
        );
        assert_eq!(
            child.stop(Duration::from_secs(5)).await.status,
            ExitStatus::Signaled(15)
        );
    })
    .await;
}

#[tokio::test]
async fn wait_is_cancel_safe_in_select() {
    bounded(async {
        let mut child = spawn(&sh("sleep 0.3; exit 4", &[]));
        let mut cancelled = 0;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = tokio::time::sleep(Duration::from_millis(10)) => cancelled += 1,
            }
        };
        assert!(
            cancelled > 0,
            "wait should have been cancelled at least once"
        );
        assert_eq!(status, ExitStatus::Exited(4));
        // A finished child answers at once, any number of times.
        assert_eq!(child.wait().await, ExitStatus::Exited(4));
    })
    .await;
}

#[tokio::test]
async fn stop_ends_a_cooperative_child_with_sigterm() {
    bounded(async {
        let mut child = spawn(&sh("exec sleep 1000", &[]));
        let started = Instant::now();
        let status = child.stop(Duration::from_secs(10)).await.status;
        assert_eq!(status, ExitStatus::Signaled(15));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "should not need the grace"
        );
    })
    .await;
}

#[tokio::test]
async fn stop_kills_a_child_that_ignores_sigterm_after_the_grace() {
    bounded(async {
        let ready = temp_path("ignores-term");
        // SIG_IGN survives exec, so the sleep ignores TERM too.
        let mut child = spawn(&sh(
            r#"trap "" TERM; echo $$ > "$1"; exec sleep 1000"#,
            &[&ready],
        ));
        read_pid_file(&ready).await;
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let status = child.stop(grace).await.status;
        assert_eq!(status, ExitStatus::Signaled(9));
        assert_eq!(status.code(), 137);
        assert!(
            started.elapsed() >= grace,
            "SIGKILL came before the grace ended"
        );
    })
    .await;
}

#[tokio::test]
async fn stop_also_ends_background_grandchildren() {
    bounded(async {
        let pid_file = temp_path("grandchild");
        let mut child = spawn(&sh(r#"sleep 1000 & echo $! > "$1"; wait"#, &[&pid_file]));
        let grandchild = read_pid_file(&pid_file).await;
        assert_eq!(kill(grandchild, None), Ok(()));
        let status = child.stop(Duration::from_secs(5)).await.status;
        assert_eq!(status, ExitStatus::Signaled(15));
        assert!(
            wait_until(|| reaped(grandchild)).await,
            "grandchild {grandchild} survived"
        );
    })
    .await;
}

#[tokio::test]
async fn stop_without_own_group_signals_only_the_child() {
    bounded(async {
        let mut spec = sh("exec sleep 1000", &[]);
        spec.own_process_group = false;
        let mut child = spawn(&spec);
        assert_eq!(child.pgid(), None);
        assert_eq!(
            child.stop(Duration::from_secs(5)).await.status,
            ExitStatus::Signaled(15)
        );
    })
    .await;
}

#[tokio::test]
async fn subreaper_reaps_double_forked_orphans() {
    bounded(async {
        let pid_file = temp_path("orphan");
        // The subshell forks `sleep` and exits, so `sleep` is re-parented to us (the subreaper).
        let script = r#"( sleep 0.5 & echo $! > "$1" ); exit 0"#;
        let status = spawn(&sh(script, &[&pid_file])).wait().await;
        assert_eq!(status, ExitStatus::Exited(0));
        let orphan = read_pid_file(&pid_file).await;
        let me = getpid().as_raw();
        // Either still running under us, or already exited and reaped.
        let adopted = wait_until(|| proc_state(orphan).map_or(true, |(_, ppid)| ppid == me)).await;
        assert!(
            adopted,
            "orphan {orphan} was not re-parented to the subreaper"
        );
        assert!(
            wait_until(|| reaped(orphan)).await,
            "orphan {orphan} left a zombie"
        );
        assert!(
            wait_until(|| our_zombies().is_empty()).await,
            "zombies left: {:?}",
            our_zombies()
        );
    })
    .await;
}

#[tokio::test]
async fn stop_leftovers_kills_a_background_grandchild() {
    bounded(async {
        let pid_file = temp_path("leftover");
        let mut child = spawn(&sh(r#"sleep 1000 & echo $! > "$1"; exit 0"#, &[&pid_file]));
        assert_eq!(child.wait().await, ExitStatus::Exited(0));
        let leftover = read_pid_file(&pid_file).await;
        assert_eq!(
            kill(leftover, None),
            Ok(()),
            "the leftover should still run"
        );
        let started = Instant::now();
        assert!(child.stop_leftovers(Duration::from_secs(10)).await);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM should have sufficed"
        );
        assert!(
            wait_until(|| reaped(leftover)).await,
            "leftover {leftover} survived"
        );
    })
    .await;
}

#[tokio::test]
async fn stop_leftovers_returns_at_once_when_the_group_is_empty() {
    bounded(async {
        let mut child = spawn(&sh("exit 0", &[]));
        assert_eq!(child.wait().await, ExitStatus::Exited(0));
        let started = Instant::now();
        assert!(child.stop_leftovers(Duration::from_secs(10)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}

/// A command whose tree left its process group: a `setsid` child and a double-forked one (its
/// parent subshell exits, so it is re-parented to us, the subreaper). Writes their pids to the
/// two files, then runs `tail` (the leader's last act) when `wait` is set.
const ESCAPING_TREE: &str = r#"setsid sleep 1000 & echo $! > "$1"
( sleep 1000 & echo $! > "$2" )
"#;

async fn escaping_tree(wait: bool) -> (Child, Pid, Pid) {
    let (setsid_file, forked_file) = (temp_path("setsid"), temp_path("forked"));
    let script = format!(
        "{ESCAPING_TREE}{}",
        if wait { "sleep 1000" } else { "exit 0" }
    );
    let child = spawn(&sh(&script, &[&setsid_file, &forked_file]));
    let setsid = read_pid_file(&setsid_file).await;
    let forked = read_pid_file(&forked_file).await;
    assert!(
        wait_until(|| getpgid(Some(setsid)).ok() == Some(setsid)).await,
        "the setsid child leads a group of its own"
    );
    assert!(
        wait_until(|| proc_state(forked).is_some_and(|(_, ppid)| ppid == getpid().as_raw())).await,
        "the double-forked child is re-parented to the subreaper"
    );
    (child, setsid, forked)
}

#[tokio::test]
async fn stop_kills_setsid_and_double_forked_descendants() {
    bounded(async {
        let (mut child, setsid, forked) = escaping_tree(true).await;
        let stopped = child.stop(Duration::from_secs(5)).await;
        assert_eq!(stopped.status, ExitStatus::Signaled(15));
        assert!(stopped.tree_gone, "the tree is reported gone");
        for pid in [setsid, forked] {
            assert!(wait_until(|| reaped(pid)).await, "{pid} survived the stop");
        }
    })
    .await;
}

/// The leader exits (code 7) only once its setsid'd worker got SIGTERM; the worker notes the TERM
/// in `<base>.termed`. If the worker got its TERM only after the leader's grace, the leader would
/// be SIGKILLed instead.
const LEADER_WAITS_FOR_WORKER_TERM: &str = r#"setsid sh -c 'trap "touch \"$0.termed\"; exit 0" TERM; touch "$0.ready"; while :; do sleep 0.05; done' "$1" &
trap 'while [ ! -e "$1.termed" ]; do sleep 0.05; done; exit 7' TERM
while :; do sleep 0.05; done"#;

#[tokio::test]
async fn stop_terms_an_escaped_worker_with_the_group_not_after_its_grace() {
    bounded(async {
        let base = temp_path("escaped-worker");
        let mut child = spawn(&sh(LEADER_WAITS_FOR_WORKER_TERM, &[&base]));
        let ready = PathBuf::from(format!("{}.ready", base.display()));
        assert!(
            wait_until(|| ready.exists()).await,
            "the worker did not start"
        );
        let stopped = child.stop(Duration::from_secs(20)).await;
        assert_eq!(
            stopped.status,
            ExitStatus::Exited(7),
            "the worker's TERM must come with the group's, inside one grace"
        );
        assert!(stopped.tree_gone);
    })
    .await;
}

/// A Python program whose main thread leaves with `pthread_exit` while a second thread sleeps:
/// `/proc` shows it as `Z` although it still runs.
const MAIN_THREAD_EXITS: &str = "import ctypes, threading, time; \
threading.Thread(target=time.sleep, args=(1000,)).start(); ctypes.CDLL(None).pthread_exit(None)";

fn shows_zombie(pid: Pid) -> bool {
    matches!(proc_state(pid), Some(('Z', _)))
}

#[tokio::test]
async fn stop_leftovers_kills_a_worker_whose_main_thread_exited() {
    bounded(async {
        let pid_file = temp_path("thread-worker");
        let script = format!(r#"python3 -c '{MAIN_THREAD_EXITS}' & echo $! > "$1"; exit 0"#);
        let mut child = spawn(&sh(&script, &[&pid_file]));
        let worker = read_pid_file(&pid_file).await;
        assert!(
            wait_until(|| shows_zombie(worker)).await,
            "the worker's main thread did not exit"
        );
        assert_eq!(child.wait().await, ExitStatus::Exited(0));
        assert!(child.stop_leftovers(Duration::from_secs(5)).await);
        assert!(
            wait_until(|| reaped(worker)).await,
            "worker {worker} runs on: its `Z` state was taken for a zombie"
        );
    })
    .await;
}

#[tokio::test]
async fn stop_ends_a_command_whose_main_thread_exited() {
    bounded(async {
        let mut spec = CommandSpec::new("python3");
        spec.args = vec!["-c".into(), MAIN_THREAD_EXITS.into()];
        spec.stdin = StdinMode::Null;
        let mut child = spawn(&spec);
        assert!(
            wait_until(|| shows_zombie(child.pid)).await,
            "the main thread did not exit"
        );
        let stopped = child.stop(Duration::from_secs(5)).await;
        assert_eq!(stopped.status, ExitStatus::Signaled(15));
        assert!(stopped.tree_gone);
    })
    .await;
}

#[tokio::test]
async fn stop_leftovers_after_the_command_exited_kills_what_left_its_group() {
    bounded(async {
        let (mut child, setsid, forked) = escaping_tree(false).await;
        assert_eq!(child.wait().await, ExitStatus::Exited(0));
        assert_eq!(kill(setsid, None), Ok(()), "still running before the stop");
        assert!(child.stop_leftovers(Duration::from_secs(5)).await);
        for pid in [setsid, forked] {
            assert!(wait_until(|| reaped(pid)).await, "{pid} survived");
        }
    })
    .await;
}

#[tokio::test]
async fn stop_leftovers_kills_a_descendant_that_ignores_sigterm_after_the_grace() {
    bounded(async {
        let pid_file = temp_path("stubborn");
        let script = r#"setsid sh -c 'trap "" TERM; echo $$ > "$0"; while :; do sleep 0.05; done' "$1" &
exit 0"#;
        let mut child = spawn(&sh(script, &[&pid_file]));
        let stubborn = read_pid_file(&pid_file).await;
        assert_eq!(child.wait().await, ExitStatus::Exited(0));
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        assert!(child.stop_leftovers(grace).await);
        assert!(started.elapsed() >= grace, "SIGKILL only after the grace");
        assert!(wait_until(|| reaped(stubborn)).await, "{stubborn} survived");
    })
    .await;
}

#[tokio::test]
async fn the_guardian_is_spared_by_tree_stops_and_ignores_stop_signals() {
    bounded(async {
        let guardian = shared()
            .spawner
            .guardian()
            .pid()
            .expect("install(true) starts the guardian");
        let (mut child, _, _) = escaping_tree(true).await;
        assert!(child.stop(Duration::from_secs(5)).await.tree_gone);
        for signal in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGHUP,
        ] {
            kill(guardian, signal).expect("signal the guardian");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            matches!(proc_state(guardian), Some((state, _)) if state != 'Z'),
            "the guardian must survive tree stops and stop signals"
        );
        assert_ne!(
            getpgid(Some(guardian)).ok(),
            getpgid(None).ok(),
            "the guardian has a process group of its own"
        );
    })
    .await;
}

/// The `0::` (cgroup v2) line of a process's `/proc/PID/cgroup`.
fn unified_cgroup(pid: Pid) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

#[tokio::test]
async fn the_command_gets_a_cgroup_of_its_own_where_one_is_writable_and_it_is_removed_after() {
    bounded(async {
        let (mut child, setsid, forked) = escaping_tree(true).await;
        let theirs = unified_cgroup(child.pid);
        let own_dir = if theirs == unified_cgroup(getpid()) {
            eprintln!("no writable cgroup v2 here: stops walk /proc only");
            None
        } else {
            let theirs = theirs.expect("the child has a cgroup v2 path");
            assert!(
                theirs.contains(&format!("lockwrap-{}-", getpid())),
                "{theirs}"
            );
            for pid in [setsid, forked] {
                assert_eq!(
                    unified_cgroup(pid).as_deref(),
                    Some(theirs.as_str()),
                    "{pid} left it"
                );
            }
            cgroup2_mount().map(|mount| mount.join(theirs.trim_start_matches('/')))
        };
        assert!(child.stop(Duration::from_secs(5)).await.tree_gone);
        drop(child);
        if let Some(dir) = own_dir {
            assert!(
                wait_until(|| !dir.exists()).await,
                "{} was not removed",
                dir.display()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn signal_sent_to_lockwrap_arrives_on_the_channel() {
    bounded(async {
        let mut signals = shared().signals.lock().await;
        nix::sys::signal::kill(getpid(), nix::sys::signal::Signal::SIGUSR1)
            .expect("signal ourselves");
        loop {
            let signal = signals.recv().await.expect("the signal thread is alive");
            if signal == Signal::USR1 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn second_install_is_refused() {
    let _ = shared();
    let error = supervisor::install(true).expect_err("install is once per process");
    assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
}
