"""Shared machinery for the lockwrap benchmark (bench/bench.py) and chaos suite (chaos/chaos.py).

Standard library only (Python >= 3.9; developed on 3.11). Everything here binds to 127.0.0.1 only.

Contents:
  * free_port(), wait_until()          - bounded condition waits (no fixed sleeps)
  * ConsulAgent                        - a private `consul agent -dev` on loopback, restartable on the
                                         same ports, SIGSTOP/SIGCONT, killed by PID at the end
  * Proxy                              - a threaded TCP forwarder on loopback that parses the HTTP/1.x
                                         stream in both directions (counts requests, pairs responses,
                                         sees in-flight long polls) and can blackhole or reset traffic
  * ProcTracker                        - spawns wrappers in their own process groups, reaps, and kills
                                         every descendant at the end (the harness is a subreaper)
  * child_argv()/read_log()            - the tiny child program and its shared O_APPEND log
"""
from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "child.py")
LOOPBACK = "127.0.0.1"


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


def free_port(udp_too: bool = False) -> int:
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.close()
        if udp_too:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind((LOOPBACK, port))
            except OSError:
                continue
            finally:
                u.close()
        return port
    raise RuntimeError("no free port")


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
# Consul agent


class ConsulAgent:
    def __init__(self, consul_bin: str, workdir: str, tracker: ProcTracker):
        self.bin = consul_bin
        self.workdir = workdir
        self.tracker = tracker
        self.http_port = free_port()
        self.serf_lan = free_port(udp_too=True)
        self.serf_wan = free_port(udp_too=True)
        self.server_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stopped = False

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    def argv(self) -> list[str]:
        return [self.bin, "agent", "-dev", "-bind", LOOPBACK, "-client", LOOPBACK,
                "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1",
                "-serf-lan-port", str(self.serf_lan), "-serf-wan-port", str(self.serf_wan),
                "-server-port", str(self.server_port), "-log-level", "warn"]

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        logf = open(os.path.join(self.workdir, f"consul-{self.starts}.log"), "wb")
        self.proc = self.tracker.spawn(self.argv(), stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        self.stopped = False

        def leader():
            if self.proc.poll() is not None:
                raise RuntimeError(f"consul agent exited with {self.proc.returncode}; "
                                   f"see {self.workdir}/consul-{self.starts}.log")
            try:
                status, body = self.request("GET", "/v1/status/leader", timeout=1)
                return status == 200 and body.strip() not in (b"", b'""')
            except OSError:
                return False
        wait_until(leader, timeout, 0.02, "consul leader")
        # A fresh -dev agent can answer the leader query before sessions can be created
        # (serfHealth is registered a moment later); wait for the node's serfHealth check.
        def serf():
            try:
                st, body = self.request("GET", "/v1/health/state/passing", timeout=1)
                return st == 200 and b"serfHealth" in body
            except OSError:
                return False
        wait_until(serf, timeout, 0.02, "serfHealth check")

    def kill(self) -> None:
        """SIGKILL by PID (crash; -dev loses all state)."""
        if self.proc and self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGCONT)
            signal_pid(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc:
            self.tracker.forget(self.proc)

    def restart(self) -> None:
        self.kill()
        self.start()

    def sigstop(self) -> None:
        signal_pid(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.sigcont()
        if self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                signal_pid(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.tracker.forget(self.proc)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 5):
        c = http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=timeout)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def get_json(self, path: str, timeout: float = 5):
        st, body = self.request("GET", path, timeout=timeout)
        if st == 404:
            return None
        if st != 200:
            raise RuntimeError(f"GET {path}: HTTP {st}: {body[:200]!r}")
        return json.loads(body)

    def kv_session(self, key: str) -> str | None:
        try:
            v = self.get_json("/v1/kv/" + urllib.parse.quote(key), timeout=2)
        except (OSError, RuntimeError, ValueError):
            return None
        if not v:
            return None
        return v[0].get("Session")

    def sessions(self) -> list[dict]:
        return self.get_json("/v1/session/list") or []

    def destroy_session(self, sid: str) -> int:
        st, _ = self.request("PUT", "/v1/session/destroy/" + sid)
        return st

    def delete_key(self, key: str) -> int:
        st, _ = self.request("DELETE", "/v1/kv/" + urllib.parse.quote(key))
        return st


# --------------------------------------------------------------------------------------------
# HTTP-aware loopback proxy


class HTTPStream:
    """Incremental HTTP/1.x message framer for one direction of a connection.

    Calls on_message(start_line) when a message's head is complete and on_end() when its body
    is complete. Handles Content-Length, chunked bodies and (responses) read-until-close.
    """

    def __init__(self, is_request: bool, on_head, on_end):
        self.is_request = is_request
        self.on_head = on_head
        self.on_end = on_end
        self.buf = b""
        self.state = "head"
        self.remaining = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        try:
            self._run()
        except Exception:  # noqa: BLE001 - never break forwarding because of parsing
            self.broken = True

    def _run(self) -> None:
        while True:
            if self.state == "head":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self.buf) > 1 << 20:
                        self.broken = True
                    return
                head = self.buf[:i].decode("latin-1")
                self.buf = self.buf[i + 4:]
                lines = head.split("\r\n")
                start = lines[0]
                hdrs = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                self.on_head(start, hdrs)
                if not self.is_request:
                    code = int(start.split(" ")[1])
                    if 100 <= code < 200:
                        continue
                    if code in (204, 304):
                        self.on_end()
                        continue
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    self.state = "chunk-size"
                elif "content-length" in hdrs:
                    self.remaining = int(hdrs["content-length"])
                    self.state = "body"
                elif self.is_request:
                    self.remaining = 0
                    self.state = "body"
                else:
                    self.state = "until-close"
            elif self.state == "body":
                n = min(self.remaining, len(self.buf))
                self.buf = self.buf[n:]
                self.remaining -= n
                if self.remaining:
                    return
                self.state = "head"
                self.on_end()
            elif self.state == "chunk-size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2:]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size + 2
                    self.state = "chunk-data"
            elif self.state == "chunk-data":
                n = min(self.remaining, len(self.buf))
                self.buf = self.buf[n:]
                self.remaining -= n
                if self.remaining:
                    return
                self.state = "chunk-size"
            elif self.state == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                if line == b"":
                    self.state = "head"
                    self.on_end()
            elif self.state == "until-close":
                self.buf = b""
                return


