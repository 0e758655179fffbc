"""Helpers shared by the Python test suites (tests/chart, tests/container): waiting on conditions,
local ports and HTTP, a Consul dev agent on 127.0.0.1, and the `ok`/`FAIL`/`skip` runner.
Python 3 standard library only; the process and agent helpers are bench/harness.py's."""
import shutil
import tempfile
import urllib.error
import urllib.request

from bench import harness
from bench.harness import free_port  # noqa: F401 (re-exported for the suites)


class Skip(Exception):
    """Raised by a test that cannot run here; the runner reports the reason."""


def wait_until(cond, timeout, what):
    """Polls cond() until it returns something true, which is returned (bench.harness's loop)."""
    return harness.wait_until(cond, timeout, 0.05, what)


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
    """bench.harness's Consul dev agent (127.0.0.1, free ports) as a context manager: started on
    enter, stopped by its PID on exit, its work directory removed."""

    def __init__(self, consul_bin):
        self.work = tempfile.mkdtemp(prefix="lockwrap-consul-")
        self.agent = harness.ConsulAgent(consul_bin, self.work, harness.ProcTracker())
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
