//! The one loop that runs a command while the lock is held (docs/design.md, "How a command runs
//! under the lock"): `lockwrap run`, `lockwrap execute`, `lockwrap sidecar` (whose "command" is
//! the app beside it) and [`crate::locks::LockManager::execute`] all go through [`start`],
//! [`hold`] and [`release_after`], so a safety fix lands once.
//!
//! The process side is behind two small traits, [`Launch`] (spawn) and [`Running`] (wait, signal
//! the group, stop the tree), so the loop is unit-tested on the in-memory backend under paused
//! time (`hold_tests.rs`) and runs real processes through [`crate::supervisor`] in production.

use std::ffi::OsString;
use std::future::Future;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::task::JoinHandle;

use super::lost_already;
use crate::backend::{BackendError, HeldLock, LockInfo, LossReason};
use crate::supervisor::{
    Child, CommandSpec, ExitStatus, Guardian, Signal, SpawnError, Spawner, Stopped,
};

/// Starts commands: [`Spawner`] in production, a scripted fake in the loop's unit tests.
pub(crate) trait Launch {
    type Command: Running;
    fn launch(&self, spec: &CommandSpec) -> Result<Self::Command, SpawnError>;
}

/// A started command and its process tree, as the hold loop needs it.
pub(crate) trait Running: Send {
    /// The process group the command leads, for the guardian to watch (`None`: nothing to watch).
    fn pgid(&self) -> Option<Pid>;
    /// The command's exit. Cancel-safe: polled in `select!` over and over.
    fn wait(&mut self) -> impl Future<Output = ExitStatus> + Send;
    /// Sends `signal` to the command's group (a forwarded signal; errors are only logged).
    fn forward(&self, signal: Signal);
    /// Stops the whole tree: the group gets `first` (nothing when `None`: it had a forwarded
    /// signal), the rest TERM, `grace`, then SIGKILL.
    fn stop_after(
        &mut self,
        first: Option<Signal>,
        grace: Duration,
    ) -> impl Future<Output = Stopped> + Send;
    /// After the command exited on its own: stops what is left of its tree; true when nothing is.
    fn stop_leftovers(&mut self, grace: Duration) -> impl Future<Output = bool> + Send;
}

impl Launch for Spawner {
    type Command = Child;
    fn launch(&self, spec: &CommandSpec) -> Result<Child, SpawnError> {
        self.spawn(spec)
    }
}

impl Running for Child {
    fn pgid(&self) -> Option<Pid> {
        Child::pgid(self)
    }

    fn wait(&mut self) -> impl Future<Output = ExitStatus> + Send {
        Child::wait(self)
    }

    fn forward(&self, signal: Signal) {
        tracing::debug!(signal = signal.name(), "forwarding signal to the command");
        if let Err(err) = self.signal_group(signal) {
            tracing::debug!(signal = signal.name(), %err, "could not forward signal");
        }
    }

    fn stop_after(
        &mut self,
        first: Option<Signal>,
        grace: Duration,
    ) -> impl Future<Output = Stopped> + Send {
        Child::stop_after(self, first, grace)
    }

    fn stop_leftovers(&mut self, grace: Duration) -> impl Future<Output = bool> + Send {
        Child::stop_leftovers(self, grace)
    }
}

/// The app a sidecar stands beside: lockwrap did not start it and cannot signal it; it sees
/// leadership end on `/leader` and the status file. It never exits as far as the loop knows, and
/// "stopping" it is giving it the kill grace to notice; it is never known to be gone, so the
/// release after it is never clean (docs/timing.md).
pub(crate) struct AppBeside;

impl Running for AppBeside {
    fn pgid(&self) -> Option<Pid> {
        None
    }

    fn wait(&mut self) -> impl Future<Output = ExitStatus> + Send {
        std::future::pending()
    }

    fn forward(&self, _signal: Signal) {}

    async fn stop_after(&mut self, _first: Option<Signal>, grace: Duration) -> Stopped {
        tokio::time::sleep(grace).await;
        Stopped {
            status: ExitStatus::Exited(0),
            tree_gone: false,
        }
    }

    fn stop_leftovers(&mut self, _grace: Duration) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }
}

/// What a stop signal to lockwrap means while it holds (decided by `commands::policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// Pass the signal to the command and keep holding (HUP, USR1, …).
    Forward(Signal),
    /// Pass the signal to the command, then stop its tree and end the hold (TERM, INT).
    ForwardAndStop(Signal),
    /// End the hold: stop the command's tree with TERM (a sidecar stepping down).
    Stop(Signal),
}

