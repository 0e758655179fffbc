"""The checks shared by chaos/chaos.py (one -dev agent), chaos/cluster_chaos.py and
tests/cluster/scenarios.py (a real cluster). Standard library only.

Input: the child log (bench/child.py START/END records, harness.read_log) and the observed death
times of children that wrote no END (harness.DeathWatcher). See chaos.py's docstring for why
these interval bounds can only over-report overlaps, never hide one.
"""
from __future__ import annotations

import math

BREAK_SLACK_NS = 1_000_000_000


def intervals(lines, dead_at, alive, now):
    """Critical sections from log lines. dead_at(pid) -> mono ns or None; alive(pid) -> bool;
    now() -> mono ns. Returns (sections sorted by start, tags of sections not ended)."""
    starts = [ln for ln in lines if ln.kind == "START"]
    ends = {ln.pid: ln for ln in lines if ln.kind == "END"}
    ivs, unended = [], []
    for s in starts:
        if s.pid in ends:
            e, how = ends[s.pid].t, "END"
        else:
            d = dead_at(s.pid)
            if d is None and not alive(s.pid):
                d = now()
            if d is None:
                unended.append(s.tag)
                continue
            e, how = d, "death"
        ivs.append({"tag": s.tag, "pid": s.pid, "start": s.t, "end": e, "how": how,
                    "token": s.token})
    ivs.sort(key=lambda x: x["start"])
    return ivs, unended


def overlaps(ivs, t0: int, breaks=(), lenient_within_ns: int | None = None):
    """Pairs of overlapping sections. `breaks`: fault records {"kind", "t"} that took the lock
    away behind the holder's back; with lenient_within_ns set, an overlap whose earlier section was
    hit by such a break (at most BREAK_SLACK before its START) and ended within that many ns of the
    break is returned as tolerated. Returns (hard, tolerated)."""
    hard, tolerated = [], []
    prev = None
    for iv in ivs:
        if prev is not None and iv["start"] < prev["end"]:
            ov = {"earlier": prev["tag"], "later": iv["tag"],
                  "overlap_ms": round((prev["end"] - iv["start"]) / 1e6, 3),
                  "earlier_end_by": prev["how"],
                  "earlier_start_rel_s": round((prev["start"] - t0) / 1e9, 3),
                  "later_start_rel_s": round((iv["start"] - t0) / 1e9, 3)}
            brk = [b for b in breaks if prev["start"] - BREAK_SLACK_NS <= b["t"] <= iv["start"]]
            if brk:
                b = brk[-1]
                ov["break"] = b["kind"]
                ov["old_child_stopped_after_break_ms"] = round((prev["end"] - b["t"]) / 1e6, 3)
                if lenient_within_ns is not None and prev["end"] - b["t"] <= lenient_within_ns:
                    tolerated.append(ov)
                else:
                    hard.append(ov)
            else:
                hard.append(ov)
        if prev is None or iv["end"] > prev["end"]:
            prev = iv
    return hard, tolerated


def fencing(starts, resets=()):
    """Fencing tokens must strictly increase across START records in time order. `resets`: mono
    ns times of events that reset Consul's indexes (a -dev agent restart): a pair straddling one
    (from 2 s before) is not compared. Returns (violations, tags without a numeric token)."""
    bad = []
    missing = [s.tag for s in starts if not s.token.isdigit()]
    ordered = sorted(starts, key=lambda s: s.t)
    for a, b in zip(ordered, ordered[1:]):
        if not (a.token.isdigit() and b.token.isdigit()):
            continue
        if int(b.token) > int(a.token):
            continue
        if any(a.t - 2e9 < k <= b.t for k in resets):
            continue
        bad.append(f"{a.tag}:{a.token} -> {b.tag}:{b.token}")
    return bad, missing


def quiet_gaps(ivs, fault_ends):
    """Stretches with no critical section running, each counted from the end of the last fault
    inside it. Returns [(gap ns, quiet-from ns, next tag)] longest first."""
    gaps = []
    cover_end = None
    ends = sorted(fault_ends)
    for iv in ivs:
        if cover_end is not None and iv["start"] > cover_end:
            inside = [e for e in ends if cover_end <= e <= iv["start"]]
            quiet_from = max(inside) if inside else cover_end
            gaps.append((iv["start"] - quiet_from, quiet_from, iv["tag"]))
        cover_end = iv["end"] if cover_end is None else max(cover_end, iv["end"])
    gaps.sort(reverse=True)
    return gaps


def percentile(xs, p: float):
    """Nearest-rank percentile (p in 0…100) of a non-empty list; None for an empty one."""
    s = sorted(xs)
    if not s:
        return None
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def summary(xs) -> dict:
    """n / median / p95 / max (seconds, 2 decimals) of a list of seconds."""
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median_s": round(percentile(xs, 50), 2),
            "p95_s": round(percentile(xs, 95), 2), "max_s": round(max(xs), 2)}
