//! What lockwrap knows about its own state, shared by the lock path (writer) and the HTTP
//! server / status file (readers): Prometheus metrics and the current leadership status.
//! Writers never block: metrics are atomics, the status is a `watch` channel, and status
//! listeners (the status file) only take the latest snapshot and hand it to their own thread.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
pub(crate) struct LeaderStatus {
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
    /// Until when `isLeader: true` may be trusted (RFC 3339, UTC): the hold's local stop
    /// deadline (docs/timing.md) as wall-clock time, computed when served or written. Past it,
    /// a consumer must treat this instance as not leading (README, "Observability").
    #[serde(rename = "validUntil")]
    pub valid_until: Option<String>,
}

/// What the lock path last reported: the status without `validUntil`, plus the hold's stop
/// deadline. [`StatusSnapshot::at`] turns it into what `/leader` and the status file show.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StatusSnapshot {
    reported: LeaderStatus,
    /// The local stop deadline of the current hold (`None`: none reported, or nothing held).
    deadline: Option<Instant>,
}

impl StatusSnapshot {
    /// The status as of `now` (monotonic) and `wall_now` (the same moment on the UTC clock).
    /// Past the stop deadline the instance answers as not leader, even if the lock path has
    /// not said so yet (it may be stalled): the holder fields stay as last seen and
    /// `validUntil` keeps the past deadline, so a reader sees why.
    pub(crate) fn at(&self, now: Instant, wall_now: time::OffsetDateTime) -> LeaderStatus {
        let mut status = self.reported.clone();
        let Some(deadline) = self.deadline() else {
            return status;
        };
        let wall_deadline = if deadline >= now {
            wall_now + (deadline - now)
        } else {
            wall_now - (now - deadline)
        };
        status.valid_until = Some(rfc3339_millis(wall_deadline));
        if deadline <= now {
            status.is_leader = false;
            status.since = None;
        }
        status
    }

    /// The stop deadline while the lock path reports leadership.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.reported.is_leader)
    }

    /// Whether the lock path reports leadership (whatever the deadline says).
    pub(crate) fn reported_leader(&self) -> bool {
        self.reported.is_leader
    }
}

/// UTC with millisecond precision and a `Z`, truncated (never later than the true instant, so
/// a reader stops trusting the leader no later than lockwrap does).
fn rfc3339_millis(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&format).unwrap_or_else(|_| t.to_string())
}

/// Told the latest snapshot on every status change (see [`Telemetry::on_status_change`]).
type StatusListener = Box<dyn Fn(&StatusSnapshot) + Send + Sync>;

