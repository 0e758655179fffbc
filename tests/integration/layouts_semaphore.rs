//! Key layouts and semaphores: the `consul-lock` layout against HashiCorp's `consul lock` (both
//! ways), foreign entries, and `-n` semaphores holding at most `limit` children.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::consul::{consul_binary, wait_until, Consul};
use crate::harness::{
    assert_no_sessions, cli, code, describe, exclusion_probe, json_line, ms, now_ns, run_bounded,
    run_cmd, scratch, session_of, stderr, stdout, term_recorder, unique_key, wait_waiting,
    waiting_opts, Dir, Proc, LOCK_FLAGS, QUICK,
};

/// The semaphore contender flags value: a key with these flags is not a lock.
const SEMAPHORE_FLAGS: u64 = 16_210_313_421_097_356_768;

/// `consul lock -http-addr=… PREFIX 'probe ID'`.
fn consul_lock(consul: &Consul, prefix: &str, probe: &str, id: &str) -> Proc {
    let mut cmd = Command::new(consul_binary());
    cmd.args([
        "lock",
        &format!("-http-addr=127.0.0.1:{}", consul.http_port),
        prefix,
        &format!("{probe} {id}"),
    ])
    .env("CONSUL_HTTP_TOKEN", "root")
    .stdin(Stdio::null());
    Proc::spawn(cmd)
}

