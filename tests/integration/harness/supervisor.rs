//! Helpers for the supervisor (`lockwrap run`): scratch directories whose children record their
//! pids and markers, `run` commands, and child scripts that record what they went through.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::consul::{wait_until, Consul};
use crate::harness::{alive, lockwrap, scratch, script, Proc};

/// A scratch directory whose children record their pids in `*.pid` files (whitespace-separated);
/// on drop every recorded process and process group still around is SIGKILLed.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        Dir(scratch(name))
    }

    /// `child.sh TAG`: writes `start.TAG`, runs until `release.TAG` appears, then writes `end.TAG`;
    /// on SIGTERM it takes `stop_secs` to stop (a command that uses its kill grace), then writes
    /// `end.TAG` and exits 0. Timestamps are `date +%s%N`.
    pub fn slow_stopper(&self, stop_secs: f64) -> String {
        self.script(
            "child.sh",
            &format!(
                "D='{}'\ntrap 'sleep {stop_secs}; date +%s%N > \"$D/end.$1\"; exit 0' TERM\n\
                 date +%s%N > \"$D/start.$1\"\n\
                 while [ ! -e \"$D/release.$1\" ]; do sleep 0.02; done\n\
                 date +%s%N > \"$D/end.$1\"",
                self.display()
            ),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn display(&self) -> String {
        self.0.display().to_string()
    }

    pub fn touch(&self, name: &str) {
        std::fs::write(self.path(name), b"").expect("touch");
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn lines(&self, name: &str) -> Vec<String> {
        self.read(name)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every pid in `name` (whitespace-separated).
    pub fn pids(&self, name: &str) -> Vec<i32> {
        self.read(name)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// A nanosecond timestamp written by `date +%s%N`.
    pub fn ns(&self, name: &str) -> Option<i128> {
        self.read(name).trim().parse().ok()
    }

    /// Waits until a marker holds content: shells create a file (`> f`) before writing it, so
    /// existence alone can be seen before the timestamp or pid is in it.
    pub fn wait_for(&self, name: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            self.exists(name) && !self.read(name).trim().is_empty()
        })
    }

    pub fn script(&self, name: &str, body: &str) -> String {
        script(&self.0, name, body).display().to_string()
    }

    /// A child that ignores SIGTERM (only the kill grace's SIGKILL ends it); it writes its pid
    /// to `child.pid`, then `ready`.
    pub fn stubborn_child(&self) -> String {
        self.script(
            "stubborn.sh",
            &format!(
                "D='{}'\ntrap '' TERM\necho $$ >> \"$D/child.pid\"\necho ready > \"$D/ready\"\n\
                 while :; do sleep 0.1; done",
                self.display()
            ),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.ends_with(".pid") {
                continue;
            }
            for pid in self.pids(&name) {
                if pid > 1 && alive(pid) {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `lockwrap run --key KEY --lock-delay 0 OPTS… -- COMMAND…`.
pub fn run_cmd(consul: &Consul, key: &str, opts: &[&str], command: &[&str]) -> Command {
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--key", key])
        .args(opts)
        .arg("--")
        .args(command);
    if !opts.contains(&"--lock-delay") {
        // A session invalidated by a test must not block the next holder for Consul's 15 s.
        cmd.env("LOCKWRAP_LOCK_DELAY", "0");
    }
    cmd
}

/// `lockwrap run` holding `key` with `child` (a script that writes `child.pid`, then `ready`,
/// like [`term_recorder`]): returns once the child runs, with the wrapper and the child's pid.
pub fn hold(consul: &Consul, key: &str, opts: &[&str], child: &str, dir: &Dir) -> (Proc, i32) {
    let wrapper = Proc::spawn(run_cmd(consul, key, opts, &[child]));
    assert!(
        dir.wait_for("ready", Duration::from_secs(15)),
        "child did not start"
    );
    (wrapper, dir.pids("child.pid")[0])
}

pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

pub fn ms(ns: i128) -> i128 {
    ns / 1_000_000
}

/// `--on-already-locked HOOK`: the hook appends to `waiting.<name>` each time the wrapper finds
/// the lock taken, which proves it is waiting (a lockwrap standby keeps no session while it
/// waits, so sessions cannot show it).
pub fn waiting_opts(dir: &Dir, name: &str) -> Vec<String> {
    let hook = dir.script(
        &format!("waiting-{name}.sh"),
        &format!("echo \"$1\" >> '{}/waiting.{name}'", dir.display()),
    );
    vec!["--on-already-locked".to_string(), hook]
}

pub fn wait_waiting(dir: &Dir, name: &str) {
    assert!(
        dir.wait_for(&format!("waiting.{name}"), Duration::from_secs(10)),
        "wrapper {name} never reported the lock as taken (it is not waiting)"
    );
}

/// A child that records `$$`, marks `ready`, and loops until `release` exists.
pub const WAIT_FOR_RELEASE: &str = "while [ ! -e \"$D/release\" ]; do sleep 0.1; done";

/// A child that records its pid and when it got SIGTERM, then exits 0.
pub fn term_recorder(dir: &Dir) -> String {
    dir.script(
        "child.sh",
        &format!(
            "D='{}'\necho $$ >> \"$D/child.pid\"\n\
             trap 'date +%s%N > \"$D/term\"; exit 0' TERM\n\
             echo ready > \"$D/ready\"\n{WAIT_FOR_RELEASE}",
            dir.display()
        ),
    )
}

/// The exclusion probe: `mkdir inside` fails if another child is inside; records order, start and
/// end times, and the fencing token; leaves when `release.$1` exists.
pub fn exclusion_probe(dir: &Dir) -> String {
    dir.script(
        "probe.sh",
        &format!(
            "D='{}'\nID=\"$1\"\necho $$ >> \"$D/child.pid\"\n\
             date +%s%N > \"$D/start.$ID\"\n\
             mkdir \"$D/inside\" 2>/dev/null || echo \"$ID\" >> \"$D/overlap\"\n\
             echo \"$ID\" >> \"$D/order\"\n\
             echo \"$LOCKWRAP_FENCING_TOKEN\" > \"$D/token.$ID\"\n\
             while [ ! -e \"$D/release.$ID\" ]; do sleep 0.05; done\n\
             rmdir \"$D/inside\" 2>/dev/null\n\
             date +%s%N > \"$D/end.$ID\"",
            dir.display()
        ),
    )
}
