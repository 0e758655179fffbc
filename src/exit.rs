//! The exit-code table (README, "Exit codes") and the one place where an outcome becomes a process exit code.

use std::fmt;

/// Every failure lockwrap reports, each with its documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A required setting (e.g. the key) is missing.
    MissingSetting,
    /// An environment variable or the YAML config file holds an invalid value.
    InvalidEnvironment,
    /// A command-line argument is invalid (incl. layout/flags and semaphore limit conflicts).
    InvalidArgument,
    /// Consul's ACL system refused the request (HTTP 403).
    PermissionDenied,
    /// The lock could not be acquired within `--timeout`.
    Timeout,
    /// The key breaks the key rules (README, "Key layouts").
    InvalidKey,
    /// The session TTL is outside 10 s … 86400 s (or 0).
    InvalidTtl,
    /// Consul could not be reached, or answered unexpectedly, after retries.
    ConsulUnavailable,
    /// The lock is held by someone else and the caller asked not to wait.
    Locked,
    /// The lock was lost while the command ran; the command was stopped.
    LockLost,
    /// The command exists but cannot be executed.
    NotExecutable,
    /// The command does not exist.
    CommandNotFound,
    /// lockwrap could not set itself up (signal handling, the async runtime): not the user's
    /// input and not Consul.
    Internal,
}

impl ErrorKind {
    /// Every kind, in exit-code order (for `--help`).
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::MissingSetting,
        ErrorKind::InvalidEnvironment,
        ErrorKind::InvalidArgument,
        ErrorKind::PermissionDenied,
        ErrorKind::Timeout,
        ErrorKind::InvalidKey,
        ErrorKind::InvalidTtl,
        ErrorKind::ConsulUnavailable,
        ErrorKind::Internal,
        ErrorKind::Locked,
        ErrorKind::LockLost,
        ErrorKind::NotExecutable,
        ErrorKind::CommandNotFound,
    ];

    /// A few words for `--help`'s exit-code list.
    pub fn summary(self) -> &'static str {
        match self {
            ErrorKind::MissingSetting => "missing setting",
            ErrorKind::InvalidEnvironment => "bad env/config file",
            ErrorKind::InvalidArgument => "bad argument",
            ErrorKind::PermissionDenied => "ACL denied",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidKey => "bad key",
            ErrorKind::InvalidTtl => "bad TTL",
            ErrorKind::ConsulUnavailable => "Consul unreachable",
            ErrorKind::Internal => "internal error",
            ErrorKind::Locked => "locked",
            ErrorKind::LockLost => "lock lost",
            ErrorKind::NotExecutable => "command not executable",
            ErrorKind::CommandNotFound => "command not found",
        }
    }

    /// The process exit code documented for this failure.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::MissingSetting => 1,
            ErrorKind::InvalidEnvironment => 2,
            ErrorKind::InvalidArgument => 3,
            ErrorKind::PermissionDenied => 4,
            ErrorKind::Timeout => 5,
            ErrorKind::InvalidKey => 6,
            ErrorKind::InvalidTtl => 7,
            ErrorKind::ConsulUnavailable => 8,
            ErrorKind::Locked => 100,
            ErrorKind::LockLost => 101,
            ErrorKind::NotExecutable => 126,
            ErrorKind::CommandNotFound => 127,
            // sysexits.h EX_SOFTWARE.
            ErrorKind::Internal => 70,
        }
    }
}

/// `--help`'s exit-code list, generated from the table above so the two cannot drift.
pub(crate) fn exit_code_help() -> String {
    let codes: Vec<String> = ErrorKind::ALL
        .iter()
        .map(|k| format!("{} {}", k.exit_code(), k.summary()))
        .collect();
    format!(
        "Exit codes: 0 ok, {}, otherwise the command's own code (128+N when killed by signal N).",
        codes.join(", ")
    )
}

/// A failure with its kind (which decides the exit code) and a one-line message for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Prefixes the message with what was being done, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// How a subcommand ended; `main` turns it into the process exit code and nothing else does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything went as asked.
    Success,
    /// The wrapped command's own code (N, or 128+S when a signal killed it).
    Child(i32),
    /// A documented failure; its message has already been logged or is printed by `main`.
    Failed(Error),
    /// Exiting because lockwrap itself received a signal while waiting (128+S).
    Interrupted(i32),
    /// The lock was taken and `--non-blocking` or `--timeout` gave up (the error says which),
    /// exiting with the code chosen by `--locked-exit-code` instead of the error's own.
    GaveUp { error: Error, code: i32 },
}

impl Outcome {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Child(code) => *code,
            Outcome::Failed(err) => err.kind.exit_code(),
            Outcome::Interrupted(signal) => 128 + signal,
            Outcome::GaveUp { code, .. } => *code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec_table() {
        let table = [
            (ErrorKind::MissingSetting, 1),
            (ErrorKind::InvalidEnvironment, 2),
            (ErrorKind::InvalidArgument, 3),
            (ErrorKind::PermissionDenied, 4),
            (ErrorKind::Timeout, 5),
            (ErrorKind::InvalidKey, 6),
            (ErrorKind::InvalidTtl, 7),
            (ErrorKind::ConsulUnavailable, 8),
            (ErrorKind::Internal, 70),
            (ErrorKind::Locked, 100),
            (ErrorKind::LockLost, 101),
            (ErrorKind::NotExecutable, 126),
            (ErrorKind::CommandNotFound, 127),
        ];
        for (kind, code) in table {
            assert_eq!(kind.exit_code(), code, "{kind:?}");
        }
        assert_eq!(table.len(), ErrorKind::ALL.len());
        assert!(exit_code_help().contains("101 lock lost"));
        assert_eq!(Outcome::Interrupted(15).exit_code(), 143);
        assert_eq!(Outcome::Child(3).exit_code(), 3);
    }
}
