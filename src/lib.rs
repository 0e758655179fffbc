//! lockwrap runs a program only while it holds a distributed lock in Consul.
//!
//! Layers, each importing only from the layers below it (no import circles):
//!
//! ```text
//! main ─ the only place an exit code is chosen
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

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod duration;
pub mod exit;
pub mod hooks;
pub mod http;
pub mod key;
pub mod locks;
pub mod logging;
pub mod output;
pub mod supervisor;
pub mod telemetry;

pub use backend::{HeldLock, Layout, LockInfo, LockRequest, LossReason};
pub use exit::{Error, ErrorKind, Outcome};
pub use locks::LockManager;