class Exchange:
    __slots__ = ("conn", "t_req", "method", "target", "t_resp", "status", "t_done")

    def __init__(self, conn, t_req, method, target):
        self.conn, self.t_req, self.method, self.target = conn, t_req, method, target
        self.t_resp = self.status = self.t_done = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)

    def is_blocking(self) -> bool:
        q = self.query
        return self.method == "GET" and "index" in q and q["index"][0] not in ("", "0")

    def as_dict(self, t0=0) -> dict:
        def rel(t):
            return None if t is None else round((t - t0) / 1e6, 3)
        return {"conn": self.conn, "t_req_ms": rel(self.t_req), "method": self.method,
                "target": self.target, "status": self.status, "t_resp_ms": rel(self.t_resp)}


class Proxy:
    """Loopback TCP forwarder with HTTP accounting and fault modes.

    mode "pass":      forward bytes both ways;
    mode "blackhole": stop moving bytes in both directions (already-read data is held back, new
                      connections are accepted but not forwarded) until heal() - like packets being
                      dropped on a partitioned link: the client sees a hung request, not an error;
    mode "reset":     close every connection with RST (SO_LINGER 0) and reset new ones until heal().
    """

    def __init__(self, target_port: int, name: str = "proxy", listen_port: int = 0):
        self.target_port = target_port
        self.name = name
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((LOOPBACK, listen_port))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.mode = "pass"
        self.cv = threading.Condition()
        self.exchanges: list[Exchange] = []
        self.conns: dict[int, tuple[socket.socket, socket.socket | None]] = {}
        self.next_conn = 0
        self.closed = False
        self.parse_errors = 0
        self.thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -- control
    def blackhole(self) -> None:
        with self.cv:
            self.mode = "blackhole"
            self.cv.notify_all()

    def reset(self) -> None:
        with self.cv:
            self.mode = "reset"
            conns = list(self.conns.values())
            self.cv.notify_all()
        for c, u in conns:
            _rst(c)
            if u is not None:
                _rst(u)

    def heal(self) -> None:
        with self.cv:
            self.mode = "pass"
            self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.mode = "reset"
            conns = list(self.conns.values())
            self.cv.notify_all()
        try:
            self.ls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ls.close()
        for c, u in conns:
            _rst(c)
            if u is not None:
                _rst(u)

    # -- accounting
    def snapshot(self) -> list[Exchange]:
        with self.cv:
            return list(self.exchanges)

    def in_flight(self) -> list[Exchange]:
        with self.cv:
            return [e for e in self.exchanges if e.status is None]

    def waiting_in_long_poll(self) -> bool:
        """True when the client has a blocking query (index > 0) outstanding and nothing else."""
        fl = self.in_flight()
        return bool(fl) and all(e.is_blocking() for e in fl)

    # -- internals
    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.cv:
                if self.mode == "reset" or self.closed:
                    _rst(c)
                    continue
                cid = self.next_conn
                self.next_conn += 1
                self.conns[cid] = (c, None)
            threading.Thread(target=self._serve, args=(cid, c), name=f"{self.name}-{cid}",
                             daemon=True).start()

    def _gate(self) -> bool:
        """Block while blackholed. Returns False if the connection must be dropped."""
        with self.cv:
            while self.mode == "blackhole" and not self.closed:
                self.cv.wait(0.5)
            return self.mode == "pass" and not self.closed

    def _serve(self, cid: int, c: socket.socket) -> None:
        u = None
        try:
            if not self._gate():
                return
            try:
                u = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
                u.settimeout(None)
            except OSError:
                return
            with self.cv:
                if self.mode == "reset" or self.closed:
                    return
                self.conns[cid] = (c, u)
            pending: list[Exchange] = []

            def req_head(start, _h):
                parts = start.split(" ")
                e = Exchange(cid, mono(), parts[0], parts[1] if len(parts) > 1 else "")
                with self.cv:
                    self.exchanges.append(e)
                    pending.append(e)

            def resp_head(start, _h):
                code = int(start.split(" ")[1])
                if code < 200:
                    return
                with self.cv:
                    if pending:
                        pending[0].status = code
                        pending[0].t_resp = mono()

            def resp_end():
                with self.cv:
                    if pending:
                        e = pending.pop(0)
                        e.t_done = mono()
                        if e.status is None:
                            e.status = 0

            up = HTTPStream(True, req_head, lambda: None)
            down = HTTPStream(False, resp_head, resp_end)
            t = threading.Thread(target=self._pump, args=(u, c, down), daemon=True)
            t.start()
            self._pump(c, u, up)
            t.join(timeout=1)
            with self.cv:
                for e in pending:  # connection closed with requests unanswered
                    if e.status is None:
                        e.status = -1
                        e.t_resp = mono()
        finally:
            with self.cv:
                self.conns.pop(cid, None)
            for s in (c, u):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pump(self, src: socket.socket, dst: socket.socket, parser: HTTPStream) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if not self._gate():
                    _rst(src)
                    _rst(dst)
                    return
                parser.feed(data)
                if parser.broken:
                    self.parse_errors += 1
                dst.sendall(data)
        except OSError:
            _rst(src)
            _rst(dst)


