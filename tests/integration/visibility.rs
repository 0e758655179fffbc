//! Issue 19, "Waiting and failing must be visible" (README, "Observability"): a waiting contender
//! names the holder at the default verbosity and `-q` silences it; `--timeout` names the holder;
//! `status` shows a semaphore's holders and `status -r` lists a semaphore once; the fencing-token
//! and queue gauges in `/metrics`.

use std::time::Duration;

use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    cli, code, describe, json_line, lock_ok, metric, run_bounded, run_cmd, scratch, script,
    session_info, session_of, sidecar, start, stdout, unique_key, unlock_and_check, Instance, Proc,
    QUICK, SOON,
};

/// The lines of `instance`'s stderr that carry `event="<event>"`.
fn events(instance: &Instance, event: &str) -> Vec<String> {
    let needle = format!("event=\"{event}\"");
    instance
        .stderr()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_waiting_contender_names_the_holder_once_at_default_verbosity_and_q_silences_it() {
    let consul = Consul::shared();
    let key = unique_key("vis-waiting");
    let dir = scratch("vis-waiting");
    let held = lock_ok(consul, &key, &[]);
    let session = session_of(&held);
    let info = session_info(consul, &session);
    let loud = start(consul, &dir, "loud", "run", &key, &["--", "true"]);
    let quiet = start(consul, &dir, "quiet", "run", &key, &["-q", "--", "true"]);

    assert!(
        wait_until(SOON, || !events(&loud, "wait-started").is_empty()),
        "no wait-started line at the default verbosity; stderr:\n{}",
        loud.stderr()
    );
    let line = events(&loud, "wait-started").remove(0);
    for part in [
        format!("key=\"{key}\""),
        session.clone(),
        format!("holder_name=\"{}\"", info["Name"].as_str().expect("Name")),
        format!("holder_node=\"{}\"", info["Node"].as_str().expect("Node")),
        format!(
            "holder_since=\"{}\"",
            held["created"].as_str().expect("created")
        ),
        format!("session create index {}", info["CreateIndex"]),
    ] {
        assert!(line.contains(&part), "`{part}` missing in: {line}");
    }
    // The quiet one waits too (it reports the holder it sees) but says nothing.
    assert!(
        wait_until(SOON, || quiet.session().as_deref()
            == Some(session.as_str())),
        "the quiet contender is not waiting: {:?}",
        quiet.leader()
    );

    unlock_and_check_holders_free(consul, &key);
    let (mut loud, mut quiet) = (loud, quiet);
    for (name, instance) in [("loud", &mut loud), ("quiet", &mut quiet)] {
        let status = instance.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: {status:?}\n{}",
            instance.stderr()
        );
    }
    assert_eq!(
        events(&loud, "wait-started").len(),
        1,
        "one line when the wait starts:\n{}",
        loud.stderr()
    );
    assert!(
        !quiet.stderr().contains("wait-started") && !quiet.stderr().contains("still-waiting"),
        "-q prints no waiting line:\n{}",
        quiet.stderr()
    );
}

/// `unlock` of the CLI holder (its session is gone afterwards, the contenders' may remain).
fn unlock_and_check_holders_free(consul: &Consul, key: &str) {
    let out = cli(consul, &["unlock", "--", key]);
    assert_eq!(code(&out), 0, "unlock {key}: {}", describe(&out));
}

#[test]
fn timeout_names_the_holder_and_keeps_exit_code_5() {
    let consul = Consul::shared();
    let key = unique_key("vis-timeout");
    let held = lock_ok(consul, &key, &[]);
    let session = session_of(&held);

    let out = run_bounded(run_cmd(consul, &key, &["--timeout", "1"], &["true"]), QUICK);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    let text = crate::harness::stderr(&out);
    assert!(
        text.contains(&format!(
            "timed out waiting for lock {key} after 1s: held by"
        )) && text.contains(&session),
        "run --timeout names the holder: {}",
        describe(&out)
    );

    let out = cli(consul, &["lock", "--timeout", "1", &key]);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    assert!(
        crate::harness::stderr(&out).contains(&session),
        "lock --timeout names the holder: {}",
        describe(&out)
    );
    unlock_and_check(consul, &key);
}

/// `--non-blocking` that finds the lock taken names the holder in `run` and in `sidecar` alike
/// (the sidecar's line said only "is taken").
#[test]
fn non_blocking_names_the_holder_in_run_and_sidecar() {
    let consul = Consul::shared();
    let key = unique_key("vis-non-blocking");
    let held = lock_ok(consul, &key, &[]);
    let session = session_of(&held);
    let port = crate::harness::free_port().to_string();
    let http = format!("127.0.0.1:{port}");
    let runs: [&[&str]; 2] = [
        &["run", "--key", &key, "--non-blocking", "--", "true"],
        &[
            "sidecar",
            "--key",
            &key,
            "--non-blocking",
            "--http-addr",
            &http,
        ],
    ];
    for args in runs {
        let mut cmd = crate::harness::lockwrap(consul);
        cmd.args(args);
        let out = run_bounded(cmd, QUICK);
        assert_eq!(code(&out), 100, "{args:?}: {}", describe(&out));
        let text = crate::harness::stderr(&out);
        assert!(
            text.contains(&format!("lock {key} is taken (held by")) && text.contains(&session),
            "{args:?} names the holder: {}",
            describe(&out)
        );
    }
    unlock_and_check(consul, &key);
}

