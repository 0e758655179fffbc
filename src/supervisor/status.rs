//! How a child ended, and the exit code lockwrap passes on (README, "Exit codes").

use std::fmt;

use nix::sys::signal::Signal;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The code lockwrap exits with: the command's own code, or 128 + the signal number.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }

    pub(crate) fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(number) => match Signal::try_from(number) {
                Ok(signal) => write!(f, "killed by {}", signal.as_str()),
                Err(_) => write!(f, "killed by signal {number}"),
            },
        }
    }
}
