//! The ACL rules table (README, "ACL rules"), checked against an agent with ACLs enabled and
//! default-deny: each operation works with a token holding exactly its documented rules, and
//! fails with exit 4 and a "permission denied" message when any one of them is missing.

use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::consul::{wait_until, Consul};
use crate::harness::{
    code, describe, json_line, lockwrap, run_bounded, scratch, sidecar, stderr, stdout, unique_key,
    Proc, QUICK,
};

/// The agent's node name: the sessions lockwrap creates and the checks it registers are on it.
const NODE: &str = "lockwrap-acl";

/// An ACL agent with default-deny; "root" is the master token (also used by `Consul::put`).
fn acl_agent() -> Consul {
    Consul::start_with(&[
        &format!("-node={NODE}"),
        "-hcl",
        r#"acl { enabled = true, default_policy = "deny", enable_token_persistence = false, tokens { master = "root", agent = "root" } }"#,
    ])
}

fn key_write(key: &str) -> String {
    format!(r#"key "{key}" {{ policy = "write" }}"#)
}

fn key_read(key: &str) -> String {
    format!(r#"key "{key}" {{ policy = "read" }}"#)
}

fn prefix_write(prefix: &str) -> String {
    format!(r#"key_prefix "{prefix}" {{ policy = "write" }}"#)
}

fn prefix_read(prefix: &str) -> String {
    format!(r#"key_prefix "{prefix}" {{ policy = "read" }}"#)
}

fn session_write() -> String {
    format!(r#"session "{NODE}" {{ policy = "write" }}"#)
}

fn node_write() -> String {
    format!(r#"node "{NODE}" {{ policy = "write" }}"#)
}

const SESSIONS_READ: &str = r#"session_prefix "" { policy = "read" }"#;
const SESSIONS_WRITE: &str = r#"session_prefix "" { policy = "write" }"#;

/// A token whose only policy holds `rules`, plus one harmless rule so that a token with "no
/// rules" is still a valid policy.
fn token(consul: &Consul, rules: &[String]) -> String {
    let mut text = vec![r#"key "acl-rules-unrelated" { policy = "read" }"#.to_string()];
    text.extend(rules.iter().cloned());
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "acl-rules-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let (status, body) = consul
        .put(
            "/v1/acl/policy",
            &json!({"Name": name, "Rules": text.join("\n")}).to_string(),
        )
        .expect("create policy");
    assert_eq!(status, 200, "{body}");
    let policy: Value = serde_json::from_str(&body).expect("policy JSON");
    let (status, body) = consul
        .put(
            "/v1/acl/token",
            &json!({"Policies": [{"ID": policy["ID"]}]}).to_string(),
        )
        .expect("create token");
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).expect("token JSON");
    token["SecretID"].as_str().expect("SecretID").to_string()
}

fn run_with(consul: &Consul, token: &str, args: &[&str]) -> Output {
    let mut cmd = lockwrap(consul);
    cmd.env("CONSUL_HTTP_TOKEN", token).args(args);
    run_bounded(cmd, QUICK)
}

/// Exit 4 with a message naming the denial (README, "Exit codes").
fn assert_denied(out: &Output, what: &str) {
    assert_eq!(code(out), 4, "{what}: {}", describe(out));
    assert!(
        stderr(out).contains("permission denied by Consul ACL"),
        "{what}: the message should name the ACL denial: {}",
        describe(out)
    );
}

/// `rules` are enough for `works`, and each one is needed: without it `attempt` is denied.
fn each_rule_needed(
    consul: &Consul,
    what: &str,
    rules: &[String],
    works: impl Fn(&str),
    attempt: impl Fn(&str) -> Output,
) {
    works(&token(consul, rules));
    for (i, missing) in rules.iter().enumerate() {
        let fewer: Vec<String> = rules
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r.clone())
            .collect();
        let out = attempt(&token(consul, &fewer));
        assert_denied(&out, &format!("{what} without {missing}"));
    }
}

/// Destroys every session named for `key` or a key under it, and deletes the key and its
/// subtree (`<key>/`, so that `…-1` does not take `…-10` with it).
fn clean(consul: &Consul, key: &str) {
    for session in consul.sessions() {
        let name = session["Name"].as_str().unwrap_or_default();
        if name.contains(&format!(" {key} ")) || name.contains(&format!(" {key}/")) {
            if let Some(id) = session["ID"].as_str() {
                consul.destroy_session(id);
            }
        }
    }
    consul.delete_kv(key);
    consul.request(
        "DELETE",
        &format!("/v1/kv/{key}/?recurse"),
        None,
        Some("root"),
    );
}

#[test]
fn acquiring_options_need_exactly_their_documented_rules() {
    let consul = acl_agent();
    let k = unique_key("aclrules");
    let dead_check = "lockwrap:acl-rules-dead";
    // (what, extra options, rules beyond `session "<node>"` write)
    let cases: Vec<(&str, Vec<&str>, Vec<String>)> = vec![
        ("defaults", vec![], vec![key_write(&k)]),
        (
            "--session-checks serfHealth",
            vec!["--session-checks", "serfHealth"],
            vec![key_write(&k)],
        ),
        (
            "--health-check-ttl",
            vec!["--health-check-ttl", "10s"],
            vec![key_write(&k), node_write()],
        ),
        (
            "-n 2",
            vec!["-n", "2"],
            vec![prefix_write(&format!("{k}/"))],
        ),
        (
            "--queue",
            vec!["--queue"],
            vec![key_write(&k), prefix_write(&format!("{k}/.queue/"))],
        ),
        (
            "--layout consul-lock",
            vec!["--layout", "consul-lock"],
            vec![key_write(&format!("{k}/.lock"))],
        ),
    ];
    for (what, opts, mut rules) in cases {
        rules.push(session_write());
        if what == "--health-check-ttl" {
            // A crashed holder's critical check, for the new holder to remove.
            let check =
                json!({"ID": dead_check, "Name": "dead", "TTL": "10s", "Status": "critical"});
            let (status, body) = consul
                .put("/v1/agent/check/register", &check.to_string())
                .expect("register check");
            assert_eq!(status, 200, "{body}");
        }
        for command in ["execute", "run"] {
            let args = |tail: &str| -> Vec<String> {
                let mut args = vec![command.to_string()];
                args.extend(opts.iter().map(|s| s.to_string()));
                if command == "run" {
                    args.extend(["--key".into(), k.clone(), "--".into(), "echo".into()]);
                    args.push(tail.to_string());
                } else {
                    args.extend([k.clone(), format!("echo {tail}")]);
                }
                args
            };
            let attempt = |token: &str| {
                let args = args("held");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_with(&consul, token, &args)
            };
            let works = |token: &str| {
                let out = attempt(token);
                assert_eq!(
                    (code(&out), stdout(&out)),
                    (0, "held".to_string()),
                    "{command} {what}: {}",
                    describe(&out)
                );
            };
            each_rule_needed(
                &consul,
                &format!("{command} {what}"),
                &rules,
                works,
                attempt,
            );
        }
        if what == "--health-check-ttl" {
            let (_, checks) = consul.get("/v1/agent/checks").expect("agent checks");
            assert!(
                !checks.contains("lockwrap:"),
                "no lockwrap check should be left on the agent: {checks}"
            );
        }
        clean(&consul, &k);
    }

    // `lock` (its default binds the session to serfHealth) and `sidecar`.
    let rules = vec![key_write(&k), session_write()];
    each_rule_needed(
        &consul,
        "lock",
        &rules,
        |token| {
            let out = run_with(&consul, token, &["lock", &k]);
            assert_eq!(code(&out), 0, "lock: {}", describe(&out));
            let out = run_with(&consul, "root", &["unlock", &k]);
            assert_eq!(code(&out), 0, "{}", describe(&out));
        },
        |token| run_with(&consul, token, &["lock", &k]),
    );
    let dir = scratch("acl-rules");
    each_rule_needed(
        &consul,
        "sidecar",
        &rules,
        |token| {
            let mut leader = sidecar(&consul, &dir, "acl", &k, &["--consul-token", token]);
            assert!(
                wait_until(Duration::from_secs(10), || leader.is_leader()),
                "sidecar never led: {}",
                leader.stderr()
            );
            leader.terminate();
            assert!(leader.wait_exit(QUICK).is_some(), "sidecar did not stop");
        },
        |token| run_with(&consul, token, &["sidecar", "--key", &k]),
    );
    clean(&consul, &k);
}

#[test]
fn unlock_and_status_need_exactly_their_documented_rules() {
    let consul = acl_agent();
    let k = unique_key("aclrules");
    let prefix = format!("{k}/");
    let a = format!("{prefix}a");
    let regex = format!("{prefix}.*");
    // A denied unlock may leave the key held, or released with the holder's session alive.
    let hold = |key: &str| {
        if consul.holder(key).is_none() {
            let out = run_with(&consul, "root", &["lock", key]);
            assert_eq!(code(&out), 0, "{}", describe(&out));
        }
    };

    // unlock KEY: read the entry, destroy the holder's session (which frees the key; with
    // `key:write` as well, lockwrap releases it first, so it is free without the lock-delay).
    let rules = vec![key_read(&a), session_write()];
    each_rule_needed(
        &consul,
        "unlock",
        &rules,
        |token| {
            hold(&a);
            let out = run_with(&consul, token, &["unlock", &a]);
            assert_eq!(stdout(&out), json!(a).to_string(), "{}", describe(&out));
            assert!(
                wait_until(Duration::from_secs(5), || consul.holder(&a).is_none()),
                "still held"
            );
        },
        |token| {
            hold(&a);
            run_with(&consul, token, &["unlock", &a])
        },
    );
    clean(&consul, &k);

    // unlock -r REGEX: the same on every key under the regex's literal prefix. Keys the token
    // may not read are not listed, so they are left held without an error.
    hold(&a);
    let out = run_with(
        &consul,
        &token(&consul, &[session_write()]),
        &["unlock", "-r", &regex],
    );
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "[]".to_string()),
        "{}",
        describe(&out)
    );
    assert!(
        consul.holder(&a).is_some(),
        "an unreadable key was unlocked"
    );
    let out = run_with(
        &consul,
        &token(&consul, &[prefix_read(&prefix)]),
        &["unlock", "-r", &regex],
    );
    assert_denied(&out, "unlock -r without session write");
    hold(&a);
    let out = run_with(
        &consul,
        &token(&consul, &[prefix_read(&prefix), session_write()]),
        &["unlock", "-r", &regex],
    );
    assert_eq!(stdout(&out), json!([a]).to_string(), "{}", describe(&out));
    clean(&consul, &k);

    // A holder on another node: `session "<node>"` no longer covers destroying its session.
    let (status, body) = consul
        .put(
            "/v1/catalog/register",
            &json!({"Node": "elsewhere", "Address": "127.0.0.2"}).to_string(),
        )
        .expect("register node");
    assert_eq!(status, 200, "{body}");
    {
        let request = json!({"Node": "elsewhere", "Name": format!("lockwrap {a} on elsewhere pid 1"), "Checks": [], "TTL": "60s"});
        let (_, body) = consul
            .put("/v1/session/create", &request.to_string())
            .expect("create session");
        let id = serde_json::from_str::<Value>(&body).expect("session JSON")["ID"]
            .as_str()
            .expect("ID")
            .to_string();
        let (_, taken) = consul
            .put(
                &format!("/v1/kv/{a}?acquire={id}&flags=3304740253564472344"),
                "{}",
            )
            .expect("acquire");
        assert_eq!(taken.trim(), "true");
    }
    let out = run_with(
        &consul,
        &token(&consul, &[key_read(&a), session_write()]),
        &["unlock", &a],
    );
    assert_denied(
        &out,
        "unlock of another node's holder with session \"<node>\"",
    );
    assert!(
        consul.holder(&a).is_some(),
        "the denied unlock freed the key"
    );
    let out = run_with(
        &consul,
        &token(&consul, &[key_read(&a), SESSIONS_WRITE.to_string()]),
        &["unlock", &a],
    );
    assert_eq!(stdout(&out), json!(a).to_string(), "{}", describe(&out));
    clean(&consul, &k);

    // status KEY needs only read on the key.
    hold(&a);
    each_rule_needed(
        &consul,
        "status",
        &[key_read(&a)],
        |token| {
            let out = run_with(&consul, token, &["status", &a]);
            assert!(json_line(&out)["session"].is_string(), "{}", describe(&out));
        },
        |token| run_with(&consul, token, &["status", &a]),
    );
    // The queue is read from `<key>/.queue/`; without read there it is left out silently.
    let mut waiter = lockwrap(&consul);
    waiter
        .env("CONSUL_HTTP_TOKEN", "root")
        .args(["execute", "--queue", &a, "true"]);
    let mut waiter = Proc::spawn(waiter);
    assert!(
        wait_until(QUICK, || !consul.keys(&format!("{a}/.queue/")).is_empty()),
        "the waiter never queued"
    );
    let queue_of = |rules: &[String]| {
        let out = run_with(&consul, &token(&consul, rules), &["status", &a]);
        json_line(&out).get("queue").cloned()
    };
    assert_eq!(queue_of(&[key_read(&a)]), None);
    let queue = queue_of(&[key_read(&a), prefix_read(&format!("{a}/.queue/"))]);
    assert_eq!(queue.map(|q| q[0]["position"].clone()), Some(json!(1)));
    waiter.signal(Signal::SIGTERM);
    assert!(waiter.wait_exit(QUICK).is_some(), "the waiter did not stop");

    // status -r reads the regex's literal prefix; keys the token may not read are left out
    // without an error (Consul filters the listing).
    let out = run_with(
        &consul,
        &token(&consul, &[prefix_read(&prefix)]),
        &["status", "-r", &regex],
    );
    assert!(
        json_line(&out)[&a]["session"].is_string(),
        "{}",
        describe(&out)
    );
    let out = run_with(&consul, &token(&consul, &[]), &["status", "-r", &regex]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "{}".to_string()),
        "{}",
        describe(&out)
    );
    clean(&consul, &k);
}

/// Consul filters `session/list` by `session:read` without an error: without
/// `session_prefix "" read`, a holder on another node is invisible and a key with no entry is
/// taken without the takeover delay (docs/timing.md, "First use").
#[test]
fn reading_every_session_keeps_the_takeover_delay_for_other_nodes_holders() {
    let consul = acl_agent();
    let (status, body) = consul
        .put(
            "/v1/catalog/register",
            &json!({"Node": "elsewhere", "Address": "127.0.0.2"}).to_string(),
        )
        .expect("register node");
    assert_eq!(status, 200, "{body}");
    // Takeover delay 2 s: long enough to tell apart from starting at once.
    let timing = ["--kill-grace", "1s", "--takeover-delay", "2s"];
    let took = |rules: &[String]| {
        let key = unique_key("aclrules");
        let request = json!({"Node": "elsewhere", "Name": format!("lockwrap {key} on elsewhere pid 1"), "Checks": [], "TTL": "60s"});
        let (status, body) = consul
            .put("/v1/session/create", &request.to_string())
            .expect("create session");
        assert_eq!(status, 200, "{body}");
        let token = token(&consul, rules);
        let mut args = vec!["execute"];
        args.extend(timing);
        args.extend([key.as_str(), "true"]);
        let started = Instant::now();
        let out = run_with(&consul, &token, &args);
        let took = started.elapsed();
        assert_eq!(code(&out), 0, "{}", describe(&out));
        clean(&consul, &key);
        took
    };
    let k = "test/aclrules";
    let full = took(&[prefix_write(k), session_write(), SESSIONS_READ.to_string()]);
    assert!(full >= Duration::from_secs(2), "waited only {full:?}");
    let blind = took(&[prefix_write(k), session_write()]);
    assert!(blind < Duration::from_secs(2), "waited {blind:?}");
}