def _rst(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Child program and its log


def child_argv(mode: str, logfile: str, tag: str, *extra: str) -> list[str]:
    """argv of the tiny child (python3 -S: no site import, ~10 ms start-up)."""
    return [sys.executable, "-S", CHILD, mode, logfile, tag, *extra]


def shell_quote(argv: list[str]) -> str:
    import shlex
    return " ".join(shlex.quote(a) for a in argv)


LOG_RE = re.compile(r"^(\S+) (\d+) (\d+) (\S+) (\S*)(?: (.*))?$")


class LogLine:
    __slots__ = ("kind", "t", "pid", "tag", "token", "extra")

    def __init__(self, kind, t, pid, tag, token, extra):
        self.kind, self.t, self.pid, self.tag, self.token, self.extra = kind, t, pid, tag, token, extra

    def __repr__(self):
        return f"{self.kind} t={self.t} pid={self.pid} tag={self.tag} token={self.token}"


def read_log(path: str, offset: int = 0) -> tuple[list[LogLine], int]:
    """Parse complete lines from `offset`; returns (lines, new offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    out = []
    for raw in data[:end].split(b"\n"):
        m = LOG_RE.match(raw.decode(errors="replace"))
        if m:
            out.append(LogLine(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4),
                               m.group(5), m.group(6)))
    return out, offset + end + 1


class LogWatcher:
    """Incrementally reads the child log; find lines by predicate with a bounded wait."""

    def __init__(self, path: str):
        self.path = path
        self.off = 0
        self.lines: list[LogLine] = []

    def poll(self) -> list[LogLine]:
        new, self.off = read_log(self.path, self.off)
        self.lines.extend(new)
        return new

    def find(self, pred) -> LogLine | None:
        for ln in self.lines:
            if pred(ln):
                return ln
        return None

    def wait(self, pred, timeout: float, what: str = "log line") -> LogLine:
        def check():
            self.poll()
            return self.find(pred)
        return wait_until(check, timeout, 0.001, what)

    def start_of(self, tag: str, timeout: float, proc=None, errdir: str = "",
                 interval: float = 0.001) -> LogLine:
        """The START record of `tag`; fails at once if its wrapper `proc` exits first (its
        stderr is `errdir/tag.err`)."""
        def check():
            self.poll()
            ln = self.find(lambda x: x.kind == "START" and x.tag == tag)
            if ln:
                return ln
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"wrapper for {tag} exited with {proc.returncode} before its child "
                                   f"started (stderr: {errdir}/{tag}.err)")
            return None
        return wait_until(check, timeout, interval, f"START of {tag}")

    def line(self, kind: str, tag: str, timeout: float) -> LogLine:
        return self.wait(lambda ln: ln.kind == kind and ln.tag == tag, timeout, f"{kind} of {tag}")


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

