//! `--webhook URL`: every lock event is POSTed as JSON, in the background.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::consul::{wait_until, Consul};
use crate::harness::{closed_port, code, lockwrap, run_bounded, serve, stderr, unique_key};

/// A loopback HTTP server that records every request body and answers 204.
fn recorder() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&seen);
    let port = serve(move |mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // Read headers, then exactly Content-Length bytes of body.
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    if let Ok(v) = serde_json::from_str(&body[..length]) {
                        store.lock().expect("store").push(v);
                    }
                    break;
                }
            }
        }
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    });
    (port, seen)
}

#[test]
fn webhook_receives_acquired_and_released_events_as_json() {
    let consul = Consul::shared();
    let key = unique_key("webhook");
    let (port, seen) = recorder();
    let mut cmd = lockwrap(consul);
    cmd.args([
        "run",
        "--key",
        &key,
        "--webhook",
        &format!("http://127.0.0.1:{port}/events"),
        "--",
        "sh",
        "-c",
        "sleep 0.3",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events = || {
        seen.lock()
            .expect("store")
            .iter()
            .filter_map(|v| v.get("event").and_then(Value::as_str).map(str::to_string))
            .collect::<Vec<_>>()
    };
    // The acquired event is sent while the command runs; released may race the exit.
    assert!(
        wait_until(Duration::from_secs(5), || events()
            .contains(&"acquired".to_string())),
        "events: {:?}",
        events()
    );
    let all = seen.lock().expect("store").clone();
    let acquired = all
        .iter()
        .find(|v| v["event"] == "acquired")
        .expect("acquired event");
    assert_eq!(acquired["key"], Value::String(key.clone()));
    assert!(acquired["session"].is_string());
    assert!(acquired["fencingToken"].is_u64());
    assert!(acquired["holder"]["hostname"].is_string());
    assert!(consul.sessions_for(&key).is_empty());
}

#[test]
fn an_unreachable_webhook_does_not_delay_or_fail_the_command() {
    let consul = Consul::shared();
    let key = unique_key("webhook-down");
    let closed = closed_port();
    let mut cmd = lockwrap(consul);
    cmd.args([
        "run",
        "--key",
        &key,
        "--webhook",
        &format!("http://127.0.0.1:{closed}/events"),
        // A fresh key counts as an unclean takeover: keep its wait (kill grace + 1 s) short.
        "--kill-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "exit 4",
    ]);
    let started = std::time::Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(consul.sessions_for(&key).is_empty());
}
