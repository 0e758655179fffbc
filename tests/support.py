"""Helpers shared by the Python test suites (tests/chart, tests/container): waiting on conditions,
local ports and HTTP, a Consul dev agent on 127.0.0.1, and the `ok`/`FAIL`/`skip` runner.
Python 3 standard library only."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


class Skip(Exception):
    """Raised by a test that cannot run here; the runner reports the reason."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout, what):
    """Polls cond() every 0.1 s until it returns something true, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(port, path):
    """(status, body) of GET http://127.0.0.1:port/path; (None, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


class ConsulAgent:
    """A Consul dev agent bound to 127.0.0.1 on free ports; stopped (by its PID) on exit."""

    def __init__(self, consul_bin):
        self.consul_bin = consul_bin
        self.http_port = free_port()
        self.proc = None
        self.data = None

    def __enter__(self):
        self.data = tempfile.mkdtemp()
        ports = {k: free_port() for k in ("server", "lan", "wan")}
        self.proc = subprocess.Popen(
            [self.consul_bin, "agent", "-dev", "-data-dir", self.data, "-bind", "127.0.0.1",
             "-client", "127.0.0.1", "-http-port", str(self.http_port),
             "-server-port", str(ports["server"]), "-serf-lan-port", str(ports["lan"]),
             "-serf-wan-port", str(ports["wan"]), "-dns-port", "-1", "-grpc-port", "-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: http_get(self.http_port, "/v1/status/leader")[1].strip() not in ("", '""'),
                       30, "the Consul dev agent")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)
        return False


def run_tests(tests, only=(), prefix=""):
    """Runs (name, fn) pairs whose name contains one of `only` (all when empty), prints one line
    each, and returns (passed, failed, skipped)."""
    passed = failed = skipped = 0
    for name, fn in tests:
        name = prefix + name
        if only and not any(o in name for o in only):
            continue
        try:
            fn()
        except Skip as e:
            skipped += 1
            print(f"skip {name}: {e}", flush=True)
        except Exception as e:  # a failed assertion or an unexpected error: report and go on
            failed += 1
            print(f"FAIL {name}\n     {type(e).__name__}: {e}", flush=True)
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    return passed, failed, skipped


def summary(passed, failed, skipped):
    """Prints `N passed, M failed[, K skipped]`; returns the exit code."""
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0
