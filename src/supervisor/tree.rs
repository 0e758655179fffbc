//! The process tree under lockwrap, read from `/proc`: which processes descend from it, and
//! signalling a chosen set of them until none is left. Shared by [`Child`](super::Child) and the
//! [`guardian`](super::guardian), which must both kill what `setsid` and double forks hid from the
//! command's process group (README, "The supervisor").

use std::collections::HashMap;
use std::io::Read;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;

/// What stopping a spawned process's tree reaches besides its own process group and descendants,
/// and what stops of other processes do with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tree {
    /// The wrapped command. Its tree also holds every orphan re-parented to lockwrap (setsid'd and
    /// double-forked processes, whose origin `/proc` no longer shows) and every [`Tree::Attached`]
    /// process: nothing the command started may outlive the lock. Orphans carry no mark of
    /// their origin, so with two commands in one process (the library) a stop of one also stops
    /// the other's orphans.
    #[default]
    Command,
    /// Dies with the command (on-acquired hooks, which run beside it).
    Attached,
    /// Only its own group and descendants, and spared by the command's stop (hooks that report
    /// the end of a hold, which must run while and after the command is stopped).
    Own,
}

/// A parent chain longer than this is treated as "not a descendant": pid_max bounds real chains,
/// and the cap keeps a chain read across a racing exit from looping.
const MAX_DEPTH: usize = 4096;

/// One process as `/proc/PID/stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// Exited and waiting to be reaped: it runs no code, so it counts as gone. A thread-group
    /// leader that left with `pthread_exit` also shows `Z` while its other threads run on: that
    /// is not a zombie here (`num_threads` > 1).
    pub zombie: bool,
    /// Start time in clock ticks since boot; with the pid it names one process, not a recycled pid.
    pub start: u64,
}

/// Parses the text of `/proc/PID/stat`. The command name sits in parentheses and may contain
/// spaces or parentheses itself, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<Proc> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(text.get(..open)?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // Fields after the name: 3 state, 4 ppid, 5 pgrp, … 20 num_threads, 21, 22 starttime.
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let threads: u64 = fields.nth(14)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        zombie: (state == b'Z' || state == b'X') && threads <= 1,
        start,
    })
}

/// Every process visible in `/proc`, into `out` (cleared first; reused to spare allocations in the
/// guardian's loop). Processes that exit during the scan are simply missing.
pub(crate) fn scan(out: &mut Vec<Proc>, buf: &mut Vec<u8>) {
    out.clear();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        buf.clear();
        let mut path = [0u8; 32];
        let path = stat_path(&mut path, pid);
        let Ok(mut file) = std::fs::File::open(path) else {
            continue;
        };
        if file.read_to_end(buf).is_err() {
            continue;
        }
        if let Some(proc) = parse_stat(buf) {
            out.push(proc);
        }
    }
}

/// Whether the environment `pid` was started with (`/proc/PID/environ`) names the variable
/// `name` (given as `NAME=`). Every process forked from one that has it inherits it, whatever
/// its process group, session or parent: what lets the guardian find a setsid'd worker after the
/// wrapper died and its orphans were re-parented away (docs/timing.md, "The guardian").
/// Unreadable environments (another user's, a non-dumpable process) count as not marked.
pub(crate) fn environ_names(pid: i32, name: &[u8], buf: &mut Vec<u8>) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    let mut path = [0u8; 32];
    buf.clear();
    let read = std::fs::File::open(proc_path(&mut path, pid, "environ"))
        .and_then(|mut f| f.read_to_end(buf));
    if read.is_err() {
        return false;
    }
    buf.split(|&b| b == 0).any(|entry| entry.starts_with(name))
}

/// `/proc/PID/stat` without a heap allocation.
fn stat_path(buf: &mut [u8; 32], pid: u32) -> &str {
    proc_path(buf, pid, "stat")
}

