//! The hold loop on the in-memory backend under `tokio::time::pause()`, with a scripted command:
//! every way a hold ends (exit, loss, forwarded stop signal, step-down), every stop phase (a
//! command that stops inside its grace, one that needs SIGKILL, one whose tree survives), and the
//! order the observer and the stop happen in. No Consul, no process, no real waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::backend::memory::{MemoryBackend, MemoryLease};
use crate::backend::HeldLock;
use crate::locks::LockManager;

/// What happened, in order: the fake command's and the observer's calls.
type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, line: String) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
}

fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How the scripted command behaves.
#[derive(Clone, Copy)]
struct Script {
    /// Exits on its own this long after it started; never when `None`.
    exits_after: Option<Duration>,
    /// How long it takes to stop once told (beyond the grace: it needs SIGKILL).
    stops_in: Duration,
    /// Something of its tree survives SIGKILL (or was left after it exited).
    leaves_a_survivor: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            exits_after: None,
            stops_in: Duration::from_secs(1),
            leaves_a_survivor: false,
        }
    }
}

struct Fake {
    script: Script,
    started: Instant,
    log: Log,
}

impl Running for Fake {
    fn pgid(&self) -> Option<Pid> {
        None
    }

    fn wait(&mut self) -> impl Future<Output = ExitStatus> + Send {
        let exits_at = self.script.exits_after.map(|after| self.started + after);
        async move {
            match exits_at {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    ExitStatus::Exited(0)
                }
                None => std::future::pending().await,
            }
        }
    }

    fn forward(&self, signal: Signal) {
        push(&self.log, format!("forward {}", signal.name()));
    }

    fn stop_after(
        &mut self,
        first: Option<Signal>,
        grace: Duration,
    ) -> impl Future<Output = Stopped> + Send {
        let first = first.map_or("-", |s| s.name());
        push(&self.log, format!("stop {first} {grace:?}"));
        let script = self.script;
        let log = self.log.clone();
        async move {
            if script.stops_in <= grace {
                tokio::time::sleep(script.stops_in).await;
                return Stopped {
                    status: ExitStatus::Signaled(15),
                    tree_gone: !script.leaves_a_survivor,
                };
            }
            tokio::time::sleep(grace).await;
            push(&log, "kill".into());
            Stopped {
                status: ExitStatus::Signaled(9),
                tree_gone: !script.leaves_a_survivor,
            }
        }
    }

    fn stop_leftovers(&mut self, _grace: Duration) -> impl Future<Output = bool> + Send {
        push(&self.log, "leftovers".into());
        std::future::ready(!self.script.leaves_a_survivor)
    }
}

struct FakeLauncher {
    script: Script,
    log: Log,
    fails: bool,
}

impl Launch for FakeLauncher {
    type Command = Fake;
    fn launch(&self, spec: &CommandSpec) -> Result<Fake, SpawnError> {
        if self.fails {
            return Err(SpawnError::from_io(
                spec.program.clone(),
                std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32),
            ));
        }
        push(&self.log, "spawn".into());
        Ok(Fake {
            script: self.script,
            started: Instant::now(),
            log: self.log.clone(),
        })
    }
}

/// Signals arriving at given offsets from the start of the hold.
struct Scripted {
    at: Vec<(Duration, Interrupt)>,
    started: Instant,
}

impl Scripted {
    fn new(at: Vec<(Duration, Interrupt)>) -> Self {
        Scripted {
            at,
            started: Instant::now(),
        }
    }
}

impl Interrupts for Scripted {
    fn next(&mut self) -> impl Future<Output = Interrupt> + Send {
        let next = self.at.first().copied();
        let started = self.started;
        let at = &mut self.at;
        async move {
            let Some((after, interrupt)) = next else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(started + after).await;
            at.remove(0);
            interrupt
        }
    }
}

/// Records the observer's calls in the same log as the command's.
struct Recorder(Log);

impl HoldObserver for Recorder {
    fn lost(&self, reason: &LossReason) -> Option<JoinHandle<()>> {
        push(&self.0, format!("lost: {reason}"));
        None
    }

    fn interrupted(&self, signal: Signal) {
        push(&self.0, format!("interrupted {}", signal.name()));
    }
}

const GRACE: Duration = Duration::from_secs(5);

/// A held lease on `k` (past its first-use takeover wait) and the store.
async fn held() -> (MemoryBackend, LockManager<MemoryBackend>, MemoryLease) {
    let store = MemoryBackend::new();
    let manager = LockManager::new(store.clone());
    let lease = manager.acquire("k").await.expect("held");
    (store, manager, lease)
}