#[test]
fn consul_lock_layout_uses_the_dot_lock_entry_with_consuls_flags() {
    let consul = Consul::shared();
    let prefix = unique_key("layout");
    let lock_entry = format!("{prefix}/.lock");
    let out = cli(consul, &["lock", "--layout", "consul-lock", &prefix]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    let entry = consul.kv(&lock_entry).expect("<prefix>/.lock written");
    assert_eq!(entry["Flags"].as_u64(), Some(LOCK_FLAGS), "{entry}");
    assert_eq!(entry["Session"], held["session"]);
    assert_eq!(held["fencingToken"], entry["ModifyIndex"]);
    assert!(
        consul.kv(&prefix).is_none(),
        "the prefix itself is not written"
    );

    let out = cli(consul, &["status", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        json_line(&out)["session"],
        held["session"],
        "{}",
        describe(&out)
    );
    let out = cli(
        consul,
        &["lock", "--layout", "consul-lock", "--non-blocking", &prefix],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["unlock", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        stdout(&out),
        json!(prefix).to_string(),
        "{}",
        describe(&out)
    );
    assert_eq!(consul.holder(&lock_entry), None);
    assert_no_sessions(consul, &prefix);
}

#[test]
fn a_lock_entry_with_foreign_flags_is_a_conflict_and_left_untouched() {
    let consul = Consul::shared();
    let prefix = unique_key("layout_conflict");
    let lock_entry = format!("{prefix}/.lock");
    consul.put(&format!("/v1/kv/{lock_entry}?flags=42"), "foreign");
    let plain = unique_key("flags_conflict");
    consul.put(
        &format!("/v1/kv/{plain}?flags={SEMAPHORE_FLAGS}"),
        "semaphore",
    );
    let before = (consul.kv(&lock_entry), consul.kv(&plain));

    for args in [
        vec!["lock", "--layout", "consul-lock", prefix.as_str()],
        vec![
            "lock",
            "--layout",
            "consul-lock",
            "--non-blocking",
            prefix.as_str(),
        ],
        vec![
            "execute",
            "--layout",
            "consul-lock",
            prefix.as_str(),
            "true",
        ],
        vec!["unlock", "--layout", "consul-lock", prefix.as_str()],
        vec!["lock", plain.as_str()],
        vec!["lock", "--non-blocking", plain.as_str()],
    ] {
        let out = cli(consul, &args);
        assert_eq!(code(&out), 3, "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains("flags"),
            "{args:?}: the message should explain the flags conflict: {}",
            describe(&out)
        );
    }
    assert_eq!(
        (consul.kv(&lock_entry), consul.kv(&plain)),
        before,
        "entries were touched"
    );
    assert_no_sessions(consul, &prefix);
    assert_no_sessions(consul, &plain);
    consul.delete_kv(&lock_entry);
    consul.delete_kv(&plain);
}

#[test]
fn consul_lock_layout_interoperates_with_hashicorp_consul_lock() {
    let consul = Consul::shared();
    let prefix = unique_key("interop");
    let dir = scratch("interop");
    let go = dir.join("go");
    let lock_entry = format!("{prefix}/.lock");

    // HashiCorp's `consul lock` holds the prefix: lockwrap sees it as taken.
    let mut theirs = Command::new(consul_binary());
    theirs.args([
        "lock",
        &format!("-http-addr={}", consul.addr()),
        &prefix,
        &format!("while [ ! -f '{}' ]; do sleep 0.05; done", go.display()),
    ]);
    let theirs = Proc::spawn(theirs);
    assert!(
        wait_until(QUICK, || consul.holder(&lock_entry).is_some()),
        "consul lock never took {lock_entry}"
    );
    let out = cli(
        consul,
        &["lock", "--layout", "consul-lock", "--non-blocking", &prefix],
    );
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["status", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        json_line(&out)["session"].as_str(),
        consul.holder(&lock_entry).as_deref()
    );

    // The same name in lockwrap's default layout would give no exclusion at all: refused,
    // naming the layout to use, and nothing runs.
    let ran = dir.join("default-layout-ran");
    let out = cli(
        consul,
        &[
            "run",
            "--non-blocking",
            "--key",
            &prefix,
            "--",
            "touch",
            &ran.display().to_string(),
        ],
    );
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(
        stderr(&out).contains("--layout consul-lock"),
        "{}",
        describe(&out)
    );
    assert!(!ran.exists(), "the command ran beside `consul lock`");

    // Once it lets go, lockwrap takes the same entry; then `consul lock` cannot.
    std::fs::write(&go, "").expect("go file");
    let (out, _) = theirs.finish_at(QUICK);
    assert!(out.status.success(), "consul lock: {}", describe(&out));
    // `consul lock` released cleanly (and removed its entry): no takeover wait.
    let started = std::time::Instant::now();
    let out = cli(
        consul,
        &[
            "run",
            "--layout",
            "consul-lock",
            "--key",
            &prefix,
            "--",
            "true",
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a clean `consul lock` release was waited for: {:?}",
        started.elapsed()
    );
    let out = cli(
        consul,
        &[
            "lock",
            "--layout",
            "consul-lock",
            "--timeout",
            "10",
            &prefix,
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    assert_eq!(consul.holder(&lock_entry), Some(session_of(&held)));

    let marker = dir.join("theirs-ran");
    let mut theirs = Command::new(consul_binary());
    theirs.args([
        "lock",
        &format!("-http-addr={}", consul.addr()),
        "-try=1s",
        &prefix,
        &format!("touch '{}'", marker.display()),
    ]);
    let out = run_bounded(theirs, QUICK);
    assert!(
        !out.status.success(),
        "consul lock got a held lock: {}",
        describe(&out)
    );
    assert!(!marker.exists());

    let out = cli(consul, &["unlock", "--layout", "consul-lock", &prefix]);
    assert_eq!(
        stdout(&out),
        json!(prefix).to_string(),
        "{}",
        describe(&out)
    );
    assert_no_sessions(consul, &prefix);
}

#[test]
fn run_semaphore_runs_at_most_limit_children() {
    let consul = Consul::shared();
    let key = unique_key("run-semaphore");
    let dir = Dir::new("run-semaphore");
    let child = dir.script(
        "slot.sh",
        &format!(
            "D='{}'\nID=\"$1\"\necho $$ >> \"$D/child.pid\"\n\
             touch \"$D/running.$ID\"\nls \"$D\" | grep -c '^running\\.' >> \"$D/counts\"\n\
             echo \"$ID\" >> \"$D/order\"\n\
             while [ ! -e \"$D/release.$ID\" ]; do sleep 0.05; done\nrm -f \"$D/running.$ID\"",
            dir.display()
        ),
    );
    let mut wrappers: Vec<(String, Proc)> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child, id])),
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || dir.lines("order").len() >= 2),
        "two slots were not filled"
    );
    assert!(
        wait_until(Duration::from_secs(10), || consul.sessions_for(&key).len()
            == 3),
        "the third contender is not waiting: {:?}",
        consul.sessions_for(&key)
    );
    let running = dir.lines("order");
    assert_eq!(
        running.len(),
        2,
        "at most two children at once: {running:?}"
    );

    // The waiter renews its session only every third of the TTL: a slot taken seconds after the
    // last renew must still be held (it was lost at once, exit 101, before the waiter renewed on
    // taking the slot).
    std::thread::sleep(Duration::from_secs(3));
    let first = running[0].clone();
    dir.touch(&format!("release.{first}"));
    assert!(
        wait_until(Duration::from_secs(5), || dir.lines("order").len() == 3),
        "the waiting contender did not get the freed slot"
    );
    for id in ["a", "b", "c"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper) in wrappers.drain(..) {
        let out = wrapper.finish(Duration::from_secs(10));
        assert_eq!(code(&out), 0, "{id}: {}", describe(&out));
    }
    let counts: Vec<u32> = dir
        .lines("counts")
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert!(
        counts.iter().all(|c| *c <= 2),
        "more than two children at once: {counts:?}"
    );
    assert_eq!(counts.len(), 3, "each wrapper ran its child once");
    assert_no_sessions(consul, &key);
}

#[test]
fn run_semaphore_with_a_different_limit_is_a_conflict() {
    let consul = Consul::shared();
    let key = unique_key("run-semaphore-conflict");
    let dir = Dir::new("run-semaphore-conflict");
    let child = term_recorder(&dir);
    let holder = Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(10)),
        "holder's child did not start"
    );

    let marker = dir.path("conflict-ran");
    let out = run_bounded(
        run_cmd(
            consul,
            &key,
            &["-n", "3"],
            &["sh", "-c", &format!("touch '{}'", marker.display())],
        ),
        Duration::from_secs(15),
    );
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(
        stderr(&out).to_lowercase().contains("limit"),
        "{}",
        describe(&out)
    );
    assert!(
        !marker.exists(),
        "the conflicting contender ran its command"
    );

    dir.touch("release");
    let out = holder.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn run_consul_lock_layout_excludes_hashicorp_consul_lock_both_ways() {
    // A private agent: `consul lock`'s session has its own name, so count every session (a
    // waiting `consul lock` keeps its session, which shows it is waiting).
    let consul = Consul::start();
    let prefix = unique_key("run-consul-lock");
    let dir = Dir::new("run-consul-lock");
    let probe = exclusion_probe(&dir);
    let waiting = waiting_opts(&dir, "lw1");
    let mut opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    opts.extend(["--layout", "consul-lock"]);

    // consul lock holds; lockwrap waits (its --on-already-locked hook proves it).
    let hashicorp = consul_lock(&consul, &prefix, &probe, "consul1");
    assert!(
        wait_until(Duration::from_secs(15), || dir.lines("order")
            == ["consul1"]),
        "consul lock's child did not start"
    );
    let ours = Proc::spawn(run_cmd(&consul, &prefix, &opts, &[&probe, "lw1"]));
    wait_waiting(&dir, "lw1");
    assert_eq!(
        dir.lines("order"),
        vec!["consul1"],
        "lockwrap ran while consul lock held"
    );
    dir.touch("release.consul1");
    let out = hashicorp.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "consul lock: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || dir.exists("start.lw1")),
        "lockwrap did not take over from consul lock"
    );

    // lockwrap holds; consul lock waits.
    let hashicorp = consul_lock(&consul, &prefix, &probe, "consul2");
    assert!(
        wait_until(Duration::from_secs(10), || consul.sessions().len() == 2),
        "consul lock is not waiting: {:?}",
        consul.sessions()
    );
    assert_eq!(
        dir.lines("order"),
        vec!["consul1", "lw1"],
        "consul lock ran while lockwrap held"
    );
    dir.touch("release.lw1");
    let out = ours.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "lockwrap: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || dir.exists("start.consul2")),
        "consul lock did not take over from lockwrap"
    );
    dir.touch("release.consul2");
    let out = hashicorp.finish(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "consul lock: {}", describe(&out));

    assert!(
        !dir.exists("overlap"),
        "two holders at once: {:?}",
        dir.lines("overlap")
    );
    assert!(
        // `consul lock` destroys its session from a goroutine as it exits and may exit first;
        // then the session ends by its TTL (15 s; Consul allows up to twice that).
        wait_until(Duration::from_secs(40), || consul.sessions().is_empty()),
        "sessions left: {:?}",
        consul.sessions()
    );
}

