//! Taking and giving back a lock with the consullock-compatible CLI (README, "Subcommands"):
//! `lock`'s output and stored value, `unlock [-r]`, and the rejections of bad TTLs and keys.
//!
//! Every test uses its own keys (tests run in parallel against the shared agent), waits on
//! conditions rather than sleeping, and ends by checking that no session of its keys is left.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::consul::Consul;
use crate::harness::{
    assert_no_sessions, cli, cli_cmd, code, describe, json_line, lock_ok, parse_created, scratch,
    session_exists, session_info, session_of, stderr, stdout, top_level_keys, unique_key,
    unlock_and_check, wait_output, LOCK_FLAGS, QUICK,
};

#[test]
fn lock_when_unlocked_prints_sorted_json_and_stores_pretty_value() {
    let consul = Consul::shared();
    let key = unique_key("lock_unlocked");
    let mut cmd = cli_cmd(consul, &["lock", &key]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn lockwrap");
    let pid = child.id();
    let out = wait_output(child, QUICK);
    assert_eq!(code(&out), 0, "{}", describe(&out));

    let printed = json_line(&out);
    let text = stdout(&out);
    assert_eq!(
        top_level_keys(&text),
        ["created", "fencingToken", "key", "secondsToLock", "session"],
        "{text}"
    );
    assert_eq!(printed["key"], json!(key));
    let session = session_of(&printed);
    assert!(printed["secondsToLock"].as_f64().is_some_and(|s| s >= 0.0));
    let created = parse_created(printed["created"].as_str().expect("created"));
    let age = time::OffsetDateTime::now_utc() - created;
    assert!(
        age.whole_seconds().abs() < 60,
        "created is not now in UTC: {created}"
    );

    // Held in Consul by that session, with Consul's lock flags; the token is ModifyIndex.
    let entry = consul.kv(&key).expect("lock entry stored");
    assert_eq!(entry["Session"], json!(session));
    assert_eq!(entry["Flags"].as_u64(), Some(LOCK_FLAGS), "{entry}");
    assert_eq!(printed["fencingToken"], entry["ModifyIndex"]);

    // The value: pretty JSON with sorted keys, consullock's fields plus holder{hostname,pid}.
    let (_, raw) = consul.get(&format!("/v1/kv/{key}?raw")).expect("raw value");
    assert!(raw.contains("\n  \""), "value is not pretty-printed: {raw}");
    assert_eq!(
        top_level_keys(&raw),
        ["created", "holder", "key", "secondsToLock", "session"],
        "{raw}"
    );
    let value: Value = serde_json::from_str(&raw).expect("value is JSON");
    assert_eq!(value["key"], json!(key));
    assert_eq!(value["session"], json!(session));
    assert_eq!(value["created"], printed["created"]);
    assert_eq!(value["secondsToLock"], printed["secondsToLock"]);
    let hostname = nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("utf-8 hostname");
    assert_eq!(value["holder"], json!({"hostname": hostname, "pid": pid}));

    // consullock's session defaults for `lock`: TTL 86400 s, behaviour delete.
    let info = session_info(consul, &session);
    assert_eq!(info["TTL"], json!("86400s"), "{info}");
    assert_eq!(info["Behavior"], json!("delete"), "{info}");

    // `lock` leaves the lock held on purpose.
    assert_eq!(consul.sessions_for(&key).len(), 1);
    unlock_and_check(consul, &key);
}

#[test]
fn lock_rejects_invalid_session_ttl_with_exit_7_and_writes_nothing() {
    let consul = Consul::shared();
    let key = unique_key("lock_bad_ttl");
    let dir = scratch("lock_bad_ttl");
    let marker = dir.join("ran");
    for ttl in ["5", "90000", "9.5", "86401"] {
        let out = cli(consul, &["lock", "--session-ttl", ttl, &key]);
        assert_eq!(code(&out), 7, "--session-ttl {ttl}: {}", describe(&out));
        let out = cli(
            consul,
            &[
                "execute",
                "--session-ttl",
                ttl,
                &key,
                &format!("touch '{}'", marker.display()),
            ],
        );
        assert_eq!(
            code(&out),
            7,
            "execute --session-ttl {ttl}: {}",
            describe(&out)
        );
    }
    assert!(consul.kv(&key).is_none(), "something was written");
    assert!(!marker.exists(), "execute ran the command");
    assert_no_sessions(consul, &key);

    // 0 means a session without TTL (consullock), and is accepted.
    let held = lock_ok(consul, &key, &["--session-ttl", "0"]);
    assert_eq!(session_info(consul, &session_of(&held))["TTL"], json!(""));
    unlock_and_check(consul, &key);
}

#[test]
fn invalid_keys_exit_6_for_every_subcommand() {
    let consul = Consul::shared();
    let base = unique_key("invalid_keys");
    let dir = scratch("invalid_keys");
    let marker = dir.join("ran");
    let touch = format!("touch '{}'", marker.display());
    let bad = [
        format!("{base}/a//b"),
        format!("/{base}/a"),
        format!("{base}/a/./b"),
        format!("{base}/a/../b"),
        String::new(),
    ];
    for key in &bad {
        for args in [
            vec!["lock", key.as_str()],
            vec!["lock", "--non-blocking", key.as_str()],
            vec!["unlock", key.as_str()],
            vec!["status", key.as_str()],
            vec!["execute", key.as_str(), touch.as_str()],
        ] {
            let out = cli(consul, &args);
            assert_eq!(code(&out), 6, "{args:?}: {}", describe(&out));
            assert!(
                stderr(&out).to_lowercase().contains("key"),
                "{args:?}: the message should name the key problem: {}",
                describe(&out)
            );
        }
        assert!(consul.sessions_for(key).is_empty(), "session for {key:?}");
    }
    assert!(consul.keys(&base).is_empty(), "{:?}", consul.keys(&base));
    assert!(!marker.exists(), "execute ran the command");
}

#[test]
fn unlock_when_unlocked_prints_null_and_touches_nothing() {
    let consul = Consul::shared();
    let key = unique_key("unlock_unlocked");
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");

    // A plain, unheld value under that name is not a lock: left alone.
    consul.put_kv(&key, "plain value");
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "null");
    let (_, raw) = consul.get(&format!("/v1/kv/{key}?raw")).expect("raw");
    assert_eq!(raw, "plain value");
    consul.delete_kv(&key);
    assert_no_sessions(consul, &key);
}