/// Breaks the lock on `k` after `after` (as Consul would: a delete, an invalidated session).
fn break_after(
    store: MemoryBackend,
    after: Duration,
    reason: LossReason,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        store.break_lock("k", reason);
    })
}

/// Starts the scripted command and holds until the hold ends; returns the end, how long the
/// hold took, and the log.
async fn run(
    lease: &mut MemoryLease,
    script: Script,
    interrupts: Vec<(Duration, Interrupt)>,
) -> (HoldEnd, Duration, Vec<String>) {
    let log: Log = Log::default();
    let launcher = FakeLauncher {
        script,
        log: log.clone(),
        fails: false,
    };
    let started = Instant::now();
    let mut command = match start(lease, &launcher, &CommandSpec::new("cmd")).await {
        Ok(command) => command,
        Err(err) => panic!("not started: {err:?}"),
    };
    let end = hold(
        lease,
        &mut command,
        None,
        &mut Scripted::new(interrupts),
        &Recorder(log.clone()),
        GRACE,
    )
    .await;
    (end, started.elapsed(), lines(&log))
}

/// Whether the next holder of `k` finds the last release clean.
async fn next_finds_clean(manager: &LockManager<MemoryBackend>) -> bool {
    let lease = manager.acquire("k").await.expect("held again");
    lease.previous_release_clean()
}

