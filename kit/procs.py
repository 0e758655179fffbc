"""Time, bounded waits and processes: what every runner of the kit (bench, chaos, tests) needs
before it starts anything. Standard library only (Python >= 3.9; developed on 3.11).

  * mono(), log(), wait_until()        - one clock (CLOCK_MONOTONIC ns, as the child programs
                                         write), stderr lines, bounded waits (no fixed sleeps)
  * find_consul(), check_lockwrap()    - the binaries under test
  * source_revision(), machine_info(),
    loadavg(), median()                - what a result is noted with
  * ProcTracker, become_subreaper()    - spawns in own process groups, reaps, and kills every
                                         descendant at the end (the runner is a subreaper)
  * DeathWatcher                       - when watched PIDs die (pidfds), for the checker
  * run_interruptibly()                - SIGTERM/SIGHUP as a clean interruption of a suite
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mono() -> int:
    """CLOCK_MONOTONIC in ns; comparable across processes on one machine (the child uses the same)."""
    return time.monotonic_ns()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(pred, timeout: float, interval: float = 0.005, what: str = "condition"):
    """Poll `pred` until it returns a truthy value or `timeout` seconds pass (bounded in time).

    Returns the value, or raises TimeoutError. The interval grows slowly up to 50 ms so that long
    waits do not burn CPU while short waits stay precise."""
    deadline = time.monotonic() + timeout
    step = interval
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)
        step = min(step * 1.2, 0.05)


def loadavg() -> str:
    """The 1/5/15-minute load averages, noted beside every timing result."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"

def find_consul() -> str:
    """Use scripts/ensure-consul.sh (prints the path, provisions it on a fresh machine)."""
    env_path = os.environ.get("CONSUL_BIN")
    if env_path:
        return env_path
    out = subprocess.run([os.path.join(ROOT, "scripts", "ensure-consul.sh")], check=True,
                         stdout=subprocess.PIPE, timeout=600).stdout.decode().strip()
    return out.splitlines()[-1]


def source_revision() -> str:
    """git commit of the work tree the lockwrap binary was built from (+ "-dirty")."""
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": os.uname().release,
            "machine": os.uname().machine, "mem_gib": round(mem_kb / 1048576, 1),
            "python": sys.version.split()[0]}


# --------------------------------------------------------------------------------------------
# Process handling


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans (e.g. the child of a kill -9'd wrapper) are re-parented to us, so we can always find
    and kill them by walking /proc."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - best effort
        return False


def proc_state(pid: int) -> str | None:
    """Process state letter from /proc/<pid>/stat, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split(" ", 1)[0]


def alive(pid: int) -> bool:
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return int(data[data.rfind(")") + 2:].split(" ")[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pp = ppid_of(int(name))
        if pp is not None:
            children.setdefault(pp, []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reap_orphans() -> None:
    """Reap zombies re-parented to us that subprocess.Popen does not know about."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and ppid_of(int(name)) == me and proc_state(int(name)) == "Z":
            if int(name) in ProcTracker.popen_pids:
                continue
            try:
                os.waitpid(int(name), os.WNOHANG)
            except ChildProcessError:
                pass


class ProcTracker:
    """Starts processes in their own session/process group and kills everything at the end."""
    popen_pids: set[int] = set()

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def spawn(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(argv, **kw)
        with self.lock:
            self.procs.append(p)
            ProcTracker.popen_pids.add(p.pid)
        return p

    def forget(self, p: subprocess.Popen) -> None:
        with self.lock:
            if p in self.procs:
                self.procs.remove(p)
            ProcTracker.popen_pids.discard(p.pid)

    def kill_all(self, exclude=()) -> None:
        """SIGKILL every process we started, their groups, and every descendant of ours (bounded)."""
        excl = set(exclude)
        for _ in range(20):
            victims = [p for p in descendants(os.getpid()) if p not in excl and alive(p)]
            with self.lock:
                for p in self.procs:
                    if p.poll() is None and p.pid not in excl:
                        victims.append(p.pid)
            if not victims:
                break
            for pid in set(victims):
                for target in (-pid, pid):
                    try:
                        os.kill(target, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            time.sleep(0.02)
        with self.lock:
            for p in self.procs:
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        reap_orphans()


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# --------------------------------------------------------------------------------------------
# Death times (the checker's section ends)


def pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None


class DeathWatcher:
    """Records when watched PIDs die, using pidfds (readable at exit, works for non-children)
    with a /proc fallback. A recorded time is an upper bound of the real exit time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fds: dict[int, int] = {}       # fd -> pid
        self.death: dict[int, int] = {}     # pid -> mono ns
        self.proc_poll: set[int] = set()
        self.stop = False
        self.r, self.w = os.pipe()
        self.t = threading.Thread(target=self._loop, daemon=True, name="deathwatch")
        self.t.start()

    def watch(self, pid: int) -> None:
        with self.lock:
            if pid in self.death or pid in self.fds.values() or pid in self.proc_poll:
                return
            fd = pidfd_open(pid)
            if fd is None:
                if alive(pid):
                    self.proc_poll.add(pid)
                else:
                    self.death[pid] = mono()
                return
            self.fds[fd] = pid
        os.write(self.w, b"x")

    def dead_at(self, pid: int) -> int | None:
        with self.lock:
            return self.death.get(pid)

    def snapshot(self) -> dict[int, int]:
        """Every recorded death so far: pid -> mono ns."""
        with self.lock:
            return dict(self.death)

    def _loop(self) -> None:
        while not self.stop:
            with self.lock:
                fds = list(self.fds)
            try:
                rd, _, _ = select.select(fds + [self.r], [], [], 0.01)
            except OSError:
                rd = []
            now = mono()
            with self.lock:
                for fd in rd:
                    if fd == self.r:
                        os.read(self.r, 4096)
                        continue
                    pid = self.fds.pop(fd, None)
                    if pid is not None:
                        self.death.setdefault(pid, now)
                        os.close(fd)
                for pid in list(self.proc_poll):
                    if not alive(pid):
                        self.death.setdefault(pid, now)
                        self.proc_poll.discard(pid)

    def close(self) -> None:
        self.stop = True
        os.write(self.w, b"x")
        self.t.join(timeout=2)


# --------------------------------------------------------------------------------------------
# Runs


def median(xs):
    s = sorted(xs)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def check_lockwrap(lockwrap: str, who: str, hint: str = "") -> None:
    """Exit with one line if the lockwrap binary is missing or cannot run."""
    try:
        subprocess.run([lockwrap, "run", "--help"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        sys.exit(f"{who}: {lockwrap} is missing or `run --help` fails; build it with "
                 f"`cargo build --release`{hint}")


def run_interruptibly(suite) -> None:
    """Runs `suite.run()` as a subreaper, turning SIGTERM/SIGHUP into a clean interruption that
    is recorded in `suite.results["errors"]["run"]`; `suite.close()` always runs."""
    become_subreaper()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        suite.run()
    except KeyboardInterrupt:
        log("interrupted")
        suite.results.setdefault("errors", {})["run"] = "interrupted"
    finally:
        suite.close()