/// Metrics plus status; one per process, shared behind an `Arc`.
pub(crate) struct Telemetry {
    registry: Registry,
    lock_held: Gauge,
    acquisitions: Counter,
    lost: Counter,
    renew_failures: Counter,
    acquire_wait: Histogram,
    child_exit_code: Gauge,
    lease_seconds_left: Gauge<f64, AtomicU64>,
    seconds_since_renew: Gauge<f64, AtomicU64>,
    fencing_token: Gauge,
    /// Set by the queue wait as it sees the queue (`BackendEvents::queue_waiters`).
    queue_waiters: Gauge,
    /// When the last renew or check pass was accepted (`lease_deadline` or `renew_succeeded`).
    last_renew: Mutex<Option<Instant>>,
    status: watch::Sender<StatusSnapshot>,
    /// Called in order, with the latest snapshot, after every status change.
    listeners: Mutex<Vec<StatusListener>>,
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
    pub(crate) fn new(key: &str) -> Self {
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
            "1 while this instance holds the lock (0 once its stop deadline has passed)",
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
        let lease_seconds_left = Gauge::<f64, AtomicU64>::default();
        let seconds_since_renew = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lockwrap_lease_seconds_left",
            "Seconds before the hold's local stop deadline (0 while not holding)",
            lease_seconds_left.clone(),
        );
        registry.register(
            "lockwrap_seconds_since_renew",
            "Seconds since the last accepted session renew or check pass (0 while not holding)",
            seconds_since_renew.clone(),
        );
        let fencing_token = Gauge::default();
        let queue_waiters = Gauge::default();
        registry.register(
            "lockwrap_fencing_token",
            "Fencing token (the lock entry's ModifyIndex) of the current hold (0 while not holding)",
            fencing_token.clone(),
        );
        registry.register(
            "lockwrap_queue_waiters",
            "Waiters in the key's fair queue as this waiter last saw it, itself included \
             (0 while not queued)",
            queue_waiters.clone(),
        );
        child_exit_code.set(-1);
        let (status, _) = watch::channel(StatusSnapshot {
            reported: LeaderStatus {
                key: key.to_string(),
                ..Default::default()
            },
            deadline: None,
        });
        Telemetry {
            registry,
            lock_held,
            acquisitions,
            lost,
            renew_failures,
            acquire_wait,
            child_exit_code,
            lease_seconds_left,
            seconds_since_renew,
            fencing_token,
            queue_waiters,
            last_renew: Mutex::new(None),
            status,
            listeners: Mutex::new(Vec::new()),
            consul_healthy: AtomicBool::new(true),
            consul_answered: AtomicBool::new(false),
            consecutive_renew_failures: AtomicI64::new(0),
        }
    }

    pub(crate) fn acquired(&self, info: &LockInfo, waited: Duration, since: String) {
        self.acquisitions.inc();
        self.set_consul_healthy(true);
        self.acquire_wait.observe(waited.as_secs_f64());
        self.consecutive_renew_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
        // The deadline is kept: the lease may report it before the hold is announced here.
        self.publish(|snapshot| {
            let s = &mut snapshot.reported;
            s.is_leader = true;
            s.holder = info.holder.clone();
            s.session = info.session.clone();
            s.fencing_token = info.fencing_token;
            s.since = Some(since);
            true
        });
    }

    /// Leadership ended: `lost` counts it as a loss (not a planned release).
    pub(crate) fn not_leader(&self, lost: bool) {
        if lost {
            self.lost.inc();
        }
        self.publish(|snapshot| {
            let s = &mut snapshot.reported;
            s.is_leader = false;
            s.holder = None;
            s.session = None;
            s.fencing_token = None;
            s.since = None;
            snapshot.deadline = None;
            true
        });
    }

    /// The hold's local stop deadline moved (`None`: nothing held). Each accepted renew or
    /// check pass moves it, so it also counts as the latest renew.
    pub(crate) fn lease_deadline(&self, deadline: Option<Instant>) {
        if deadline.is_some() {
            self.note_renew();
        }
        self.publish(|snapshot| {
            let changed = snapshot.deadline != deadline;
            snapshot.deadline = deadline;
            changed
        });
    }

    /// Another instance holds the lock (seen while waiting).
    pub(crate) fn observed_holder(&self, info: Option<&LockInfo>) {
        self.publish(|snapshot| {
            let s = &mut snapshot.reported;
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
    pub(crate) fn lost_because(&self, reason: &crate::backend::LossReason) {
        use crate::backend::LossReason;
        if matches!(
            reason,
            LossReason::LeaseDeadline | LossReason::ConsulUnreachable(_)
        ) {
            self.set_consul_healthy(false);
        }
    }

    pub(crate) fn renew_failed(&self) {
        self.renew_failures.inc();
        self.consecutive_renew_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn renew_succeeded(&self) {
        self.consecutive_renew_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.note_renew();
    }

    /// `renew_succeeded` carries no time, so the renew counts from when it is reported (a few
    /// milliseconds after the request was sent, which is what the timing model counts from).
    fn note_renew(&self) {
        *self
            .last_renew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    pub(crate) fn set_consul_healthy(&self, healthy: bool) {
        self.consul_healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
        if healthy {
            self.consul_answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn consul_answered(&self) -> bool {
        self.consul_answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Healthy = Consul answers and, when leader, the session renews.
    pub(crate) fn healthy(&self) -> bool {
        self.consul_healthy
            .load(std::sync::atomic::Ordering::Relaxed)
            && self
                .consecutive_renew_failures
                .load(std::sync::atomic::Ordering::Relaxed)
                < 2
    }

    /// Waiters in the fair queue as the queue wait saw them (`None`: not queued).
    pub(crate) fn queue_waiters(&self, waiters: Option<usize>) {
        let count = waiters.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.queue_waiters.set(count);
    }

    pub(crate) fn child_exited(&self, code: i32) {
        self.child_exit_code.set(i64::from(code));
    }

    /// The status as `/leader` serves it now (not leader once the stop deadline has passed).
    pub(crate) fn status(&self) -> LeaderStatus {
        self.snapshot()
            .at(Instant::now(), time::OffsetDateTime::now_utc())
    }

    /// What the lock path last reported, to be turned into a status with
    /// [`StatusSnapshot::at`] when it is served or written.
    pub(crate) fn snapshot(&self) -> StatusSnapshot {
        self.status.borrow().clone()
    }

    /// Calls `listener` with the latest snapshot after every status change, on the thread
    /// that changed it: it must only hand the snapshot over (the status file's writer thread
    /// does the writing).
    pub(crate) fn on_status_change(
        &self,
        listener: impl Fn(&StatusSnapshot) + Send + Sync + 'static,
    ) {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(listener));
    }

    /// Applies `modify` (which says whether it changed anything) and tells the listeners.
    fn publish(&self, modify: impl FnOnce(&mut StatusSnapshot) -> bool) {
        if !self.status.send_if_modified(modify) {
            return;
        }
        // Reading the snapshot under the listeners' lock keeps the last call the newest state,
        // whichever of two concurrent writers gets here first.
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if listeners.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        for listener in listeners.iter() {
            listener(&snapshot);
        }
    }

    /// Prometheus text exposition. The hold's gauges are computed now, so they stay true while
    /// the lock path is stalled.
    pub(crate) fn render_metrics(&self) -> String {
        let now = Instant::now();
        let snapshot = self.snapshot();
        let holding = snapshot.reported_leader();
        let leading = holding && !matches!(snapshot.deadline(), Some(d) if d <= now);
        self.lock_held.set(i64::from(leading));
        let left = snapshot
            .deadline()
            .map_or(0.0, |d| d.saturating_duration_since(now).as_secs_f64());
        self.lease_seconds_left.set(left);
        let last_renew = *self
            .last_renew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since_renew = match last_renew {
            Some(at) if holding => now.saturating_duration_since(at).as_secs_f64(),
            _ => 0.0,
        };
        self.seconds_since_renew.set(since_renew);
        // Standbys record the holder's token in the status too: only a hold shows one here.
        let token = match snapshot.reported.fencing_token {
            Some(token) if leading => i64::try_from(token).unwrap_or(i64::MAX),
            _ => 0,
        };
        self.fencing_token.set(token);
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
    fn lease_deadline(&self, deadline: Option<Instant>) {
        Telemetry::lease_deadline(self, deadline);
    }
    fn queue_waiters(&self, waiters: Option<usize>) {
        Telemetry::queue_waiters(self, waiters);
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
            "lockwrap_lease_seconds_left",
            "lockwrap_seconds_since_renew",
            "lockwrap_fencing_token",
            "lockwrap_queue_waiters",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }

    fn gauge(t: &Telemetry, name: &str) -> f64 {
        let text = t.render_metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    }

    #[test]
    fn fencing_token_gauge_shows_only_our_own_hold() {
        let t = Telemetry::new("k");
        let theirs = LockInfo {
            key: "k".into(),
            session: Some("theirs".into()),
            created: None,
            seconds_to_lock: None,
            metadata: None,
            holder: None,
            fencing_token: Some(41),
            queue: None,
            semaphore: None,
        };
        t.observed_holder(Some(&theirs));
        assert_eq!(
            gauge(&t, "lockwrap_fencing_token"),
            0.0,
            "a standby holds nothing"
        );
        let mut ours = theirs.clone();
        ours.fencing_token = Some(57);
        t.acquired(&ours, Duration::ZERO, "2026-12-02T12:00:00.000000".into());
        t.lease_deadline(Some(Instant::now() + Duration::from_secs(30)));
        assert_eq!(gauge(&t, "lockwrap_fencing_token"), 57.0);
        t.not_leader(false);
        assert_eq!(gauge(&t, "lockwrap_fencing_token"), 0.0);
    }

    #[test]
    fn queue_waiters_gauge_follows_the_queue_wait() {
        let t = Telemetry::new("k");
        assert_eq!(gauge(&t, "lockwrap_queue_waiters"), 0.0);
        crate::backend::BackendEvents::queue_waiters(&t, Some(3));
        assert_eq!(gauge(&t, "lockwrap_queue_waiters"), 3.0);
        crate::backend::BackendEvents::queue_waiters(&t, None);
        assert_eq!(gauge(&t, "lockwrap_queue_waiters"), 0.0);
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
            "validUntil",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }

    fn leader(t: &Telemetry) {
        let info = LockInfo {
            key: "k".into(),
            session: Some("s1".into()),
            created: None,
            seconds_to_lock: None,
            metadata: None,
            holder: None,
            fencing_token: Some(7),
            queue: None,
            semaphore: None,
        };
        t.acquired(&info, Duration::ZERO, "2026-12-02T12:00:00.000000".into());
    }

    #[test]
    fn valid_until_is_the_stop_deadline_on_the_wall_clock() {
        let t = Telemetry::new("k");
        leader(&t);
        let now = Instant::now();
        t.lease_deadline(Some(now + Duration::from_millis(30_250)));
        let wall = time::macros::datetime!(2026-12-02 12:00:00 UTC);
        let status = t.snapshot().at(now, wall);
        assert!(status.is_leader);
        assert_eq!(
            status.valid_until.as_deref(),
            Some("2026-12-02T12:00:30.250Z")
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["validUntil"], "2026-12-02T12:00:30.250Z");
    }

    #[test]
    fn a_leader_past_its_deadline_answers_not_leader_with_the_past_valid_until() {
        let t = Telemetry::new("k");
        leader(&t);
        let now = Instant::now();
        t.lease_deadline(Some(now + Duration::from_secs(30)));
        let later = now + Duration::from_secs(31);
        let wall = time::macros::datetime!(2026-12-02 12:00:31 UTC);
        let status = t.snapshot().at(later, wall);
        assert!(!status.is_leader, "{status:?}");
        assert_eq!(status.since, None);
        assert_eq!(
            status.valid_until.as_deref(),
            Some("2026-12-02T12:00:30.000Z")
        );
        assert_eq!(status.fencing_token, Some(7), "the holder as last seen");
        // Served now: a deadline already past flips /leader without any other update.
        t.lease_deadline(Some(Instant::now()));
        assert!(!t.status().is_leader);
        assert!(t.render_metrics().contains("lockwrap_lock_held 0"));
    }

    #[test]
    fn valid_until_is_null_when_not_leading() {
        let t = Telemetry::new("k");
        t.lease_deadline(Some(Instant::now() + Duration::from_secs(30)));
        assert_eq!(t.status().valid_until, None, "a deadline without a hold");
        leader(&t);
        assert!(t.status().valid_until.is_some());
        t.not_leader(false);
        assert_eq!(t.status().valid_until, None);
        assert!(t
            .render_metrics()
            .contains("lockwrap_lease_seconds_left 0.0"));
    }

    #[test]
    fn hold_gauges_count_down_from_the_last_renew() {
        let t = Telemetry::new("k");
        leader(&t);
        t.lease_deadline(Some(Instant::now() + Duration::from_secs(30)));
        let text = t.render_metrics();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
        };
        let left = value("lockwrap_lease_seconds_left");
        assert!(left > 29.0 && left <= 30.0, "{left}");
        let since = value("lockwrap_seconds_since_renew");
        assert!((0.0..1.0).contains(&since), "{since}");
        assert_eq!(value("lockwrap_lock_held"), 1.0);
    }

    #[test]
    fn listeners_see_every_change_and_end_on_the_latest() {
        let t = Telemetry::new("k");
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        t.on_status_change(move |s| sink.lock().unwrap().push(s.reported_leader()));
        leader(&t);
        t.lease_deadline(Some(Instant::now() + Duration::from_secs(30)));
        t.not_leader(true);
        assert_eq!(*seen.lock().unwrap(), vec![true, true, false]);
    }
}
