//! Spawning children (own process group, parent-death signal, terminal hand-over), stopping them
//! (TERM → grace → KILL for the group and every other process of the command's tree, at once),
//! and the exit codes they produce.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal as NixSignal;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet};
use nix::unistd::{getpgrp, getpid, getppid, isatty, Pid};
use tracing::{debug, info, warn};

use super::cgroup::CommandCgroup;
use super::clone_into;
use super::guardian::{self, Guardian};
use super::reaper::{self, SharedRegistry, Slot};
use super::signals::{Signal, IGNORED};
pub(crate) use super::status::ExitStatus;
pub(crate) use super::tree::Tree;
use super::tree::{self, Parents, Proc};
use super::tty::{foreground_group, set_foreground_group};

/// How often a stop checks whether the command's process group is empty. Group members are not
/// our children, so no status or signal tells us when they are gone; `kill(-pgid, 0)` is a cheap
/// probe, and 20 ms adds at most that much to a shutdown that is measured in seconds (kill-grace).
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// After SIGKILL, how long to wait for the group to disappear before giving up with a warning.
/// SIGKILL cannot be caught; only processes in uninterruptible sleep, or zombies that nobody reaps
/// (when lockwrap is neither PID 1 nor a subreaper), outlive it, and we must not hang on those.
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// What the command's stdin is connected to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdinMode {
    /// lockwrap's own stdin (the wrapped command; README, "The supervisor").
    #[default]
    Inherit,
    /// `/dev/null` (hooks, which must not consume the wrapped command's input).
    Null,
}

/// Everything needed to start one process.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    /// The program to run, looked up in `PATH` when it has no `/`.
    pub program: OsString,
    /// Its arguments, without the program name.
    pub args: Vec<OsString>,
    /// Added to (or overriding entries of) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// What the command reads.
    pub stdin: StdinMode,
    /// Hooks must never write to lockwrap's stdout, which carries only JSON.
    pub stdout_to_stderr: bool,
    /// Own process group, so signals and stops reach the command's whole tree and never lockwrap.
    pub own_process_group: bool,
    /// What a stop of this process reaches beyond its group and descendants (see `Tree`).
    pub tree: Tree,
}

impl CommandSpec {
    /// A spec for `program` with no arguments, inherited stdio and its own process group.
    pub fn new(program: impl Into<OsString>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: StdinMode::Inherit,
            stdout_to_stderr: false,
            own_process_group: true,
            tree: Tree::Command,
        }
    }
}

/// Why a command could not be started; [`SpawnError::exit_code`] follows the shell convention.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {}", .program.to_string_lossy())]
    /// No such program (exit 127).
    NotFound {
        /// The program as it was given.
        program: OsString,
        /// The OS error of the spawn.
        source: io::Error,
    },
    #[error("command not executable: {}: {source}", .program.to_string_lossy())]
    /// The program exists but cannot be executed (exit 126).
    NotExecutable {
        /// The program as it was given.
        program: OsString,
        /// The OS error of the spawn.
        source: io::Error,
    },
    #[error("cannot start {}: {source}", .program.to_string_lossy())]
    /// Anything else that stopped the spawn (exit 126).
    Other {
        /// The program as it was given.
        program: OsString,
        /// The OS error of the spawn.
        source: io::Error,
    },
}

impl SpawnError {
    /// Classifies a spawn error by errno, as shells do: ENOENT → not found; EACCES (no x bit or a
    /// directory), ENOEXEC (unknown binary format) and EISDIR → found but not executable.
    pub fn from_io(program: OsString, source: io::Error) -> Self {
        match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) => SpawnError::NotFound { program, source },
            Some(Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR) => {
                SpawnError::NotExecutable { program, source }
            }
            _ => SpawnError::Other { program, source },
        }
    }

    /// 127 when the command does not exist, 126 otherwise (README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            SpawnError::NotExecutable { .. } | SpawnError::Other { .. } => 126,
        }
    }
}

