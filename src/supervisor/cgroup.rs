//! A cgroup v2 of its own for the wrapped command, where one can be created (as systemd gives
//! each service one): every process the command starts stays in it whatever it does with its
//! parentage or session, so a stop lists them from `cgroup.procs` and kills them all with
//! `cgroup.kill`. Where cgroups are missing or read-only (cgroup v1 only, an unprivileged
//! container) lockwrap goes on without one: the `/proc` walk of [`tree`](super::tree) still finds
//! the command's tree, lockwrap being a subreaper (README, "The supervisor").

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing::debug;

/// One command's cgroup. Removed when dropped, if it is empty by then.
#[derive(Debug)]
pub(crate) struct CommandCgroup {
    dir: PathBuf,
    /// The `N` of `lockwrap-<pid>-N`: the guardian rebuilds the path from it.
    number: usize,
    /// `cgroup.procs`, opened before the fork: the child writes "0" (itself) into it between fork
    /// and exec, so it is inside before it can fork anything.
    join: OwnedFd,
    /// The directory itself, for `clone3(CLONE_INTO_CGROUP)` (see `clone_into`).
    dir_fd: OwnedFd,
}

impl CommandCgroup {
    /// Creates a child of lockwrap's own cgroup v2 for one command; `None` (logged at debug) when
    /// there is no cgroup v2 mount, lockwrap's cgroup is not writable, or anything else fails.
    pub(crate) fn create() -> Option<CommandCgroup> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let parent = match own_cgroup_dir() {
            Ok(dir) => dir,
            Err(err) => {
                debug!(%err, "no cgroup v2 for the command; stops walk /proc only");
                return None;
            }
        };
        sweep_stale(&parent);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = command_dir(&parent, std::process::id(), n);
        let created = fs::create_dir(&dir).and_then(|()| {
            let join = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map(OwnedFd::from)?;
            Ok((join, OwnedFd::from(fs::File::open(&dir)?)))
        });
        match created {
            Ok((join, dir_fd)) => Some(CommandCgroup {
                dir,
                number: n,
                join,
                dir_fd,
            }),
            Err(err) => {
                debug!(dir = %dir.display(), %err, "cannot create a cgroup for the command; stops walk /proc only");
                let _ = fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The `N` of its name, which the guardian is told (see [`command_dir`]).
    pub(crate) fn number(&self) -> usize {
        self.number
    }

    /// The descriptor the child writes "0" to (async-signal-safe `write`, no allocation).
    pub(crate) fn join_fd(&self) -> RawFd {
        self.join.as_raw_fd()
    }

    /// The cgroup's directory, open: a `clone3` target (see `clone_into`).
    pub(crate) fn dir_fd(&self) -> RawFd {
        self.dir_fd.as_raw_fd()
    }

    /// The pids in the cgroup (empty when it cannot be read).
    pub(crate) fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup at once, including ones forked meanwhile
    /// (`cgroup.kill`, Linux 5.14+). Returns false where the kernel lacks it; the caller then
    /// kills pid by pid.
    pub(crate) fn kill_all(&self) -> bool {
        fs::write(self.dir.join("cgroup.kill"), "1").is_ok()
    }
}

/// How long a dropped cgroup keeps trying to go away: the kernel lets go of a process that was
/// just reaped a moment after `waitpid` returns (rmdir says EBUSY until then), and a failed exec
/// leaves its short-lived child there too.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);
/// Between removal attempts: the kernel lets go within milliseconds, and a retry is one syscall.
const REMOVE_RETRY: Duration = Duration::from_millis(20);

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        if fs::remove_dir(&self.dir).is_ok() {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        // A thread so no caller waits; it ends within REMOVE_PATIENCE.
        let retry = move || {
            let until = std::time::Instant::now() + REMOVE_PATIENCE;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => return,
                    // Processes remain after the patience: the cgroup stays and shows who is left.
                    Err(err) if std::time::Instant::now() >= until => {
                        debug!(dir = %dir.display(), %err, "command cgroup not removed");
                        return;
                    }
                    Err(_) => std::thread::sleep(REMOVE_RETRY),
                }
            }
        };
        if let Err(err) = std::thread::Builder::new()
            .name("lockwrap-cgroup".into())
            .spawn(retry)
        {
            debug!(%err, "cannot start the cgroup removal thread");
        }
    }
}

/// Removes the empty cgroups of lockwraps that are gone: one killed with SIGKILL never removes
/// its command's cgroup, and one that exits right after its command may be gone before the
/// kernel lets the cgroup go. A cgroup that still has processes is left (rmdir refuses it); a
/// lockwrap in another PID namespace (seen as gone) at worst loses a cgroup that is still empty
/// and falls back to the `/proc` walk.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("lockwrap-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone && fs::remove_dir(entry.path()).is_ok() {
            debug!(dir = %entry.path().display(), "removed a stale command cgroup");
        }
    }
}

/// The cgroup of command `n` of the lockwrap with pid `wrapper`, under lockwrap's own cgroup
/// `parent`: the name both the wrapper and its guardian (which shares the wrapper's cgroup) use.
pub(crate) fn command_dir(parent: &Path, wrapper: u32, n: usize) -> PathBuf {
    parent.join(format!("lockwrap-{wrapper}-{n}"))
}

/// SIGKILLs every process in the cgroup at `dir` (`cgroup.kill`, or pid by pid from
/// `cgroup.procs` where the kernel lacks it); returns how many processes it still listed.
pub(crate) fn kill_dir(dir: &Path) -> usize {
    let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if pids.is_empty() {
        return 0;
    }
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    pids.len()
}

/// lockwrap's own cgroup v2 directory: the `cgroup2` mount point from `/proc/self/mountinfo`
/// joined with the `0::` path of `/proc/self/cgroup`.
pub(crate) fn own_cgroup_dir() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mount = cgroup2_mount(&mountinfo)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))?;
    let membership = fs::read_to_string("/proc/self/cgroup")?;
    let path = unified_path(&membership).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup v2 entry in /proc/self/cgroup",
        )
    })?;
    let dir = Path::new(&mount).join(path.trim_start_matches('/'));
    if !dir.join("cgroup.procs").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a cgroup v2 directory", dir.display()),
        ));
    }
    Ok(dir)
}

/// The mount point of the first `cgroup2` file system in mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(str::to_string)
    })
}

/// The cgroup v2 path (`0::PATH`) in `/proc/self/cgroup` text.
fn unified_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| line.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_beside_v1_mounts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            cgroup2_mount("35 25 0:30 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn the_unified_path_is_the_zero_entry() {
        assert_eq!(
            unified_path("4:memory:/a\n0::/system.slice/x\n"),
            Some("/system.slice/x")
        );
        assert_eq!(unified_path("4:memory:/a\n"), None);
    }
}