/// How a semaphore slot is forced free under holders with a longer kill grace than the waiter's.
#[derive(Clone, Copy, Debug)]
enum Forced {
    /// The first holder's session is destroyed: the waiter takes its dead slot.
    SessionDestroyed,
    /// `.lock` is deleted under both holders: the waiter creates it anew.
    LockEntryDeleted,
}

/// A rollout that lowers the kill grace, on a semaphore (`-n 2`): holders a and b (grace 5 s,
/// takeover 8 s, a command that takes 4.5 s to stop), waiter c (grace 1 s, takeover 4 s). When a
/// slot is forced free, c waits the 8 s the old holders announced (a's contender entry, or their
/// live session names when `.lock` is gone), not its own 4 s: its command starts only after
/// every stopping holder's command ended (docs/timing.md, "Contenders with different settings").
fn semaphore_waiter_with_a_shorter_grace_waits_the_announced_takeover(forced: Forced) {
    let consul = Consul::shared();
    let key = unique_key("sem-mixed-grace");
    let dir = Dir::new("sem-mixed-grace");
    let child = dir.slow_stopper(4.5);
    let old = ["-n", "2", "--kill-grace", "5s", "--takeover-delay", "8s"];
    let a = Proc::spawn(run_cmd(consul, &key, &old, &[&child, "a"]));
    assert!(
        dir.wait_for("start.a", Duration::from_secs(10)),
        "a did not start"
    );
    let b = Proc::spawn(run_cmd(consul, &key, &old, &[&child, "b"]));
    assert!(
        dir.wait_for("start.b", Duration::from_secs(10)),
        "b did not start"
    );
    let waiting = waiting_opts(&dir, "c");
    let mut c_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    c_opts.extend(["-n", "2", "--kill-grace", "1s", "--takeover-delay", "4s"]);
    let c = Proc::spawn(run_cmd(consul, &key, &c_opts, &[&child, "c"]));
    wait_waiting(&dir, "c");

    let forced_at = now_ns();
    let stopped: &[&str] = match forced {
        Forced::SessionDestroyed => {
            consul.destroy_session(&session_of_pid(consul, &key, a.id()));
            &["a"]
        }
        Forced::LockEntryDeleted => {
            consul.delete_kv(&format!("{key}/.lock"));
            &["a", "b"]
        }
    };
    assert!(
        dir.wait_for("start.c", Duration::from_secs(20)),
        "{forced:?}: c never started"
    );
    let start_c = dir.ns("start.c").expect("start.c");
    for id in stopped {
        let end = dir.ns(&format!("end.{id}")).unwrap_or_else(|| {
            panic!("{forced:?}: c started while {id}'s command still ran (no end.{id} yet)")
        });
        eprintln!(
            "{forced:?}: {id} stopped {} ms after the fault, c started {} ms after it",
            ms(end - forced_at),
            ms(start_c - forced_at)
        );
        assert!(
            start_c > end,
            "{forced:?}: c started before {id}'s command ended"
        );
    }
    assert!(
        start_c - forced_at >= 8_000_000_000,
        "{forced:?}: c waited {} ms, not the announced 8 s",
        ms(start_c - forced_at)
    );
    for id in ["a", "b", "c"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper) in [("a", a), ("b", b), ("c", c)] {
        let out = wrapper.finish(Duration::from_secs(15));
        let lost = stopped.contains(&id);
        let want = if lost { 101 } else { 0 };
        assert_eq!(code(&out), want, "{forced:?}: {id}: {}", describe(&out));
    }
    assert_no_sessions(consul, &key);
}

