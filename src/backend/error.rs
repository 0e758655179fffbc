//! Typed errors at the backend boundary: callers decide on retries and exit codes by kind.

use crate::exit::{Error, ErrorKind};

/// What went wrong talking to the lock store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying: connection refused/reset, timeout, HTTP 5xx.
    #[error("{0}")]
    Transient(String),
    /// The store refused because of permissions (Consul ACL, HTTP 403).
    #[error("permission denied by Consul ACL: {0}")]
    Denied(String),
    /// The entry exists in a shape lockwrap must not touch (other flags, other semaphore limit).
    #[error("{0}")]
    Conflict(String),
    /// The request itself was refused (HTTP 4xx other than 403/404), or the answer made no sense.
    #[error("{0}")]
    Invalid(String),
    /// The session does not exist (renew answered 404).
    #[error("session not found: {0}")]
    SessionGone(String),
    /// The outcome of a write is unknown: it may or may not have been applied.
    #[error("{0}")]
    Unknown(String),
}

impl BackendError {
    /// Whether retrying the same request may succeed (connection trouble, a busy server).
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }

    /// The failure kind, and so the CLI's exit code, this error stands for (README, "Exit codes").
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Denied(_) => ErrorKind::PermissionDenied,
            BackendError::Conflict(_) => ErrorKind::InvalidArgument,
            BackendError::Transient(_)
            | BackendError::Invalid(_)
            | BackendError::SessionGone(_)
            | BackendError::Unknown(_) => ErrorKind::ConsulUnavailable,
        }
    }
}

impl From<BackendError> for Error {
    fn from(err: BackendError) -> Self {
        Error::new(err.kind(), err.to_string())
    }
}
