//! The `--http-addr` status server and status file (README, "Kubernetes" and "Observability"):
//! readiness follows the lock, `/leader` names the holder everywhere, `/metrics` is Prometheus text
//! whose counters move, and the status file is never partial.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{
    metric, metrics_of, parse_prometheus, scratch, sidecar, start, status_of, unique_key,
    wait_settled, SOON,
};

fn assert_leader_document(doc: &Value, key: &str, is_leader: bool, session: &str) {
    for field in [
        "key",
        "isLeader",
        "holder",
        "session",
        "fencingToken",
        "since",
        "validUntil",
    ] {
        assert!(doc.get(field).is_some(), "`{field}` missing in {doc}");
    }
    // RFC 3339 UTC when set; a standby has none (README, "Observability").
    assert!(
        doc["validUntil"].is_null() || doc["validUntil"].as_str().is_some_and(|s| s.ends_with('Z')),
        "validUntil: {doc}"
    );
    if !is_leader {
        assert!(doc["validUntil"].is_null(), "a standby's validUntil: {doc}");
    }
    assert_eq!(doc["key"], key, "{doc}");
    assert_eq!(doc["isLeader"], is_leader, "{doc}");
    assert_eq!(doc["session"], session, "{doc}");
    assert!(
        doc["fencingToken"].as_u64().is_some_and(|t| t > 0),
        "fencingToken: {doc}"
    );
    assert!(
        doc["holder"].get("pid").is_some(),
        "holder names a pid: {doc}"
    );
    if is_leader {
        assert!(
            doc["since"].as_str().is_some_and(|s| s.contains('T')),
            "since: {doc}"
        );
    }
}

#[test]
fn sidecar_readyz_leader_and_metrics_follow_the_lock_across_losses() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-flip");
    let dir = scratch("sidecar-flip");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    wait_until(SOON, || a.ready() == Some(200));
    let b = sidecar(consul, &dir, "b", &key, &[]);
    let first = wait_settled(consul, &key, &a, &b);

    // /leader on both names the holder; only the holder says isLeader.
    let (la, lb) = (a.leader().unwrap(), b.leader().unwrap());
    assert_leader_document(&la, &key, true, &first);
    assert_leader_document(&lb, &key, false, &first);
    assert_eq!(la["fencingToken"], lb["fencingToken"]);
    let first_token = la["fencingToken"].as_u64();
    assert_eq!(la["holder"], lb["holder"]);
    assert_eq!(la["holder"]["pid"], a.child.id(), "holder pid is a's: {la}");
    assert_eq!(status_of(a.port, "/healthz"), Some(200));
    assert_eq!(status_of(b.port, "/healthz"), Some(200));
    assert_eq!(status_of(a.port, "/nonexistent"), Some(404));
    // The status file says what /leader says.
    assert!(
        wait_until(SOON, || a.status_file() == a.leader()),
        "a: {:?} vs {:?}",
        a.status_file(),
        a.leader()
    );
    assert!(
        wait_until(SOON, || b.status_file() == b.leader()),
        "b: {:?} vs {:?}",
        b.status_file(),
        b.leader()
    );

    // Metrics: every documented family is there.
    let ma = metrics_of(a.port);
    for name in [
        "lockwrap_lock_held",
        "lockwrap_acquisitions_total",
        "lockwrap_lock_lost_total",
        "lockwrap_session_renew_failures_total",
        "lockwrap_acquire_wait_seconds_count",
        "lockwrap_acquire_wait_seconds_sum",
        "lockwrap_child_exit_code",
        "lockwrap_lease_seconds_left",
        "lockwrap_seconds_since_renew",
    ] {
        assert!(ma.contains_key(name), "{name} missing: {ma:?}");
    }
    assert!(
        ma.keys()
            .any(|k| k.starts_with("lockwrap_acquire_wait_seconds_bucket{")
                && k.contains("le=\"+Inf\"")),
        "histogram +Inf bucket: {ma:?}"
    );
    assert_eq!(ma["lockwrap_lock_held"], 1.0);
    assert_eq!(ma["lockwrap_acquisitions_total"], 1.0);
    assert_eq!(ma["lockwrap_lock_lost_total"], 0.0);
    assert_eq!(ma["lockwrap_acquire_wait_seconds_count"], 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_acquisitions_total"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_lease_seconds_left"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_seconds_since_renew"), 0.0);

    // Loss: destroy a's session → b leads, a re-campaigns and becomes the standby.
    consul.destroy_session(&first);
    let second = wait_settled(consul, &key, &b, &a);
    assert_ne!(first, second);
    let (la, lb) = (a.leader().unwrap(), b.leader().unwrap());
    assert_leader_document(&lb, &key, true, &second);
    assert_leader_document(&la, &key, false, &second);
    assert!(
        lb["fencingToken"].as_u64() > first_token,
        "fencing token increases: {first_token:?} then {lb}"
    );
    assert_eq!(metric(a.port, "lockwrap_lock_lost_total"), 1.0);
    assert_eq!(metric(a.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_acquisitions_total"), 1.0);
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    assert!(wait_until(SOON, || b.status_file() == b.leader()));

    // And back: a re-acquires, its acquisitions counter moves to 2.
    consul.destroy_session(&second);
    let third = wait_settled(consul, &key, &a, &b);
    assert!(!third.is_empty() && third != first && third != second);
    let la = a.leader().unwrap();
    assert_leader_document(&la, &key, true, &third);
    let tokens = [&lb, &la].map(|d| d["fencingToken"].as_u64().unwrap());
    assert!(tokens[0] < tokens[1], "fencing tokens increase: {tokens:?}");
    assert_eq!(metric(a.port, "lockwrap_acquisitions_total"), 2.0);
    assert_eq!(metric(a.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_lost_total"), 1.0);
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
    assert_eq!(status_of(a.port, "/healthz"), Some(200));
    assert_eq!(status_of(b.port, "/healthz"), Some(200));
}

#[test]
fn sidecar_status_file_is_never_partial_while_leadership_flips() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-statusfile");
    let dir = scratch("sidecar-statusfile");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    wait_until(SOON, || a.ready() == Some(200));
    let b = sidecar(consul, &dir, "b", &key, &[]);
    wait_settled(consul, &key, &a, &b);

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [a.status_file.clone(), b.status_file.clone()]
        .into_iter()
        .map(|path| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut reads, mut bad) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    reads += 1;
                    match std::fs::read_to_string(&path) {
                        Ok(text) => match serde_json::from_str::<Value>(&text) {
                            Ok(v) if v.get("isLeader").is_some() && v.get("key").is_some() => {}
                            _ => bad.push(text),
                        },
                        Err(e) => bad.push(format!("read error: {e}")),
                    }
                }
                (reads, bad)
            })
        })
        .collect();

    let (mut leader, mut standby) = (&a, &b);
    for _ in 0..4 {
        let holder = consul.holder(&key).expect("a holder");
        consul.destroy_session(&holder);
        wait_settled(consul, &key, standby, leader);
        std::mem::swap(&mut leader, &mut standby);
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (reads, bad) = reader.join().expect("reader thread");
        assert!(reads > 100, "only {reads} reads");
        assert!(
            bad.is_empty(),
            "{} of {reads} reads were not complete JSON: {:?}",
            bad.len(),
            bad.first()
        );
    }
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    assert!(wait_until(SOON, || b.status_file() == b.leader()));
}