#[tokio::test(start_paused = true)]
async fn a_command_that_exits_ends_the_hold_and_the_release_is_clean() {
    let (_store, manager, mut lease) = held().await;
    let script = Script {
        exits_after: Some(Duration::from_secs(3)),
        ..Script::default()
    };
    let (end, took, log) = run(&mut lease, script, vec![]).await;
    assert!(
        matches!(
            end,
            HoldEnd::Exited {
                tree_gone: true,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(took, Duration::from_secs(3));
    assert_eq!(log, ["spawn", "leftovers"]);
    release_after(lease, &end).await.expect("released");
    assert!(next_finds_clean(&manager).await);
}

#[tokio::test(start_paused = true)]
async fn a_leftover_that_survives_makes_the_release_unclean() {
    let (_store, manager, mut lease) = held().await;
    let script = Script {
        exits_after: Some(Duration::from_secs(1)),
        leaves_a_survivor: true,
        ..Script::default()
    };
    let (end, _, _) = run(&mut lease, script, vec![]).await;
    assert!(!end.tree_gone());
    release_after(lease, &end).await.expect("released");
    assert!(!next_finds_clean(&manager).await);
}

#[tokio::test(start_paused = true)]
async fn a_loss_tells_the_observer_first_then_stops_the_command_within_its_grace() {
    let (store, _manager, mut lease) = held().await;
    let breaker = break_after(store, Duration::from_secs(2), LossReason::KeyDeleted);
    let script = Script {
        stops_in: Duration::from_secs(4),
        ..Script::default()
    };
    let (end, took, log) = run(&mut lease, script, vec![]).await;
    let _ = breaker.await;
    let HoldEnd::Lost { reason, status, .. } = &end else {
        panic!("expected a loss: {end:?}");
    };
    assert_eq!(*reason, LossReason::KeyDeleted);
    assert_eq!(*status, ExitStatus::Signaled(15));
    // Lost at 2 s, stopped 4 s later: inside the 5 s grace, no SIGKILL.
    assert_eq!(took, Duration::from_secs(6));
    assert_eq!(
        log,
        ["spawn", "lost: the key was deleted", "stop SIGTERM 5s"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_command_that_outlives_its_grace_after_a_loss_is_killed_at_the_grace() {
    let (store, _manager, mut lease) = held().await;
    let breaker = break_after(
        store,
        Duration::from_secs(1),
        LossReason::SessionInvalidated,
    );
    let script = Script {
        stops_in: Duration::from_secs(60),
        ..Script::default()
    };
    let (end, took, log) = run(&mut lease, script, vec![]).await;
    let _ = breaker.await;
    assert_eq!(end.status(), ExitStatus::Signaled(9));
    assert_eq!(took, Duration::from_secs(1) + GRACE);
    assert_eq!(log.last().map(String::as_str), Some("kill"));
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_stop_signal_reaches_the_group_then_the_tree_is_stopped() {
    let (_store, manager, mut lease) = held().await;
    let script = Script {
        stops_in: Duration::from_secs(2),
        ..Script::default()
    };
    let signals = vec![
        (Duration::from_secs(1), Interrupt::Forward(Signal::HUP)),
        (
            Duration::from_secs(3),
            Interrupt::ForwardAndStop(Signal::TERM),
        ),
    ];
    let (end, took, log) = run(&mut lease, script, signals).await;
    assert!(
        matches!(
            end,
            HoldEnd::Interrupted {
                signal: Signal::TERM,
                tree_gone: true,
                ..
            }
        ),
        "{end:?}"
    );
    assert_eq!(took, Duration::from_secs(5));
    // The group had TERM already: the stop sends it nothing first (`-`), only the rest of the tree.
    assert_eq!(
        log,
        [
            "spawn",
            "forward SIGHUP",
            "interrupted SIGTERM",
            "forward SIGTERM",
            "stop - 5s"
        ]
    );
    release_after(lease, &end).await.expect("released");
    assert!(next_finds_clean(&manager).await);
}

#[tokio::test(start_paused = true)]
async fn a_loss_during_a_signalled_stop_does_not_start_a_second_stop() {
    let (store, _manager, mut lease) = held().await;
    let breaker = break_after(store, Duration::from_secs(2), LossReason::KeyDeleted);
    let script = Script {
        stops_in: Duration::from_secs(4),
        ..Script::default()
    };
    let signals = vec![(
        Duration::from_secs(1),
        Interrupt::ForwardAndStop(Signal::INT),
    )];
    let (end, took, log) = run(&mut lease, script, signals).await;
    let _ = breaker.await;
    assert!(matches!(end, HoldEnd::Interrupted { .. }), "{end:?}");
    assert_eq!(took, Duration::from_secs(5));
    assert_eq!(log.iter().filter(|l| l.starts_with("stop")).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_steps_down_giving_the_app_its_grace_and_never_releases_clean() {
    let (_store, manager, mut lease) = held().await;
    let log: Log = Log::default();
    let started = Instant::now();
    let end = hold(
        &mut lease,
        &mut AppBeside,
        None,
        &mut Scripted::new(vec![(
            Duration::from_secs(1),
            Interrupt::Stop(Signal::TERM),
        )]),
        &Recorder(log.clone()),
        GRACE,
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_secs(1) + GRACE);
    assert_eq!(lines(&log), ["interrupted SIGTERM"]);
    assert!(!end.tree_gone());
    release_after(lease, &end).await.expect("released");
    assert!(!next_finds_clean(&manager).await);
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_under_a_lease_lost_before_the_spawn() {
    let (store, _manager, mut lease) = held().await;
    store.break_lock("k", LossReason::KeyDeleted);
    let log: Log = Log::default();
    let launcher = FakeLauncher {
        script: Script::default(),
        log: log.clone(),
        fails: false,
    };
    let started = start(&mut lease, &launcher, &CommandSpec::new("cmd")).await;
    assert!(matches!(
        started,
        Err(NotStarted::Lost(LossReason::KeyDeleted))
    ));
    assert!(lines(&log).is_empty(), "spawned under a lost lease");
}

#[tokio::test(start_paused = true)]
async fn a_spawn_failure_keeps_its_exit_code() {
    let (_store, _manager, mut lease) = held().await;
    let launcher = FakeLauncher {
        script: Script::default(),
        log: Log::default(),
        fails: true,
    };
    match start(&mut lease, &launcher, &CommandSpec::new("missing")).await {
        Err(NotStarted::Spawn(err)) => assert_eq!(err.exit_code(), 127),
        other => panic!("expected a spawn error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(start_paused = true)]
async fn the_command_sees_the_lock_it_runs_under() {
    let (_store, _manager, lease) = held().await;
    let info = lease.info();
    let env = command_env("k", info);
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    assert_eq!(get("CONSUL_LOCK_HELD").as_deref(), Some("true"));
    assert_eq!(get("LOCKWRAP_KEY").as_deref(), Some("k"));
    assert_eq!(get("LOCKWRAP_SESSION"), info.session.clone());
    let token = info.fencing_token.expect("the store gives a fencing token");
    assert_eq!(get("LOCKWRAP_FENCING_TOKEN"), Some(token.to_string()));
}

#[test]
fn one_guarded_command_at_a_time_per_process() {
    let first = OneCommand::claim().expect("nothing runs yet");
    assert!(OneCommand::claim().is_none(), "a second guarded command");
    drop(first);
    assert!(
        OneCommand::claim().is_some(),
        "free again once the first ended"
    );
}
