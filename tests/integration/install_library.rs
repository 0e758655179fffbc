//! `lockwrap install` and the library example (`examples/`).

use std::process::Command;

use serde_json::{json, Value};

use crate::consul::Consul;
use crate::harness::{cli, code, run_bounded, scratch, stderr, stdout, QUICK};

/// `install` copies the binary for an init container: JSON on stdout, a runnable copy, nothing
/// in Consul; a missing destination directory is exit 3 naming it.
#[test]
fn install_copies_a_runnable_binary_and_names_a_bad_destination() {
    let consul = Consul::shared();
    let dir = scratch("install");
    let out = cli(consul, &["install", &dir.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed: Value = serde_json::from_str(stdout(&out).trim()).expect("JSON on stdout");
    let copy = dir.join("lockwrap");
    assert_eq!(printed["installed"], json!(copy.display().to_string()));
    let out = run_bounded(
        {
            let mut cmd = Command::new(&copy);
            cmd.arg("--version");
            cmd
        },
        QUICK,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("lockwrap "), "{}", stdout(&out));

    let missing = dir.join("no-such-dir").join("lockwrap");
    let out = cli(consul, &["install", &missing.display().to_string()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}

/// The library example (`cargo run --example library`), built by `cargo test --all-targets`:
/// every library operation end to end, `execute` through the supervisor's spawner.
#[test]
fn library_example_runs_every_operation_and_leaves_nothing_behind() {
    let Some(example) = std::env::current_exe().ok().and_then(|exe| {
        let path = exe.parent()?.parent()?.join("examples").join("library");
        path.exists().then_some(path)
    }) else {
        eprintln!("examples/library not built (run cargo test --all-targets); skipped");
        return;
    };
    let consul = Consul::start();
    let out = std::process::Command::new(example)
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the library example");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-> exit code 3"), "{text}");
    assert!(text.contains("CONSUL_LOCK_HELD=true"), "{text}");
    assert!(consul.sessions().is_empty(), "{:?}", consul.sessions());
}
