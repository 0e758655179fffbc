"""The child programs (kit/programs/) and their shared O_APPEND log: how to start a child, and
the records it writes ("KIND MONOTONIC_NS PID TAG TOKEN [EXTRA]"), read incrementally.
Standard library only.
"""
from __future__ import annotations

import os
import re
import shlex
import sys

from kit.procs import wait_until

PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")
# Run by path with `python3 -S` (no site import: ~10 ms start-up), never imported.
CHILD = os.path.join(PROGRAMS, "child.py")
CLUSTER_CHILD = os.path.join(PROGRAMS, "cluster_child.py")
SIDECAR_APP = os.path.join(PROGRAMS, "sidecar_app.py")


def child_argv(mode: str, logfile: str, tag: str, *extra: str) -> list[str]:
    """argv of the tiny child (python3 -S: no site import, ~10 ms start-up)."""
    return [sys.executable, "-S", CHILD, mode, logfile, tag, *extra]


def shell_quote(argv: list[str]) -> str:
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
