//! lockwrap runs a program only while it holds a distributed lock in Consul.
//!
//! Layers, each importing only from the layers below it (no import circles):
//!
//! ```text
//! main ─ src/main.rs: calls `cli_main` and exits with its code
//! app           the binary's run: parse → config → supervisor setup → logging → runtime →
//!               commands::run → the exit code, the only place one is chosen
//! commands      one file per subcommand; policy (the one signal policy), acquire (campaign,
//!               takeover); the composition root that picks the Consul backend
//! cli, config   clap arguments; figment merge (flags > LOCKWRAP_* > CONSUL_* > YAML), validated
//!               per mode into Config
//! hooks, telemetry, http
//!               hook executables and webhooks; metrics and leadership status (implements the
//!               backend's BackendEvents); the /healthz /readyz /leader /metrics server
//! locks         the library API (LockManager: acquire, find, release, execute), written against
//!               the LockBackend / HeldLock traits
//! backend       LockBackend, HeldLock, LockRequest; timing (the one timing model), retry,
//!               events; consul (HTTP client, sessions, KV, lock / semaphore / queue recipes,
//!               Lease); memory (an in-process store for tests)
//! supervisor    child processes, signals, the single reaper
//! exit, duration, key, output, logging
//!               the exit-code table, duration parsing, key rules, stdout JSON, stderr logs
//! ```
//!
//! Two guarantees hold on every path:
//! 1. **Never two holders.** Whatever can end our hold on the lock (holder change, key deleted,
//!    session destroyed, renew 404, or the local deadline of the timing model passing without a
//!    successful renew or check pass) stops the wrapped command — SIGTERM, grace, SIGKILL —
//!    before anyone else can start (docs/timing.md).
//! 2. **Always release.** Every exit path releases the key and destroys the session lockwrap
//!    created (except CLI `lock`, which leaves the lock held on purpose).
//!
//! # The library
//!
//! The public surface is what a program needs to hold a lock the way the CLI does:
//! [`LockManager`] (acquire, find, release, execute) built from [`ConsulSettings`]; the request
//! ([`LockRequest`] with [`Wait`], [`Layout`], [`SessionSettings`], [`HoldSettings`]); the held
//! lock ([`HeldLock`], implemented by the Consul [`Lease`]) and why it ends ([`LossReason`]);
//! acquisition results and hooks ([`Acquired`], [`AcquireObserver`], [`LockInfo`]); the errors
//! ([`Error`] with its [`ErrorKind`], and the store's [`BackendError`] as its source); and
//! [`supervisor`], whose [`supervisor::install`] gives [`LockManager::execute`] its
//! [`supervisor::Spawner`]. Everything else is crate-private, so it can change without
//! breaking callers. `cargo run --example library` walks through it.

mod app;
mod backend;
mod cli;
mod commands;
mod config;
mod duration;
mod exit;
mod hooks;
mod http;
mod key;
mod locks;
mod logging;
mod output;
pub mod supervisor;
mod telemetry;

pub use app::cli_main;
pub use backend::consul::{ConsulBackend, ConsulSettings, HttpAuth, Lease, SettingsError};
pub use backend::{
    AcquireObserver, Acquired, BackendError, Behavior, Checks, HeldLock, HoldSettings, Layout,
    LockBackend, LockInfo, LockRequest, LossReason, NoObserver, QueuedWaiter, SemaphoreInfo,
    SessionSettings, SlotHolder, Wait, WaitingFor,
};
pub use exit::ErrorKind;
pub use locks::{Error, LockManager};

/// Internals that the integration tests in `tests/` drive directly (the supervisor with real
/// processes, the guardian, Consul sessions against a dev agent). Not part of the API: no
/// stability promise, hidden from the docs.
#[doc(hidden)]
pub mod testing {
    pub use crate::backend::consul::value::Identity;
    pub use crate::backend::consul::ConsulClient;
    pub use crate::config::settings::names as setting_names;
    pub use crate::supervisor::child::{Child, CommandSpec, SpawnError, StdinMode};
    pub use crate::supervisor::status::ExitStatus;

    /// Consul sessions (tests/integration/sessions.rs).
    pub mod session {
        pub use crate::backend::consul::session::{create, destroy, outcome_unknown, OwnedSession};
    }

    /// The guardian process (tests/guardian.rs).
    pub mod guardian {
        pub use crate::supervisor::guardian::{start, tree_marker, Guardian};
    }
}
