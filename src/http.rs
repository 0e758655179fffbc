//! The status HTTP server (`--http-addr`): `/healthz`, `/readyz`, `/leader`, `/metrics`
//! (README, "Observability"), and the `--status-file` writer. Both only read [`Telemetry`];
//! neither can block the lock path (the file is written on its own thread).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::exit::{Error, ErrorKind};
use crate::telemetry::{LeaderStatus, StatusSnapshot, Telemetry};

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    ready_always: bool,
}

/// Binds `addr` now (so a bad address fails at start with exit 3) and serves in the background.
pub(crate) async fn serve(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    ready_always: bool,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("cannot listen on --http-addr {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = router(telemetry, ready_always);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "status server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz /readyz /leader /metrics");
    Ok(bound)
}

fn router(telemetry: Arc<Telemetry>, ready_always: bool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/leader", get(leader))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            telemetry,
            ready_always,
        })
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.telemetry.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "consul session unhealthy\n",
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready_always || state.telemetry.status().is_leader {
        (StatusCode::OK, "leader\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response()
    }
}

async fn leader(State(state): State<AppState>) -> Response {
    let body = serde_json::to_string(&state.telemetry.status()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.render_metrics(),
    )
        .into_response()
}

/// How long start-up waits for the first status-file write: an unwritable path fails in
/// microseconds (exit 3); a hung disk must not hold the start any longer than this.
const FIRST_WRITE_WAIT: Duration = Duration::from_secs(2);

/// Writes the leadership status to `path` now and on every change, atomically (temp file in
/// the same directory + rename), so readers never see a partial file (README, "Observability").
/// The writes happen on a dedicated thread that nothing awaits, so a hung disk never stalls
/// the lock path; updates made while a write is in progress coalesce into one later write of
/// the newest status. A leader's file is rewritten once its `validUntil` passes with no newer
/// update, so it says "not leader" even while the rest of lockwrap is stalled.
/// The first write is waited for (up to [`FIRST_WRITE_WAIT`]), so an unwritable path fails at
/// start (exit 3).
pub(crate) fn spawn_status_file(path: PathBuf, telemetry: &Telemetry) -> Result<(), Error> {
    let shown = path.display().to_string();
    let (first_tx, first_rx) = mpsc::channel();
    let mut first = Some(first_tx);
    let write = move |status: &LeaderStatus| {
        let result = write_atomically(&path, status);
        if let Some(tx) = first.take() {
            // Start-up may have stopped waiting; the result is then only logged.
            let _ = tx.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        result
    };
    let spawned = StatusWriter::start(telemetry, write).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot start the --status-file writer: {e}"),
        )
    })?;
    // Detached: the writer lives as long as the process (it stops when `telemetry` is dropped).
    drop(spawned);
    match first_rx.recv_timeout(FIRST_WRITE_WAIT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("cannot write --status-file {shown}: {e}"),
        )),
        Err(_) => {
            tracing::warn!(path = %shown, "the first status-file write has not finished after {FIRST_WRITE_WAIT:?}; continuing, it is written in the background");
            Ok(())
        }
    }
}

/// The status file's writer thread and the one-slot mailbox it reads: the lock path only puts
/// the latest snapshot in the slot (replacing an unwritten one) and never waits for the disk.
struct StatusWriter {
    mailbox: Arc<Mailbox>,
}

#[derive(Default)]
struct Mailbox {
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The newest snapshot not yet written; a newer one replaces it (only the latest matters).
    latest: Option<StatusSnapshot>,
    /// Telemetry was dropped: write what is pending, then stop.
    closed: bool,
}

/// What the writer thread was woken for.
enum Wake {
    Update(StatusSnapshot),
    /// The written leader's deadline passed with no newer update.
    Deadline,
    Closed,
}

