//! The status HTTP server (`--http-addr`): `/healthz`, `/readyz`, `/leader`, `/metrics`
//! (README, "Observability"), and the `--status-file` writer. Both only read [`Telemetry`]; neither can block
//! the lock path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::exit::{Error, ErrorKind};
use crate::telemetry::Telemetry;

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    ready_always: bool,
}

/// Binds `addr` now (so a bad address fails at start with exit 3) and serves in the background.
pub async fn serve(
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

/// Writes the leadership status to `path` now and on every change, atomically (temp file in
/// the same directory + rename), so readers never see a partial file.
/// The first write happens now, so an unwritable path fails at start (exit 3).
pub fn spawn_status_file(path: PathBuf, telemetry: &Telemetry) -> Result<(), Error> {
    let mut updates = telemetry.subscribe();
    write_atomically(&path, &updates.borrow_and_update().clone()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("cannot write --status-file {}: {e}", path.display()),
        )
    })?;
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let status = updates.borrow_and_update().clone();
            if let Err(err) = write_atomically(&path, &status) {
                tracing::warn!(path = %path.display(), %err, "cannot write the status file");
            }
        }
    });
    Ok(())
}

fn write_atomically(
    path: &std::path::Path,
    status: &crate::telemetry::LeaderStatus,
) -> std::io::Result<()> {
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