#[test]
fn semaphore_waiter_with_a_shorter_grace_waits_a_destroyed_holders_announced_takeover() {
    semaphore_waiter_with_a_shorter_grace_waits_the_announced_takeover(Forced::SessionDestroyed);
}

#[test]
fn semaphore_waiter_with_a_shorter_grace_waits_when_dot_lock_is_deleted_under_the_holders() {
    semaphore_waiter_with_a_shorter_grace_waits_the_announced_takeover(Forced::LockEntryDeleted);
}

/// `.lock` deleted under two holders (`-n 2`, a command that takes 4.5 s to stop) while two
/// contenders wait: the first to re-create `.lock` sees the stopping holders' sessions and waits
/// its takeover delay, and so must the second — it finds the other slot of the new `.lock` taken
/// by a placeholder for the unknown holders (docs/timing.md, "Semaphores"), not free. Before,
/// it took that free slot and started at once: 3 commands for ~4.5 s.
#[test]
fn a_second_waiter_does_not_start_in_a_re_created_dot_lock_while_the_old_holders_stop() {
    let consul = Consul::shared();
    let key = unique_key("sem-two-waiters");
    let dir = Dir::new("sem-two-waiters");
    let child = dir.slow_stopper(4.5);
    let opts = ["-n", "2", "--kill-grace", "5s", "--takeover-delay", "8s"];
    let a = Proc::spawn(run_cmd(consul, &key, &opts, &[&child, "a"]));
    assert!(
        dir.wait_for("start.a", Duration::from_secs(10)),
        "a did not start"
    );
    let b = Proc::spawn(run_cmd(consul, &key, &opts, &[&child, "b"]));
    assert!(
        dir.wait_for("start.b", Duration::from_secs(10)),
        "b did not start"
    );
    let mut waiters = Vec::new();
    for id in ["w1", "w2"] {
        let waiting = waiting_opts(&dir, id);
        let mut w_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
        w_opts.extend(opts);
        waiters.push((
            id,
            Proc::spawn(run_cmd(consul, &key, &w_opts, &[&child, id])),
        ));
        wait_waiting(&dir, id);
    }

    let deleted_at = now_ns();
    consul.delete_kv(&format!("{key}/.lock"));
    for (id, _) in &waiters {
        assert!(
            dir.wait_for(&format!("start.{id}"), Duration::from_secs(20)),
            "{id} never started"
        );
    }
    let ends: Vec<i128> = ["a", "b"]
        .iter()
        .map(|id| {
            dir.ns(&format!("end.{id}")).unwrap_or_else(|| {
                panic!("a waiter started while {id}'s command still ran (no end.{id} yet)")
            })
        })
        .collect();
    let last_end = ends.iter().copied().max().unwrap_or_default();
    for (id, _) in &waiters {
        let start = dir.ns(&format!("start.{id}")).expect("start");
        eprintln!(
            "{id} started {} ms after the delete; the old commands ended by {} ms",
            ms(start - deleted_at),
            ms(last_end - deleted_at)
        );
        assert!(
            start > last_end,
            "{id} started before the old holders' commands ended"
        );
    }
    for id in ["a", "b", "w1", "w2"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper) in [("a", a), ("b", b)] {
        let out = wrapper.finish(Duration::from_secs(15));
        assert_eq!(code(&out), 101, "{id}: {}", describe(&out));
    }
    for (id, wrapper) in waiters {
        let out = wrapper.finish(Duration::from_secs(15));
        assert_eq!(code(&out), 0, "{id}: {}", describe(&out));
    }
    assert_no_sessions(consul, &key);
}

