//! No leaked sessions: a create whose outcome is unknown is found again by its unique name and
//! destroyed, and a destroy rides out a short outage (docs/timing.md, "Consul trouble").

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockwrap::testing::session::{self, OwnedSession};
use lockwrap::testing::{ConsulClient, Identity};
use lockwrap::{ConsulSettings, SessionSettings};
use serde_json::{json, Value};

use crate::consul::{wait_until, Consul};
use crate::harness::{serve, unique_key};

fn client(address: &str) -> ConsulClient {
    ConsulClient::new(&ConsulSettings {
        address: address.to_string(),
        ssl_verify: true,
        ..Default::default()
    })
    .expect("a client for the test agent")
}

/// One runtime for these tests, alive as long as the test binary: the background lookup is
/// one task per process, and it must not end with the runtime of the test that started it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn session_named(consul: &Consul, name: &str) -> Option<String> {
    consul.sessions().into_iter().find_map(|s| {
        (s["Name"] == json!(name)).then(|| s["ID"].as_str().unwrap_or_default().to_string())
    })
}

fn create_named(consul: &Consul, name: &str) -> String {
    let body = json!({"Name": name, "TTL": "60s", "LockDelay": "0s", "NodeChecks": []});
    let (status, answer) = consul
        .put("/v1/session/create", &body.to_string())
        .expect("session/create answers");
    assert_eq!(status, 200, "{answer}");
    let created: Value = serde_json::from_str(&answer).expect("JSON");
    created["ID"].as_str().expect("an ID").to_string()
}

#[test]
fn session_create_with_unknown_outcome_is_found_by_name_and_destroyed() {
    let consul = Consul::shared();
    let key = unique_key("lost-create");
    let before = format!("lockwrap {key} on test pid 1 [attempt 00000000000000b1]");
    let after = format!("lockwrap {key} on test pid 1 [attempt 00000000000000a2]");
    let bystander = format!("lockwrap {key} on test pid 1 [attempt 00000000000000c3]");
    // Committed before lockwrap looks, and one nobody lost.
    create_named(consul, &before);
    let kept = create_named(consul, &bystander);
    let rt = runtime();
    rt.block_on(async {
        let client = client(&consul.addr());
        session::outcome_unknown(&client, before.clone(), Some(Duration::from_secs(10)));
        session::outcome_unknown(&client, after.clone(), Some(Duration::from_secs(10)));
    });
    assert!(
        wait_until(Duration::from_secs(10), || session_named(consul, &before)
            .is_none()),
        "the session committed before the lookup is still there"
    );
    // Commits late, under a "new leader": found by a later round.
    create_named(consul, &after);
    assert!(
        wait_until(Duration::from_secs(10), || session_named(consul, &after)
            .is_none()),
        "the session committed after the first lookup is still there"
    );
    assert_eq!(session_named(consul, &bystander), Some(kept.clone()));
    consul.destroy_session(&kept);
}

/// A stand-in agent: answers each request with `route(method, path, body)`.
fn fake_agent(route: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static) -> u16 {
    serve(move |mut stream: TcpStream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (head, body) = loop {
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => raw.extend_from_slice(&buf[..n]),
                _ => return,
            }
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
                    break (head.to_string(), body[..length].to_string());
                }
            }
        };
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default();
        let target = request_line.next().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        let (status, answer) = route(method, path, &body);
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
    })
}

#[test]
fn create_answered_with_leadership_lost_destroys_the_session_that_committed_anyway() {
    let sent = Arc::new(Mutex::new(None::<String>));
    let destroyed = Arc::new(Mutex::new(Vec::<String>::new()));
    let (name, gone) = (Arc::clone(&sent), Arc::clone(&destroyed));
    let port = fake_agent(move |method, path, body| match (method, path) {
        ("PUT", "/v1/session/create") => {
            let request: Value = serde_json::from_str(body).unwrap_or_default();
            *name.lock().expect("name") = request["Name"].as_str().map(str::to_string);
            (
                500,
                "rpc error making call: leadership lost while committing log".into(),
            )
        }
        ("GET", "/v1/session/list") => {
            let list = match name.lock().expect("name").as_ref() {
                Some(n) => json!([{"ID": "committed-late", "Name": n, "Node": "n1"}]),
                None => json!([]),
            };
            (200, list.to_string())
        }
        ("PUT", p) if p.starts_with("/v1/session/destroy/") => {
            gone.lock()
                .expect("gone")
                .push(p.trim_start_matches("/v1/session/destroy/").to_string());
            (200, "true".into())
        }
        _ => (404, String::new()),
    });
    let rt = runtime();
    let created = rt.block_on(async {
        let client = client(&format!("127.0.0.1:{port}"));
        let settings = SessionSettings {
            name: Some("my job".into()),
            ..Default::default()
        };
        let identity = Identity {
            hostname: "test".into(),
            pid: 1,
            pod: None,
            node: None,
            namespace: None,
            partition: None,
        };
        let takeover = Some(Duration::from_secs(6));
        session::create(&client, "jobs/x", &settings, &identity, None, takeover).await
    });
    assert!(created.is_err());
    let name = sent
        .lock()
        .expect("name")
        .clone()
        .expect("a create was sent");
    // The user's name, tagged with the key (docs/timing.md, "First use"), the takeover delay it
    // announces, then the attempt.
    assert!(
        name.starts_with("my job [lockwrap jobs/x] [takeover 6000ms] [attempt "),
        "{name}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || destroyed
            .lock()
            .expect("gone")
            .contains(&"committed-late".to_string())),
        "the session that committed anyway was not destroyed"
    );
}

#[test]
fn standby_destroy_rides_out_a_short_outage_without_waiting() {
    let tries = Arc::new(Mutex::new(0u32));
    let counted = Arc::clone(&tries);
    let port = fake_agent(move |method, path, _| match (method, path) {
        ("PUT", "/v1/session/destroy/standby") => {
            let mut tries = counted.lock().expect("tries");
            *tries += 1;
            if *tries < 3 {
                (500, "No cluster leader".into())
            } else {
                (200, "true".into())
            }
        }
        _ => (404, String::new()),
    });
    let rt = runtime();
    let returned_in = rt.block_on(async {
        let client = client(&format!("127.0.0.1:{port}"));
        let owned = OwnedSession {
            id: "standby".into(),
            check: None,
            sent_at: Instant::now(),
            ttl: Some(Duration::from_secs(10)),
        };
        let started = Instant::now();
        session::destroy(&client, &owned).await;
        started.elapsed()
    });
    assert!(
        returned_in < Duration::from_secs(2),
        "destroy waited {returned_in:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || *tries.lock().expect("tries")
            >= 3),
        "the destroy was not retried until it landed"
    );
}
