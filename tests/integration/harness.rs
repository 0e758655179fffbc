//! The shared test harness: running the built `lockwrap` binary against a test agent
//! (`consul.rs`), processes killed on drop, loopback ports and a std-only HTTP client. Helpers
//! for one family of tests live in the submodules and are re-exported here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::consul::{wait_until, Consul};

mod cli;
mod sidecar;
mod supervisor;

pub use cli::*;
pub use sidecar::*;
pub use supervisor::*;

/// A `lockwrap` command aimed at `consul`, with a clean environment (no inherited
/// `CONSUL_*` / `LOCKWRAP_*`).
pub fn lockwrap(consul: &Consul) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockwrap"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CONSUL_") || key.starts_with("LOCKWRAP_") || key == "RUST_LOG" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("CONSUL_HTTP_ADDR", consul.addr());
    cmd.stdin(Stdio::null());
    cmd
}

/// A key no other test uses.
pub fn unique_key(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "test/{name}/{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs to completion with a time bound; panics (after killing it) if it overruns.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn lockwrap");
    wait_output(child, limit)
}

pub fn wait_output(child: Child, limit: Duration) -> Output {
    wait_output_at(child, limit).0
}

/// Like [`wait_output`], also returning when the exit was noticed (polled every 2 ms, so the
/// figure is exact to a few ms).
pub fn wait_output_at(mut child: Child, limit: Duration) -> (Output, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                let at = Instant::now();
                return (child.wait_with_output().expect("collect output"), at);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "lockwrap overran {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        code(out),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

/// No session of `key` is left in Consul (lockwrap destroys its session on every exit path).
pub fn assert_no_sessions(consul: &Consul, key: &str) {
    let clean = wait_until(Duration::from_secs(5), || {
        consul.sessions_for(key).is_empty()
    });
    assert!(
        clean,
        "sessions left behind for {key}: {:?}",
        consul.sessions_for(key)
    );
}

/// A fresh scratch directory for files a test's children write.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lockwrap-test-{}-{}",
        std::process::id(),
        unique_key(name).replace('/', "_")
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes an executable shell script and returns its path.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A free loopback port (bound, then released for whoever binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A closed loopback port: bound then released, so connecting is refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// A loopback server on a free port that hands each connection to `handle` on a thread of its
/// own; runs until the test binary exits. Returns the port.
pub fn serve(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback server");
    let port = listener.local_addr().expect("server addr").port();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handle = Arc::clone(&handle);
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

/// An HTTP/1.1 answer: status, head (status line and headers) and de-chunked body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One request to 127.0.0.1:`port` on a connection of its own (`Connection: close`); `headers`
/// are complete lines (`Name: value`). `None` when nothing answers in time or the answer is not
/// HTTP.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
    timeout: Duration,
) -> Option<Response> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for header in headers {
        req.push_str(header);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_string()
    };
    Some(Response {
        status,
        head: head.to_string(),
        body,
    })
}

/// `GET path` on 127.0.0.1:port; `None` when nothing answers (e.g. not listening yet).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], "", Duration::from_secs(5)).map(|r| (r.status, r.body))
}

/// A chunked body, joined; `None` when it is malformed.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// A spawned process (lockwrap or `consul lock`) that is SIGKILLed on drop if still running, so a
/// failing assertion never leaves it behind.
pub struct Proc {
    child: Option<Child>,
    pub pid: i32,
}

impl Proc {
    pub fn spawn(cmd: Command) -> Proc {
        Self::spawn_with(cmd, Stdio::piped(), Stdio::piped())
    }

    /// Spawns with stdout and stderr going where the test says (e.g. a log file).
    pub fn spawn_with(mut cmd: Command, stdout: Stdio, stderr: Stdio) -> Proc {
        cmd.stdout(stdout).stderr(stderr);
        let child = cmd.spawn().expect("spawn process");
        let pid = child.id() as i32;
        Proc {
            child: Some(child),
            pid,
        }
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.as_mut().expect("not finished yet").try_wait()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (bounded); `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (panics after killing it if it takes longer than `limit`).
    pub fn finish(self, limit: Duration) -> Output {
        self.finish_at(limit).0
    }

    /// Like [`Proc::finish`], also returning when the exit was noticed.
    pub fn finish_at(mut self, limit: Duration) -> (Output, Instant) {
        wait_output_at(self.child.take().expect("not finished yet"), limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
