//! The library's error: a kind (which the CLI turns into its exit code), what failed, and the
//! underlying cause kept as [`std::error::Error::source`] instead of being folded into a string.

use std::fmt;
use std::sync::Arc;

use crate::backend::consul::SettingsError;
use crate::backend::BackendError;
use crate::exit::{self, ErrorKind};

/// Why a [`LockManager`](crate::LockManager) operation failed.
///
/// [`Error::kind`] says what kind of failure it is (the same kinds, and exit codes, as the CLI);
/// `Display` says what failed; [`source`](std::error::Error::source) is the cause when there is
/// one, e.g. the [`BackendError`] Consul's answer became. [`Error::one_line`] is the whole story
/// on one line, as `lockwrap` prints it.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    /// What failed (`acquiring KEY`), or the whole story when there is no cause.
    message: String,
    /// Whether [`Error::one_line`] starts with `message`: false where the CLI has always shown the
    /// cause alone (reading, listing and releasing keys), so its lines stay as they were.
    in_line: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A failure with no underlying cause.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            in_line: true,
            source: None,
        }
    }

    /// A failure of the lock store while doing `what` (`acquiring KEY`); the store's error is
    /// the source, and decides the kind.
    pub(crate) fn backend(what: impl Into<String>, err: BackendError) -> Self {
        Error {
            kind: err.kind(),
            message: what.into(),
            in_line: true,
            source: Some(Arc::new(err)),
        }
    }

    /// As [`Error::backend`], for operations whose CLI line has always been the store's error
    /// alone (`status`, `unlock`): `Display` still says what failed.
    pub(crate) fn backend_quiet(what: impl Into<String>, err: BackendError) -> Self {
        Error {
            in_line: false,
            ..Error::backend(what, err)
        }
    }

    /// Consul settings that cannot make a client (`kind`: where they came from).
    pub(crate) fn settings(kind: ErrorKind, err: SettingsError) -> Self {
        Error {
            kind,
            message: "invalid Consul connection settings".to_string(),
            in_line: false,
            source: Some(Arc::new(err)),
        }
    }

    /// What kind of failure this is; [`ErrorKind::exit_code`] is the code `lockwrap` would exit
    /// with for it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// This error and its causes on one line, `: `-separated, as `lockwrap` prints failures.
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        if self.in_line || self.source.is_none() {
            parts.push(self.message.clone());
        }
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            parts.push(err.to_string());
            cause = err.source();
        }
        parts.join(": ")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|err| err as &(dyn std::error::Error + 'static))
    }
}

/// A lease's own failure ([`HeldLock::release`](crate::HeldLock::release)), so `?` works on it
/// in a function returning this error.
impl From<BackendError> for Error {
    fn from(err: BackendError) -> Self {
        Error::backend_quiet("the lock store (Consul) failed", err)
    }
}

/// The CLI's error: the same kind, and the one line it has always printed.
impl From<Error> for exit::Error {
    fn from(err: Error) -> Self {
        exit::Error::new(err.kind, err.one_line())
    }
}

/// Crate-internal checks (key rules, timing refusals) already speak the CLI's error.
impl From<exit::Error> for Error {
    fn from(err: exit::Error) -> Self {
        Error::new(err.kind, err.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_source_and_the_cli_line_is_unchanged() {
        let err = Error::backend(
            "acquiring a/b",
            BackendError::Denied("Missing key:write".into()),
        );
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert_eq!(err.to_string(), "acquiring a/b");
        let source = std::error::Error::source(&err).expect("a source");
        assert!(matches!(
            source.downcast_ref::<BackendError>(),
            Some(BackendError::Denied(_))
        ));
        let cli = exit::Error::from(err);
        assert_eq!(
            cli.message,
            "acquiring a/b: permission denied by Consul ACL: Missing key:write"
        );
        assert_eq!(cli.kind.exit_code(), 4);
    }

    #[test]
    fn a_quiet_context_is_shown_but_not_printed_by_the_cli() {
        let err = Error::backend_quiet("reading a/b", BackendError::Transient("refused".into()));
        assert_eq!(err.to_string(), "reading a/b");
        assert_eq!(err.one_line(), "refused");
        assert_eq!(err.kind().exit_code(), 8);
        let plain = Error::new(ErrorKind::InvalidKey, "bad key");
        assert_eq!(plain.one_line(), "bad key");
        assert!(std::error::Error::source(&plain).is_none());
    }
}
