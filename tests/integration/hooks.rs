//! Hooks: `--on-already-locked` once per attempt (failures ignored) and the supervisor's
//! acquired / released / lost hooks.

use std::time::Duration;

use crate::consul::Consul;
use crate::harness::{
    assert_no_sessions, cli, code, describe, json_line, lines, path_str, recording_hook,
    run_bounded, run_cmd, scratch, stdout, term_recorder, unique_key, unlock_and_check, Dir, Proc,
};

/// A hook that appends `EVENT KEY-ARG LOCKWRAP_KEY LOCKWRAP_EVENT` to `hooks`.
fn hook(dir: &Dir, event: &str) -> String {
    dir.script(
        &format!("hook-{event}.sh"),
        &format!(
            "echo \"{event} $1 $LOCKWRAP_KEY $LOCKWRAP_EVENT\" >> '{}/hooks'",
            dir.display()
        ),
    )
}

#[test]
fn hooks_get_the_key_once_per_attempt_and_failures_are_ignored() {
    let consul = Consul::shared();
    let key = unique_key("hooks");
    let dir = scratch("hooks");
    let (before_a, before_a_log) = recording_hook(&dir, "before_a", 0);
    let (before_b, before_b_log) = recording_hook(&dir, "before_b", 0);
    let (failing, failing_log) = recording_hook(&dir, "failing", 3);
    let (already, already_log) = recording_hook(&dir, "already", 0);
    let once = vec![key.clone()];
    let twice = vec![key.clone(), key.clone()];

    // Free lock: every before-lock hook runs once (several per flag); no already-locked call.
    let out = cli(
        consul,
        &[
            "lock",
            "--on-before-lock",
            path_str(&before_a),
            path_str(&before_b),
            path_str(&failing),
            "--on-already-locked",
            path_str(&already),
            "--",
            &key,
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "a failing hook must be ignored: {}",
        describe(&out)
    );
    json_line(&out);
    assert_eq!(lines(&before_a_log), once);
    assert_eq!(lines(&before_b_log), once);
    assert_eq!(lines(&failing_log), once);
    assert!(lines(&already_log).is_empty(), "{:?}", lines(&already_log));

    // Taken lock, non-blocking: one attempt, so one call of each, the failing one included.
    let out = cli(
        consul,
        &[
            "lock",
            "--non-blocking",
            "--on-before-lock",
            path_str(&before_a),
            "--on-already-locked",
            path_str(&already),
            path_str(&failing),
            "--",
            &key,
        ],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    assert_eq!(lines(&before_a_log), twice);
    assert_eq!(lines(&before_b_log), once);
    assert_eq!(lines(&already_log), once);
    assert_eq!(lines(&failing_log), twice);
    unlock_and_check(consul, &key);
}

#[test]
fn run_calls_acquired_released_and_lost_hooks() {
    let consul = Consul::shared();

    // Normal exit: acquired, then released.
    let key = unique_key("run-hooks");
    let dir = Dir::new("run-hooks");
    let (acquired, released, lost) = (
        hook(&dir, "acquired"),
        hook(&dir, "released"),
        hook(&dir, "lost"),
    );
    let opts = [
        "--on-acquired",
        &acquired,
        "--on-released",
        &released,
        "--on-lost",
        &lost,
    ];
    let out = run_bounded(
        run_cmd(consul, &key, &opts, &["sh", "-c", "sleep 0.5"]),
        Duration::from_secs(20),
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let lines = dir.lines("hooks");
    assert!(
        lines.contains(&format!("acquired {key} {key} acquired")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("released {key} {key} released")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("lost")), "{lines:?}");
    assert_no_sessions(consul, &key);

    // Loss: the lost hook runs too.
    let key = unique_key("run-hooks");
    let dir = Dir::new("run-hooks-lost");
    let (acquired, lost) = (hook(&dir, "acquired"), hook(&dir, "lost"));
    let child = term_recorder(&dir);
    let opts = ["--on-acquired", &acquired, "--on-lost", &lost];
    let wrapper = Proc::spawn(run_cmd(consul, &key, &opts, &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    consul.delete_kv(&key);
    let out = wrapper.finish(Duration::from_secs(15));
    assert_eq!(code(&out), 101, "{}", describe(&out));
    let lines = dir.lines("hooks");
    assert!(
        lines.contains(&format!("lost {key} {key} lost")),
        "{lines:?}"
    );
    assert_no_sessions(consul, &key);
}

/// A command that cannot start (exit 127): the on-acquired hook already running dies with it,
/// before the lock is released, instead of running on (docs/timing.md, "Paths checked": hooks die
/// with the command).
#[test]
fn an_on_acquired_hook_of_a_command_that_cannot_start_ends_before_the_release() {
    let consul = Consul::shared();
    let key = unique_key("hook-no-start");
    let dir = Dir::new("hook-no-start");
    let acquired = dir.script(
        "hook-acquired.sh",
        &format!("sleep 1; echo done >> '{}/hooks'", dir.display()),
    );
    let out = run_bounded(
        run_cmd(
            consul,
            &key,
            &["--on-acquired", &acquired],
            &["/nonexistent/lockwrap-test-command"],
        ),
        Duration::from_secs(20),
    );
    assert_eq!(code(&out), 127, "{}", describe(&out));
    // A hook left running would write its line a second after it started.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        dir.lines("hooks").is_empty(),
        "the on-acquired hook outlived the release: {:?}",
        dir.lines("hooks")
    );
    assert_no_sessions(consul, &key);
}
