//! The process layer: spawning the command and hooks, forwarding signals, reaping every zombie.
//!
//! Call [`install`] once in `main`, before the tokio runtime starts; it returns the channel of
//! signals lockwrap receives and a [`Spawner`]. Linux only (`prctl`).
//!
//! - `signals`: the one place OS signals are translated ([`Signal`], `FORWARDED`, `IGNORED`).
//! - `reaper`: the only caller of `waitpid`; hands each child's status to whoever spawned it.
//! - `child`: spawning children in their own group, stopping them (TERM → grace → KILL), exit codes.
//! - `tree`: the process tree under lockwrap read from `/proc`, so a stop reaches what `setsid`
//!   and double forks took out of the command's group.
//! - `cgroup`: a cgroup v2 of its own for the command where one is writable, so a stop finds every
//!   process it started whatever the process did with its parentage.
//! - `clone_into`: the command started directly inside that cgroup (`clone3`), not moved there.
//! - `guardian`: a separate tiny process that kills the command's tree if the wrapper stalls
//!   past the lock's deadline or dies while the command runs.
//!
//! Nothing else in lockwrap may wait for a process (std's or tokio's `Child::wait`, `Command::output`,
//! `status`): the reaper would take the status first. Start every process through [`Spawner`].

mod cgroup;
pub(crate) mod child;
mod clone_into;
pub(crate) mod guardian;
pub(crate) mod reaper;
pub(crate) mod signals;
pub(crate) mod status;
pub(crate) mod tree;
pub(crate) mod tty;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

pub use child::Spawner;
pub(crate) use child::{Child, CommandSpec, ExitStatus, SpawnError, StdinMode, Stopped, Tree};
pub(crate) use guardian::Guardian;
pub use signals::Signal;

/// Guards against a second reaper and a second set of handlers, which would split statuses and
/// signals between two registries.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A handle on the installed guardian that lives as long as the process, so its pipe closes only
/// when lockwrap itself is gone (the kernel closes it), never when the last `ProcessControl` or
/// `Spawner` is dropped on the way out.
static GUARDIAN: OnceLock<Guardian> = OnceLock::new();

/// What [`install`] hands to the rest of lockwrap.
#[derive(Debug)]
pub struct ProcessControl {
    /// Every `FORWARDED` signal lockwrap receives, in arrival order. The run loop decides what
    /// each means (forward to the command's group; TERM/INT also start a graceful stop).
    pub signals: mpsc::UnboundedReceiver<Signal>,
    spawner: Spawner,
}

impl ProcessControl {
    /// A handle for starting processes; clone it freely.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// The guardian (a no-op one unless [`install`] was told to supervise); clone it freely.
    pub(crate) fn guardian(&self) -> Guardian {
        self.spawner.guardian()
    }
}

/// Sets up signal handling and reaping. Call once, BEFORE the tokio runtime starts, so that no
/// runtime thread exists yet when the handlers go in (none can miss a signal or a reap).
///
/// - `supervising` (run, execute, sidecar; never lock/unlock/status): set
///   `PR_SET_CHILD_SUBREAPER`, so orphaned descendants (setsid'd, double-forked) are re-parented
///   to lockwrap, where a stop finds and kills them and the reaper reaps them (as PID 1 that
///   happens anyway); and fork the `guardian`, first, while this process has no handlers yet.
/// - Ignores `IGNORED` (SIGTTIN, SIGTTOU) like tini, installs handlers for every `FORWARDED`
///   signal and SIGCHLD, then starts the signal thread:
///   on SIGCHLD it reaps with `waitpid(-1, WNOHANG)` until nothing is left, delivering statuses
///   of spawned pids (orphans are reaped and logged at debug); any other signal goes to
///   [`ProcessControl::signals`].
/// - Starts the spawner thread (see [`Spawner`] for why spawning has a thread of its own).
///
/// A second call fails with [`io::ErrorKind::AlreadyExists`].
pub fn install(supervising: bool) -> Result<ProcessControl, io::Error> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "supervisor::install was already called",
        ));
    }
    let guardian = if supervising {
        nix::sys::prctl::set_child_subreaper(true)?;
        let guardian = guardian::start().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot start the guardian process: {err}"),
            )
        })?;
        // `INSTALLED` makes this the only call; a second set cannot happen.
        let _ = GUARDIAN.set(guardian.clone());
        guardian
    } else {
        Guardian::noop()
    };
    let signal_source = signals::register()?;
    let registry = Arc::new(Mutex::new(reaper::Registry::default()));
    let (forward, received) = mpsc::unbounded_channel();
    let thread_registry = Arc::clone(&registry);
    std::thread::Builder::new()
        .name("lockwrap-signals".into())
        .spawn(move || signals::run_thread(signal_source, thread_registry, forward))?;
    let spawner = Spawner::start(registry, guardian)?;
    Ok(ProcessControl {
        signals: received,
        spawner,
    })
}

#[cfg(test)]
impl ProcessControl {
    /// A process control fed by `signals` instead of the OS, whose spawner's children nobody
    /// reaps: for unit tests of the loops that listen to signals and start no process (the
    /// campaign, takeover and sidecar loops on the in-memory backend).
    pub(crate) fn detached(signals: mpsc::UnboundedReceiver<Signal>) -> Result<Self, io::Error> {
        let registry = Arc::new(Mutex::new(reaper::Registry::default()));
        Ok(ProcessControl {
            signals,
            spawner: Spawner::start(registry, Guardian::noop())?,
        })
    }
}
