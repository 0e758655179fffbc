//! The binary's whole run: parse → config → signal/reaper/guardian setup (before any other
//! thread) → logging → runtime → `commands::run` → the exit code, decided here and nowhere else.
//! `src/main.rs` only calls [`cli_main`].

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::{Error, ErrorKind, Outcome};
use crate::{commands, config, logging, supervisor};

/// Runs the `lockwrap` command line with this process's arguments and returns the exit code
/// (README, "Exit codes"). This is the binary's `main`, in the library so the binary needs none
/// of the crate's internals. It takes the process over (signal handlers, subreaper, the guardian
/// fork, its own runtime): call it only from a program's `main`, before any other thread starts.
pub fn cli_main() -> i32 {
    match Cli::try_parse() {
        Ok(cli) => {
            let outcome = run(cli);
            // Queued log lines first, so the failure line below is the last one, as before.
            logging::flush();
            report(outcome).exit_code()
        }
        Err(err) if err.use_stderr() => {
            // One line, like every other lockwrap error; `--help` has the details.
            let text = err.render().to_string();
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            logging::last_line(&format!("lockwrap: {first} (see lockwrap --help)"));
            ErrorKind::InvalidArgument.exit_code()
        }
        Err(err) => {
            // --help and --version print and succeed.
            let _ = err.print();
            0
        }
    }
}

fn run(cli: Cli) -> Outcome {
    let verbose = cli.verbose;
    let quiet = cli.quiet;
    // Needs no configuration, Consul, or runtime: an init container copying the binary.
    if let Command::Install(cmd) = &cli.command {
        return match commands::install::install(&cmd.dest) {
            Ok(done) => {
                crate::output::print(&done);
                Outcome::Success
            }
            Err(err) => Outcome::Failed(err),
        };
    }
    let config = match config::load(cli) {
        Ok(config) => config,
        Err(err) => {
            logging::init(verbose, quiet, false);
            return Outcome::Failed(err);
        }
    };
    // Supervising modes are always subreapers and fork the guardian (README, "The supervisor").
    // Before logging starts its writer thread: the guardian is forked from a single-threaded
    // process, so it cannot inherit a lock some other thread held at the fork.
    let installed = supervisor::install(config.supervising());
    logging::init(config.verbose, quiet, config.log_json);
    tracing::debug!(?config, "configuration");
    let process = match installed {
        Ok(process) => process,
        Err(err) => {
            return Outcome::Failed(Error::new(
                ErrorKind::Internal,
                format!("cannot set up signal handling: {err}"),
            ))
        }
    };
    // One thread is plenty: every task waits on the network or a timer, and a standby's memory
    // footprint (one of lockwrap's promises) grows with every worker thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            return Outcome::Failed(Error::new(
                ErrorKind::Internal,
                format!("cannot start the async runtime: {err}"),
            ))
        }
    };
    let outcome = runtime.block_on(async {
        let outcome = commands::run(config, process).await;
        // Let background cleanups (e.g. a session create abandoned by a stop signal) finish;
        // bounded like the cleanup requests themselves.
        crate::backend::cleanup::wait(std::time::Duration::from_secs(3)).await;
        outcome
    });
    // Background tasks (e.g. a webhook in flight) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    outcome
}

/// Logs a failure's message once, on stderr.
fn report(outcome: Outcome) -> Outcome {
    match &outcome {
        Outcome::Failed(err) => logging::last_line(&format!("lockwrap: {err}")),
        Outcome::GaveUp { error, code } => logging::last_line(&format!(
            "lockwrap: {error}; exiting {code} (--locked-exit-code)"
        )),
        _ => {}
    }
    outcome
}