/// The stop signals lockwrap receives while it holds. The library has none ([`NoInterrupts`]).
pub(crate) trait Interrupts {
    /// The next signal that matters; signals to ignore are consumed inside.
    fn next(&mut self) -> impl Future<Output = Interrupt> + Send;
}

/// No signals: the library's caller decides when to stop by dropping the future or the lease.
pub(crate) struct NoInterrupts;

impl Interrupts for NoInterrupts {
    fn next(&mut self) -> impl Future<Output = Interrupt> + Send {
        std::future::pending()
    }
}

/// Told when the hold is about to end, before the command is stopped: hooks, readiness and
/// `/leader` flip as the stop starts, not after it (a sidecar's app has only the kill grace to
/// notice).
pub(crate) trait HoldObserver {
    /// The lock is lost and the command is about to be stopped; returns work running beside the
    /// stop (the on-lost hooks) for the caller to await after the release.
    fn lost(&self, reason: &LossReason) -> Option<JoinHandle<()>>;
    /// A stop signal ends the hold; the command is about to be stopped.
    fn interrupted(&self, signal: Signal);
}

/// Observes nothing (the library).
pub(crate) struct Unobserved;

impl HoldObserver for Unobserved {
    fn lost(&self, _reason: &LossReason) -> Option<JoinHandle<()>> {
        None
    }

    fn interrupted(&self, _signal: Signal) {}
}

/// How a hold ended. [`hold`] only stops the command; [`release_after`] releases.
///
/// `tree_gone` says whether nothing of the command's tree was left when the hold ended: when
/// false, a process survived SIGKILL (or, for a sidecar, the app is never known to be gone) and
/// the release must not be reported as clean.
#[derive(Debug)]
pub(crate) enum HoldEnd {
    /// The command ended on its own.
    Exited { status: ExitStatus, tree_gone: bool },
    /// A stop signal ended the hold; the command was stopped.
    Interrupted {
        /// The signal that ended it (the hold tests check it; `Debug` shows it).
        #[allow(dead_code)]
        signal: Signal,
        status: ExitStatus,
        tree_gone: bool,
    },
    /// The lock was lost and the command was stopped; `hooks` started at the loss.
    Lost {
        reason: LossReason,
        status: ExitStatus,
        tree_gone: bool,
        hooks: Option<JoinHandle<()>>,
    },
}

impl HoldEnd {
    /// Whether nothing of the command's tree is left.
    pub(crate) fn tree_gone(&self) -> bool {
        match self {
            HoldEnd::Exited { tree_gone, .. }
            | HoldEnd::Interrupted { tree_gone, .. }
            | HoldEnd::Lost { tree_gone, .. } => *tree_gone,
        }
    }

    /// The command's status.
    pub(crate) fn status(&self) -> ExitStatus {
        match self {
            HoldEnd::Exited { status, .. }
            | HoldEnd::Interrupted { status, .. }
            | HoldEnd::Lost { status, .. } => *status,
        }
    }
}

/// The variables every command run under the lock gets (README, "Environment and config file").
pub(crate) fn command_env(key: &str, info: &LockInfo) -> Vec<(OsString, OsString)> {
    vec![
        ("CONSUL_LOCK_HELD".into(), "true".into()),
        ("LOCKWRAP_KEY".into(), key.into()),
        (
            "LOCKWRAP_SESSION".into(),
            info.session.clone().unwrap_or_default().into(),
        ),
        (
            "LOCKWRAP_FENCING_TOKEN".into(),
            info.fencing_token.unwrap_or_default().to_string().into(),
        ),
    ]
}

/// The guardian guards one command per process (one deadline, one group, one cgroup): a second
/// command held at the same time would be left unguarded the moment the first one disarmed it,
/// and a loss of either would condemn both. [`OneCommand::claim`] refuses the second.
pub(crate) struct OneCommand(());

static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl OneCommand {
    /// The right to run the process's one guarded command, or `None` while another holds it.
    /// Given back when dropped (also when the caller's future is dropped).
    pub(crate) fn claim() -> Option<OneCommand> {
        RUNNING
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
            .then_some(OneCommand(()))
    }
}

