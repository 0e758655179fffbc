//! `lockwrap execute`: the command runs while the lock is held, its exit code and output pass
//! through, and it runs under the supervisor (README, "Subcommands" and "The supervisor").

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    assert_no_sessions, cli, cli_cmd, code, describe, lines, lock_ok, lockwrap, modify_index,
    run_bounded, scratch, session_exists, session_of, stderr, stdout, unique_key, unlock_and_check,
    Dir, Proc, QUICK,
};

#[test]
fn execute_exits_with_the_commands_code_and_passes_its_output_through() {
    let consul = Consul::shared();
    let key = unique_key("execute_code");
    let dir = scratch("execute_code");
    let runs = dir.join("runs");
    let shell = format!(
        "echo out-line; echo err-line >&2; echo run >> '{}'; exit 7",
        runs.display()
    );
    let out = cli(consul, &["execute", &key, &shell]);
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "out-line",
        "stdout carries the command's output only"
    );
    assert_eq!(
        stderr(&out).matches("err-line").count(),
        1,
        "{}",
        describe(&out)
    );
    assert_eq!(
        lines(&runs).len(),
        1,
        "the command ran {} times",
        lines(&runs).len()
    );
    assert_eq!(
        consul.holder(&key),
        None,
        "the lock is released after the command"
    );
    assert_no_sessions(consul, &key);

    let out = cli(consul, &["execute", &key, "true"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = cli(consul, &["execute", &key, "kill -TERM $$"]);
    assert_eq!(
        code(&out),
        128 + 15,
        "killed by SIGTERM: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn execute_runs_the_command_while_holding_the_lock_with_lock_env() {
    let consul = Consul::shared();
    let key = unique_key("execute_env");
    let dir = scratch("execute_env");
    let env_file = dir.join("env");
    let go = dir.join("go");
    let shell = format!(
        "echo \"$CONSUL_LOCK_HELD $LOCKWRAP_FENCING_TOKEN $LOCKWRAP_SESSION $LOCKWRAP_KEY\" > '{env}.tmp' \
         && mv '{env}.tmp' '{env}'; while [ ! -f '{go}' ]; do sleep 0.05; done",
        env = env_file.display(),
        go = go.display()
    );
    let mut running = Proc::spawn(cli_cmd(consul, &["execute", &key, &shell]));
    assert!(
        wait_until(QUICK, || env_file.exists()),
        "the command never started"
    );
    let env = std::fs::read_to_string(&env_file).expect("env file");
    let fields: Vec<&str> = env.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{env}");
    assert_eq!(fields[0], "true", "CONSUL_LOCK_HELD");
    let token: u64 = fields[1]
        .parse()
        .expect("LOCKWRAP_FENCING_TOKEN is a number");
    assert_eq!(fields[3], key, "LOCKWRAP_KEY");
    // While the command runs, its session holds the key and the token is the entry's index.
    assert_eq!(consul.holder(&key).as_deref(), Some(fields[2]));
    assert_eq!(modify_index(consul, &key), token);
    assert!(running.running());

    std::fs::write(&go, "").expect("go file");
    let (out, _) = running.finish_at(QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(consul.holder(&key), None);
    assert!(!session_exists(consul, fields[2]));
    assert_no_sessions(consul, &key);
}

#[test]
fn execute_non_blocking_when_locked_exits_100_without_running_the_command() {
    let consul = Consul::shared();
    let key = unique_key("execute_locked");
    let dir = scratch("execute_locked");
    let marker = dir.join("ran");
    let held = lock_ok(consul, &key, &[]);
    let out = cli(
        consul,
        &[
            "execute",
            "--non-blocking",
            &key,
            &format!("touch '{}'", marker.display()),
        ],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    assert!(!marker.exists(), "the command ran without the lock");
    assert_eq!(consul.holder(&key), Some(session_of(&held)));
    assert_eq!(
        consul.sessions_for(&key).len(),
        1,
        "only the holder's session"
    );
    unlock_and_check(consul, &key);
}

#[test]
fn execute_locked_exit_code_turns_a_skipped_run_into_that_code() {
    // README, "Exit codes": a scheduled job whose run found the lock taken is not a failure.
    let consul = Consul::shared();
    let key = unique_key("execute_locked_exit_code");
    let dir = scratch("execute_locked_exit_code");
    let marker = dir.join("ran");
    let held = lock_ok(consul, &key, &[]);
    let touch = format!("touch '{}'", marker.display());
    let out = cli(
        consul,
        &[
            "execute",
            "--non-blocking",
            "--locked-exit-code",
            "0",
            &key,
            &touch,
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(!marker.exists(), "the command ran without the lock");
    let err = stderr(&out);
    assert!(
        err.contains("is taken") && err.contains("exiting 0 (--locked-exit-code)"),
        "the last line says why: {err}"
    );
    assert_eq!(consul.holder(&key), Some(session_of(&held)));

    // From the environment, and for --timeout as well as --non-blocking.
    let mut cmd = cli_cmd(
        consul,
        &["run", "--timeout", "1s", "--", "sh", "-c", &touch],
    );
    cmd.env("LOCKWRAP_KEY", &key)
        .env("LOCKWRAP_LOCKED_EXIT_CODE", "42");
    let out = run_bounded(cmd, QUICK);
    assert_eq!(code(&out), 42, "{}", describe(&out));
    assert!(!marker.exists(), "the command ran without the lock");

    // Out of range: refused before anything touches Consul.
    let out = cli(
        consul,
        &["execute", "--locked-exit-code", "256", &key, "true"],
    );
    assert_eq!(code(&out), 3, "{}", describe(&out));
    unlock_and_check(consul, &key);
}

#[test]
fn execute_runs_shell_string_under_the_supervisor() {
    let consul = Consul::shared();
    let dir = Dir::new("execute");

    let key = unique_key("execute");
    let mut cmd = lockwrap(consul);
    cmd.args(["execute", "--lock-delay", "0", &key, "exit 4"]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert_no_sessions(consul, &key);

    let key = unique_key("execute");
    let env_file = dir.path("env");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "execute",
        "--lock-delay",
        "0",
        &key,
        &format!(
            "echo \"$CONSUL_LOCK_HELD $LOCKWRAP_KEY\" > '{}'; kill -USR1 $$",
            env_file.display()
        ),
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 138, "{}", describe(&out));
    assert_eq!(dir.read("env").trim(), format!("true {key}"));
    assert_no_sessions(consul, &key);

    // Signals and the TERM → child's code path are the same as run's.
    let key = unique_key("execute");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "execute",
        "--lock-delay",
        "0",
        &key,
        &format!(
            "echo $$ >> '{d}/child.pid'; trap 'exit 7' TERM; echo ready > '{d}/ready'; while :; do sleep 0.1; done",
            d = dir.display()
        ),
    ]);
    let wrapper = Proc::spawn(cmd);
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "child did not start"
    );
    wrapper.signal(Signal::SIGTERM);
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}
