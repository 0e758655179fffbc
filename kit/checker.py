"""The safety checks shared by chaos/chaos.py (one -dev agent), chaos/cluster_chaos.py and
tests/cluster/scenarios.py (a real cluster): pure functions of a child log. Standard library only.

Input: the child log (kit/programs/ START/END records, kit.logs.read_log) and the observed death
times of children that wrote no END (kit.procs.DeathWatcher). See chaos/chaos.py's docstring for
why these interval bounds can only over-report overlaps, never hide one.

A run leaves its child log and `evidence.json` (deaths, lock breaks, agent restarts) in its work
directory, so the safety checks can be run again on a saved run, with no process or agent
(chaos/checker.py is that command line):

    python3 -m chaos.checker WORKDIR [WORKDIR…]     # exit 0 when every check passes
"""
from __future__ import annotations

import json
import math
import os

from kit.logs import read_log
from kit.runner import check_line

EVIDENCE = "evidence.json"

BREAK_SLACK_NS = 1_000_000_000


def holder_of(tag: str) -> str:
    """The holder a section belongs to: an escaping worker (TAG.w) or a sidecar's application
    section (TAG.sN) counts for the wrapper TAG."""
    return tag.split(".", 1)[0]


def intervals(lines, dead_at, alive, now):
    """Critical sections from log lines. dead_at(pid) -> mono ns or None; alive(pid) -> bool;
    now() -> mono ns. Returns (sections sorted by start, tags of sections not ended).
    A section ends when its process is really gone: at its observed death when the death watcher
    saw one (an upper bound of the exit), never before its END record (a process that wrote END
    may still run); without an observed death, at its END."""
    starts = [ln for ln in lines if ln.kind == "START"]
    ends = {ln.pid: ln for ln in lines if ln.kind == "END"}
    ivs, unended = [], []
    for s in starts:
        if s.pid in ends:
            e, how = ends[s.pid].t, "END"
            d = dead_at(s.pid)
            if d is not None and d > e:
                e, how = d, "END+death"
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
        # one holder's own sections (its escaped worker, its sidecar application's terms) may
        # overlap each other: only sections of different holders count
        if prev is not None and iv["start"] < prev["end"] and \
                holder_of(prev["tag"]) != holder_of(iv["tag"]):
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


def overlaps_n(ivs, t0: int, limit: int):
    """For a semaphore (`-n limit`): stretches where more than `limit` sections run at once (an
    N+1 overlap). Returns a list like overlaps()'s hard list (earlier = the sections already
    running, later = the one that made it N+1; overlap_ms = how long N+1 lasted)."""
    if limit <= 1:
        return overlaps(ivs, t0)[0]
    out = []
    active: list[dict] = []
    for iv in ivs:
        # distinct holders only (a holder's escaped worker is the same holder); per other holder, its latest-ending running section
        by_holder: dict[str, dict] = {}
        for a in active:
            if a["end"] > iv["start"] and holder_of(a["tag"]) != holder_of(iv["tag"]):
                h = holder_of(a["tag"])
                if h not in by_holder or a["end"] > by_holder[h]["end"]:
                    by_holder[h] = a
        others = list(by_holder.values())
        active = [a for a in active if a["end"] > iv["start"]]
        if len(others) >= limit:
            active_now = others
            ends = sorted(a["end"] for a in active_now)
            # N+1 lasts until the (len-limit+1)-th earliest end, or the new section's end
            over_until = min(ends[len(active_now) - limit], iv["end"])
            out.append({"earlier": ",".join(a["tag"] for a in active_now), "later": iv["tag"],
                        "overlap_ms": round((over_until - iv["start"]) / 1e6, 3),
                        "earlier_end_by": ",".join(a["how"] for a in active_now),
                        "concurrent": len(active_now) + 1, "limit": limit,
                        "later_start_rel_s": round((iv["start"] - t0) / 1e9, 3)})
        active.append(iv)
    return out


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
        if int(b.token) == int(a.token) and holder_of(a.tag) == holder_of(b.tag):
            continue   # one holder's escaping worker / sidecar section: its own token
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


def save_evidence(workdir: str, evidence: dict) -> None:
    """Writes what recheck() needs beside the child log (deaths: pid -> mono ns)."""
    with open(os.path.join(workdir, EVIDENCE), "w") as f:
        json.dump(evidence, f)


def recheck(workdir: str) -> list[tuple[str, bool, str]]:
    """The safety checks of a saved run, from its child log and evidence.json alone: no overlap,
    fencing tokens increasing, every child ended (END or an observed death)."""
    lines, _ = read_log(os.path.join(workdir, "child.log"))
    with open(os.path.join(workdir, EVIDENCE)) as f:
        ev = json.load(f)
    deaths = {int(pid): t for pid, t in ev["deaths"].items()}
    # Nothing of a saved run is alive: a START with neither END nor a recorded death is unended.
    ivs, unended = intervals(lines, deaths.get, lambda _pid: True, lambda: 0)
    limit = int(ev.get("limit", 1))
    if limit > 1:   # a semaphore: N+1 at once is the overlap; tokens are not ordered
        hard, tolerated = overlaps_n(ivs, ev["t0"], limit), []
    else:
        hard, tolerated = overlaps(ivs, ev["t0"], ev["breaks"], ev.get("lenient_within_ns"))
    starts = [ln for ln in lines if ln.kind == "START"]
    bad, missing = fencing(starts, ev.get("resets", [])) if limit <= 1 else ([], [])
    return [
        ("no overlapping critical sections", not hard,
         f"{len(ivs)} sections, {len(hard)} overlaps, {len(tolerated)} tolerated"
         + (f"; first {hard[0]}" if hard else "")),
        ("fencing tokens strictly increase across STARTs", not bad and not missing,
         f"{len(starts)} STARTs, {len(bad)} non-increasing, {len(missing)} without a token"),
        ("every child ended", not unended, f"{len(ivs)} ended, unended {unended[:5]}"),
    ]


def main(argv: list[str]) -> int:
    """Re-checks each saved run in argv; prints one PASS/FAIL line per check."""
    if not argv:
        print(__doc__)
        return 2
    failed = 0
    for workdir in argv:
        for name, ok, info in recheck(workdir):
            failed += not ok
            print(check_line(ok, f"{workdir}: {name}", info))
    return 1 if failed else 0
