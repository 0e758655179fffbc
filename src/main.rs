//! Entry point: everything, including the choice of exit code, happens in the library's
//! [`lockwrap::cli_main`], so the binary needs nothing else of the crate's internals.

fn main() {
    std::process::exit(lockwrap::cli_main());
}
