//! The one place OS signals are translated: the [`Signal`] newtype, the [`FORWARDED`] list, and the
//! std thread that turns raw signal numbers into reaps (SIGCHLD) or channel messages (the rest).

use std::fmt;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal as NixSignal};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use super::reaper::{self, SharedRegistry};

/// A signal as the rest of lockwrap sees it. Wrapping nix's enum keeps raw numbers (and nix) out of
/// the run loop's code, and gives one spot for questions like "does this signal mean stop?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(NixSignal);

impl Signal {
    /// SIGHUP: forwarded to the command; while waiting for the lock, a stop.
    pub const HUP: Signal = Signal(NixSignal::SIGHUP);
    /// SIGINT: forwarded, and starts a graceful stop (grace, then SIGKILL).
    pub const INT: Signal = Signal(NixSignal::SIGINT);
    /// SIGQUIT: forwarded; while waiting for the lock, a stop.
    pub const QUIT: Signal = Signal(NixSignal::SIGQUIT);
    /// SIGKILL: the end of every grace period.
    pub const KILL: Signal = Signal(NixSignal::SIGKILL);
    /// SIGUSR1: forwarded to the command as is.
    pub const USR1: Signal = Signal(NixSignal::SIGUSR1);
    /// SIGUSR2: forwarded to the command as is.
    pub const USR2: Signal = Signal(NixSignal::SIGUSR2);
    /// SIGTERM: forwarded, and starts a graceful stop; the first step of stopping a command.
    pub const TERM: Signal = Signal(NixSignal::SIGTERM);
    /// SIGCONT: sent after TERM so a stopped (SIGSTOP'd) command can act on it.
    pub const CONT: Signal = Signal(NixSignal::SIGCONT);
    /// SIGWINCH: forwarded, so an interactive command follows the terminal's size.
    pub const WINCH: Signal = Signal(NixSignal::SIGWINCH);

    /// Translates a raw signal number; `None` for numbers nix does not name (e.g. real-time signals).
    pub(crate) fn from_raw(raw: i32) -> Option<Signal> {
        NixSignal::try_from(raw).ok().map(Signal)
    }

    /// The signal number, as used by `kill(2)` and by the 128+N exit-code convention.
    pub const fn number(self) -> i32 {
        self.0 as i32
    }

    /// The conventional name, e.g. `"SIGTERM"`, for logs.
    pub const fn name(self) -> &'static str {
        self.0.as_str()
    }

    /// The nix value, for the few places that make the system call.
    pub(crate) const fn as_nix(self) -> NixSignal {
        self.0
    }

    /// SIGTERM and SIGINT ask lockwrap itself to shut down (README, "The supervisor": forward, grace, kill, release);
    /// every other forwarded signal is only passed on to the command.
    pub(crate) fn requests_stop(self) -> bool {
        self == Signal::TERM || self == Signal::INT
    }
}

impl From<NixSignal> for Signal {
    fn from(signal: NixSignal) -> Self {
        Signal(signal)
    }
}

