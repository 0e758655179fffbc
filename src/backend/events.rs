//! What a backend reports while it works: renewals, Consul's health, the holder it saw.
//! The backend owns this trait and the application implements it (`telemetry::Telemetry`), so
//! the lock store never reaches into the application's metrics.

use crate::backend::LockInfo;

/// Events a backend reports; every method has a no-op default.
pub(crate) trait BackendEvents: Send + Sync + std::fmt::Debug {
    /// A session renew succeeded.
    fn renew_succeeded(&self) {}
    /// A session renew failed (and will be retried until the lease deadline).
    fn renew_failed(&self) {}
    /// Whether the lock store answers as it should.
    fn store_healthy(&self, _healthy: bool) {}
    /// The current holder as a read saw it (`None`: nobody).
    fn observed_holder(&self, _info: Option<&LockInfo>) {}
    /// The local stop deadline of the hold moved (each accepted renew or check pass moves it;
    /// `None`: nothing is held). Consumers of `/leader` and the status file must stop trusting
    /// a "leader" after it (docs/timing.md).
    fn lease_deadline(&self, _deadline: Option<std::time::Instant>) {}
    /// Waiters in the key's fair queue as this waiter last saw them, itself included (`None`:
    /// not queued, or it left the queue).
    fn queue_waiters(&self, _waiters: Option<usize>) {}
}

/// Reports nowhere (library use without metrics).
#[derive(Debug, Default)]
pub(crate) struct NoEvents;

impl BackendEvents for NoEvents {}