#[test]
fn sidecar_ready_always_answers_200_on_a_standby() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-ready-always");
    let dir = scratch("sidecar-ready-always");
    let a = sidecar(consul, &dir, "a", &key, &[]);
    assert!(wait_until(SOON, || a.ready() == Some(200)));
    let b = sidecar(consul, &dir, "b", &key, &["--ready-always"]);
    let holder = consul.holder(&key).expect("a holds");
    assert!(
        wait_until(SOON, || b.session().as_deref() == Some(holder.as_str())),
        "{:?}",
        b.leader()
    );
    assert_eq!(b.ready(), Some(200), "--ready-always standby");
    assert!(!b.is_leader());
    assert_eq!(a.ready(), Some(200));
    assert_eq!(metric(b.port, "lockwrap_lock_held"), 0.0);
}

#[test]
fn run_with_http_addr_serves_readyz_while_holding() {
    let consul = Consul::shared();
    let key = unique_key("run-http");
    let dir = scratch("run-http");
    let mut r = start(consul, &dir, "run", "run", &key, &["--", "sleep", "60"]);
    assert!(
        wait_until(SOON, || r.ready() == Some(200)),
        "/readyz while holding: {:?}\n{}",
        r.ready(),
        r.stderr()
    );
    let session = consul.holder(&key).expect("run holds");
    let doc = r.leader().expect("/leader");
    assert_leader_document(&doc, &key, true, &session);
    assert_eq!(status_of(r.port, "/healthz"), Some(200));
    assert_eq!(metric(r.port, "lockwrap_lock_held"), 1.0);
    assert_eq!(metric(r.port, "lockwrap_acquisitions_total"), 1.0);
    assert!(wait_until(SOON, || r.status_file() == r.leader()));
    r.terminate();
    assert!(
        r.wait_exit(SOON).is_some(),
        "run did not stop on SIGTERM:\n{}",
        r.stderr()
    );
    assert_eq!(consul.holder(&key), None);
}

#[test]
fn sidecar_exit_on_loss_leaves_a_status_file_saying_not_leader() {
    let consul = Consul::shared();
    let key = unique_key("sidecar-exit-status");
    let dir = scratch("sidecar-exit-status");
    let mut a = sidecar(consul, &dir, "a", &key, &["--exit-on-loss"]);
    assert!(
        wait_until(SOON, || a.ready() == Some(200)),
        "{}",
        a.stderr()
    );
    assert!(wait_until(SOON, || a.status_file() == a.leader()));
    consul.destroy_session(&consul.holder(&key).expect("a holds"));
    assert_eq!(a.wait_exit(SOON).and_then(|s| s.code()), Some(101));
    let last = a.status_file().expect("status file after exit");
    assert_eq!(
        last["isLeader"], false,
        "status file after loss + exit: {last}"
    );
}

#[test]
fn prometheus_parser_rejects_malformed_text() {
    let good = "# HELP x_total Things.\n# TYPE x counter\nx_total 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
    let parsed = parse_prometheus(good).expect("good text");
    assert_eq!(parsed["x_total"], 3.0);
    assert_eq!(parsed["h_bucket{le=\"+Inf\"}"], 1.0);
    for bad in [
        "# TYPE x counter\nx_total abc\n",
        "# TYPE x counter\nx_total\n",
        "# TYPE x bogus\n",
        "# HELP\n",
        "y 1\n",
        "# TYPE x gauge\nx{a=b} 1\n",
        "# TYPE x gauge\nx{a=\"b\" 1\n",
        "# TYPE x gauge\n9x 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}