#[test]
fn unlock_when_locked_prints_the_key_and_destroys_the_holders_session() {
    let consul = Consul::shared();
    let key = unique_key("unlock_locked");
    let held = lock_ok(consul, &key, &[]);
    let session = session_of(&held);
    assert!(session_exists(consul, &session));

    let out = cli(consul, &["unlock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), json!(key).to_string());
    assert!(
        !session_exists(consul, &session),
        "holder's session survives"
    );
    assert_eq!(consul.holder(&key), None);
    let out = cli(consul, &["status", &key]);
    assert_eq!(stdout(&out), "null", "{}", describe(&out));
    assert_no_sessions(consul, &key);
}

#[test]
fn unlock_regex_releases_whole_matches_and_leaves_distractors() {
    let consul = Consul::shared();
    let base = unique_key("unlock_regex");
    let matching = [
        format!("{base}/r/a"),
        format!("{base}/r/b"),
        format!("{base}/r/sub/c"),
    ];
    let distractors = [
        format!("{base}/x/r/a"), // the regex must match the whole key
        format!("{base}/ra"),
        format!("{base}/r"),
        format!("{base}/rr/a"),
    ];
    let mut sessions = std::collections::BTreeMap::new();
    for key in matching.iter().chain(&distractors) {
        sessions.insert(key.clone(), session_of(&lock_ok(consul, key, &[])));
    }
    // A plain value that matches the regex but is not held: not a lock, not touched.
    let plain = format!("{base}/r/plain");
    consul.put_kv(&plain, "plain value");

    let out = cli(consul, &["unlock", "-r", &format!("{base}/r/.*")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        json_line(&out),
        json!(matching),
        "sorted list of released keys"
    );

    for key in &matching {
        assert_eq!(consul.holder(key), None, "{key} still held");
        assert!(!session_exists(consul, &sessions[key]), "{key}'s session");
    }
    for key in &distractors {
        assert_eq!(
            consul.holder(key).as_ref(),
            Some(&sessions[key]),
            "distractor {key} was touched"
        );
    }
    let (_, raw) = consul.get(&format!("/v1/kv/{plain}?raw")).expect("raw");
    assert_eq!(raw, "plain value", "the unheld matching value was touched");

    // Nothing left to release: an empty list.
    let out = cli(consul, &["unlock", "-r", &format!("{base}/r/.*")]);
    assert_eq!(json_line(&out), json!([]), "{}", describe(&out));

    for key in &distractors {
        unlock_and_check(consul, key);
    }
    consul.delete_kv(&plain);
    for key in &matching {
        assert_no_sessions(consul, key);
    }
}
