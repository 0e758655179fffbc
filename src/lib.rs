//! lockwrap runs a program only while it holds a distributed lock in Consul.
//!
//! Data flow, one module per step:
//!
//! ```text
//! cli (clap) ─▶ config (figment: defaults < YAML < env < flags, validated)
//!            ─▶ backend (LockBackend trait; backend::consul: HTTP client, sessions, KV,
//!                        lock + semaphore recipes, Lease = a held lock that reports loss)
//!            ─▶ locks (library API: acquire, find, find_regex, release, release_all,
//!                      release_regex, execute)
//!            ─▶ commands (one file per subcommand) ─▶ supervisor (child process, signals,
//!                        the single reaper) ─▶ hooks / http + telemetry / output (stdout JSON)
//! exit: the exit-code table; `main` is the only place a code is chosen.
//! ```
//!
//! Two guarantees hold on every path:
//! 1. **Never two holders.** Whatever can end our hold on the lock (holder change, key deleted,
//!    session destroyed, renew 404, or the local lease deadline passing without a successful
//!    renew) stops the wrapped command — SIGTERM, grace, SIGKILL — before the session can
//!    expire in Consul, so before anyone else can acquire.
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