/// `/proc/PID/FILE` without a heap allocation.
fn proc_path<'a>(buf: &'a mut [u8; 32], pid: u32, file: &str) -> &'a str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "/proc/{pid}/{file}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or("/proc/self/stat")
}

/// Parent links of one scan, for walking chains up to a root.
pub(crate) struct Parents(HashMap<i32, i32>);

impl Parents {
    pub(crate) fn of(procs: &[Proc]) -> Self {
        Parents(procs.iter().map(|p| (p.pid, p.ppid)).collect())
    }

    /// The child of `root` whose subtree holds `pid` (`pid` itself for a direct child), or `None`
    /// when `pid` does not descend from `root`.
    pub(crate) fn branch(&self, pid: i32, root: i32) -> Option<i32> {
        let mut current = pid;
        for _ in 0..MAX_DEPTH {
            let parent = *self.0.get(&current)?;
            if parent == root {
                return Some(current);
            }
            if parent <= 1 {
                return None;
            }
            current = parent;
        }
        None
    }
}

/// Sends `signal` to one process if it is still the one that was selected (same start time), so
/// a pid recycled since the scan is never hit. Returns whether the process still existed.
pub(crate) fn signal_if_same(proc: &Proc, signal: NixSignal) -> bool {
    let mut buf = Vec::with_capacity(512);
    let mut path = [0u8; 32];
    let Ok(pid) = u32::try_from(proc.pid) else {
        return false;
    };
    let same = std::fs::File::open(stat_path(&mut path, pid))
        .and_then(|mut f| f.read_to_end(&mut buf))
        .ok()
        .and_then(|_| parse_stat(&buf))
        .is_some_and(|now| now.start == proc.start && !now.zombie);
    if !same {
        return false;
    }
    !matches!(kill(Pid::from_raw(proc.pid), signal), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_parentheses_in_the_name() {
        let line = b"4242 (we ird) (x)) S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        let proc = parse_stat(line).expect("parses");
        assert_eq!(proc.pid, 4242);
        assert_eq!(proc.ppid, 17);
        assert_eq!(proc.pgrp, 4242);
        assert_eq!(proc.start, 98765);
        assert!(!proc.zombie);
        let zombie = b"5 (z) Z 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0";
        assert!(parse_stat(zombie).expect("parses").zombie);
        // A leader that called pthread_exit: `Z`, but two threads still run.
        let leader_gone = b"6 (t) Z 1 6 6 0 -1 0 0 0 0 0 0 0 0 0 20 0 2 0 7 0 0";
        assert!(!parse_stat(leader_gone).expect("parses").zombie);
        assert_eq!(parse_stat(leader_gone).expect("parses").start, 7);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn branches_lead_to_the_child_of_the_root() {
        let procs = [(10, 1), (20, 10), (30, 20), (40, 30), (50, 1)].map(|(pid, ppid)| Proc {
            pid,
            ppid,
            pgrp: pid,
            zombie: false,
            start: 0,
        });
        let parents = Parents::of(&procs);
        assert_eq!(parents.branch(40, 10), Some(20));
        assert_eq!(parents.branch(20, 10), Some(20));
        assert_eq!(parents.branch(50, 10), None);
        assert_eq!(parents.branch(10, 10), None);
    }

    #[test]
    fn environments_are_searched_by_whole_name() {
        let mut buf = Vec::new();
        let me = std::process::id() as i32;
        assert!(environ_names(me, b"PATH=", &mut buf));
        assert!(!environ_names(me, b"ATH=", &mut buf));
        assert!(!environ_names(me, b"LOCKWRAP_NO_SUCH_VARIABLE=", &mut buf));
        assert!(!environ_names(-1, b"PATH=", &mut buf));
    }

    #[test]
    fn the_scan_sees_this_process() {
        let (mut procs, mut buf) = (Vec::new(), Vec::new());
        scan(&mut procs, &mut buf);
        let me = std::process::id() as i32;
        assert!(procs.iter().any(|p| p.pid == me));
    }
}
