//! One file per subcommand; [`run`] dispatches. Commands turn results into an [`Outcome`]
//! and never pick exit codes themselves.

mod acquire;
pub(crate) mod install;
mod lock;
pub(crate) mod policy;
mod query;
mod sidecar;
mod supervise;
mod waiting;

use std::sync::Arc;

use tracing::Instrument;

use crate::backend::consul::ConsulBackend;
use crate::config::{Config, Task};
use crate::exit::Outcome;
use crate::locks::LockManager;
use crate::supervisor::ProcessControl;
use crate::telemetry::Telemetry;

/// Runs the configured subcommand to completion.
pub(crate) async fn run(config: Config, process: ProcessControl) -> Outcome {
    let telemetry = Arc::new(Telemetry::new(config.key()));
    let manager = LockManager::new(ConsulBackend::with_events(
        config.client.clone(),
        telemetry.clone(),
    ))
    .with_layout(config.layout());
    // Every log line of this invocation carries the key (and the session, once held).
    let span =
        tracing::info_span!("lockwrap", key = %config.key(), session = tracing::field::Empty);
    let result = async {
        match &config.task {
            Task::Lock(lock) => lock::lock(lock, &manager, process).await,
            Task::Unlock(query) => query::unlock(query, &manager).await,
            Task::Status(query) => query::status(query, &manager).await,
            Task::Execute(job) | Task::Run(job) => {
                supervise::run(job, &manager, process, telemetry).await
            }
            Task::Sidecar(job) => sidecar::run(job, &manager, process, telemetry).await,
        }
    }
    .instrument(span)
    .await;
    result.unwrap_or_else(Outcome::Failed)
}

#[cfg(test)]
mod loops_tests;
