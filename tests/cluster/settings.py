"""The lockwrap settings the cluster scenarios and the cluster chaos suite run with - in ONE place.

Two named settings are tested everywhere:
  default  lockwrap's own defaults (no timing flags at all)
  fast     the documented fast-failover setting: TTL-only session bound to lockwrap's own health
           check, no lock-delay, 1 s kill grace; the takeover delay is derived (kill grace + 1 s)

Until the timing model (docs/timing.md) landed, `lockwrap run` had other defaults and no
`--unsafe-allow-overlap`; against such a binary ("legacy", detected from `run --help`) the harness
spells out what the new binary derives by itself, so the harness mechanics can be exercised with
either build. Set LOCKWRAP_CLUSTER_LEGACY=0/1 to override the detection.
"""
from __future__ import annotations

import os
import subprocess

# run's session TTL (default and fast alike) and the kill grace of each setting, in seconds.
SESSION_TTL = 15.0
KILL_GRACE = {"default": 5.0, "fast": 1.0}

NEW = {
    "default": [],
    "fast": ["--session-checks", "none", "--health-check-ttl", "2s", "--lock-delay", "0",
             "--kill-grace", "1s"],
}
# Today's binary: the same timing, written out (TTL-only session, lock-delay 15 s for run,
# takeover-delay = kill grace + 1 s).
LEGACY = {
    "default": ["--session-checks", "none", "--lock-delay", "15s", "--takeover-delay", "6s"],
    "fast": NEW["fast"] + ["--takeover-delay", "2s"],
}

# The issue's table (scenarios.py). "refusable": the new binary may refuse it at start (exit 3).
TABLE = {
    "a_defaults": {"args": [], "refusable": False},
    "b_lock_delay_0": {"args": ["--lock-delay", "0"], "refusable": True},
    "b2_lock_delay_0_serf": {"args": ["--lock-delay", "0", "--session-checks", "serfHealth"],
                             "refusable": True},
    "c_hc_ttl_2s_lock_delay_0": {"args": ["--health-check-ttl", "2s", "--lock-delay", "0"],
                                 "refusable": True},
    "unsafe": {"args": ["--unsafe-allow-overlap", "--lock-delay", "0", "--session-checks",
                        "serfHealth"], "refusable": False},
}

EXIT_REFUSED = 3  # unsafe flag combination refused at start (exit 2 when it came from the env)

_cache: dict[str, bool] = {}


def is_new(lockwrap: str) -> bool:
    """True when the binary has the new timing model (knows --unsafe-allow-overlap)."""
    env = os.environ.get("LOCKWRAP_CLUSTER_LEGACY")
    if env in ("0", "1"):
        return env == "0"
    if lockwrap not in _cache:
        try:
            out = subprocess.run([lockwrap, "run", "--help"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=10).stdout.decode(errors="replace")
        except (OSError, subprocess.SubprocessError):
            out = ""
        _cache[lockwrap] = "--unsafe-allow-overlap" in out
    return _cache[lockwrap]


def setting(name: str, lockwrap: str) -> list[str]:
    return list((NEW if is_new(lockwrap) else LEGACY)[name])


def takeover_delay(name: str) -> float:
    return KILL_GRACE[name] + 1.0
