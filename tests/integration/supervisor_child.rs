//! The supervised child: its exit code passes through, it gets the lock environment, and
//! orphaned grandchildren are reaped (README, "The supervisor" and "Exit codes").

use std::time::Duration;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    assert_no_sessions, code, describe, run_bounded, run_cmd, unique_key, Dir, Proc,
    WAIT_FOR_RELEASE,
};

/// `(state, ppid)` from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Zombies whose parent is `parent`.
fn zombies_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some(('Z', ppid)) if ppid == parent))
        .collect()
}

#[test]
fn run_passes_exit_codes_through() {
    let consul = Consul::shared();
    let dir = Dir::new("run-exit-codes");
    let not_executable = dir.path("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write");
    let not_executable = not_executable.display().to_string();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["sh", "-c", "exit 0"], 0),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "exit 42"], 42),
        (vec!["sh", "-c", "kill -KILL $$"], 137),
        (vec!["sh", "-c", "kill -USR1 $$"], 138),
        (vec![&not_executable], 126),
        (vec!["/nonexistent/lockwrap-test-program"], 127),
        (vec!["lockwrap-test-no-such-program-on-path"], 127),
    ];
    for (command, expected) in cases {
        let key = unique_key("run-exit-codes");
        let out = run_bounded(
            run_cmd(consul, &key, &[], &command),
            Duration::from_secs(20),
        );
        assert_eq!(code(&out), expected, "{command:?}: {}", describe(&out));
        assert_no_sessions(consul, &key);
        assert!(consul.holder(&key).is_none(), "{command:?}: key still held");
    }
    // Through the shell, the shell's own 127 for a missing program passes through.
    let key = unique_key("run-exit-codes");
    let out = run_bounded(
        run_cmd(consul, &key, &["--shell"], &["/nonexistent/prog"]),
        Duration::from_secs(20),
    );
    assert_eq!(code(&out), 127, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn run_gives_the_child_the_lock_environment() {
    let consul = Consul::shared();
    let key = unique_key("run-env");
    let dir = Dir::new("run-env");
    let child = dir.script(
        "env.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\nenv > \"$D/env.tmp\" && mv \"$D/env.tmp\" \"$D/env\"\n{WAIT_FOR_RELEASE}",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &[], &[&child]));
    assert!(
        dir.wait_for("env", Duration::from_secs(10)),
        "child did not start"
    );
    let env: std::collections::HashMap<String, String> = dir
        .lines("env")
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let holder = consul.holder(&key).expect("held while the child runs");
    let modify_index = consul
        .kv(&key)
        .and_then(|e| e.get("ModifyIndex").and_then(|v| v.as_u64()))
        .expect("ModifyIndex");
    dir.touch("release");
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));

    assert_eq!(
        env.get("CONSUL_LOCK_HELD").map(String::as_str),
        Some("true")
    );
    assert_eq!(env.get("LOCKWRAP_KEY"), Some(&key));
    assert_eq!(env.get("LOCKWRAP_SESSION"), Some(&holder));
    assert_eq!(
        env.get("LOCKWRAP_FENCING_TOKEN"),
        Some(&modify_index.to_string()),
        "the fencing token is the entry's ModifyIndex at acquisition"
    );
    assert!(
        env.contains_key("PATH"),
        "the rest of the environment is inherited"
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn run_subreaper_reaps_orphaned_grandchildren() {
    let consul = Consul::shared();
    let key = unique_key("run-subreaper");
    let dir = Dir::new("run-subreaper");
    let child = dir.script(
        "orphaner.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\n\
             ( sh -c 'echo $$ > \"$0/orphan.pid\"; while [ ! -e \"$0/orphan.go\" ]; do sleep 0.05; done' \"$D\" & )\n\
             {WAIT_FOR_RELEASE}",
            dir.display()
        ),
    );
    let wrapper = Proc::spawn(run_cmd(consul, &key, &["--subreaper"], &[&child]));
    let lockwrap_pid = wrapper.pid;
    assert!(
        wait_until(Duration::from_secs(10), || !dir
            .pids("orphan.pid")
            .is_empty()),
        "the orphan did not start"
    );
    let orphan = dir.pids("orphan.pid")[0];
    assert!(
        wait_until(Duration::from_secs(5), || {
            proc_stat(orphan).is_some_and(|(_, ppid)| ppid == lockwrap_pid)
        }),
        "the orphan was not re-parented to lockwrap (stat {:?})",
        proc_stat(orphan)
    );
    dir.touch("orphan.go");
    let reaped = wait_until(Duration::from_secs(5), || proc_stat(orphan).is_none());
    let zombies = zombies_of(lockwrap_pid);
    let mut wrapper = wrapper;
    assert!(wrapper.running(), "lockwrap must still run");
    assert!(
        reaped,
        "the orphan stayed a zombie: {:?}",
        proc_stat(orphan)
    );
    assert!(zombies.is_empty(), "zombies under lockwrap: {zombies:?}");

    dir.touch("release");
    let out = wrapper.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}