/// Starts processes. Cheap to clone; every clone talks to the same long-lived spawner thread.
///
/// Why a dedicated thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process. Tokio worker and blocking-pool threads can exit while lockwrap runs (idle
/// blocking threads after 10 s, `block_in_place` hand-overs, runtime shutdown), which would SIGKILL
/// a healthy command. The spawner thread lives until the process exits, so the parent-death signal
/// means exactly "lockwrap is gone".
#[derive(Clone, Debug)]
pub struct Spawner {
    requests: mpsc::Sender<Request>,
    registry: SharedRegistry,
    guardian: Guardian,
}

struct Request {
    spec: CommandSpec,
    reply: mpsc::SyncSender<Result<Spawned, SpawnError>>,
}

/// What the spawner thread reports back for a started, registered process.
struct Spawned {
    pid: Pid,
    pgid: Option<Pid>,
    slot: Arc<Slot>,
    cgroup: Option<CommandCgroup>,
}

impl Spawner {
    /// Starts the spawner thread. Called once, by [`install`](super::install).
    pub(crate) fn start(registry: SharedRegistry, guardian: Guardian) -> io::Result<Spawner> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let thread_registry = Arc::clone(&registry);
        std::thread::Builder::new()
            .name("lockwrap-spawner".into())
            .spawn(move || {
                for request in incoming {
                    let result = spawn_registered(&thread_registry, &request.spec);
                    // The caller may have given up (panicked); the child is registered either way.
                    let _ = request.reply.send(result);
                }
                // Every Spawner is gone, but children may still run: exiting this thread would
                // fire their parent-death signal, so it stays parked until the process exits.
                loop {
                    std::thread::park();
                }
            })?;
        Ok(Spawner {
            requests,
            registry,
            guardian,
        })
    }

    /// The guardian of this process (a no-op one when none was started), for code that holds a
    /// spawner but not the [`ProcessControl`](super::ProcessControl), like the library's execute.
    // Public for tests/ (lockwrap::testing); `LockManager::execute` is the library's way in.
    #[doc(hidden)]
    pub fn guardian(&self) -> Guardian {
        self.guardian.clone()
    }

    /// Starts `spec`. Blocks the calling thread until the program has been exec'd (or failed to),
    /// like `std::process::Command::spawn`: a few milliseconds, fine on a tokio worker.
    // Public for tests/ (lockwrap::testing); `LockManager::execute` is the library's way in.
    #[doc(hidden)]
    pub fn spawn(&self, spec: &CommandSpec) -> Result<Child, SpawnError> {
        let thread_gone = || SpawnError::Other {
            program: spec.program.clone(),
            source: io::Error::other("the lockwrap-spawner thread is gone"),
        };
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .send(Request {
                spec: spec.clone(),
                reply,
            })
            .map_err(|_| thread_gone())?;
        let Spawned {
            pid,
            pgid,
            slot,
            cgroup,
        } = answer.recv().map_err(|_| thread_gone())??;
        // Once the wrapper is gone the guardian kills what is left in the command's cgroup too:
        // a process there cannot leave it, whatever it did to its parentage, session or
        // environment.
        if let Some(cgroup) = &cgroup {
            self.guardian.watch_cgroup(cgroup.number());
        }
        Ok(Child {
            pid,
            pgid,
            slot,
            registry: Arc::clone(&self.registry),
            group_gone: AtomicBool::new(false),
            tree: spec.tree,
            cgroup,
        })
    }
}

