//! Logging to stderr with tracing: text for people, JSON lines for collectors. `-v` raises the
//! level, `-q` lowers it; `RUST_LOG` overrides everything. Text is coloured only on a terminal
//! without `NO_COLOR`.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The target of the lines that say a contender waits and for whom (README, "Observability"):
/// shown at the default verbosity, silenced by `-q`.
pub const WAITING: &str = "lockwrap::waiting";

/// Installs the global subscriber. Default level: warnings, plus the waiting lines (stdout stays
/// clean); `quiet`: warnings only.
pub fn init(verbose: u8, quiet: bool, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(directives(verbose, quiet)));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
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

/// The filter for `-v` × `-q`: lockwrap's own level, the waiting lines, and `warn` for libraries.
fn directives(verbose: u8, quiet: bool) -> String {
    match (quiet, verbose) {
        (true, _) => "lockwrap=warn,warn".to_string(),
        (false, 0) => format!("lockwrap=warn,{WAITING}=info,warn"),
        (false, 1) => "lockwrap=info,warn".to_string(),
        (false, 2) => "lockwrap=debug,warn".to_string(),
        (false, _) => "lockwrap=trace,warn".to_string(),
    }
}

/// Colour codes only for a person at a terminal: `docker logs`, `2>file` and log collectors get
/// plain text. `NO_COLOR` set to anything but the empty string turns colour off (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.map_or(true, OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_lines_show_by_default_and_go_with_quiet() {
        assert_eq!(
            directives(0, false),
            "lockwrap=warn,lockwrap::waiting=info,warn"
        );
        assert_eq!(directives(0, true), "lockwrap=warn,warn");
        assert_eq!(directives(2, true), "lockwrap=warn,warn");
        assert_eq!(directives(1, false), "lockwrap=info,warn");
    }

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
