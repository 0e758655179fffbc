//! ACL-denied tokens (exit 4, tokens never shown) and an unreachable Consul (exit 8, quickly,
//! naming the address).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::consul::Consul;
use crate::harness::{
    assert_no_sessions, closed_port, code, describe, json_line, lockwrap, run_bounded, scratch,
    session_of, stderr, stdout, unique_key, QUICK,
};

/// A UUID-shaped secret that cannot appear in output by accident.
fn distinctive_secret(tag: u16) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!(
        "{:08x}-{tag:04x}-4bee-8f00-{nanos:012x}",
        std::process::id()
    )
}

fn create_token(consul: &Consul, secret: &str, policy_id: &str) {
    let body = json!({"SecretID": secret, "Description": "lockwrap test", "Policies": [{"ID": policy_id}]});
    let (status, text) = consul
        .put("/v1/acl/token", &body.to_string())
        .expect("create token");
    assert_eq!(status, 200, "{text}");
}

#[test]
fn acl_denied_tokens_exit_4_and_tokens_never_appear_in_output() {
    let consul = Consul::start_with(&[
        "-hcl",
        r#"acl { enabled = true, default_policy = "deny", enable_token_persistence = false, tokens { master = "root", agent = "root" } }"#,
    ]);
    let key = unique_key("acl");
    let dir = scratch("acl");

    // A full-rights token with a distinctive secret (the master is "root", too common a word).
    let admin = distinctive_secret(1);
    create_token(&consul, &admin, "00000000-0000-0000-0000-000000000001");
    // A read-only token: may read the KV store, may not take a lock.
    let rules = "key_prefix \"\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }";
    let (status, body) = consul
        .put(
            "/v1/acl/policy",
            &json!({"Name": "kv-read", "Rules": rules}).to_string(),
        )
        .expect("create policy");
    assert_eq!(status, 200, "{body}");
    let policy_id = serde_json::from_str::<Value>(&body).expect("JSON")["ID"]
        .as_str()
        .expect("policy ID")
        .to_string();
    let reader = distinctive_secret(2);
    create_token(&consul, &reader, &policy_id);
    let unknown = distinctive_secret(3);

    let run = |token: Option<&str>, args: &[&str]| {
        let mut cmd = lockwrap(&consul);
        cmd.arg("-vv").args(args);
        if let Some(token) = token {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        let out = run_bounded(cmd, QUICK);
        for secret in [&admin, &reader, &unknown] {
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains(secret.as_str())
                    && !stderr(&out).contains(secret.as_str()),
                "a token leaked into the output of {args:?}: {}",
                describe(&out)
            );
        }
        out
    };
    let denied = |out: &Output, what: &str| {
        assert_eq!(code(out), 4, "{what}: {}", describe(out));
        assert!(
            stderr(out).to_lowercase().contains("permission"),
            "{what}: the message should mention permission: {}",
            describe(out)
        );
    };

    // No rights: an unknown token, and no token at all (anonymous, default deny).
    denied(&run(Some(&unknown), &["lock", &key]), "unknown token, lock");
    denied(
        &run(Some(&unknown), &["status", &key]),
        "unknown token, status",
    );
    denied(
        &run(Some(&unknown), &["unlock", &key]),
        "unknown token, unlock",
    );
    denied(
        &run(Some(&unknown), &["execute", &key, "true"]),
        "unknown token, execute",
    );
    denied(&run(None, &["lock", &key]), "anonymous lock");
    // Read-only: status works, taking the lock is denied.
    let out = run(Some(&reader), &["status", &key]);
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "null".to_string()),
        "{}",
        describe(&out)
    );
    denied(
        &run(Some(&reader), &["lock", &key]),
        "read-only token, lock",
    );
    assert!(consul.kv(&key).is_none());
    assert_no_sessions(&consul, &key);

    // Full rights: the admin token, the master token, the token file and the flag all work.
    let out = run(Some(&admin), &["lock", &key]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let held = json_line(&out);
    assert_eq!(consul.holder(&key), Some(session_of(&held)));
    let out = run(Some("root"), &["status", &key]);
    assert_eq!(
        json_line(&out)["session"],
        held["session"],
        "{}",
        describe(&out)
    );

    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{admin}\n")).expect("token file");
    let mut cmd = lockwrap(&consul);
    cmd.args(["-vv", "unlock", &key])
        .env("CONSUL_HTTP_TOKEN_FILE", &token_file);
    let out = run_bounded(cmd, QUICK);
    assert_eq!(
        stdout(&out),
        json!(key).to_string(),
        "token file: {}",
        describe(&out)
    );
    assert!(
        !stderr(&out).contains(&admin),
        "token leaked: {}",
        describe(&out)
    );

    let out = run(
        None,
        &["--consul-token", &admin, "execute", &key, "echo in-acl"],
    );
    assert_eq!(
        (code(&out), stdout(&out)),
        (0, "in-acl".to_string()),
        "{}",
        describe(&out)
    );
    assert_no_sessions(&consul, &key);
}

#[test]
fn unreachable_consul_exits_8_quickly_naming_the_address() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let key = unique_key("unreachable");
    for args in [
        vec!["lock", key.as_str()],
        vec!["lock", "--non-blocking", key.as_str()],
        vec!["unlock", key.as_str()],
        vec!["unlock", "-r", "x/.*"],
        vec!["status", key.as_str()],
        vec!["execute", key.as_str(), "true"],
    ] {
        let mut cmd = lockwrap(Consul::shared());
        cmd.env("CONSUL_HTTP_ADDR", &addr).args(&args);
        let started = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(30));
        let took = started.elapsed();
        assert_eq!(code(&out), 8, "{args:?}: {}", describe(&out));
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
        assert!(
            stderr(&out).contains(&addr),
            "{args:?}: the message should name {addr}: {}",
            describe(&out)
        );
    }
}