/// Forks and execs `spec` on the spawner thread, registering the pid before the lock is released.
/// A command with a cgroup is cloned straight into it (`clone_into`); where the kernel refuses
/// that, or without a cgroup, std forks and the child joins the cgroup by a write.
fn spawn_registered(registry: &SharedRegistry, spec: &CommandSpec) -> Result<Spawned, SpawnError> {
    let failed = |source| SpawnError::from_io(spec.program.clone(), source);
    let mut env = spec.env.clone();
    // The guardian finds the command's processes by this variable once the wrapper is gone.
    if matches!(spec.tree, Tree::Command | Tree::Attached) {
        if let Some(marker) = super::guardian::tree_marker() {
            env.push((marker.into(), "1".into()));
        }
    }
    // Decided here rather than in the child: isatty is not on the async-signal-safe list.
    let take_terminal =
        spec.own_process_group && spec.stdin == StdinMode::Inherit && we_hold_the_terminal();
    let parent = getpid();
    // The wrapped command gets a cgroup of its own where one can be made (see `cgroup`).
    let cgroup = (spec.tree == Tree::Command && spec.own_process_group)
        .then(CommandCgroup::create)
        .flatten();
    let plan = match &cgroup {
        Some(_) => Some(
            clone_into::Plan::new(
                &spec.program,
                &spec.args,
                &env,
                spec.stdin == StdinMode::Null,
                spec.stdout_to_stderr,
                spec.own_process_group,
            )
            .map_err(failed)?,
        ),
        None => None,
    };

    // Held across fork + registration: the reaper takes this lock before waitpid, so it cannot reap
    // the pid before it is registered. It also keeps the reaper away while a failed exec is
    // handled, where the spawning side waits for the child itself (std would panic on ECHILD had
    // the reaper taken it).
    let mut registry = reaper::lock(registry);
    let cloned = match (&plan, &cgroup) {
        // SAFETY: `prepare_child` only makes async-signal-safe calls (see below).
        (Some(plan), Some(cgroup)) => unsafe {
            clone_into::spawn(plan, cgroup.dir_fd(), || {
                prepare_child(parent, take_terminal, None)
            })
        }
        .map_err(failed)?,
        _ => None,
    };
    let pid = match cloned {
        Some(pid) => pid,
        None => spawn_with_std(spec, &env, take_terminal, parent, cgroup.as_ref())?,
    };
    let slot = Arc::new(Slot::new(take_terminal, spec.tree));
    registry.insert(pid, Arc::clone(&slot));
    drop(registry);

    let pgid = spec.own_process_group.then_some(pid);
    debug!(%pid, program = %spec.program.to_string_lossy(), take_terminal, cloned = cloned.is_some(), "spawned");
    Ok(Spawned {
        pid,
        pgid,
        slot,
        cgroup,
    })
}

/// std's fork and exec, the child joining `cgroup` (if any) by writing itself into it. Called
/// with the reaper's lock held.
fn spawn_with_std(
    spec: &CommandSpec,
    env: &[(OsString, OsString)],
    take_terminal: bool,
    parent: Pid,
    cgroup: Option<&CommandCgroup>,
) -> Result<Pid, SpawnError> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(env.iter().map(|(key, value)| (key, value)));
    command.stdin(match spec.stdin {
        StdinMode::Inherit => Stdio::inherit(),
        StdinMode::Null => Stdio::null(),
    });
    if spec.stdout_to_stderr {
        command.stdout(io::stderr());
    }
    if spec.own_process_group {
        command.process_group(0);
    }
    let join_cgroup = cgroup.map(CommandCgroup::join_fd);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (write, prctl, getppid, tcsetpgrp, getpid, sigaction) without allocating or taking locks.
    unsafe {
        command.pre_exec(move || prepare_child(parent, take_terminal, join_cgroup));
    }
    let child = command
        .spawn()
        .map_err(|source| SpawnError::from_io(spec.program.clone(), source))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("Linux pids fit in pid_t"));
    // The reaper owns waitpid; std's handle must never wait. Dropping it neither waits nor kills.
    drop(child);
    Ok(pid)
}

/// Whether lockwrap's stdin is a terminal whose foreground group is lockwrap's group; only then is
/// it ours to hand to the command (a backgrounded `lockwrap … &` must not steal the terminal).
fn we_hold_the_terminal() -> bool {
    isatty(libc::STDIN_FILENO).unwrap_or(false) && foreground_group() == Some(getpgrp())
}

