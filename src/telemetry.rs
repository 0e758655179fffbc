//! What lockwrap knows about its own state, shared by the lock path (writer) and the HTTP
//! server / status file (readers): Prometheus metrics and the current leadership status.
//! Writers never block: metrics are atomics and the status is a `watch` channel.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::backend::LockInfo;

/// The state served at `/leader` and written to `--status-file`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LeaderStatus {
    pub key: String,
    #[serde(rename = "isLeader")]
    pub is_leader: bool,
    /// The current holder's stored info (`holder` object of the entry), ours or another's.
    pub holder: Option<Value>,
    /// The holding session (ours when leader).
    pub session: Option<String>,
    #[serde(rename = "fencingToken")]
    pub fencing_token: Option<u64>,
    /// When this instance became leader (UTC ISO-8601), or `null`.
    pub since: Option<String>,
}

/// Metrics plus status; one per process, shared behind an `Arc`.
pub struct Telemetry {
    registry: Registry,
    lock_held: Gauge,
    acquisitions: Counter,
    lost: Counter,
    renew_failures: Counter,
    acquire_wait: Histogram,
    child_exit_code: Gauge,
    status: watch::Sender<LeaderStatus>,
    /// False while Consul calls of the lock path fail (drives `/healthz`).
    consul_healthy: AtomicBool,
    /// Consul answered at least once since start (a reachable address, not a typo).
    consul_answered: AtomicBool,
    consecutive_renew_failures: AtomicI64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new("")
    }
}

impl Telemetry {
    pub fn new(key: &str) -> Self {
        let mut registry = Registry::default();
        let lock_held = Gauge::default();
        let acquisitions = Counter::default();
        let lost = Counter::default();
        let renew_failures = Counter::default();
        // Buckets from 1 ms (uncontended acquire) to ~1 h (a standby waiting for a release).
        let acquire_wait = Histogram::new(
            [
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0,
                3600.0,
            ]
            .into_iter(),
        );
        let child_exit_code = Gauge::default();
        registry.register(
            "lockwrap_lock_held",
            "1 while this instance holds the lock",
            lock_held.clone(),
        );
        registry.register(
            "lockwrap_acquisitions",
            "Times this instance acquired the lock",
            acquisitions.clone(),
        );
        registry.register(
            "lockwrap_lock_lost",
            "Times this instance lost the lock while holding it",
            lost.clone(),
        );
        registry.register(
            "lockwrap_session_renew_failures",
            "Failed session renewals (transient errors; 404 counts as loss)",
            renew_failures.clone(),
        );
        registry.register(
            "lockwrap_acquire_wait_seconds",
            "Time from starting to campaign until the lock was held",
            acquire_wait.clone(),
        );
        registry.register(
            "lockwrap_child_exit_code",
            "Exit code of the last wrapped command (-1 while none has exited)",
            child_exit_code.clone(),
        );
        child_exit_code.set(-1);
        let (status, _) = watch::channel(LeaderStatus {
            key: key.to_string(),
            ..Default::default()
        });
        Telemetry {
            registry,
            lock_held,
            acquisitions,
            lost,
            renew_failures,
            acquire_wait,
            child_exit_code,
            status,
            consul_healthy: AtomicBool::new(true),
            consul_answered: AtomicBool::new(false),
            consecutive_renew_failures: AtomicI64::new(0),
        }
    }

    pub fn acquired(&self, info: &LockInfo, waited: Duration, since: String) {
        self.lock_held.set(1);
        self.acquisitions.inc();
        self.set_consul_healthy(true);
        self.acquire_wait.observe(waited.as_secs_f64());
        self.consecutive_renew_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.is_leader = true;
            s.holder = info.holder.clone();
            s.session = info.session.clone();
            s.fencing_token = info.fencing_token;
            s.since = Some(since);
        });
    }

    /// Leadership ended: `lost` counts it as a loss (not a planned release).
    pub fn not_leader(&self, lost: bool) {
        if lost {
            self.lost.inc();
        }
        self.lock_held.set(0);
        self.status.send_modify(|s| {
            s.is_leader = false;
            s.holder = None;
            s.session = None;
            s.fencing_token = None;
            s.since = None;
        });
    }

    /// Another instance holds the lock (seen while waiting).
    pub fn observed_holder(&self, info: Option<&LockInfo>) {
        self.status.send_if_modified(|s| {
            if s.is_leader {
                return false;
            }
            let holder = info.and_then(|i| i.holder.clone());
            let session = info.and_then(|i| i.session.clone());
            let token = info.and_then(|i| i.fencing_token);
            let changed = s.holder != holder || s.session != session || s.fencing_token != token;
            s.holder = holder;
            s.session = session;
            s.fencing_token = token;
            changed
        });
    }

    /// A loss caused by Consul not answering also makes the instance unhealthy until Consul
    /// answers again.
    pub fn lost_because(&self, reason: &crate::backend::LossReason) {
        use crate::backend::LossReason;
        if matches!(
            reason,
            LossReason::LeaseDeadline | LossReason::ConsulUnreachable(_)
        ) {
            self.set_consul_healthy(false);
        }
    }

    pub fn renew_failed(&self) {
        self.renew_failures.inc();
        self.consecutive_renew_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn renew_succeeded(&self) {
        self.consecutive_renew_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_consul_healthy(&self, healthy: bool) {
        self.consul_healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
        if healthy {
            self.consul_answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn consul_answered(&self) -> bool {
        self.consul_answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Healthy = Consul answers and, when leader, the session renews.
    pub fn healthy(&self) -> bool {
        self.consul_healthy
            .load(std::sync::atomic::Ordering::Relaxed)
            && self
                .consecutive_renew_failures
                .load(std::sync::atomic::Ordering::Relaxed)
                < 2
    }

    pub fn child_exited(&self, code: i32) {
        self.child_exit_code.set(i64::from(code));
    }

    pub fn status(&self) -> LeaderStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaderStatus> {
        self.status.subscribe()
    }

    /// Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The backend reports into the metrics and health through the trait it owns.
impl crate::backend::BackendEvents for Telemetry {
    fn renew_succeeded(&self) {
        Telemetry::renew_succeeded(self);
    }
    fn renew_failed(&self) {
        Telemetry::renew_failed(self);
    }
    fn store_healthy(&self, healthy: bool) {
        self.set_consul_healthy(healthy);
    }
    fn observed_holder(&self, info: Option<&LockInfo>) {
        Telemetry::observed_holder(self, info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_the_documented_names() {
        let t = Telemetry::new("k");
        let text = t.render_metrics();
        for name in [
            "lockwrap_lock_held",
            "lockwrap_acquisitions_total",
            "lockwrap_lock_lost_total",
            "lockwrap_session_renew_failures_total",
            "lockwrap_acquire_wait_seconds_bucket",
            "lockwrap_child_exit_code",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    #[test]
    fn leader_status_serialises_with_spec_fields() {
        let t = Telemetry::new("k");
        let v = serde_json::to_value(t.status()).unwrap();
        for f in [
            "key",
            "isLeader",
            "holder",
            "session",
            "fencingToken",
            "since",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }
}
