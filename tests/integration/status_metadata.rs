//! What a holder leaves for others to read: `--metadata`, `status [-r]`, fencing tokens, and
//! values written by consullock.

use serde_json::{json, Value};

use crate::consul::Consul;
use crate::harness::{
    assert_no_sessions, cli, code, describe, json_line, lock_ok, modify_index, scratch,
    session_exists, session_of, stdout, top_level_keys, unique_key, unlock_and_check,
};

#[test]
fn metadata_round_trips_through_lock_output_value_and_status() {
    let consul = Consul::shared();
    let key = unique_key("metadata");
    let out = cli(
        consul,
        &["lock", "--metadata", r#"{"a":1,"b":[true,"x"]}"#, &key],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let printed = json_line(&out);
    let metadata = json!({"a": 1, "b": [true, "x"]});
    assert_eq!(printed["metadata"], metadata);
    assert_eq!(
        top_level_keys(&stdout(&out)),
        [
            "created",
            "fencingToken",
            "key",
            "metadata",
            "secondsToLock",
            "session"
        ]
    );
    assert_eq!(consul.kv_json(&key).expect("value")["metadata"], metadata);

    let out = cli(consul, &["status", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let status = json_line(&out);
    assert_eq!(status["metadata"], metadata);
    assert_eq!(status["session"], printed["session"]);
    assert_eq!(status["fencingToken"], printed["fencingToken"]);
    assert_eq!(status["created"], printed["created"]);
    assert_eq!(status["key"], json!(key));
    assert!(status["holder"]["pid"].as_u64().is_some(), "{status}");

    // Not JSON: a bad argument, nothing written.
    let other = unique_key("metadata_bad");
    let out = cli(consul, &["lock", "--metadata", "{not json", &other]);
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(consul.kv(&other).is_none());
    assert_no_sessions(consul, &other);
    unlock_and_check(consul, &key);
}

#[test]
fn status_reports_holders_and_status_regex_maps_whole_matches() {
    let consul = Consul::shared();
    let base = unique_key("status");
    let a = format!("{base}/s/a");
    let b = format!("{base}/s/b");
    let plain = format!("{base}/s/plain");
    let distractor = format!("{base}/t/a");

    let out = cli(consul, &["status", &a]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "null".to_string()),
        "{}",
        describe(&out)
    );

    let held_a = lock_ok(consul, &a, &[]);
    let held_b = lock_ok(consul, &b, &["--metadata", r#""job-b""#]);
    lock_ok(consul, &distractor, &[]);
    consul.put_kv(&plain, "not a lock");

    let out = cli(consul, &["status", &a]);
    let status = json_line(&out);
    assert_eq!(status["session"], held_a["session"]);
    assert_eq!(status["key"], json!(a));
    assert_eq!(status["fencingToken"], held_a["fencingToken"]);

    let out = cli(consul, &["status", "-r", &format!("{base}/s/.*")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let map = json_line(&out);
    let found: Vec<&String> = map.as_object().expect("a JSON object").keys().collect();
    assert_eq!(found, [&a, &b, &plain], "{map}");
    assert_eq!(map[&a]["session"], held_a["session"]);
    assert_eq!(map[&b]["session"], held_b["session"]);
    assert_eq!(map[&b]["metadata"], json!("job-b"));
    assert_eq!(map[&plain], Value::Null, "an unheld key has no holder");
    assert_eq!(
        top_level_keys(&stdout(&out)),
        [a.clone(), b.clone(), plain.clone()],
        "keys sorted"
    );

    for key in [&a, &b, &distractor] {
        unlock_and_check(consul, key);
    }
    consul.delete_kv(&plain);
}

#[test]
fn fencing_tokens_strictly_increase_across_holders_even_after_deletion() {
    let consul = Consul::shared();
    let key = unique_key("fencing");
    let dir = scratch("fencing");
    let token_file = dir.join("token");
    let mut tokens = Vec::new();
    // Lock-delay 0: each next holder follows at once (this test is about the tokens).
    for round in 0..3 {
        let held = lock_ok(consul, &key, &["--lock-delay", "0"]);
        tokens.push(held["fencingToken"].as_u64().expect("fencingToken"));
        if round == 1 {
            // Delete the entry behind the holder's back, then recreate and delete it again.
            consul.destroy_session(&session_of(&held));
            consul.delete_kv(&key);
            consul.put_kv(&key, "x");
            consul.delete_kv(&key);
        } else {
            // A forced unlock releases the key and keeps the entry, without a holder.
            let out = cli(consul, &["unlock", &key]);
            assert_eq!(code(&out), 0, "{}", describe(&out));
            assert_eq!(consul.holder(&key), None, "round {round}: still held");
            consul.delete_kv(&key);
        }
        assert!(consul.kv(&key).is_none(), "round {round}: key not deleted");
    }
    let out = cli(
        consul,
        &[
            "execute",
            "--lock-delay",
            "0",
            &key,
            &format!("echo $LOCKWRAP_FENCING_TOKEN > '{}'", token_file.display()),
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let executed = std::fs::read_to_string(&token_file).expect("token file");
    tokens.push(executed.trim().parse().expect("a number"));
    eprintln!("fencing tokens: {tokens:?}");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {tokens:?}"
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn status_reads_values_written_by_consullock() {
    let consul = Consul::shared();
    let key = unique_key("consullock_value");
    // A session and value as consullock makes them (lock_delay 0, behavior delete, flags 0).
    let (status, body) = consul
        .put(
            "/v1/session/create",
            &json!({"Name": format!("consullock {key} test"), "LockDelay": "0s", "Behavior": "delete", "TTL": "60s"})
                .to_string(),
        )
        .expect("session create");
    assert_eq!(status, 200, "{body}");
    let session = serde_json::from_str::<Value>(&body).expect("JSON")["ID"]
        .as_str()
        .expect("ID")
        .to_string();
    let value = format!(
        "{{\n    \"created\": \"2017-12-05T12:26:13.717995\",\n    \"key\": \"{key}\",\n    \
         \"metadata\": {{\n        \"testing\": 123\n    }},\n    \"secondsToLock\": 4.3,\n    \
         \"session\": \"{session}\"\n}}"
    );
    let (status, body) = consul
        .put(&format!("/v1/kv/{key}?acquire={session}"), &value)
        .expect("acquire");
    assert_eq!((status, body.trim()), (200, "true"));

    let out = cli(consul, &["status", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let info = json_line(&out);
    assert_eq!(info["session"], json!(session));
    assert_eq!(info["key"], json!(key));
    assert_eq!(info["created"], json!("2017-12-05T12:26:13.717995"));
    assert_eq!(info["secondsToLock"], json!(4.3));
    assert_eq!(info["metadata"], json!({"testing": 123}));
    assert_eq!(
        info["fencingToken"].as_u64(),
        Some(modify_index(consul, &key))
    );
    assert!(
        info["holder"].is_null(),
        "consullock writes no holder: {info}"
    );

    let out = cli(consul, &["status", "-r", &format!("{key}.*")]);
    assert_eq!(
        json_line(&out)[&key]["session"],
        json!(session),
        "{}",
        describe(&out)
    );

    // lockwrap respects a consullock holder, and can release it.
    let out = cli(consul, &["lock", "--non-blocking", &key]);
    assert_eq!(code(&out), 100, "{}", describe(&out));
    let out = cli(consul, &["unlock", &key]);
    assert_eq!(stdout(&out), json!(key).to_string(), "{}", describe(&out));
    assert!(!session_exists(consul, &session));
    assert_no_sessions(consul, &key);
}