impl Drop for OneCommand {
    fn drop(&mut self) {
        RUNNING.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Why a command was never started under a held lock.
#[derive(Debug)]
pub(crate) enum NotStarted {
    /// The lease was lost (or its deadline passed) between the acquisition and the spawn: a
    /// wrapper frozen in between must not start anything late.
    Lost(LossReason),
    /// The spawn failed (127: not found, 126: not executable).
    Spawn(SpawnError),
}

/// Starts the command under `lease`, unless the lease is already lost. The caller then calls
/// [`hold`] (on success) and in every case [`release_after`] or releases the lease itself.
pub(crate) async fn start<L: HeldLock, P: Launch>(
    lease: &mut L,
    launcher: &P,
    spec: &CommandSpec,
) -> Result<P::Command, NotStarted> {
    if let Some(reason) = lost_already(lease).await {
        return Err(NotStarted::Lost(reason));
    }
    launcher.launch(spec).map_err(NotStarted::Spawn)
}

/// Holds until the command exits, the lock is lost, or a stop signal ends the hold; the command's
/// whole tree is stopped (SIGTERM, `grace`, SIGKILL) before this returns, on every path. Releases
/// nothing: that is [`release_after`]'s job.
///
/// `guardian`, when given, watches the command's group and follows the lease's stop deadline, so
/// a wrapper that stalls cannot keep its command past it (docs/timing.md, "The stalled wrapper").
pub(crate) async fn hold<L: HeldLock, R: Running>(
    lease: &mut L,
    command: &mut R,
    guardian: Option<&Guardian>,
    interrupts: &mut impl Interrupts,
    observer: &impl HoldObserver,
    grace: Duration,
) -> HoldEnd {
    if let (Some(guardian), Some(pgid)) = (guardian, command.pgid()) {
        guardian.watch_pgid(pgid);
    }
    let following = guardian.and_then(|guardian| {
        lease
            .stop_deadline()
            .map(|deadlines| guardian.follow(deadlines, grace))
    });
    let end = hold_until_end(lease, command, guardian, interrupts, observer, grace).await;
    if let Some(task) = following {
        task.abort();
    }
    // The command's tree is stopped (or proved unkillable): nothing is left for the guardian.
    if let Some(guardian) = guardian {
        guardian.disarm();
    }
    end
}

/// [`hold`]'s loop, between telling the guardian which group to watch and disarming it.
async fn hold_until_end<L: HeldLock, R: Running>(
    lease: &mut L,
    command: &mut R,
    guardian: Option<&Guardian>,
    interrupts: &mut impl Interrupts,
    observer: &impl HoldObserver,
    grace: Duration,
) -> HoldEnd {
    loop {
        tokio::select! {
            status = command.wait() => {
                tracing::info!(event = "exited", code = status.code(), "command exited");
                // Nothing of the command may outlive the lock.
                let tree_gone = command.stop_leftovers(grace).await;
                return HoldEnd::Exited { status, tree_gone };
            }
            reason = lease.lost() => {
                // A wrapper that stalls mid-stop still loses its command: the renew deadline the
                // guardian holds may be far off (a key delete, a holder change).
                if let Some(guardian) = guardian {
                    guardian.stopping(grace);
                }
                // The on-lost hooks start as the command is being stopped, not after.
                let hooks = observer.lost(&reason);
                tracing::warn!(event = "lost", %reason, grace = ?grace, "lock lost: stopping what runs under it");
                let Stopped { status, tree_gone } = command.stop_after(Some(Signal::TERM), grace).await;
                return HoldEnd::Lost { reason, status, tree_gone, hooks };
            }
            interrupt = interrupts.next() => match interrupt {
                Interrupt::Forward(signal) => command.forward(signal),
                Interrupt::ForwardAndStop(signal) => {
                    observer.interrupted(signal);
                    command.forward(signal);
                    // The group had the forwarded signal; the rest of the tree gets TERM now.
                    let Stopped { status, tree_gone } = command.stop_after(None, grace).await;
                    return HoldEnd::Interrupted { signal, status, tree_gone };
                }
                Interrupt::Stop(signal) => {
                    observer.interrupted(signal);
                    let Stopped { status, tree_gone } =
                        command.stop_after(Some(Signal::TERM), grace).await;
                    return HoldEnd::Interrupted { signal, status, tree_gone };
                }
            },
        }
    }
}

/// Releases the lock (and destroys the session) after [`hold`]: without the clean marker when
/// anything of the command's tree may be left, so the next holder waits its takeover delay.
pub(crate) async fn release_after<L: HeldLock>(
    mut lease: L,
    end: &HoldEnd,
) -> Result<(), BackendError> {
    if !end.tree_gone() {
        lease.set_release_clean(false);
    }
    lease.release().await
}

#[cfg(test)]
#[path = "hold_tests.rs"]
mod tests;
