//! The only caller of `waitpid`: reaps every exited child (ours and adopted orphans) and hands each
//! registered child's status to the [`Child`](super::child::Child) that spawned it.
//!
//! Once anything calls `waitpid(-1)`, std's and tokio's `Child::wait` can lose statuses (ECHILD), so
//! nothing else in lockwrap may wait for processes; spawn through [`Spawner`](super::Spawner) instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, Pid};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::guardian;
use super::status::ExitStatus;
use super::tree::Tree;
use super::tty::{foreground_group, set_foreground_group};

/// Registry shared by the spawner (inserts under the lock, across the fork) and the reaper (reaps
/// under the lock), so a status can never arrive for a pid that is not registered yet.
pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

/// Pids lockwrap spawned and is still waiting for.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: HashMap<Pid, Arc<Slot>>,
}

impl Registry {
    pub(crate) fn insert(&mut self, pid: Pid, slot: Arc<Slot>) {
        self.slots.insert(pid, slot);
    }

    /// Running spawned processes other than `except` whose trees a stop of a
    /// [`Tree::Command`] must leave alone (other commands, hooks that close a hold).
    pub(crate) fn spared_besides(&self, except: Pid) -> Vec<i32> {
        self.slots
            .iter()
            .filter(|(pid, slot)| **pid != except && slot.tree != Tree::Attached)
            .map(|(pid, _)| pid.as_raw())
            .collect()
    }
}

/// Locks the registry. A panic while holding it cannot leave it half-updated (every update is a
/// single map operation), so a poisoned lock is still safe to use.
pub(crate) fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the reaper leaves one child's status, and how its [`Child`](super::child::Child) learns of it.
#[derive(Debug)]
pub(crate) struct Slot {
    status: Mutex<Option<ExitStatus>>,
    delivered: Notify,
    /// The child was made the terminal's foreground group; give the terminal back when it exits.
    took_terminal: bool,
    /// What a tree stop of another child does with this one's subtree.
    tree: Tree,
}

impl Slot {
    pub(crate) fn new(took_terminal: bool, tree: Tree) -> Self {
        Slot {
            status: Mutex::new(None),
            delivered: Notify::new(),
            took_terminal,
            tree,
        }
    }

    pub(crate) fn status(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the status. Cancel-safe: it only observes state, so dropping the future loses nothing.
    pub(crate) async fn wait(&self) -> ExitStatus {
        loop {
            // Register interest before checking, so a delivery between the check and the await
            // still wakes us.
            let delivered = self.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if let Some(status) = self.status() {
                return status;
            }
            delivered.await;
        }
    }

    fn deliver(&self, status: ExitStatus) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
        self.delivered.notify_waiters();
    }
}

/// Reaps every child that has exited, without blocking. Called by the signal thread on SIGCHLD.
///
/// Holds the registry lock for the whole pass: the spawner holds it across fork + registration, so
/// a pid we reap here is always either registered already or not ours (an adopted orphan).
pub(crate) fn reap_all(registry: &Mutex<Registry>) {
    let mut registry = lock(registry);
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(pid, signal, _core_dumped)) => {
                (pid, ExitStatus::Signaled(signal as i32))
            }
            // Nothing (more) has exited.
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            // Stop/continue reports need WUNTRACED/WCONTINUED, which we never pass.
            Ok(other) => {
                debug!(?other, "ignored a non-exit wait status");
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                warn!(%errno, "waitpid failed; will retry on the next SIGCHLD");
                return;
            }
        };
        match registry.slots.remove(&pid) {
            Some(slot) => {
                debug!(%pid, %status, "reaped child");
                if slot.took_terminal {
                    reclaim_terminal(pid);
                }
                slot.deliver(status);
            }
            None if guardian::reaped(pid.as_raw()) => {
                warn!(%pid, %status, "the guardian exited; a stalled lockwrap is no longer covered");
            }
            None => debug!(%pid, %status, "reaped orphan"),
        }
    }
}

/// Makes lockwrap's own group the terminal's foreground group again after a child that took the
/// terminal has exited: a terminal whose foreground group is gone sends ^C to nobody, and the shell
/// that started lockwrap expects its job back. Only done if the dead child's group still holds the
/// terminal (an interactive command may have handed it elsewhere).
fn reclaim_terminal(child_pgid: Pid) {
    if foreground_group() != Some(child_pgid) {
        return;
    }
    // We are a background group now; that needs SIGTTOU ignored, which it is (`signals::IGNORED`).
    if let Err(errno) = set_foreground_group(getpgrp()) {
        debug!(%errno, "could not take the terminal back");
    }
}