/// `jobs/` and `jobs` name one semaphore (both spellings trim the slash): after `.lock` is
/// deleted under two `jobs/` holders, a newcomer spelling it `jobs` must see their live sessions
/// and wait its takeover delay. Before, it looked for sessions named for `jobs` only, found none,
/// and started 18 ms after the delete beside both stopping commands: 3 on `-n 2`.
#[test]
fn a_newcomer_spelling_the_key_without_its_slash_sees_the_stopping_holders() {
    let consul = Consul::shared();
    let key = unique_key("sem-spelling");
    let slashed = format!("{key}/");
    let dir = Dir::new("sem-spelling");
    let child = dir.slow_stopper(4.5);
    let opts = ["-n", "2", "--kill-grace", "5s", "--takeover-delay", "8s"];
    let mut holders = Vec::new();
    for id in ["a", "b"] {
        holders.push((
            id,
            Proc::spawn(run_cmd(consul, &slashed, &opts, &[&child, id])),
        ));
        assert!(
            dir.wait_for(&format!("start.{id}"), Duration::from_secs(10)),
            "{id} did not start"
        );
    }
    let deleted_at = now_ns();
    consul.delete_kv(&format!("{key}/.lock"));
    let c = Proc::spawn(run_cmd(consul, &key, &opts, &[&child, "c"]));
    assert!(
        dir.wait_for("start.c", Duration::from_secs(20)),
        "c never started"
    );
    c_after_a_and_b(consul, &key, &dir, holders, c, deleted_at, "delete");
}

