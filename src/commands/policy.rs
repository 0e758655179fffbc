//! The one signal policy: what a signal lockwrap receives means in each phase. Every loop that
//! listens to signals asks [`on_signal`]; nothing else decides.

use tokio::sync::mpsc;

use crate::locks::hold::{Interrupt, Interrupts};
use crate::supervisor::Signal;

/// Where lockwrap is when the signal arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the lock (or for the takeover delay): nothing of ours runs yet.
    Waiting,
    /// `sidecar` holding the lock: there is no command, leadership is only reported.
    Leading,
    /// `run` / `execute` holding the lock with the command running.
    Supervising,
}

/// What to do with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Stop: leave the wait, or step down (release) when leading.
    Stop,
    /// Pass it to the command's process group and keep going.
    Forward,
    /// Pass it to the command, then stop it gracefully (TERM → kill grace → KILL) and release.
    ForwardAndStop,
    /// Nothing to do (logged at debug).
    Ignore,
}

/// The action for `signal` in `phase`. Without a command of ours, a signal whose default
/// action is to terminate (TERM, INT, HUP, QUIT) ends lockwrap cleanly; with a command running,
/// every forwarded signal is the command's to handle, and TERM/INT also start a graceful stop
/// (README, "The supervisor").
pub(crate) fn on_signal(signal: Signal, phase: Phase) -> Action {
    let terminating = signal.requests_stop() || signal == Signal::HUP || signal == Signal::QUIT;
    match phase {
        Phase::Waiting | Phase::Leading if terminating => Action::Stop,
        Phase::Waiting | Phase::Leading => Action::Ignore,
        Phase::Supervising if signal.requests_stop() => Action::ForwardAndStop,
        Phase::Supervising => Action::Forward,
    }
}

/// The signals lockwrap receives, read through [`on_signal`] for one phase: what the hold loop
/// (`locks::hold`) listens to in `run`, `execute` and `sidecar`.
pub(crate) struct Signals<'a> {
    signals: &'a mut mpsc::UnboundedReceiver<Signal>,
    phase: Phase,
}

impl<'a> Signals<'a> {
    pub(crate) fn new(signals: &'a mut mpsc::UnboundedReceiver<Signal>, phase: Phase) -> Self {
        Signals { signals, phase }
    }
}

impl Interrupts for Signals<'_> {
    // Cancel-safe: nothing is awaited after a signal is taken from the channel.
    async fn next(&mut self) -> Interrupt {
        loop {
            let Some(signal) = self.signals.recv().await else {
                // No more signals will come: only the command or the lease can end the hold.
                return std::future::pending().await;
            };
            match on_signal(signal, self.phase) {
                Action::Forward => return Interrupt::Forward(signal),
                Action::ForwardAndStop => return Interrupt::ForwardAndStop(signal),
                Action::Stop => return Interrupt::Stop(signal),
                Action::Ignore => {
                    tracing::debug!(signal = signal.name(), "signal ignored");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_and_leading_stop_on_every_terminating_signal_alike() {
        for phase in [Phase::Waiting, Phase::Leading] {
            for s in [Signal::TERM, Signal::INT, Signal::HUP, Signal::QUIT] {
                assert_eq!(on_signal(s, phase), Action::Stop, "{s:?} {phase:?}");
            }
            assert_eq!(on_signal(Signal::USR1, phase), Action::Ignore);
            assert_eq!(on_signal(Signal::WINCH, phase), Action::Ignore);
        }
    }

    #[test]
    fn a_running_command_gets_every_signal_and_term_int_stop_it() {
        assert_eq!(
            on_signal(Signal::TERM, Phase::Supervising),
            Action::ForwardAndStop
        );
        assert_eq!(
            on_signal(Signal::INT, Phase::Supervising),
            Action::ForwardAndStop
        );
        for s in [Signal::HUP, Signal::QUIT, Signal::USR1, Signal::USR2] {
            assert_eq!(on_signal(s, Phase::Supervising), Action::Forward, "{s:?}");
        }
    }

    #[tokio::test]
    async fn the_hold_loop_hears_each_signal_as_the_policy_says() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for s in [Signal::USR1, Signal::TERM] {
            tx.send(s).expect("open channel");
        }
        let mut supervising = Signals::new(&mut rx, Phase::Supervising);
        assert_eq!(supervising.next().await, Interrupt::Forward(Signal::USR1));
        assert_eq!(
            supervising.next().await,
            Interrupt::ForwardAndStop(Signal::TERM)
        );
        // A sidecar leading ignores USR1 and WINCH, and steps down on HUP.
        for s in [Signal::USR1, Signal::WINCH, Signal::HUP] {
            tx.send(s).expect("open channel");
        }
        let mut leading = Signals::new(&mut rx, Phase::Leading);
        assert_eq!(leading.next().await, Interrupt::Stop(Signal::HUP));
    }
}
