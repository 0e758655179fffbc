//! `lockwrap install` and the library example (`examples/`).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::consul::{wait_until, Consul};
use crate::harness::{
    cli, code, describe, run_bounded, scratch, stderr, stdout, unique_key, Dir, Proc, QUICK,
};

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

/// A host that drops `LockManager::execute`'s future while the command runs (a timeout around
/// it) and goes on living: the command is still stopped — it gets SIGTERM at once and is gone
/// within its kill grace — not left running after the lock is gone (docs/timing.md, "Paths
/// checked").
#[test]
fn a_dropped_library_execute_still_stops_its_command() {
    let Some(example) = std::env::current_exe().ok().and_then(|exe| {
        let path = exe.parent()?.parent()?.join("examples").join("lib_execute");
        path.exists().then_some(path)
    }) else {
        eprintln!("examples/lib_execute not built (run cargo test --all-targets); skipped");
        return;
    };
    let consul = Consul::shared();
    let key = unique_key("lib-dropped");
    let dir = Dir::new("lib-dropped");
    let shell = format!(
        "trap 'date +%s%N > {d}/term; exit 0' TERM; echo $$ > {d}/child.pid; \
         while true; do sleep 0.05; done",
        d = dir.display()
    );
    let mut cmd = std::process::Command::new(example);
    cmd.args([key.as_str(), shell.as_str()])
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .env("LIB_EXECUTE_GIVE_UP_AFTER", "8");
    let host = Proc::spawn(cmd);
    assert!(
        dir.wait_for("child.pid", Duration::from_secs(20)),
        "the command never started"
    );
    let child = dir.pids("child.pid")[0];
    assert!(
        dir.wait_for("term", Duration::from_secs(20)),
        "the dropped execute never told its command to stop"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !crate::harness::alive(child)),
        "the command outlived its dropped execute"
    );
    assert!(
        crate::harness::alive(host.id() as i32),
        "the host had already exited: the stop came from its exit, not from the drop"
    );
    let out = host.finish(Duration::from_secs(20));
    assert_eq!(code(&out), 124, "{}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || consul
            .sessions_for(&key)
            .is_empty()),
        "the dropped execute left its session: {:?}",
        consul.sessions_for(&key)
    );
}

/// A library acquisition dropped while it waits for a semaphore slot (a timeout around it)
/// leaves neither its session nor its contender key: both are cleaned up at the drop, while the
/// host lives on, not left to the session's TTL (the key would stay for good).
#[test]
fn a_library_acquisition_dropped_while_waiting_leaves_no_session_or_key() {
    let consul = Consul::shared();
    let key = unique_key("lib-dropped-waiting");
    let dir = Dir::new("lib-dropped-waiting");
    let mut holders = Vec::new();
    for id in ["a", "b"] {
        holders.push(Proc::spawn(crate::harness::run_cmd(
            consul,
            &key,
            &["-n", "2"],
            &[
                "sh",
                "-c",
                &format!("echo 1 > {}/{id}; sleep 60", dir.display()),
            ],
        )));
        assert!(dir.wait_for(id, Duration::from_secs(20)), "{id} never held");
    }
    let before = consul.sessions_for(&key).len();
    let keys_before = consul.keys(&format!("{key}/"));
    let manager = manager_for(consul);
    let mut request = lockwrap::LockRequest::new(key.clone());
    request.limit = 2;
    // A slot has no lock-delay: the takeover delay alone covers a deregistered node.
    request.hold.takeover_delay = Duration::from_secs(8);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let waiting = manager.acquire_with(&request, &lockwrap::NoObserver, &stop);
        let gave_up = tokio::time::timeout(Duration::from_secs(3), waiting).await;
        if let Ok(result) = gave_up {
            panic!(
                "the third contender was not kept waiting: {:?}",
                result.map(|a| matches!(a, lockwrap::Acquired::Held(_)))
            );
        }
        let cleaned = async {
            loop {
                let left = (
                    consul.sessions_for(&key).len(),
                    consul.keys(&format!("{key}/")),
                );
                if left.0 == before && left.1 == keys_before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), cleaned)
                .await
                .is_ok(),
            "the dropped acquisition left its session or key: {:?} / {:?}",
            consul.sessions_for(&key),
            consul.keys(&format!("{key}/"))
        );
    });
    drop(holders);
}

/// The same for a library acquisition dropped while queued (`queue`): its queue entry and
/// session go at once. Before, its renew task kept both, and everyone behind it waited, for as
/// long as the host process lived.
#[test]
fn a_library_acquisition_dropped_while_queued_leaves_the_queue() {
    let consul = Consul::shared();
    let key = unique_key("lib-dropped-queued");
    let dir = Dir::new("lib-dropped-queued");
    let holder = Proc::spawn(crate::harness::run_cmd(
        consul,
        &key,
        &["--queue"],
        &[
            "sh",
            "-c",
            &format!("echo 1 > {}/a; sleep 60", dir.display()),
        ],
    ));
    assert!(dir.wait_for("a", Duration::from_secs(20)), "a never held");
    let before = consul.sessions_for(&key).len();
    let manager = manager_for(consul);
    let mut request = lockwrap::LockRequest::new(key.clone());
    request.queue = true;
    let queue = format!("{key}/.queue/");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let waiting = manager.acquire_with(&request, &lockwrap::NoObserver, &stop);
        let gave_up = tokio::time::timeout(Duration::from_secs(3), waiting).await;
        assert!(
            gave_up.is_err(),
            "the queued contender was not kept waiting"
        );
        let cleaned = async {
            while !(consul.keys(&queue).is_empty() && consul.sessions_for(&key).len() == before) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), cleaned)
                .await
                .is_ok(),
            "the dropped acquisition stayed queued: {:?}",
            consul.keys(&queue)
        );
    });
    drop(holder);
}

/// A library manager for the test agent.
fn manager_for(consul: &Consul) -> lockwrap::LockManager {
    let settings = lockwrap::ConsulSettings {
        address: consul.addr(),
        ssl_verify: true,
        ..Default::default()
    };
    lockwrap::LockManager::connect(&settings).expect("a manager")
}
