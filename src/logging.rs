//! Logging to stderr with tracing: text for people, JSON lines for collectors. `-v` raises the
//! level, `-q` lowers it; `RUST_LOG` overrides everything. Text is coloured only on a terminal
//! without `NO_COLOR`.
//!
//! Lines go through a queue to a writer thread, never straight to stderr: when nobody reads
//! lockwrap's stderr (a full pipe), only that thread blocks and new lines are dropped, while the
//! threads that renew the lock and stop the command keep going (README, "The supervisor").

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The target of the lines that say a contender waits and for whom (README, "Observability"):
/// shown at the default verbosity, silenced by `-q`.
pub(crate) const WAITING: &str = "lockwrap::waiting";

/// Lines the queue holds before new ones are dropped. tracing-appender's default (128,000) sets
/// aside about 4 MiB up front, which would more than half again a waiting standby's whole
/// footprint (docs/performance.md); a writer that keeps up never has more than a few lines
/// queued, and one that does not (stderr nobody reads) drops lines either way.
const QUEUED_LINES: usize = 4096;

/// Keeps the writer thread's guard for the whole process: dropping it flushes the queue.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber. Default level: warnings, plus the waiting lines (stdout stays
/// clean); `quiet`: warnings only.
pub(crate) fn init(verbose: u8, quiet: bool, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(directives(verbose, quiet)));
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // Lossy: a full queue drops lines instead of making the logging thread wait.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("lockwrap-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber; its guard is the one to keep.
    if installed.is_ok() {
        *WRITER.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
    }
}

/// Writes out every queued line (waiting at most about a second, tracing-appender's bound, for a
/// stderr nobody reads). Call before the process exits: `std::process::exit` runs no destructors.
pub(crate) fn flush() {
    let guard = WRITER.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(guard);
}

/// How long the final error line may wait for room in stderr: a person or a collector reading it
/// makes room within milliseconds; a stderr nobody reads must not keep lockwrap from exiting.
const LAST_LINE_PATIENCE_MS: i32 = 1000;

/// Writes one line to stderr without ever blocking for long: waits up to
/// [`LAST_LINE_PATIENCE_MS`] for room, then drops it. For lockwrap's last words (the failure
/// line main prints), which are written after the log queue is gone.
pub(crate) fn last_line(text: &str) {
    use std::io::Write;
    let mut room = nix::libc::pollfd {
        fd: 2,
        events: nix::libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let ready = unsafe { nix::libc::poll(&mut room, 1, LAST_LINE_PATIENCE_MS) };
    if ready == 1 && room.revents & nix::libc::POLLOUT != 0 {
        // One write of a short line: it fits the free room that POLLOUT reports.
        let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
    }
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