/// After a fault at `fault_at` under holders a and b (slow stoppers): c started only once both
/// old commands had ended; then everyone is released, a and b exit 101 (lost), c 0, and no
/// session of `key` is left.
fn c_after_a_and_b(
    consul: &Consul,
    key: &str,
    dir: &Dir,
    holders: Vec<(&str, Proc)>,
    c: Proc,
    fault_at: i128,
    fault: &str,
) {
    let last_end = ["a", "b"]
        .iter()
        .map(|id| {
            dir.ns(&format!("end.{id}")).unwrap_or_else(|| {
                panic!("c started while {id}'s command still ran (no end.{id} yet)")
            })
        })
        .max()
        .unwrap_or_default();
    let start = dir.ns("start.c").expect("start");
    eprintln!(
        "c started {} ms after the {fault}; the old commands ended by {} ms",
        ms(start - fault_at),
        ms(last_end - fault_at)
    );
    assert!(
        start > last_end,
        "c started before the old holders' commands ended"
    );
    for id in ["a", "b", "c"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper) in holders {
        let out = wrapper.finish(Duration::from_secs(15));
        assert_eq!(code(&out), 101, "{id}: {}", describe(&out));
    }
    let out = c.finish(Duration::from_secs(15));
    assert_eq!(code(&out), 0, "c: {}", describe(&out));
    assert_no_sessions(consul, key);
}

/// The session of the lockwrap with pid `pid` among `key`'s.
fn session_of_pid(consul: &Consul, key: &str, pid: u32) -> String {
    let pid = format!("pid {pid}");
    let session = consul
        .sessions_for(key)
        .into_iter()
        .find(|s| {
            s["Name"].as_str().is_some_and(|n| {
                n.split(" [")
                    .next()
                    .is_some_and(|base| base.ends_with(&pid))
            })
        })
        .unwrap_or_else(|| panic!("no session of {pid} for {key}"));
    session["ID"].as_str().expect("session ID").to_string()
}