/// Runs in the forked child, after std's `setpgid(0, 0)` and signal-mask reset, before exec.
fn prepare_child(parent: Pid, take_terminal: bool, join_cgroup: Option<i32>) -> io::Result<()> {
    if let Some(fd) = join_cgroup {
        // "0" is the writing process itself. Failure only loses the cgroup (stops still walk
        // /proc), so it must not keep the command from starting.
        // SAFETY: writes one byte from a static buffer to an open descriptor.
        let _ = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    }
    // Die with lockwrap, even if it is SIGKILLed: a command must never outlive the lock holder.
    // Tied to the forking thread (see `Spawner`). Cleared by exec of a setuid binary. Only this
    // process gets it: its own children survive a SIGKILLed lockwrap unless lockwrap is PID 1 of a
    // PID namespace (a container), whose death kills every process in it.
    nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL).map_err(errno_to_io)?;
    // lockwrap died between fork and prctl: the signal will never come, so do not start.
    if getppid() != parent {
        return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
    }
    if take_terminal {
        // SIGTTOU is still ignored (inherited from lockwrap), so setting the foreground group from
        // what is a background group does not stop us. Failure is not fatal: the command then
        // runs as a background group, like any other job.
        let _ = set_foreground_group(getpid());
    }
    // lockwrap ignores these (see `signals::IGNORED`) and SIG_IGN survives exec; the command must
    // start with the defaults. (Caught signals are reset by exec itself.)
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in IGNORED {
        // SAFETY: installs the SIG_DFL disposition, no handler code.
        unsafe { sigaction(signal.as_nix(), &default) }.map_err(errno_to_io)?;
    }
    Ok(())
}

/// Converts without allocating (the pre-exec hook must not allocate).
fn errno_to_io(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

/// How a stop ended: the leader's status, and whether nothing of its tree is left (when false, a
/// process survived SIGKILL and the release must not be reported as clean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub status: ExitStatus,
    pub tree_gone: bool,
}

/// A spawned process. Its status comes from the reaper; it is never waited for directly.
///
/// Dropping a `Child` does not stop the process; the reaper still collects its status.
#[derive(Debug)]
pub struct Child {
    /// The command's PID, which is also its process group ID.
    pub pid: Pid,
    /// `Some(pid)` when the child leads its own process group.
    pgid: Option<Pid>,
    slot: Arc<Slot>,
    registry: SharedRegistry,
    /// Set once `kill(-pgid, 0)` said ESRCH: the group is empty and its id may be reused, so it
    /// must never be signalled again.
    group_gone: AtomicBool,
    tree: Tree,
    /// The command's own cgroup v2, where one could be made: its processes cannot leave it.
    cgroup: Option<CommandCgroup>,
}

impl Child {
    /// The process group the child leads, if it was spawned with `own_process_group`.
    pub fn pgid(&self) -> Option<Pid> {
        self.pgid
    }

    /// Waits for the child to exit. Cancel-safe: use it in `select!` as often as needed.
    pub async fn wait(&mut self) -> ExitStatus {
        self.slot.wait().await
    }

