//! The guardian: a tiny process forked before the runtime starts that kills the command's tree
//! when the wrapper fails to extend the deadline (a stalled wrapper) or dies while armed, so a
//! frozen lockwrap cannot keep its command running past the lock (README, "The supervisor";
//! docs/timing.md: the command must be dead before anyone else can hold the lock).
//!
//! The wrapper talks to it through a pipe of fixed 24-byte messages (atomic, being under
//! `PIPE_BUF`): watch a process group, arm with an absolute `CLOCK_MONOTONIC` deadline and a
//! grace, disarm. The guardian has no runtime and no threads; it blocks in `poll` with a timeout.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{getpid, Pid};

use super::tree::{self, Parents, Proc};

/// While armed, how often the guardian re-reads the wrapper's tree. After the wrapper dies its
/// orphans are re-parented away, so the last snapshot is what the guardian kills on EOF; 500 ms
/// bounds what a fork that young could escape with, at one `/proc` scan per tick.
const SNAPSHOT_EVERY_NS: u64 = 500_000_000;

/// While stopping a tree, how often to look for what is left (and for new forks): short next to
/// any kill grace, long enough not to spin.
const STOP_POLL_MS: i32 = 20;

/// After the wrapper died, how long to keep killing before the guardian gives up and exits: a
/// process in uninterruptible sleep can outlive SIGKILL for a while, and the guardian must not
/// linger forever as an orphan.
const EOF_KILL_LIMIT_NS: u64 = 10_000_000_000;

const MESSAGE: usize = 24;
const WATCH: u32 = 1;
const ARM: u32 = 2;
const DISARM: u32 = 3;
const STOPPING: u32 = 4;
const CGROUP: u32 = 5;

/// The guardian this process started, so tree stops and the reaper can tell it apart.
static GUARDIAN_PID: AtomicI32 = AtomicI32::new(0);

/// The environment variable (`LOCKWRAP_TREE_<pid>_<random>`, value `1`) that the command and its
/// attached hooks get when a guardian was started, so the guardian can still find every process
/// the command forked after the wrapper died: its orphans are then re-parented away from the
/// wrapper, and a worker forked since the last snapshot in a session of its own is in neither the
/// snapshot nor the command's group. The name is unique per wrapper, so a nested lockwrap adds
/// its own beside the outer one's.
static TREE_MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The variable that marks the command's tree for this process's guardian (see
/// `TREE_MARKER`); `None` when no guardian was started. Public for tests and for embedders
/// that spawn commands of their own: a process started with it set is killed with the command.
pub fn tree_marker() -> Option<&'static str> {
    TREE_MARKER.get().map(String::as_str)
}

/// The running guardian's pid, if one was started and has not been reaped.
pub(crate) fn current_pid() -> Option<i32> {
    match GUARDIAN_PID.load(Ordering::Relaxed) {
        0 => None,
        pid => Some(pid),
    }
}

