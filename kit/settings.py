"""The lockwrap settings the cluster scenarios (tests/cluster/scenarios.py) and the cluster chaos
suite (chaos/cluster_chaos.py) run with - in ONE place.

Two named settings are tested everywhere:
  default  lockwrap's own defaults (no timing flags at all)
  fast     the documented fast-failover setting: TTL-only session bound to lockwrap's own health
           check, no lock-delay, 1 s kill grace; the takeover delay is derived (4 s)

The takeover delay is derived: max(kill grace + 1 s, kill grace + 3 s - lock-delay), 6 s for
default and 4 s for fast.
"""
from __future__ import annotations

import os

# run's session TTL (default and fast alike) and the kill grace of each setting, in seconds.
SESSION_TTL = 15.0
KILL_GRACE = {"default": 5.0, "fast": 1.0}

NEW = {
    "default": [],
    "fast": ["--session-checks", "none", "--health-check-ttl", "2s", "--lock-delay", "0",
             "--kill-grace", "1s"],
}

# The issue's table (scenarios.py). "refusable": the new binary may refuse it at start (exit 3).
TABLE = {
    "a_defaults": {"args": [], "refusable": False},
    "b_lock_delay_0": {"args": ["--lock-delay", "0"], "refusable": True},
    "b2_lock_delay_0_serf": {"args": ["--lock-delay", "0", "--session-checks", "serfHealth"],
                             "refusable": True},
    "c_hc_ttl_2s_lock_delay_0": {"args": ["--health-check-ttl", "2s", "--lock-delay", "0"],
                                 "refusable": True},
    # An explicit takeover delay: the default one adapts to lock-delay 0 and would make it safe.
    "unsafe": {"args": ["--unsafe-allow-overlap", "--lock-delay", "0", "--session-checks",
                        "serfHealth", "--takeover-delay", "6s"], "refusable": False},
}

EXIT_REFUSED = 3  # unsafe flag combination refused at start (exit 2 when it came from the env)

def setting(name: str, lockwrap: str) -> list[str]:
    """The flags of a named setting (`lockwrap` is kept for the callers; every build takes the
    same ones)."""
    return list(NEW[name])


def takeover_delay(name: str) -> float:
    """The takeover delay lockwrap derives for a named setting (docs/timing.md)."""
    return takeover_for(KILL_GRACE[name], 0.0 if name == "fast" else 15.0)


# --------------------------------------------------------------------------------------------
# Modes and per-contender settings (the "every way two holders could happen" extension).
# Everything the harness needs to know about lockwrap's timing is DATA here, so the lead's model
# change (takeover delay max(G+1, G+3-L) for a holder that cannot reach its agent; a field in the
# lock value so the next holder waits the previous holder's longer takeover delay) only needs
# edits in this block.

DEFAULT_KILL_GRACE = 5.0          # run/execute/sidecar/library default --kill-grace
DEFAULT_LOCK_DELAY = {"run": 15.0, "sidecar": 15.0, "execute": 15.0, "lib": 15.0}
STOP_FRACTION = 0.8               # the command keeps running this share of its kill grace after SIGTERM
# Before the model change (today's binary): T = G + 1. After it: T = max(G + 1, G + 3 - L).
TAKEOVER_MODEL = os.environ.get("LOCKWRAP_TAKEOVER_MODEL", "blind")   # today | blind


# SIGSTOP of a holder's lockwrap (chaos "stall"): longer than its deadline (fast: 2 s after the
# last renew; defaults: 15 s after the last renew, lock-delay + takeover - grace - 1 s), bounded.
STALL_SECONDS = {"fast": (2.5, 6.0), "default": (16.0, 21.0)}


def takeover_for(grace: float, lock_delay: float, model: str = "") -> float:
    """The default takeover delay of a contender with kill grace G and lock-delay L."""
    if (model or TAKEOVER_MODEL) == "blind":
        return max(grace + 1.0, grace + 3.0 - lock_delay)
    return grace + 1.0


def flag_value(args: list[str], flag: str, default: float) -> float:
    """A duration flag's value in seconds from an argv list ("5s", "500ms", "1m")."""
    if flag not in args:
        return default
    v = args[args.index(flag) + 1]
    for suf, mul in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * mul
    return float(v)


def kill_grace_of(args: list[str]) -> float:
    return flag_value(args, "--kill-grace", DEFAULT_KILL_GRACE)


def stop_time(args: list[str]) -> float:
    """How long the test command keeps running after SIGTERM: ~80 % of its kill grace."""
    return round(STOP_FRACTION * kill_grace_of(args), 3)


# A chaos/scenario MODE: which entry point (cmd: run | execute | sidecar | lib), extra flags every
# contender gets, the number of holders allowed (limit), and optional per-contender variants
# (`groups`: contender i gets groups[i % len(groups)] appended - mixed settings on one key; a
# rollout that lowers the kill grace). `escape`: the command leaves a worker behind (setsid|nohup).
# `stderr_pipe`: contender 0's stderr is a pipe nobody reads (with -vv, so it fills).
MODES = {
    "run": {"cmd": "run", "extra": [], "limit": 1},
    "execute": {"cmd": "execute", "extra": [], "limit": 1},
    "sidecar": {"cmd": "sidecar", "extra": [], "limit": 1},
    "sem2": {"cmd": "run", "extra": ["-n", "2"], "limit": 2},
    "queue": {"cmd": "run", "extra": ["--queue"], "limit": 1},
    "layout": {"cmd": "run", "extra": ["--layout", "consul-lock"], "limit": 1},
    "lib": {"cmd": "lib", "extra": [], "limit": 1, "fixed_settings": True},
    "mixed": {"cmd": "run", "extra": [], "limit": 1,
              "groups": {"default": [["--kill-grace", "5s"], ["--kill-grace", "2s"]],
                         "fast": [["--kill-grace", "1s"], ["--kill-grace", "500ms"]]}},
    "escape": {"cmd": "run", "extra": [], "limit": 1, "escape": "setsid"},
    "escape-nohup": {"cmd": "execute", "extra": [], "limit": 1, "escape": "nohup"},
    "stderr-pipe": {"cmd": "run", "extra": ["-vv"], "limit": 1, "stderr_pipe": True},
}
CHAOS_MODES = list(MODES)


def mode_args(mode: str, setting_name: str, lockwrap: str, index: int) -> list[str]:
    """The flags contender `index` of MODE runs with under SETTING (lib: none, it has no flags)."""
    m = MODES[mode]
    if m.get("fixed_settings"):
        return []
    args = setting(setting_name, lockwrap) + list(m["extra"])
    groups = m.get("groups", {}).get(setting_name)
    if groups:
        g = groups[index % len(groups)]
        # later flags win: drop the setting's own value of each flag the group sets
        for flag in g[::2]:
            while flag in args:
                i = args.index(flag)
                del args[i:i + 2]
        args += g
    return args


def session_of_pid(name: str, pid: int) -> bool:
    """Whether a Consul session name is the one lockwrap's process `pid` created for a lock (not
    for the queue): `lockwrap <key> on <host> pid <pid>`, then the announced takeover delay and
    the create attempt's marker."""
    import re
    base = re.sub(r"( \[takeover [0-9]+ms\])?( \[attempt [0-9a-f]+\])?$", "", name)
    return base.endswith(f"pid {pid}") and "queue" not in base
