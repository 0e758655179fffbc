"""The one runner of the Python suites: tests/chart, tests/container and tests/cluster run their
tests through it, chaos/ counts its checks with it. Every suite prints one line per test or check
and ends with the same closing line, the one CI reads:

    N passed, M failed[, K skipped]

and exits 1 when anything failed. Standard library only.
"""
from __future__ import annotations


class Skip(Exception):
    """Raised by a test that cannot run here; the runner reports the reason."""


def summary(passed: int, failed: int, skipped: int = 0) -> int:
    """Prints the closing line; returns the exit code."""
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""),
          flush=True)
    return 1 if failed else 0


def check_line(ok: bool, name: str, info: str) -> str:
    """One check's line in a suite's report (`  PASS  name: info`)."""
    return f"  {'PASS' if ok else 'FAIL'}  {name}: {info}"


class Tally:
    """Outcomes of a suite, by name; close() prints the closing line."""

    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures: list[str] = []

    def record(self, name: str, ok: bool) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(name)

    def skip(self, _name: str) -> None:
        self.skipped += 1

    def checks(self, checks, prefix: str = "") -> "Tally":
        """Counts (name, ok, info) checks (no output: the suites print them where they belong)."""
        for name, ok, _info in checks:
            self.record(prefix + name, ok)
        return self

    def close(self) -> int:
        return summary(self.passed, self.failed, self.skipped)


def run_tests(tests, only=(), prefix: str = "", tally: Tally | None = None) -> Tally:
    """Runs (name, fn) pairs whose name contains one of `only` (all when empty) and prints one line
    each (`ok`, `FAIL` with the error, `skip` with the reason). Returns the tally, a new one unless
    given (a suite that runs its tests in several rounds passes one)."""
    tally = tally if tally is not None else Tally()
    for name, fn in tests:
        name = prefix + name
        if only and not any(o in name for o in only):
            continue
        try:
            fn()
        except Skip as e:
            tally.skip(name)
            print(f"skip {name}: {e}", flush=True)
        except Exception as e:  # a failed assertion or an unexpected error: report and go on
            tally.record(name, False)
            print(f"FAIL {name}\n     {type(e).__name__}: {e}", flush=True)
        else:
            tally.record(name, True)
            print(f"ok   {name}", flush=True)
    return tally
