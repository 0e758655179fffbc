//! Logging to stderr with tracing: text for people, JSON lines for collectors. `-v` raises the
//! level; `RUST_LOG` overrides everything.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Default level: warnings (stdout stays clean, stderr quiet).
pub fn init(verbose: u8, json: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("lockwrap={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
