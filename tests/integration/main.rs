//! lockwrap's integration tests: the built binary against a real Consul agent
//! (`consul agent -dev` on free loopback ports; see `consul.rs`), one file per behaviour, all on
//! the shared harness (`harness.rs` and its submodules).

// A test binary exports nothing: `pub` here only shares helpers between its modules.
#![allow(unreachable_pub)]

mod consul;
mod harness;

mod acl_connectivity;
mod acl_rules;
mod acquire_release;
mod bad_input;
mod config_precedence;
mod execute;
mod hooks;
mod install_library;
mod layouts_semaphore;
mod queue;
mod reach;
mod ride_out;
mod sessions;
mod sidecar;
mod status_metadata;
mod status_server;
mod supervisor_child;
mod supervisor_loss;
mod supervisor_signals;
mod takeover;
mod tls;
mod visibility;
mod waiting;
mod webhook;
