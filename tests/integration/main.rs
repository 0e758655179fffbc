//! lockwrap's integration tests: the built binary against a real Consul agent
//! (`consul agent -dev` on free loopback ports; see `consul.rs`).

mod consul;
mod harness;

mod bad_input;
mod cli;
mod queue;
mod reach;
mod ride_out;
mod run;
mod sidecar;
mod tls;
mod webhook;
