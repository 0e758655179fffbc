"""A private Consul dev agent on loopback: `consul agent -dev` on free 127.0.0.1 ports, restartable
on the same ports, SIGSTOP/SIGCONT, stopped by PID. ConsulAgent is the bench's and chaos' handle;
DevAgent is the same as a context manager for the tests (tests/chart, tests/container).
Standard library only.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from kit.procs import ProcTracker, signal_pid, wait_until

LOOPBACK = "127.0.0.1"


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


class DevAgent:
    """ConsulAgent as a context manager: started on enter (its own tracker and work directory),
    stopped by its PID on exit, its work directory removed."""

    def __init__(self, consul_bin):
        self.work = tempfile.mkdtemp(prefix="lockwrap-consul-")
        self.agent = ConsulAgent(consul_bin, self.work, ProcTracker())
        self.http_port = self.agent.http_port

    def __enter__(self):
        try:
            self.agent.start(30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.agent.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        return False


def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path; (None, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""
