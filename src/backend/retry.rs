//! Back-off for transient Consul trouble (no leader yet, agent restarting, node not yet
//! registered): jittered, bounded, and logged once per state change rather than once per try.

use std::time::Duration;

use crate::backend::BackendError;

/// First pause after a transient failure, and the cap: quick enough that a fresh agent's
/// "Missing node registration" costs a fraction of a second, slow enough at the cap that every
/// replica of a fleet waiting out a leader election does not become a request storm.
pub(crate) const FIRST: Duration = Duration::from_millis(100);
pub(crate) const MAX: Duration = Duration::from_secs(5);
/// How long a `--non-blocking` attempt rides out transient errors before giving up (exit 8).
pub(crate) const NON_BLOCKING_PATIENCE: Duration = Duration::from_secs(10);

/// `pause` scaled by a random factor in [0.5, 1.0): replicas that failed together do not retry
/// together.
pub(crate) fn jitter(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Exponential back-off with jitter that remembers whether it is in an outage, so the caller
/// logs one line when trouble starts and one when it ends.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST,
            failures: 0,
        }
    }
}

impl Backoff {
    /// Records a transient failure; returns the pause to take before the next try. Logs the
    /// first failure of an outage (as a warning, with what is being done) and nothing after.
    pub(crate) fn failed(&mut self, what: &str, err: &BackendError) -> Duration {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(%err, "{what}: Consul is not ready (transient); retrying with back-off");
        } else {
            tracing::debug!(%err, failures = self.failures, "{what}: still failing");
        }
        let pause = jitter(self.next);
        self.next = (self.next * 2).min(MAX);
        pause
    }

    /// Records a success; logs the recovery once if there was an outage.
    pub(crate) fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            // At warning level too: it closes the warning that opened the outage.
            tracing::warn!(failures = self.failures, "{what}: Consul answers again");
        }
        *self = Backoff::default();
    }

    /// Whether the last call failed.
    pub(crate) fn in_outage(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let err = BackendError::Transient("no leader".into());
        let mut b = Backoff::default();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.failed("test", &err);
            assert!(last < MAX + Duration::from_millis(1));
        }
        assert!(last >= MAX / 2);
        assert!(b.in_outage());
        b.succeeded("test");
        assert!(!b.in_outage());
        assert!(b.failed("test", &err) < FIRST);
    }
}