/// One event ends a holder with a long grace (a: 10 s, announces 13 s, its command stops in
/// 8 s) and the waiter with a short one (c: 1 s, 4 s): c's session goes first, so c sees a dead
/// but cannot announce a's delay from its contender key. It must not write itself into `.lock`
/// then: its key, announcing 4 s, would become the only record of that slot, and c's next try
/// started 4.5 s after the fault beside a's command and b (found by review; 3 on `-n 2`).
#[test]
fn a_waiter_whose_session_died_with_the_holders_does_not_take_the_slot_unannounced() {
    let consul = Consul::shared();
    let key = unique_key("sem-died-together");
    let dir = Dir::new("sem-died-together");
    let child = dir.slow_stopper(8.0);
    let a = Proc::spawn(run_cmd(
        consul,
        &key,
        &["-n", "2", "--kill-grace", "10s", "--takeover-delay", "13s"],
        &[&child, "a"],
    ));
    assert!(
        dir.wait_for("start.a", Duration::from_secs(10)),
        "a did not start"
    );
    let short = ["-n", "2", "--kill-grace", "1s", "--takeover-delay", "4s"];
    let b = Proc::spawn(run_cmd(consul, &key, &short, &[&child, "b"]));
    assert!(
        dir.wait_for("start.b", Duration::from_secs(10)),
        "b did not start"
    );
    let waiting = waiting_opts(&dir, "c");
    let mut c_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    c_opts.extend(short);
    let c = Proc::spawn(run_cmd(consul, &key, &c_opts, &[&child, "c"]));
    wait_waiting(&dir, "c");

    let (a_session, c_session) = (
        session_of_pid(consul, &key, a.id()),
        session_of_pid(consul, &key, c.id()),
    );
    let forced_at = now_ns();
    consul.destroy_session(&c_session);
    consul.destroy_session(&a_session);
    assert!(
        dir.wait_for("start.c", Duration::from_secs(30)),
        "c never started"
    );
    let start_c = dir.ns("start.c").expect("start.c");
    let end_a = dir
        .ns("end.a")
        .unwrap_or_else(|| panic!("c started while a's command still ran (no end.a yet)"));
    eprintln!(
        "a stopped {} ms after the fault, c started {} ms after it",
        ms(end_a - forced_at),
        ms(start_c - forced_at)
    );
    assert!(start_c > end_a, "c started before a's command ended");
    for id in ["a", "b", "c"] {
        dir.touch(&format!("release.{id}"));
    }
    for (id, wrapper, want) in [("a", a, 101), ("b", b, 0), ("c", c, 0)] {
        let out = wrapper.finish(Duration::from_secs(20));
        assert_eq!(code(&out), want, "{id}: {}", describe(&out));
    }
    assert_no_sessions(consul, &key);
}

/// An agent restart that loses Consul's state takes the holders' sessions and `.lock` with it:
/// the waiter then found an empty prefix and no live session named for the key, took it for
/// never used and started 0.5 s after the agent came back, beside both holders' commands still
/// stopping (3 on `-n 2` for 3.5 s; reproduced on a dev agent, found reading the semaphore path
/// for what the lock's state-loss check covers). The index of `.lock` going back, or the
/// waiter's own contender key gone, now makes its take unclean: it waits its takeover delay.
#[test]
fn a_semaphore_waiter_that_saw_consul_lose_its_state_waits_for_the_stopping_holders() {
    let consul = Consul::start();
    let key = unique_key("sem-state-loss");
    let dir = Dir::new("sem-state-loss");
    let child = dir.slow_stopper(4.0);
    let opts = ["-n", "2", "--kill-grace", "5s", "--takeover-delay", "8s"];
    let mut holders = Vec::new();
    for id in ["a", "b"] {
        holders.push((
            id,
            Proc::spawn(run_cmd(&consul, &key, &opts, &[&child, id])),
        ));
        assert!(
            dir.wait_for(&format!("start.{id}"), Duration::from_secs(10)),
            "{id} did not start"
        );
    }
    let waiting = waiting_opts(&dir, "c");
    let mut c_opts: Vec<&str> = waiting.iter().map(String::as_str).collect();
    c_opts.extend(opts);
    let c = Proc::spawn(run_cmd(&consul, &key, &c_opts, &[&child, "c"]));
    wait_waiting(&dir, "c");

    let restarted_at = now_ns();
    consul.restart();
    assert!(
        dir.wait_for("start.c", Duration::from_secs(40)),
        "c never started"
    );
    c_after_a_and_b(&consul, &key, &dir, holders, c, restarted_at, "restart");
}

