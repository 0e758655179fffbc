//! The terminal's foreground process group: handed to an interactive command and taken back.

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

/// The foreground process group of the terminal on stdin, if stdin is a terminal.
///
/// Called through libc because nix gates `tcgetpgrp` behind its `term` feature, which lockwrap
/// does not otherwise need.
pub(crate) fn foreground_group() -> Option<Pid> {
    // SAFETY: tcgetpgrp only reads the descriptor number; a closed or non-tty fd yields -1.
    let pgid = unsafe { libc::tcgetpgrp(libc::STDIN_FILENO) };
    (pgid > 0).then(|| Pid::from_raw(pgid))
}

/// Makes `pgid` the foreground group of the terminal on stdin. Async-signal-safe (used pre-exec).
pub(crate) fn set_foreground_group(pgid: Pid) -> nix::Result<()> {
    // SAFETY: tcsetpgrp only passes integers to the kernel.
    Errno::result(unsafe { libc::tcsetpgrp(libc::STDIN_FILENO, pgid.as_raw()) }).map(drop)
}