impl Mailbox {
    fn post(&self, snapshot: &StatusSnapshot) {
        self.lock().latest = Some(snapshot.clone());
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a newer snapshot, until `until` when given.
    fn wait(&self, until: Option<Instant>) -> Wake {
        let mut slot = self.lock();
        loop {
            if let Some(snapshot) = slot.latest.take() {
                return Wake::Update(snapshot);
            }
            if slot.closed {
                return Wake::Closed;
            }
            slot = match until {
                None => self.wake.wait(slot).unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return Wake::Deadline;
                    }
                    self.wake
                        .wait_timeout(slot, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Closes the mailbox when the telemetry listener holding it is dropped.
struct CloseOnDrop(Arc<Mailbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl StatusWriter {
    /// Starts the thread: it writes the current status, then every newer one, with `write`.
    fn start(
        telemetry: &Telemetry,
        write: impl FnMut(&LeaderStatus) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let writer = StatusWriter {
            mailbox: Arc::new(Mailbox::default()),
        };
        // Listen first, then seed: a change in between is in the slot and written after.
        let closer = CloseOnDrop(writer.mailbox.clone());
        telemetry.on_status_change(move |snapshot| closer.0.post(snapshot));
        let first = telemetry.snapshot();
        std::thread::Builder::new()
            .name("status-file".into())
            .spawn(move || writer.run(first, write))
    }

    fn run(
        self,
        mut current: StatusSnapshot,
        mut write: impl FnMut(&LeaderStatus) -> std::io::Result<()>,
    ) {
        // The first write's failure is start-up's to report (one line, the documented exit).
        let mut first = true;
        loop {
            // validUntil is computed now, at write time (README, "Observability").
            let status = current.at(Instant::now(), time::OffsetDateTime::now_utc());
            if let Err(err) = write(&status) {
                if !first {
                    tracing::warn!(%err, "cannot write the status file");
                }
            }
            first = false;
            let stale_at = if status.is_leader {
                current.deadline()
            } else {
                None
            };
            match self.mailbox.wait(stale_at) {
                Wake::Update(next) => current = next,
                // Rewrite the same snapshot: past its deadline it reads "not leader".
                Wake::Deadline => {}
                Wake::Closed => return,
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, status: &LeaderStatus) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    body.push(b'\n');
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "status.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &body)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LockInfo;

    const SOON: Duration = Duration::from_secs(5);

    fn lead(t: &Telemetry, token: u64) {
        let info = LockInfo {
            key: "k".into(),
            session: Some(format!("s{token}")),
            created: None,
            seconds_to_lock: None,
            metadata: None,
            holder: None,
            fencing_token: Some(token),
            queue: None,
            semaphore: None,
        };
        t.acquired(&info, Duration::ZERO, "2026-12-02T12:00:00.000000".into());
    }

    #[test]
    fn updates_during_a_slow_write_coalesce_into_one_write_of_the_newest() {
        let telemetry = Telemetry::new("k");
        let (written_tx, written) = mpsc::channel();
        let (release_tx, release) = mpsc::channel::<()>();
        let writer = StatusWriter::start(&telemetry, move |status| {
            written_tx
                .send(status.clone())
                .expect("the test reads every write");
            // Every write hangs until the test lets it go, like a stuck disk.
            release.recv().map_err(std::io::Error::other)
        })
        .unwrap();
        let first = written.recv_timeout(SOON).expect("the first write");
        assert!(!first.is_leader);
        // The first write is still hanging: none of these may wait for it.
        lead(&telemetry, 1);
        telemetry.lease_deadline(Some(Instant::now() + Duration::from_secs(60)));
        telemetry.not_leader(false);
        lead(&telemetry, 2);
        assert!(
            written.recv_timeout(Duration::from_millis(50)).is_err(),
            "a second write started while the first was in progress"
        );
        release_tx.send(()).unwrap();
        let next = written
            .recv_timeout(SOON)
            .expect("the newest status, written after");
        assert!(next.is_leader);
        assert_eq!(next.fencing_token, Some(2), "{next:?}");
        release_tx.send(()).unwrap();
        drop(telemetry);
        writer.join().unwrap();
        assert!(
            written.try_recv().is_err(),
            "intermediate states must not be written"
        );
    }

    #[test]
    fn a_leaders_file_says_not_leader_once_valid_until_passes() {
        let telemetry = Telemetry::new("k");
        let (written_tx, written) = mpsc::channel();
        let writer = StatusWriter::start(&telemetry, move |status| {
            written_tx
                .send(status.clone())
                .map_err(std::io::Error::other)
        })
        .unwrap();
        written.recv_timeout(SOON).expect("the first write");
        telemetry.lease_deadline(Some(Instant::now() + Duration::from_millis(500)));
        lead(&telemetry, 1);
        let leading = loop {
            let status = written.recv_timeout(SOON).expect("a write as leader");
            if status.is_leader {
                break status;
            }
        };
        assert!(leading.valid_until.is_some(), "{leading:?}");
        // No further update: the writer rewrites the file when the deadline passes.
        let stale = written
            .recv_timeout(SOON)
            .expect("the rewrite at the deadline");
        assert!(!stale.is_leader, "{stale:?}");
        assert_eq!(stale.valid_until, leading.valid_until);
        drop(telemetry);
        writer.join().unwrap();
    }

    #[test]
    fn the_status_file_is_replaced_atomically_with_valid_until() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let telemetry = Telemetry::new("k");
        lead(&telemetry, 3);
        telemetry.lease_deadline(Some(Instant::now() + Duration::from_secs(60)));
        write_atomically(&path, &telemetry.status()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["isLeader"], true);
        assert!(
            v["validUntil"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{v}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
    }
}