/// A rollout that changes `-n 1` to `-n 2` (or back) on one name: a lock at `KEY` and a
/// semaphore at `KEY/.lock` never exclude each other. Before, the semaphore checked only its
/// own `.lock` and the lock checked the other layout only for a key with no entry: both
/// directions ran 3 commands (review, dev agent: 15.5 s and 5.3 s). Now the newcomer is
/// refused (exit 3) while the other structure is held, and never starts its command.
#[test]
fn a_lock_and_a_semaphore_of_one_name_refuse_each_other() {
    let consul = Consul::shared();
    let dir = Dir::new("crossed");
    let child = dir.slow_stopper(0.5);

    // A plain holder first; the name's key has an entry (used before), so no first-use check.
    let key = unique_key("crossed-plain-first");
    let out = run_bounded(run_cmd(consul, &key, &[], &["true"]), QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let a = Proc::spawn(run_cmd(consul, &key, &[], &[&child, "a"]));
    assert!(
        dir.wait_for("start.a", Duration::from_secs(10)),
        "a did not start"
    );
    let out = run_bounded(run_cmd(consul, &key, &["-n", "2"], &[&child, "b"]), QUICK);
    assert_eq!(code(&out), 3, "-n 2 beside a held lock: {}", describe(&out));
    assert!(
        stderr(&out).contains("never exclude each other"),
        "{}",
        describe(&out)
    );
    assert!(!dir.exists("start.b"), "b started beside a");
    dir.touch("release.a");
    assert_eq!(code(&a.finish(Duration::from_secs(15))), 0);

    // Semaphore holders first; the plain key has a clean entry from an earlier holder.
    let key = unique_key("crossed-sem-first");
    let out = run_bounded(run_cmd(consul, &key, &[], &["true"]), QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let c = Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child, "c"]));
    assert!(
        dir.wait_for("start.c", Duration::from_secs(10)),
        "c did not start"
    );
    let out = run_bounded(run_cmd(consul, &key, &[], &[&child, "d"]), QUICK);
    assert_eq!(
        code(&out),
        3,
        "a lock beside a held semaphore: {}",
        describe(&out)
    );
    assert!(!dir.exists("start.d"), "d started beside c");
    dir.touch("release.c");
    assert_eq!(code(&c.finish(Duration::from_secs(15))), 0);
    assert_no_sessions(consul, &key);
}

/// A lock and a semaphore of one name started at the same moment: each checks the other
/// structure after its own write landed, so at most one of them starts (both may give up).
#[test]
fn a_lock_and_a_semaphore_started_together_never_both_run() {
    let consul = Consul::shared();
    let dir = Dir::new("crossed-race");
    let child = dir.slow_stopper(0.2);
    for round in 0..5 {
        let key = unique_key(&format!("crossed-race-{round}"));
        let (p, s) = (format!("p{round}"), format!("s{round}"));
        let mut plain = Proc::spawn(run_cmd(consul, &key, &[], &[&child, &p]));
        let mut sem = Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[&child, &s]));
        assert!(
            wait_until(Duration::from_secs(20), || {
                (dir.exists(&format!("start.{p}")) || !plain.running())
                    && (dir.exists(&format!("start.{s}")) || !sem.running())
            }),
            "round {round}: neither started nor gave up"
        );
        assert!(
            !(dir.exists(&format!("start.{p}")) && dir.exists(&format!("start.{s}"))),
            "round {round}: a lock and a semaphore of one name both started"
        );
        dir.touch(&format!("release.{p}"));
        dir.touch(&format!("release.{s}"));
        for (id, proc) in [(&p, plain), (&s, sem)] {
            let out = proc.finish(Duration::from_secs(20));
            assert!(
                [0, 3].contains(&code(&out)),
                "round {round} {id}: {}",
                describe(&out)
            );
        }
    }
}