impl From<Signal> for NixSignal {
    fn from(signal: Signal) -> Self {
        signal.0
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every signal lockwrap catches and hands to the run loop (which forwards it to the command's group).
///
/// Left out on purpose:
/// - SIGCHLD: consumed by the reaper, never forwarded.
/// - SIGPIPE: a write error of lockwrap's own, not a message for the command.
/// - SIGKILL, SIGSTOP: cannot be caught.
/// - SIGILL, SIGFPE, SIGSEGV (forbidden by signal-hook) and SIGBUS: synchronous faults in lockwrap
///   itself; a handler that returns would re-run the faulting instruction forever.
///
/// - SIGTTIN, SIGTTOU: ignored instead (see [`IGNORED`]).
///
/// Catching SIGTSTP means lockwrap never stops itself on `kill -TSTP`; the command's group gets it.
pub(crate) const FORWARDED: &[Signal] = &[
    Signal(NixSignal::SIGHUP),
    Signal(NixSignal::SIGINT),
    Signal(NixSignal::SIGQUIT),
    Signal(NixSignal::SIGTRAP),
    Signal(NixSignal::SIGABRT),
    Signal(NixSignal::SIGUSR1),
    Signal(NixSignal::SIGUSR2),
    Signal(NixSignal::SIGALRM),
    Signal(NixSignal::SIGTERM),
    Signal(NixSignal::SIGCONT),
    Signal(NixSignal::SIGTSTP),
    Signal(NixSignal::SIGURG),
    Signal(NixSignal::SIGXCPU),
    Signal(NixSignal::SIGXFSZ),
    Signal(NixSignal::SIGVTALRM),
    Signal(NixSignal::SIGPROF),
    Signal(NixSignal::SIGWINCH),
    Signal(NixSignal::SIGIO),
    Signal(NixSignal::SIGPWR),
    Signal(NixSignal::SIGSYS),
];

/// Signals lockwrap ignores, as tini does. The kernel sends them to a background process group
/// that touches the terminal, which lockwrap is while the command owns the foreground. If they were
/// caught, a write to a `stty tostop` terminal or a `tcsetpgrp` would be restarted after every
/// handler run and raise the signal again, forever; ignored, the write simply proceeds. Children
/// get the default disposition back before exec (see `child::prepare_child`).
pub(crate) const IGNORED: &[Signal] = &[Signal(NixSignal::SIGTTIN), Signal(NixSignal::SIGTTOU)];

/// Ignores [`IGNORED`] and registers process-wide handlers for [`FORWARDED`] and SIGCHLD. Done on
/// the calling thread (before the runtime exists) so that no signal that arrives from now on is
/// lost: signal-hook records it and the signal thread picks it up even if it has not started yet.
pub(crate) fn register() -> std::io::Result<Signals> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in IGNORED {
        // SAFETY: installs the SIG_IGN disposition, no handler code.
        unsafe { sigaction(signal.as_nix(), &ignore) }?;
    }
    let raw = FORWARDED
        .iter()
        .map(|signal| signal.number())
        .chain(std::iter::once(NixSignal::SIGCHLD as i32));
    Signals::new(raw)
}

/// Body of the signal thread: SIGCHLD → reap (under the registry lock); anything else → channel.
///
/// signal-hook coalesces repeats of one signal that arrive before this loop reads them; that is the
/// usual Unix semantics (pending signals are a set) and harmless for forwarding and for reaping,
/// since one reap pass collects every exited child.
pub(crate) fn run_thread(
    mut signals: Signals,
    registry: SharedRegistry,
    forward: UnboundedSender<Signal>,
) {
    // Children may have exited between handler registration and this thread starting (or before
    // lockwrap started, when it is PID 1 of a container); their SIGCHLD may already be consumed.
    reaper::reap_all(&registry);
    for raw in signals.forever() {
        if raw == NixSignal::SIGCHLD as i32 {
            reaper::reap_all(&registry);
            continue;
        }
        match Signal::from_raw(raw) {
            Some(signal) => {
                debug!(signal = signal.name(), "received signal");
                if forward.send(signal).is_err() {
                    debug!(
                        signal = signal.name(),
                        "no one listens for signals any more; dropped"
                    );
                }
            }
            None => warn!(raw, "received a signal with no name; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn forwarded_excludes_chld_pipe_and_uncatchable_or_fault_signals() {
        for excluded in [
            NixSignal::SIGCHLD,
            NixSignal::SIGPIPE,
            NixSignal::SIGKILL,
            NixSignal::SIGSTOP,
            NixSignal::SIGILL,
            NixSignal::SIGFPE,
            NixSignal::SIGSEGV,
            NixSignal::SIGBUS,
        ] {
            assert!(
                !FORWARDED.contains(&Signal::from(excluded)),
                "{excluded} must not be forwarded"
            );
        }
    }

    #[test]
    fn ignored_signals_are_not_forwarded() {
        for signal in IGNORED {
            assert!(!FORWARDED.contains(signal), "{signal}");
        }
    }

    #[test]
    fn forwarded_contains_the_signals_the_spec_names_once_each() {
        for named in [
            Signal::TERM,
            Signal::INT,
            Signal::HUP,
            Signal::QUIT,
            Signal::USR1,
            Signal::USR2,
            Signal::WINCH,
            Signal::CONT,
        ] {
            assert!(FORWARDED.contains(&named), "{named} must be forwarded");
        }
        let unique: HashSet<_> = FORWARDED.iter().collect();
        assert_eq!(unique.len(), FORWARDED.len());
    }

    #[test]
    fn forwarded_signals_are_all_allowed_by_signal_hook() {
        for signal in FORWARDED {
            assert!(!signal_hook::consts::FORBIDDEN.contains(&signal.number()));
        }
    }

    #[test]
    fn raw_numbers_round_trip_and_unknown_numbers_are_none() {
        assert_eq!(Signal::from_raw(15), Some(Signal::TERM));
        assert_eq!(Signal::TERM.number(), 15);
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(Signal::from_raw(1000), None);
        assert_eq!(Signal::USR1.to_string(), "SIGUSR1");
    }

    #[test]
    fn only_term_and_int_request_a_stop() {
        let stopping: Vec<_> = FORWARDED.iter().filter(|s| s.requests_stop()).collect();
        assert_eq!(stopping, [&Signal::INT, &Signal::TERM]);
    }
}
