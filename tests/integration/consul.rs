//! A real Consul agent for the tests: `consul agent -dev` on free loopback ports, one shared
//! per test binary (stopped at exit) or a private one per test (stopped on drop).

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, http_request};

/// A running agent: `-dev` (state in memory), or a server keeping its state in a data dir.
pub struct Consul {
    pub http_port: u16,
    ports: [u16; 4],
    extra: Vec<String>,
    /// A persistent server's data dir (state survives restarts); `None` = `-dev`.
    data_dir: Option<std::path::PathBuf>,
    /// Wait for a leader when (re)started.
    wait_for_leader: bool,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<Consul> = OnceLock::new();
static SHARED_PID: Mutex<Option<u32>> = Mutex::new(None);

extern "C" fn stop_shared_agent() {
    if let Ok(pid) = SHARED_PID.lock() {
        if let Some(pid) = *pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
}

/// The consul binary: on PATH (the Makefile puts .tools/bin first) or .tools/bin.
pub fn consul_binary() -> String {
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/bin/consul");
    if std::path::Path::new(local).exists() {
        local.to_string()
    } else {
        "consul".to_string()
    }
}

impl Consul {
    /// The agent shared by every test of this binary.
    pub fn shared() -> &'static Consul {
        SHARED.get_or_init(|| {
            let consul = Consul::start();
            *SHARED_PID.lock().expect("pid lock") = consul.pid();
            // SAFETY: registering a plain extern "C" function.
            unsafe { atexit(stop_shared_agent) };
            consul
        })
    }

    /// A private agent for tests that freeze, restart or reconfigure it.
    pub fn start() -> Consul {
        Self::start_with(&[])
    }

    /// Starts an agent on fresh free ports; tries again on new ports if it does not come up (a
    /// port picked as free can be taken by another process before the agent binds it).
    pub fn start_with(extra: &[&str]) -> Consul {
        Self::start_kind(extra, None, true)
    }

    /// A single server that keeps its state in `data_dir` across restarts (unlike `-dev`).
    pub fn start_persistent(data_dir: &std::path::Path) -> Consul {
        Self::start_kind(&["-bootstrap-expect=1"], Some(data_dir), true)
    }

    /// A server that expects two peers that never come: it answers HTTP but never has a
    /// leader ("No cluster leader"), like an agent cut off from its servers.
    pub fn start_leaderless(data_dir: &std::path::Path) -> Consul {
        Self::start_kind(&["-bootstrap-expect=3"], Some(data_dir), false)
    }

    fn start_kind(extra: &[&str], data_dir: Option<&std::path::Path>, leader: bool) -> Consul {
        for _attempt in 0..3 {
            let ports = [free_port(), free_port(), free_port(), free_port()];
            let consul = Consul {
                http_port: ports[0],
                ports,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                data_dir: data_dir.map(|d| d.to_path_buf()),
                wait_for_leader: leader,
                child: Mutex::new(None),
            };
            if consul.spawn() {
                return consul;
            }
        }
        panic!("consul agent did not come up in 3 attempts");
    }

    /// Starts the agent process and waits until it has a leader; false if it never does.
    fn spawn(&self) -> bool {
        let [http, lan, wan, server] = self.ports;
        let mode: Vec<String> = match &self.data_dir {
            None => vec!["-dev".into()],
            Some(dir) => vec![
                "-server".into(),
                format!("-data-dir={}", dir.display()),
                format!("-node=test-{http}"),
            ],
        };
        let child = Command::new(consul_binary())
            .arg("agent")
            .args(&mode)
            .args([
                "-bind=127.0.0.1",
                "-client=127.0.0.1",
                "-log-level=warn",
                &format!("-http-port={http}"),
                "-dns-port=-1",
                "-grpc-port=-1",
                &format!("-serf-lan-port={lan}"),
                &format!("-serf-wan-port={wan}"),
                &format!("-server-port={server}"),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start consul agent -dev (run `make consul` first)");
        *self.child.lock().expect("child lock") = Some(child);
        if !self.wait_for_leader {
            return wait_until(Duration::from_secs(30), || {
                self.get("/v1/status/leader").is_some()
            });
        }
        let ready = wait_until(
            Duration::from_secs(30),
            || matches!(self.get("/v1/status/leader"), Some((200, body)) if body.contains(':')),
        );
        if !ready {
            self.stop();
            return false;
        }
        // ACL-enabled agents need a moment more before the KV store answers.
        wait_until(Duration::from_secs(10), || {
            self.request("GET", "/v1/kv/?keys", None, Some("root"))
                .map(|(s, _)| s == 200 || s == 404)
                .unwrap_or(false)
        });
        // Sessions need the agent's node in the catalog ("Missing node registration" before).
        wait_until(Duration::from_secs(10), || {
            self.request("GET", "/v1/catalog/nodes", None, Some("root"))
                .is_some_and(|(s, body)| s == 200 && body.contains("\"Node\""))
        });
        true
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok()?.as_ref().map(|c| c.id())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// SIGSTOP the agent (no answers, connections hang).
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Stops and starts the agent on the same ports (a dev agent loses all state).
    pub fn restart(&self) {
        self.stop();
        assert!(self.spawn(), "consul agent did not come back on its ports");
    }

    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("child lock").take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A request with `token` as `X-Consul-Token` (the shared HTTP client, `harness.rs`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Option<(u16, String)> {
        let headers: Vec<String> = token
            .map(|t| format!("X-Consul-Token: {t}"))
            .into_iter()
            .collect();
        let answer = http_request(
            self.http_port,
            method,
            path,
            &headers,
            body.unwrap_or(""),
            Duration::from_secs(10),
        )?;
        Some((answer.status, answer.body))
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, None, Some("root"))
    }

    pub fn put(&self, path: &str, body: &str) -> Option<(u16, String)> {
        self.request("PUT", path, Some(body), Some("root"))
    }

    /// The KV entry of `key` as Consul returns it (`None` when absent).
    pub fn kv(&self, key: &str) -> Option<Value> {
        match self.get(&format!("/v1/kv/{key}")) {
            Some((200, body)) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get(0).cloned()),
            _ => None,
        }
    }

    /// The stored value of `key` parsed as JSON.
    pub fn kv_json(&self, key: &str) -> Option<Value> {
        match self.get(&format!("/v1/kv/{key}?raw")) {
            Some((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    pub fn holder(&self, key: &str) -> Option<String> {
        self.kv(key)?
            .get("Session")?
            .as_str()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    }

    pub fn put_kv(&self, key: &str, value: &str) {
        self.put(&format!("/v1/kv/{key}"), value);
    }

    pub fn delete_kv(&self, key: &str) {
        self.request("DELETE", &format!("/v1/kv/{key}"), None, Some("root"));
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        match self.get(&format!("/v1/kv/{prefix}?keys")) {
            Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    pub fn sessions(&self) -> Vec<Value> {
        match self.get("/v1/session/list") {
            Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Sessions whose name mentions `key` (the default session name does).
    pub fn sessions_for(&self, key: &str) -> Vec<Value> {
        self.sessions()
            .into_iter()
            .filter(|s| {
                s.get("Name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.contains(&format!(" {key} ")))
            })
            .collect()
    }

    pub fn destroy_session(&self, id: &str) {
        self.put(&format!("/v1/session/destroy/{id}"), "");
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