    /// The status, if the child has exited and been reaped.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.slot.status()
    }

    /// Sends `sig` to the child's process group (or only to the child, without its own group).
    /// A group or child that is already gone is not an error.
    pub fn signal_group(&self, sig: Signal) -> nix::Result<()> {
        // Holding the registry lock keeps the reaper from reaping the leader meanwhile, so the pid
        // (and thus the group id) cannot be recycled between the check and the kill.
        let _registry = reaper::lock(&self.registry);
        let result = match self.pgid {
            Some(_) if self.group_gone.load(Ordering::Relaxed) => return Ok(()),
            Some(pgid) => kill(Pid::from_raw(-pgid.as_raw()), sig.as_nix()),
            None if self.slot.status().is_some() => return Ok(()),
            None => kill(self.pid, sig.as_nix()),
        };
        match result {
            Err(Errno::ESRCH) => {
                if self.pgid.is_some() {
                    self.group_gone.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Stops the child and its whole tree: TERM to the group and to every other process of the
    /// tree at once, up to `grace` for all of it to be gone, then SIGKILL. Returns the leader's
    /// status and whether the whole tree is gone.
    ///
    /// One grace for everything: a worker that escaped the group (setsid, double fork) gets its
    /// TERM with the group, not after it, so the stop takes the grace plus the moment SIGKILL
    /// needs, as the timing model assumes (docs/timing.md, "Escaping processes"). Waiting for the
    /// leader after SIGKILL is unbounded on purpose: the command must be dead before the lock is
    /// released.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        self.stop_after(Some(Signal::TERM), grace).await
    }

    /// Like [`Child::stop`], but the group gets `first` instead of TERM, or nothing when `None`
    /// (a stop signal was already forwarded to it); the rest of the tree gets TERM at once.
    pub async fn stop_after(&mut self, first: Option<Signal>, grace: Duration) -> Stopped {
        let tree_gone = self.stop_tree(first, grace).await;
        if !tree_gone {
            // Whatever survived, the leader must not: it is our child and SIGKILL reaches it.
            self.send_logged(Signal::KILL);
        }
        Stopped {
            status: self.wait().await,
            tree_gone,
        }
    }

    /// Stops what is left of the child's tree after the leader exited on its own (see
    /// [`Child::stop`]); returns true when nothing of it is left.
    pub async fn stop_leftovers(&self, grace: Duration) -> bool {
        self.stop_tree(Some(Signal::TERM), grace).await
    }

    /// TERM (the group gets `first`), up to `grace`, then SIGKILL, for the tree: the group and
    /// every descendant, and for a [`Tree::Command`] also every orphan re-parented to lockwrap
    /// (setsid'd, double-forked; lockwrap is a subreaper while it supervises) and every
    /// [`Tree::Attached`] process; never the guardian. Processes forked after the TERM get
    /// SIGKILL if they outlive the grace. Returns true when nothing of it is left (zombies count
    /// as gone: they run no code), false when something survived SIGKILL for [`KILL_SETTLE`]:
    /// then the lock must not be reported as released cleanly.
    async fn stop_tree(&self, first: Option<Signal>, grace: Duration) -> bool {
        // The group's members get `first` (or had the forwarded signal) atomically, before the
        // tree is read: reading `/proc` takes milliseconds, and a command whose lock is lost hears
        // at once (README, "Performance": loss → SIGTERM). A group already gone gets nothing
        // ([`Child::signal_group`]). The rest of the tree gets its SIGTERM below; processes
        // forked in the group after this are part of the command's own shutdown (a trap's
        // cleanup): they are not signalled, only killed if the grace runs out.
        let group = self.pgid.filter(|_| self.group_alive()).map(Pid::as_raw);
        if let Some(signal) = first {
            self.send_logged(signal);
        }
        let left = self.leftovers();
        // Nothing to stop only once the leader is reaped: until then it is signalled regardless.
        if left.is_empty() && self.try_status().is_some() {
            return true;
        }
        debug!(pid = %self.pid, count = left.len(), ?grace, "stopping the command's tree");
        for proc in left.iter().filter(|proc| Some(proc.pgrp) != group) {
            tree::signal_if_same(proc, NixSignal::SIGTERM);
        }
        let term_until = tokio::time::Instant::now() + grace;
        loop {
            if self.leftovers().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= term_until {
                break;
            }
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
        info!(pid = %self.pid, ?grace, "the command's tree is still running after the grace period: SIGKILL");
        self.send_logged(Signal::KILL);
        let kill_until = tokio::time::Instant::now() + KILL_SETTLE;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return true;
            }
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill_all();
            }
            for proc in &left {
                tree::signal_if_same(proc, NixSignal::SIGKILL);
            }
            if tokio::time::Instant::now() >= kill_until {
                let pids: Vec<i32> = left.iter().map(|proc| proc.pid).collect();
                warn!(pid = %self.pid, ?pids, "processes of the command survive SIGKILL");
                return false;
            }
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
    }

    /// The live processes of the child's tree (see [`Child::stop_leftovers`]), from one `/proc` scan.
    fn leftovers(&self) -> Vec<Proc> {
        let me = getpid().as_raw();
        let guardian = guardian::current_pid();
        let spared = match self.tree {
            Tree::Command => reaper::lock(&self.registry).spared_besides(self.pid),
            Tree::Attached | Tree::Own => Vec::new(),
        };
        // Only while the group exists: once empty its id may be recycled by a stranger.
        let group = self.pgid.filter(|_| self.group_alive()).map(Pid::as_raw);
        let in_cgroup = self
            .cgroup
            .as_ref()
            .map(CommandCgroup::pids)
            .unwrap_or_default();
        let (mut procs, mut buf) = (Vec::new(), Vec::new());
        tree::scan(&mut procs, &mut buf);
        let parents = Parents::of(&procs);
        procs.retain(|proc| {
            if proc.zombie || proc.pid == me || Some(proc.pid) == guardian {
                return false;
            }
            if Some(proc.pgrp) == group || in_cgroup.contains(&proc.pid) {
                return true;
            }
            match parents.branch(proc.pid, me) {
                None => false,
                Some(branch) if branch == self.pid.as_raw() => true,
                Some(branch) if Some(branch) == guardian => false,
                Some(branch) => self.tree == Tree::Command && !spared.contains(&branch),
            }
        });
        procs
    }

    /// Whether anything of the child is left: any group member (a zombie counts until reaped), or,
    /// without a group of its own, the unreaped child itself.
    fn group_alive(&self) -> bool {
        let Some(pgid) = self.pgid else {
            return self.slot.status().is_none();
        };
        if self.group_gone.load(Ordering::Relaxed) {
            return false;
        }
        match kill(Pid::from_raw(-pgid.as_raw()), None) {
            Err(Errno::ESRCH) => {
                self.group_gone.store(true, Ordering::Relaxed);
                false
            }
            // EPERM: a member we may not signal (e.g. it changed uid) still exists.
            _ => true,
        }
    }

    fn send_logged(&self, signal: Signal) {
        if let Err(errno) = self.signal_group(signal) {
            warn!(pid = %self.pid, %signal, %errno, "cannot signal the command");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SpawnError {
        fn program(&self) -> &OsString {
            match self {
                SpawnError::NotFound { program, .. }
                | SpawnError::NotExecutable { program, .. }
                | SpawnError::Other { program, .. } => program,
            }
        }
    }

    #[test]
    fn exit_status_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(0).code(), 0);
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Signaled(15).success());
    }

    #[test]
    fn exit_status_display_names_the_signal() {
        assert_eq!(ExitStatus::Exited(3).to_string(), "exited with code 3");
        assert_eq!(ExitStatus::Signaled(15).to_string(), "killed by SIGTERM");
    }

    fn classify(errno: Errno) -> SpawnError {
        SpawnError::from_io("prog".into(), io::Error::from_raw_os_error(errno as i32))
    }

    #[test]
    fn spawn_errors_map_to_127_and_126() {
        assert!(matches!(
            classify(Errno::ENOENT),
            SpawnError::NotFound { .. }
        ));
        assert_eq!(classify(Errno::ENOENT).exit_code(), 127);
        for errno in [Errno::EACCES, Errno::ENOEXEC, Errno::EISDIR] {
            let error = classify(errno);
            assert!(matches!(error, SpawnError::NotExecutable { .. }), "{errno}");
            assert_eq!(error.exit_code(), 126);
        }
        assert!(matches!(classify(Errno::E2BIG), SpawnError::Other { .. }));
        assert_eq!(classify(Errno::E2BIG).exit_code(), 126);
        let not_an_os_error = SpawnError::from_io("prog".into(), io::Error::other("x"));
        assert_eq!(not_an_os_error.exit_code(), 126);
    }

    #[test]
    fn spawn_error_display_names_the_program() {
        assert_eq!(
            classify(Errno::ENOENT).to_string(),
            "command not found: prog"
        );
        assert!(classify(Errno::EACCES)
            .to_string()
            .starts_with("command not executable: prog: "));
        assert_eq!(classify(Errno::EACCES).program(), "prog");
    }

    #[test]
    fn command_spec_defaults_suit_the_wrapped_command() {
        let spec = CommandSpec::new("prog");
        assert_eq!(spec.stdin, StdinMode::Inherit);
        assert!(spec.own_process_group);
        assert!(!spec.stdout_to_stderr);
    }
}