/// Called by the reaper when `pid` was reaped: if it was the guardian, its pid may be recycled
/// and must no longer be spared by tree stops. Returns whether it was the guardian.
pub(crate) fn reaped(pid: i32) -> bool {
    GUARDIAN_PID
        .compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// The wrapper's handle on the guardian. Cheap to clone; when the last clone is dropped the pipe
/// closes and the guardian acts as if the wrapper had died (kills an armed tree, then exits).
///
/// Every call is a single non-blocking `write`: a guardian that cannot read cannot kill either,
/// so a full pipe drops the message rather than stall the wrapper.
/// How long after the stop deadline the guardian acts: the wrapper stops the command at the
/// deadline itself; the guardian is the backstop for a wrapper that cannot.
pub(crate) const GUARDIAN_LAG: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
/// A handle on the guardian process (or a no-op one): tells it the stop deadline of the current
/// hold, so it can kill the command's tree if this process stalls or dies. Clone it freely.
pub struct Guardian {
    pipe: Option<Arc<OwnedFd>>,
    pid: Option<Pid>,
}

impl Guardian {
    /// A guardian that does nothing: for `ProcessControl::detached` and modes that start no
    /// command.
    pub fn noop() -> Self {
        Guardian {
            pipe: None,
            pid: None,
        }
    }

    /// The guardian's pid; `None` for [`Guardian::noop`].
    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// The process group to kill (besides every descendant of the wrapper) when the guardian
    /// fires: the command's.
    pub fn watch_pgid(&self, pgid: Pid) {
        self.send(WATCH, pgid.as_raw(), 0, 0);
    }

    /// The command's cgroup v2 (`lockwrap-<wrapper pid>-<number>` beside the guardian's own):
    /// killed with the group and the marked processes once the wrapper is gone. Forgotten on
    /// [`Guardian::disarm`].
    pub(crate) fn watch_cgroup(&self, number: usize) {
        self.send(CGROUP, 0, u64::try_from(number).unwrap_or(u64::MAX), 0);
    }

    /// The command must be told to stop at `deadline` and be dead by `deadline + grace`. Call
    /// again to move the deadline (every successful renew does). Sent as an absolute
    /// `CLOCK_MONOTONIC` time (what `Instant` reads on Linux), so a stall of the wrapper between
    /// this call and the write cannot push the deadline later.
    pub fn arm(&self, deadline: Instant, grace: Duration) {
        let now = Instant::now();
        let mono = monotonic_ns();
        let at = if deadline >= now {
            mono.saturating_add(nanos(deadline - now))
        } else {
            mono.saturating_sub(nanos(now - deadline))
        };
        self.send(ARM, 0, at, nanos(grace));
    }

    /// Keeps the guardian armed with the hold's stop deadline as it moves (every accepted renew
    /// or check pass), until the returned task is aborted. The guardian acts [`GUARDIAN_LAG`]
    /// after the deadline, so the wrapper, which stops the command at the deadline itself, goes
    /// first whenever it can; the lag is within the timing model's 1 s margin
    /// (docs/timing.md, "What the model assumes").
    pub fn follow(
        &self,
        mut deadlines: tokio::sync::watch::Receiver<Option<Instant>>,
        grace: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let guardian = self.clone();
        tokio::spawn(async move {
            loop {
                let deadline = *deadlines.borrow_and_update();
                if let Some(deadline) = deadline {
                    guardian.arm(deadline + GUARDIAN_LAG, grace);
                }
                if deadlines.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// The lock is lost and the wrapper is about to stop the command's tree: if it is not disarmed
    /// by `now + grace + GUARDIAN_LAG` (the wrapper stalled mid-stop), the guardian SIGKILLs the
    /// command's group and the tree as it is now. Call before anything else is spawned (the lost
    /// hooks), so those are not in that tree. Without this, a wrapper stalled after a key delete
    /// or a holder change keeps its command until the renew deadline, which renews still move.
    pub fn stopping(&self, grace: Duration) {
        let kill_at = monotonic_ns().saturating_add(nanos(grace + GUARDIAN_LAG));
        self.send(STOPPING, 0, kill_at, 0);
    }

    /// Nothing to guard any more (the command ended, or the lock was released cleanly). Also
    /// forgets the watched group, and ends a firing that is in progress.
    pub fn disarm(&self) {
        self.send(DISARM, 0, 0, 0);
    }

    fn send(&self, kind: u32, pgid: i32, a: u64, b: u64) {
        let Some(pipe) = &self.pipe else {
            return;
        };
        let message = encode(kind, pgid, a, b);
        // SAFETY: writes MESSAGE bytes from a live buffer to a descriptor this handle owns.
        let written = unsafe { libc::write(pipe.as_raw_fd(), message.as_ptr().cast(), MESSAGE) };
        if written != MESSAGE as isize {
            tracing::debug!(errno = %Errno::last(), "guardian message dropped");
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn encode(kind: u32, pgid: i32, a: u64, b: u64) -> [u8; MESSAGE] {
    let mut message = [0u8; MESSAGE];
    message[0..4].copy_from_slice(&kind.to_le_bytes());
    message[4..8].copy_from_slice(&pgid.to_le_bytes());
    message[8..16].copy_from_slice(&a.to_le_bytes());
    message[16..24].copy_from_slice(&b.to_le_bytes());
    message
}

fn decode(message: &[u8]) -> Option<(u32, i32, u64, u64)> {
    let kind = u32::from_le_bytes(message.get(0..4)?.try_into().ok()?);
    let pgid = i32::from_le_bytes(message.get(4..8)?.try_into().ok()?);
    let a = u64::from_le_bytes(message.get(8..16)?.try_into().ok()?);
    let b = u64::from_le_bytes(message.get(16..24)?.try_into().ok()?);
    Some((kind, pgid, a, b))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `Instant` uses on Linux.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nsec = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Forks the guardian of this process. `supervisor::install` calls it before the runtime starts;
/// public so tests (and embedders) can start one.
///
/// The guardian runs in its own process group (so neither a terminal's ^C/^Z nor anything sent to
/// lockwrap's or the command's group reaches it) and ignores the stop signals, and it has no
/// parent-death signal on purpose: it must outlive a killed wrapper long enough to act on the
/// pipe's EOF.
pub fn start() -> io::Result<Guardian> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let wrapper = getpid();
    let marker = TREE_MARKER.get_or_init(|| {
        format!(
            "LOCKWRAP_TREE_{}_{:016x}",
            wrapper.as_raw(),
            fastrand::u64(..)
        )
    });
    let marked = format!("{marker}=").into_bytes();
    // SAFETY: the child only runs `guardian_main`, which never returns into the caller's code
    // (it ends in `_exit`). lockwrap forks it while single-threaded (main calls `install` before
    // anything starts a thread); where a caller has threads (tests, embedders) the child still
    // takes no lock they could hold except malloc's, which glibc makes safe across fork, and it
    // writes through raw `write`, never std's locked stderr.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(write_end);
            let outcome = std::panic::catch_unwind(|| guardian_main(&read_end, wrapper, marked));
            // SAFETY: ends the forked process without running the wrapper's exit handlers.
            unsafe { libc::_exit(if outcome.is_ok() { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(read_end);
            fcntl(write_end.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(io::Error::from)?;
            GUARDIAN_PID.store(child.as_raw(), Ordering::Relaxed);
            Ok(Guardian {
                pipe: Some(Arc::new(write_end)),
                pid: Some(child),
            })
        }
    }
}

/// Signals the guardian ignores: the ones a terminal, a container runtime or a `kill` of the
/// whole job could send it. Only SIGKILL (or the wrapper's pipe closing) ends it.
const IGNORED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGPIPE,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// What the guardian is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Armed {
        deadline: u64,
        grace: u64,
    },
    /// The deadline passed: TERM sent, waiting for the grace to end.
    Terminating {
        kill_at: u64,
    },
    /// SIGKILL until nothing is left, then [`Phase::Fired`].
    Killing,
    /// The lock is lost and the wrapper is stopping the command: SIGKILL the group and the
    /// snapshot at `kill_at` unless disarmed first.
    Condemned {
        kill_at: u64,
    },
    /// Everything is dead; stays so until disarmed.
    Fired,
}

struct State {
    wrapper: i32,
    me: i32,
    pgid: Option<i32>,
    phase: Phase,
    procs: Vec<Proc>,
    buf: Vec<u8>,
    snapshot: Vec<Proc>,
    snapshot_at: u64,
    /// Processes already sent SIGTERM in this firing: each gets it once, since many programs
    /// read a second TERM as "skip the graceful shutdown".
    termed: Vec<Proc>,
    /// `NAME=` of the `TREE_MARKER` variable: finds the command's processes that neither the
    /// group nor the last snapshot holds.
    marked: Vec<u8>,
    environ: Vec<u8>,
    /// lockwrap's own cgroup v2 (shared with the wrapper), where the command's cgroups are made.
    cgroup_parent: Option<std::path::PathBuf>,
    /// The command's cgroup, once the wrapper named it.
    cgroup: Option<std::path::PathBuf>,
    /// When the oldest process of the command's tree started (clock ticks since boot; 0 reads
    /// every process): only processes at least as young can carry the marker, so older ones'
    /// environments are never read (a read of a process stuck on a hung mount could block the
    /// guardian before it killed anything).
    command_start: u64,
    stderr: RawFd,
}

fn guardian_main(pipe: &OwnedFd, wrapper: Pid, marked: Vec<u8>) {
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for &signal in IGNORED {
        // SAFETY: installs SIG_IGN, no handler code.
        let _ = unsafe { sigaction(signal, &ignore) };
    }
    release_stdio();
    let mut state = State {
        wrapper: wrapper.as_raw(),
        me: getpid().as_raw(),
        pgid: None,
        phase: Phase::Idle,
        procs: Vec::with_capacity(256),
        buf: Vec::with_capacity(512),
        snapshot: Vec::with_capacity(64),
        snapshot_at: 0,
        termed: Vec::with_capacity(64),
        marked,
        environ: Vec::with_capacity(4096),
        cgroup_parent: super::cgroup::own_cgroup_dir().ok(),
        cgroup: None,
        command_start: 0,
        stderr: nonblocking_stderr(),
    };
    let mut pending = [0u8; MESSAGE * 16];
    let mut filled = 0usize;
    loop {
        let now = monotonic_ns();
        let timeout = state.poll_timeout(now);
        let mut fds = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd.
        let ready = unsafe { libc::poll(&mut fds, 1, timeout) };
        if ready > 0 {
            // SAFETY: reads into the free tail of a live buffer.
            let n = unsafe {
                libc::read(
                    pipe.as_raw_fd(),
                    pending[filled..].as_mut_ptr().cast(),
                    pending.len() - filled,
                )
            };
            if n == 0 {
                state.wrapper_gone();
                return;
            }
            if n < 0 && !matches!(Errno::last(), Errno::EINTR | Errno::EAGAIN) {
                state.wrapper_gone();
                return;
            }
            filled += usize::try_from(n).unwrap_or(0);
            let whole = filled - filled % MESSAGE;
            for message in pending[..whole].chunks_exact(MESSAGE) {
                if let Some(decoded) = decode(message) {
                    state.receive(decoded);
                }
            }
            pending.copy_within(whole..filled, 0);
            filled -= whole;
        }
        state.tick(monotonic_ns());
    }
}

impl State {
    fn poll_timeout(&self, now: u64) -> i32 {
        let until = |at: u64| -> i32 {
            let ms = at.saturating_sub(now).div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        };
        match self.phase {
            Phase::Idle | Phase::Fired => -1,
            Phase::Armed { deadline, .. } => {
                until(deadline.min(self.snapshot_at.saturating_add(SNAPSHOT_EVERY_NS)))
            }
            Phase::Terminating { .. } | Phase::Killing => STOP_POLL_MS,
            Phase::Condemned { kill_at } => until(kill_at),
        }
    }

    fn receive(&mut self, (kind, pgid, a, b): (u32, i32, u64, u64)) {
        match kind {
            WATCH => {
                self.pgid = (pgid > 1).then_some(pgid);
                // The oldest of the command and of what the wrapper runs beside it (on-acquired
                // hooks start first): every marked process is at least that young.
                tree::scan(&mut self.procs, &mut self.buf);
                let parents = Parents::of(&self.procs);
                self.command_start = self
                    .procs
                    .iter()
                    .filter(|p| {
                        p.pid != self.me
                            && (Some(p.pid) == self.pgid
                                || parents
                                    .branch(p.pid, self.wrapper)
                                    .is_some_and(|branch| branch != self.me))
                    })
                    .map(|p| p.start)
                    .min()
                    .unwrap_or(0);
            }
            CGROUP => {
                self.cgroup = self.cgroup_parent.as_deref().map(|parent| {
                    super::cgroup::command_dir(
                        parent,
                        u32::try_from(self.wrapper).unwrap_or(0),
                        usize::try_from(a).unwrap_or(usize::MAX),
                    )
                });
            }
            // A firing is not undone by a late extension: the command is already being stopped.
            ARM => {
                if matches!(self.phase, Phase::Idle | Phase::Armed { .. }) {
                    self.phase = Phase::Armed {
                        deadline: a,
                        grace: b,
                    };
                }
            }
            STOPPING => match self.phase {
                Phase::Idle | Phase::Armed { .. } => {
                    self.refresh_snapshot(monotonic_ns());
                    self.phase = Phase::Condemned { kill_at: a };
                }
                Phase::Condemned { kill_at } => {
                    self.phase = Phase::Condemned {
                        kill_at: kill_at.min(a),
                    }
                }
                Phase::Terminating { .. } | Phase::Killing | Phase::Fired => {}
            },
            DISARM => {
                self.phase = Phase::Idle;
                self.pgid = None;
                self.cgroup = None;
                self.command_start = 0;
                self.snapshot.clear();
                self.termed.clear();
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: u64) {
        match self.phase {
            Phase::Idle | Phase::Fired => {}
            Phase::Armed { deadline, grace } => {
                if now >= deadline {
                    self.say(b"the lock's deadline passed without an extension; stopping the command (SIGTERM, grace, SIGKILL)\n");
                    self.signal_tree(Signal::SIGTERM);
                    self.phase = Phase::Terminating {
                        kill_at: deadline.saturating_add(grace),
                    };
                } else if now >= self.snapshot_at.saturating_add(SNAPSHOT_EVERY_NS) {
                    self.refresh_snapshot(now);
                }
            }
            Phase::Terminating { kill_at } => {
                // New forks get their TERM too; the others already have theirs.
                let left = self.signal_tree(Signal::SIGTERM);
                if left == 0 {
                    self.phase = Phase::Fired;
                } else if now >= kill_at {
                    self.phase = Phase::Killing;
                }
            }
            Phase::Killing => {
                if self.signal_tree(Signal::SIGKILL) == 0 {
                    self.phase = Phase::Fired;
                }
            }
            Phase::Condemned { kill_at } => {
                if now >= kill_at {
                    self.say(b"the command outlived the wrapper's stop after a loss; killing it\n");
                    self.kill_group_and_snapshot();
                    self.phase = Phase::Fired;
                }
            }
        }
    }

    /// Signals every live process of the command's group and every descendant of the wrapper but
    /// this one; returns how many there were.
    fn signal_tree(&mut self, signal: Signal) -> usize {
        tree::scan(&mut self.procs, &mut self.buf);
        let parents = Parents::of(&self.procs);
        let mut count = 0;
        for proc in &self.procs {
            if proc.zombie || proc.pid == self.me {
                continue;
            }
            let in_group = self.pgid == Some(proc.pgrp);
            let below = parents
                .branch(proc.pid, self.wrapper)
                .is_some_and(|branch| branch != self.me);
            if in_group || below {
                count += 1;
                if signal == Signal::SIGTERM {
                    if self.termed.contains(proc) {
                        continue;
                    }
                    self.termed.push(*proc);
                }
                let _ = kill(Pid::from_raw(proc.pid), signal);
            }
        }
        count
    }

    fn refresh_snapshot(&mut self, now: u64) {
        tree::scan(&mut self.procs, &mut self.buf);
        let parents = Parents::of(&self.procs);
        self.snapshot.clear();
        for proc in &self.procs {
            let below = parents
                .branch(proc.pid, self.wrapper)
                .is_some_and(|branch| branch != self.me);
            if !proc.zombie && proc.pid != self.me && (below || self.pgid == Some(proc.pgrp)) {
                self.snapshot.push(*proc);
            }
        }
        self.snapshot_at = now;
    }

    /// The pipe closed: the wrapper is dead (or dropped every handle). If something was guarded,
    /// nobody extends its deadline any more: SIGKILL the group and the last snapshot at once.
    fn wrapper_gone(&mut self) {
        if matches!(self.phase, Phase::Idle | Phase::Fired) {
            return;
        }
        self.say(b"the wrapper is gone while its command was guarded; killing the command\n");
        self.kill_group_and_snapshot();
    }

    /// SIGKILL to the watched group, every process marked with the `TREE_MARKER` variable, the
    /// last snapshot and the command's cgroup, until none is left (bounded by
    /// [`EOF_KILL_LIMIT_NS`]).
    fn kill_group_and_snapshot(&mut self) {
        let started = monotonic_ns();
        loop {
            // What needs no environment read first: the cgroup and the snapshot.
            let mut left = 0;
            if let Some(dir) = &self.cgroup {
                left += super::cgroup::kill_dir(dir);
            }
            for proc in &self.snapshot {
                if tree::signal_if_same(proc, Signal::SIGKILL) {
                    left += 1;
                }
            }
            tree::scan(&mut self.procs, &mut self.buf);
            for proc in &self.procs {
                if proc.zombie || proc.pid == self.me || proc.pid == self.wrapper {
                    continue;
                }
                let ours = self.pgid == Some(proc.pgrp)
                    || (proc.start >= self.command_start
                        && tree::environ_names(proc.pid, &self.marked, &mut self.environ));
                if ours {
                    left += 1;
                    let _ = kill(Pid::from_raw(proc.pid), Signal::SIGKILL);
                }
            }
            if left == 0 {
                return;
            }
            if monotonic_ns().saturating_sub(started) > EOF_KILL_LIMIT_NS {
                self.say(b"processes survive SIGKILL; giving up\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(STOP_POLL_MS as u64));
        }
    }

    /// One line on stderr, prefixed with its pid and the wrapper's, best effort: never blocks (see
    /// [`nonblocking_stderr`]) and never allocates.
    fn say(&self, line: &[u8]) {
        if self.stderr < 0 {
            return;
        }
        let mut text = [0u8; 256];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = std::io::Write::write_fmt(
            &mut cursor,
            format_args!("lockwrap guardian {} of {}: ", self.me, self.wrapper),
        );
        let _ = std::io::Write::write_all(&mut cursor, line);
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        // SAFETY: writes a live buffer to a descriptor the guardian owns or inherited.
        let _ = unsafe { libc::write(self.stderr, text.as_ptr().cast(), len) };
    }
}

/// Points stdin and stdout at /dev/null: the guardian reads and writes neither, and holding the
/// wrapper's stdout pipe open would keep a reader (`lockwrap … | jq`) waiting after lockwrap ends.
fn release_stdio() {
    // SAFETY: opens /dev/null and duplicates it over fds 0 and 1; the path is NUL-terminated.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// A descriptor for stderr that never blocks the guardian. For a pipe (the usual container
/// case, where a full one is the danger) a fresh open of `/proc/self/fd/2` gives a description of
/// its own that can be non-blocking without changing the wrapper's; anything else (terminal,
/// file) is written as is. -1 when there is no stderr.
fn nonblocking_stderr() -> RawFd {
    // SAFETY: fstat fills a live struct; open takes a NUL-terminated path.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(2, &mut stat) != 0 {
            return -1;
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return 2;
        }
        libc::open(
            c"/proc/self/fd/2".as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let message = encode(ARM, 42, 7, u64::MAX);
        assert_eq!(decode(&message), Some((ARM, 42, 7, u64::MAX)));
        assert_eq!(decode(&message[..10]), None);
    }

    #[test]
    fn the_monotonic_clock_matches_instant() {
        // Instant::elapsed and our clock advance together (same clock).
        let start = Instant::now();
        let mono = monotonic_ns();
        std::thread::sleep(Duration::from_millis(20));
        let drift = nanos(start.elapsed()).abs_diff(monotonic_ns() - mono);
        assert!(drift < 5_000_000, "drift {drift} ns");
    }

    #[test]
    fn a_late_extension_does_not_undo_a_firing() {
        let mut state = State {
            wrapper: 1,
            me: 2,
            pgid: None,
            phase: Phase::Killing,
            procs: Vec::new(),
            buf: Vec::new(),
            snapshot: Vec::new(),
            snapshot_at: 0,
            termed: Vec::new(),
            marked: b"LOCKWRAP_TREE_TEST=".to_vec(),
            environ: Vec::new(),
            cgroup_parent: Some("/sys/fs/cgroup/x".into()),
            cgroup: None,
            command_start: 0,
            stderr: -1,
        };
        // The cgroup the wrapper names is beside the guardian's own, and a disarm forgets it.
        state.receive((CGROUP, 0, 3, 0));
        assert_eq!(
            state.cgroup.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/x/lockwrap-1-3"))
        );
        state.receive((ARM, 0, 5, 5));
        assert_eq!(state.phase, Phase::Killing);
        state.receive((DISARM, 0, 0, 0));
        assert_eq!(state.phase, Phase::Idle);
        assert_eq!(state.cgroup, None);
        state.receive((ARM, 0, 5, 6));
        assert_eq!(
            state.phase,
            Phase::Armed {
                deadline: 5,
                grace: 6
            }
        );
        assert_eq!(state.poll_timeout(10), 0);
    }
}