#[test]
fn status_shows_a_semaphores_holders_and_status_r_lists_it_once() {
    let consul = Consul::shared();
    let key = unique_key("vis-semaphore");
    let dir = scratch("vis-semaphore");
    let child = script(
        &dir,
        "slot.sh",
        &format!(
            "while [ ! -e '{}/release' ]; do sleep 0.05; done",
            dir.display()
        ),
    );
    let child = child.to_str().expect("utf-8 path");
    let holders: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn(run_cmd(consul, &key, &["-n", "2"], &[child])))
        .collect();
    let status = || json_line(&cli(consul, &["status", &key]));
    assert!(
        wait_until(SOON, || status()["holders"]
            .as_array()
            .is_some_and(|h| h.len() == 2)),
        "status never showed two holders: {}",
        status()
    );
    let shown = status();
    assert_eq!(shown["key"], key.as_str(), "{shown}");
    assert_eq!(shown["limit"], 2, "{shown}");
    assert!(shown["session"].is_null(), "no single holder: {shown}");
    assert!(shown["fencingToken"].as_u64().is_some(), "{shown}");
    let pids: Vec<u32> = holders.iter().map(Proc::id).collect();
    for holder in shown["holders"].as_array().expect("holders") {
        assert_eq!(holder["alive"], true, "{shown}");
        assert!(holder["session"].as_str().is_some(), "{shown}");
        assert!(holder["created"].as_str().is_some(), "{shown}");
        let pid = holder["holder"]["pid"].as_u64().expect("holder pid") as u32;
        assert!(pids.contains(&pid), "{pid} is one of {pids:?}: {shown}");
    }

    // A third contender waits for a slot: its --timeout says how many are taken.
    let out = run_bounded(
        run_cmd(consul, &key, &["-n", "2", "--timeout", "1"], &["true"]),
        QUICK,
    );
    assert_eq!(code(&out), 5, "{}", describe(&out));
    assert!(
        crate::harness::stderr(&out).contains("2 of 2 slots taken; first held by"),
        "{}",
        describe(&out)
    );

    // `status -r`: the semaphore once under its prefix, beside a plain lock; never its `.lock`
    // or contender keys.
    let plain = format!("{key}x");
    lock_ok(consul, &plain, &[]);
    let pattern = format!("{key}.*");
    let listed = json_line(&cli(consul, &["status", "-r", &pattern]));
    let map = listed.as_object().expect("a map");
    let keys: Vec<&String> = map.keys().collect();
    assert_eq!(keys, vec![&key, &plain], "{listed}");
    assert_eq!(map[&key]["limit"], 2, "{listed}");
    assert!(map[&plain]["session"].as_str().is_some(), "{listed}");
    // `unlock -r` frees the lock and leaves the semaphore alone.
    let out = cli(consul, &["unlock", "-r", &pattern]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(json_line(&out), Value::from(vec![plain.clone()]));
    assert_eq!(status()["holders"].as_array().map(Vec::len), Some(2));

    std::fs::write(dir.join("release"), "").expect("release");
    for holder in holders {
        let out = holder.finish(Duration::from_secs(20));
        assert_eq!(code(&out), 0, "{}", describe(&out));
    }
    assert!(
        wait_until(SOON, || status().is_null()),
        "a semaphore nobody holds reads as null: {}",
        status()
    );
}

#[test]
fn metrics_show_the_fencing_token_and_the_queue_while_holding_and_waiting() {
    let consul = Consul::shared();
    let key = unique_key("vis-metrics");
    let dir = scratch("vis-metrics");
    let a = sidecar(consul, &dir, "a", &key, &["--queue"]);
    assert!(wait_until(SOON, || a.is_leader()), "a never led");
    let b = sidecar(consul, &dir, "b", &key, &["--queue"]);
    assert!(
        wait_until(SOON, || !events(&b, "wait-started").is_empty()),
        "b never said it waits:\n{}",
        b.stderr()
    );
    let token = a.leader().expect("/leader")["fencingToken"]
        .as_u64()
        .expect("a token");
    assert_eq!(metric(a.port, "lockwrap_fencing_token"), token as f64);
    assert_eq!(
        metric(b.port, "lockwrap_fencing_token"),
        0.0,
        "b holds nothing"
    );
    assert_eq!(
        metric(a.port, "lockwrap_queue_waiters"),
        0.0,
        "a left the queue"
    );
    assert!(
        wait_until(SOON, || metric(b.port, "lockwrap_queue_waiters") >= 1.0),
        "b saw itself in the queue"
    );
    let line = events(&b, "wait-started").remove(0);
    assert!(
        line.contains(&a.session().expect("a's session")),
        "b names a: {line}"
    );
}
