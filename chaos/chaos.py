#!/usr/bin/env python3
"""lockwrap chaos suite (docs/performance.md, "What the chaos suite checks").
Standard library only; loopback only; bounded in trials and time.

K contenders run, and are restarted whenever they exit:
    lockwrap run --key chaos/lock --session-ttl 10s --kill-grace 1s --lock-delay 0 \
                 --takeover-delay 10s --consul-addr 127.0.0.1:<contender's own proxy> -- python3 -S kit/programs/child.py chaos …
Each child appends START / END records (CLOCK_MONOTONIC ns, pid, tag, $LOCKWRAP_FENCING_TOKEN) to one
shared log with single O_APPEND writes and holds the lock for a random short time.

A fault injector repeatedly picks, at random, among the faults that apply to the current state:
    kill9        kill -9 the holder (lockwrap) and its child
    stop_short   SIGSTOP the Consul agent for less than the TTL, then SIGCONT
    stop_long    SIGSTOP the agent for longer than the TTL, then SIGCONT
    part_short   cut the holder's connection to Consul (its loopback proxy blackholes or resets
    part_long    every connection) for less / more than the TTL, then heal
    destroy      PUT /v1/session/destroy/<the lock's session>
    delete       DELETE /v1/kv/chaos/lock
    restart      kill -9 and restart the agent on the same ports (-dev: all state is lost)
Every kind is injected at least once (a shuffled first round), then by weight.

The checker then proves, from the log and the death times:
  * no two critical sections overlap (see "Interval bounds" below);
  * fencing tokens strictly increase across START records (a -dev agent restart resets Consul's
    indexes, so the sequence may restart after an agent restart);
  * every child ended (END written, or its death observed) and no child is left running;
  * after all contenders were stopped with SIGTERM, no session is left in Consul: none of the
    SIGTERM'd wrappers' sessions exists right away, and every other session (a kill -9'd holder's,
    or one a partitioned holder could not destroy) expires within 2×TTL + 5 s;
  * no wrapper panicked, hung, or exited with an unexpected code.

Interval bounds. A critical section starts at the child's START timestamp (written after lockwrap
has acquired the lock and started it) and ends at its END timestamp (written on normal end or when
it gets SIGTERM/INT/HUP). A child killed by SIGKILL writes no END; its end is the time its exit
was observed through a pidfd (pidfd_open(2) + select: readable as soon as the process exits, child
of ours or not). The pidfd is opened as soon as the START record is read (the log is tailed every
2 ms); if the process is already gone then, the observation time is used. Either way the recorded
end is never earlier than the real one, so the check can only over-report overlaps, never hide one.

Overlaps after an external lock break. `destroy`, `delete` and `restart` take the lock away from a
live holder behind its back; with --lock-delay 0 another contender may acquire at once, before the
old holder has even been told. lockwrap's `--takeover-delay` (the TTL here, `--takeover-delay` of
this script) covers that: after an unclean release the new holder waits before starting its command, so
by default EVERY overlap fails the run. With `--takeover-delay 0` (lockwrap without the guard) an
overlap whose earlier section was broken that way (break time inside it, or at most 1 s before its
START) is reported as "after external break" and tolerated if the old child stopped within the TTL
of the break, unless `--strict`.

Liveness: the longest stretch with no critical section running must stay below --max-gap (60 s):
a kill -9'd holder keeps the lock for up to 2×TTL and a freeze or a cut adds at most TTL + 5 s,
so a longer gap means waiting contenders missed a free lock.

    python3 -m chaos.chaos --short            # ≈ 2 minutes (part of `make test`)
    python3 -m chaos.chaos --trials 1000 --budget 3600
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from kit import checker  # shared with cluster_chaos.py and tests/cluster/scenarios.py
from kit.agent import ConsulAgent
from kit.logs import LogWatcher, child_argv
from kit.procs import (ROOT, DeathWatcher, ProcTracker, alive, become_subreaper, find_consul, log,
                       machine_info, mono, ppid_of, proc_state, signal_pid, source_revision,
                       wait_until)
from kit.proxy import Proxy
from kit.runner import Tally, check_line, summary

KEY = "chaos/lock"
TTL = 10.0
KILL_GRACE = 1.0
KINDS = ["kill9", "stop_short", "stop_long", "part_short", "part_long", "destroy", "delete", "restart"]
WEIGHTS = {"kill9": 3, "stop_short": 2, "stop_long": 0.3, "part_short": 2, "part_long": 0.4,
           "destroy": 2, "delete": 2, "restart": 1}
HOLDER_KINDS = {"kill9", "part_short", "part_long"}
BREAK_KINDS = {"destroy", "delete", "restart"}
EXPECTED_EXIT = {0, 8, 101, 143, -9, -15, 128 + 15}


class Contender:
    def __init__(self, suite: "Chaos", slot: int):
        self.s = suite
        self.slot = slot
        self.proxy = self.make_link()
        self.gen = 0
        self.proc: subprocess.Popen | None = None
        self.tag = ""
        self.lock = threading.Lock()
        self.running = True
        self.exits: list[tuple[str, int | None, float]] = []
        self.errf = open(os.path.join(suite.work, f"contender-{slot}.err"), "ab")
        self.thread = threading.Thread(target=self.loop, name=f"contender-{slot}", daemon=True)

    def make_link(self):
        """The contender's own way to its agent (here a loopback proxy the faults can cut)."""
        return Proxy(self.s.agent.http_port, f"c{self.slot}")

    def argv(self, tag: str) -> list[str]:
        a = self.s.args
        return [a.lockwrap, "run", "--key", KEY, "--session-ttl", f"{TTL:g}s",
                "--kill-grace", f"{KILL_GRACE:g}s", "--lock-delay", "0",
                "--takeover-delay", f"{a.takeover_delay:g}s",
                "--consul-addr", self.proxy.addr, "--",
                *child_argv("chaos", self.s.logfile, tag, str(a.hold_min), str(a.hold_max))]

    def loop(self) -> None:
        fast_exits = 0
        while self.running and not self.s.over():
            with self.lock:
                if not self.running:
                    return
                self.gen += 1
                self.tag = f"c{self.slot}g{self.gen}"
                self.errf.write(f"--- {self.tag} ---\n".encode())
                self.errf.flush()
                t_spawn = time.monotonic()
                self.proc = self.s.tracker.spawn(self.argv(self.tag), stdout=subprocess.DEVNULL,
                                                 stderr=self.errf)
                self.s.wrapper_pids[self.proc.pid] = self.tag
            p = self.proc
            rc = self.supervise(p, self.tag, t_spawn)
            self.s.tracker.forget(p)
            self.exits.append((self.tag, rc, time.monotonic() - t_spawn))
            # Throttle a tight restart loop (e.g. agent down: exit 8 at once) - pacing, not a wait.
            fast_exits = fast_exits + 1 if time.monotonic() - t_spawn < 0.5 else 0
            if fast_exits > 3:
                time.sleep(min(0.05 * fast_exits, 1.0))

    def supervise(self, p: subprocess.Popen, tag: str, t_spawn: float) -> int | None:
        """Wait for the wrapper, bounded. A wrapper whose child has ended but which is still running
        self.s.kill_grace + 30 s later is hung (a problem). A standby that never got the lock within
        --wrapper-timeout is starved (counted, not a failure: Consul locks are not fair); it gets
        SIGTERM (so it cleans up its session) and is restarted."""
        while True:
            try:
                return p.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            s = self.s
            start = s.start_by_tag(tag)
            if start is not None:
                end = s.ended_at(start.pid)
                if end is not None and mono() - end > s.hung_after() * 1e9:
                    s.problem(f"{tag}: wrapper pid {p.pid} still running {s.hung_after():.0f}s after "
                              f"its command ended (hung); killed")
                    signal_pid(p.pid, signal.SIGKILL)
                    return p.wait(timeout=10)
                if time.monotonic() - t_spawn > s.args.wrapper_timeout + s.args.hold_max + 60:
                    s.problem(f"{tag}: holder pid {p.pid} ran far longer than its command; killed")
                    signal_pid(p.pid, signal.SIGKILL)
                    return p.wait(timeout=10)
            elif time.monotonic() - t_spawn > s.args.wrapper_timeout:
                s.starved.append(tag)
                log(f"{tag}: standby got no lock in {s.args.wrapper_timeout:.0f}s (starved); SIGTERM")
                signal_pid(p.pid, signal.SIGTERM)
                try:
                    return p.wait(timeout=self.s.stop_patience())
                except subprocess.TimeoutExpired:
                    s.problem(f"{tag}: waiting wrapper pid {p.pid} ignored SIGTERM; killed")
                    signal_pid(p.pid, signal.SIGKILL)
                    return p.wait(timeout=10)

    def wrapper_live(self) -> bool:
        """Whether the current wrapper still runs (a kill -9 fault may have ended it)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM the current wrapper (no restart afterwards); returns its exit code."""
        with self.lock:
            self.running = False
            p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            signal_pid(p.pid, signal.SIGTERM)
        try:
            return p.wait(timeout=self.s.stop_patience())
        except subprocess.TimeoutExpired:
            self.s.problem(f"{self.tag}: wrapper pid {p.pid} did not exit within "
                           f"{self.s.stop_patience():.0f}s of SIGTERM; killed")
            signal_pid(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            return None


class Chaos:
    # What a subclass (chaos/cluster_chaos.py) changes.
    ttl = TTL
    kill_grace = KILL_GRACE
    key = KEY
    kinds = KINDS
    expected_exit = EXPECTED_EXIT
    contender_cls = Contender
    limit = 1          # holders allowed at once (a semaphore's -n): more is the overlap
    final_ok_exits: set = set()   # more acceptable answers to the final stop (the library: -9)

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.tracker = ProcTracker()
        self.work = args.workdir or tempfile.mkdtemp(prefix="lockwrap-chaos-")
        os.makedirs(self.work, exist_ok=True)
        self.logfile = os.path.join(self.work, "child.log")
        open(self.logfile, "w").close()
        self.lw = LogWatcher(self.logfile)
        self.deaths = DeathWatcher()
        self.agent = ConsulAgent(find_consul(), self.work, self.tracker)
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.budget
        self.stop_flag = False
        self.problems: list[str] = []
        self.faults: list[dict] = []
        self.counts: dict[str, int] = {k: 0 for k in self.kinds}
        self.on_holder: dict[str, int] = {k: 0 for k in self.kinds}
        self.t_shutdown = 0
        self.skipped = 0
        self.starved: list[str] = []
        self.wrapper_pids: dict[int, str] = {}
        self.starts: dict[int, object] = {}      # child pid -> START line
        self.ends: dict[int, object] = {}        # child pid -> END line
        self.mon_lock = threading.Lock()
        self.contenders: list[Contender] = []
        self.restarts: list[tuple[int, int]] = []   # (kill time, ready time) of agent restarts
        self.agent_lock = threading.Lock()

    def stop_patience(self) -> float:
        """Seconds a wrapper may take to exit after SIGTERM: its kill grace, plus up to one TTL
        when the signal comes while a release retries the session destroy with Consul out of
        reach (docs/timing.md, "Consul trouble"), plus a margin."""
        return self.kill_grace + self.ttl + 15

    def hung_after(self) -> float:
        """Seconds a wrapper may keep running after its command ended (release, cleanup)."""
        return self.kill_grace + 30

    def start_by_tag(self, tag: str):
        with self.mon_lock:
            for ln in self.starts.values():
                if ln.tag == tag:
                    return ln
        return None

    def ended_at(self, pid: int) -> int | None:
        with self.mon_lock:
            e = self.ends.get(pid)
        return e.t if e is not None else self.deaths.dead_at(pid)

    def over(self) -> bool:
        return self.stop_flag or time.monotonic() >= self.deadline

    def problem(self, msg: str) -> None:
        log("PROBLEM: " + msg)
        self.problems.append(msg)

    # -- log monitor
    def monitor(self) -> None:
        n = 0
        while not self.stop_flag:
            new = self.lw.poll()
            with self.mon_lock:
                for ln in new:
                    if ln.kind == "START":
                        self.starts[ln.pid] = ln
                        self.deaths.watch(ln.pid)
                    elif ln.kind == "END":
                        self.ends[ln.pid] = ln
            n += 1
            if n % 250 == 0:
                self.reap()
            time.sleep(0.002)

    def reap(self) -> None:
        """Reap zombies of children re-parented to us (we are a subreaper); never a wrapper."""
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if ppid_of(pid) != me or proc_state(pid) != "Z" or pid in ProcTracker.popen_pids:
                continue
            if pid in self.starts:   # a lock child whose wrapper was kill -9'd
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def holder(self):
        """(contender, child START line) of a live child without END, newest first, or None."""
        with self.mon_lock:
            live = [ln for pid, ln in self.starts.items() if pid not in self.ends and alive(pid)
                    and not self.deaths.dead_at(pid)]
        for ln in sorted(live, key=lambda x: -x.t):
            for c in self.contenders:
                if c.tag == ln.tag and c.proc is not None and c.proc.poll() is None:
                    return c, ln
        return None

    def n_starts(self) -> int:
        with self.mon_lock:
            return len(self.starts)

    # -- faults
    def pick(self, first_round: list[str]) -> tuple[str, object]:
        h = self.holder()
        has_session = bool(self.agent.kv_session(KEY)) if not self.agent.stopped else False
        ok = set(KINDS)
        if not h:
            ok -= HOLDER_KINDS
        if not has_session:
            ok.discard("destroy")
        # Keep long faults inside the budget.
        left = self.deadline - time.monotonic()
        if left < TTL + 8:
            ok -= {"stop_long", "part_long"}
        for k in list(first_round):
            if k in ok:
                first_round.remove(k)
                return k, h
        if not ok:
            return "", h
        kinds = sorted(ok)
        return self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0], h

    def inject(self, kind: str, h) -> dict:
        rec = {"kind": kind, "t": mono(), "t_rel_s": round(time.monotonic() - self.t_start, 3)}
        if kind == "kill9":
            c, ln = h
            rec.update(tag=ln.tag, wrapper=c.proc.pid, child=ln.pid)
            signal_pid(c.proc.pid, signal.SIGKILL)
            signal_pid(ln.pid, signal.SIGKILL)
        elif kind in ("stop_short", "stop_long"):
            d = self.short_duration() if kind == "stop_short" else self.rng.uniform(TTL + 1, TTL + 4)
            rec["duration_s"] = round(d, 3)
            with self.agent_lock:
                self.agent.sigstop()
                try:
                    self.pace(d)
                finally:
                    self.agent.sigcont()
        elif kind in ("part_short", "part_long"):
            c, ln = h
            d = self.short_duration() if kind == "part_short" else self.rng.uniform(TTL + 1, TTL + 5)
            mode = self.rng.choice(["blackhole", "reset"])
            rec.update(tag=ln.tag, duration_s=round(d, 3), mode=mode)
            (c.proxy.blackhole if mode == "blackhole" else c.proxy.reset)()
            try:
                self.pace(d)
            finally:
                c.proxy.heal()
        elif kind == "destroy":
            sid = self.agent.kv_session(KEY)
            rec["session"] = sid
            rec["http"] = self.agent.destroy_session(sid) if sid else None
        elif kind == "delete":
            rec["http"] = self.agent.delete_key(KEY)
        elif kind == "restart":
            with self.agent_lock:
                t_kill = mono()
                self.agent.restart()
                self.restarts.append((t_kill, mono()))
        # Which critical section the fault hit (None: nobody held the lock).
        rec["holder"] = h[1].tag if h else None
        rec["t_end"] = mono()
        return rec

    def short_duration(self) -> float:
        """Shorter than the TTL: mostly brief blips, sometimes up to TTL - 3 s."""
        if self.rng.random() < 0.7:
            return self.rng.uniform(0.2, 2.0)
        return self.rng.uniform(2.0, TTL - 3)

    def pace(self, seconds: float) -> None:
        """The fault's own duration (the fault is *meant* to last this long); stops early at the end
        of the budget."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop_flag:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def injector(self) -> None:
        first = list(self.kinds)
        self.rng.shuffle(first)
        trials = 0
        while trials < self.args.trials and not self.over():
            # Let the system make progress: wait (bounded) for a new critical section, up to a random
            # gap; holder faults wait for a holder.
            before = self.n_starts()
            gap = self.rng.uniform(self.args.gap_min, self.args.gap_max)
            try:
                wait_until(lambda: self.over() or self.n_starts() > before, gap, 0.01, "progress")
            except TimeoutError:
                pass
            # With --holder-bias, most faults are aimed at a live critical section: after an unclean
            # break the next holder only starts after the takeover delay, so unpaced faults would
            # mostly land while nobody holds the lock.
            if self.rng.random() < self.args.holder_bias:
                try:
                    wait_until(lambda: self.over() or self.holder() is not None,
                               self.args.holder_wait, 0.01, "a holder")
                except TimeoutError:
                    pass
            if self.over():
                break
            kind, h = self.pick(first)
            if not kind:
                self.skipped += 1
                continue
            try:
                rec = self.inject(kind, h)
            except Exception as e:  # noqa: BLE001
                self.problem(f"fault {kind} failed to apply: {e!r}")
                continue
            trials += 1
            self.counts[kind] += 1
            if h:
                self.on_holder[kind] += 1
            self.faults.append(rec)
            if trials % 25 == 0 or self.args.short:
                log(f"trial {trials}: {kind} {({k: v for k, v in rec.items() if k not in ('t', 't_end')})}"
                    f" sections={self.n_starts()}")

    # -- run
    def run(self) -> None:
        a = self.args
        self.agent.start()
        log(f"agent on {self.agent.addr}; work dir {self.work}; budget {a.budget:.0f}s, "
            f"trials {a.trials}, contenders {a.contenders}")
        mon = threading.Thread(target=self.monitor, daemon=True, name="monitor")
        mon.start()
        self.contenders = [self.contender_cls(self, i) for i in range(a.contenders)]
        for c in self.contenders:
            c.thread.start()
        try:
            wait_until(lambda: self.n_starts() > 0, 60, 0.01, "the first critical section")
            self.injector()
        finally:
            self.shutdown()
            self.stop_flag = True
            mon.join(timeout=2)

    def shutdown(self) -> None:
        log("stopping: heal, SIGCONT, SIGTERM every contender")
        self.t_shutdown = mono()
        self.heal_all()
        self.final_exit: dict[str, int | None] = {}
        self.final_pids: dict[int, str] = {}
        for c in self.contenders:
            with c.lock:
                c.running = False
        for c in self.contenders:
            # A wrapper that already exited (a last kill -9 fault, no respawn yet) gets no SIGTERM:
            # its session and exit code are the fault's, not the shutdown's.
            live = c.wrapper_live()
            if live:
                self.final_pids[c.proc.pid] = c.tag
            rc = c.stop()
            if live:
                self.final_exit[c.tag] = rc
        for c in self.contenders:
            c.thread.join(timeout=30)
        # sessions check
        self.sessions_report = self.check_sessions()
        # children still running?
        self.lw.poll()
        time.sleep(0)  # let the monitor catch the last records
        wait_until(lambda: self._monitor_caught_up(), 5, 0.01, "log monitor")

    def heal_all(self) -> None:
        """Undo every fault before the final SIGTERMs (the agent must answer for the cleanup)."""
        for c in self.contenders:
            c.proxy.heal()
        self.agent.sigcont()
        if self.agent.proc is None or self.agent.proc.poll() is not None:
            self.agent.start()

    def _monitor_caught_up(self) -> bool:
        return self.lw.off >= os.path.getsize(self.logfile)

    def check_sessions(self) -> dict:
        rep = {"immediate_leaks": [], "remaining_after_wait": [], "waited_s": 0.0}
        try:
            sess = self.list_sessions()
        except Exception as e:  # noqa: BLE001
            self.problem(f"cannot list sessions: {e!r}")
            return rep
        # A wrapper that could not reach Consul for its whole destroy patience says so and leaves
        # the session to its TTL or check (docs/timing.md, "Consul trouble"); behind a partition
        # of its agent, the servers end it only after the heal. Such a session must still be gone
        # after the wait below; it is no leak of the wrapper's.
        said = b""
        for c in self.contenders:
            c.errf.flush()
            with open(c.errf.name, "rb") as f:
                said += f.read()
        rep["left_to_ttl"] = []
        for s in sess:
            m = re.search(r"pid (\d+)", s.get("Name", ""))
            if m and int(m.group(1)) in self.final_pids:
                tag = self.final_pids[int(m.group(1))]
                # A host the harness must SIGKILL (the library has no stop signal) cannot destroy
                # anything: its session ends with its TTL.
                killed = self.final_exit.get(tag) == -9 and -9 in self.final_ok_exits
                if killed or f"it expires with its TTL session={s['ID']}".encode() in said:
                    rep["left_to_ttl"].append(s["ID"])
                    continue
                rep["immediate_leaks"].append({"ID": s["ID"], "Name": s.get("Name"),
                                               "tag": self.final_pids[int(m.group(1))],
                                               "Node": s.get("Node"),
                                               "CreateIndex": s.get("CreateIndex")})
        t0 = time.monotonic()
        try:
            wait_until(lambda: not self.list_sessions(), 2 * self.ttl + 5, 0.1,
                       "sessions to expire")
        except TimeoutError:
            pass
        rep["waited_s"] = round(time.monotonic() - t0, 2)
        rep["remaining_after_wait"] = [{"ID": s["ID"], "Name": s.get("Name")}
                                       for s in self.list_sessions()]
        return rep

    def list_sessions(self) -> list[dict]:
        return self.agent.sessions()

    # -- checker
    def check(self) -> tuple[list[tuple[str, bool, str]], dict]:
        checks: list[tuple[str, bool, str]] = []
        lines = self.lw.lines
        starts = [ln for ln in lines if ln.kind == "START"]
        ivs, unended = checker.intervals(lines, self.deaths.dead_at, alive, mono)
        breaks = [f for f in self.faults if f["kind"] in BREAK_KINDS]
        lenient = not self.args.strict and self.args.takeover_delay == 0
        # Beside the child log, what `python3 -m chaos.checker WORKDIR` needs to re-check the run.
        checker.save_evidence(self.work, {
            "t0": self.t0_mono, "deaths": self.deaths.snapshot(),
            "breaks": [{"kind": f["kind"], "t": f["t"]} for f in breaks],
            "resets": [k for k, _ in self.restarts], "limit": self.limit,
            "lenient_within_ns": int(self.ttl * 1e9) if lenient else None})
        if self.limit > 1:
            hard, tolerated = checker.overlaps_n(ivs, self.t0_mono, self.limit), []
        else:
            hard, tolerated = checker.overlaps(ivs, self.t0_mono, breaks,
                                               int(self.ttl * 1e9) if lenient else None)
        checks.append(("no overlapping critical sections", not hard,
                       f"{len(ivs)} sections, {len(hard)} overlaps" +
                       (f", {len(tolerated)} after an external lock break (tolerated, see "
                        f"--strict)" if tolerated else "")))
        # fencing tokens
        bad_tok, missing = (checker.fencing(starts, [k for k, _ in self.restarts])
                            if self.limit <= 1 else ([], []))
        checks.append(("fencing tokens strictly increase across STARTs", not bad_tok and not missing,
                       f"{len(starts)} STARTs, {len(bad_tok)} non-increasing, {len(missing)} without "
                       f"a token" + (f" e.g. {bad_tok[:3]}" if bad_tok else "")))
        still = [s.tag for s in starts if alive(s.pid)]
        checks.append(("every child ended", not unended and not still,
                       f"{len(starts) - len(unended)} of {len(starts)} ended "
                       f"({sum(1 for i in ivs if i['how'] == 'death')} by observed death); "
                       f"still running: {still[:5]}"))
        # The saved run (child log + evidence.json) must give the same verdicts on its own.
        again = {name: ok for name, ok, _ in checker.recheck(self.work)}
        live = {"no overlapping critical sections": not hard,
                "fencing tokens strictly increase across STARTs": not bad_tok and not missing,
                "every child ended": not unended}
        differ = [name for name, ok in live.items() if again.get(name) != ok]
        checks.append(("the saved run re-checks the same (python3 -m chaos.checker)", not differ,
                       f"work dir {self.work}; differing: {differ}"))
        sr = self.sessions_report
        checks.append(("no session left after SIGTERM of every contender",
                       not sr["immediate_leaks"] and not sr["remaining_after_wait"],
                       f"{len(sr['immediate_leaks'])} sessions of SIGTERM'd wrappers left "
                       f"({len(sr.get('left_to_ttl', []))} more that a wrapper cut off from Consul "
                       f"left to their TTL), "
                       f"{len(sr['remaining_after_wait'])} left after waiting {sr['waited_s']}s"
                       + (f"; left: {sr['immediate_leaks'][:2]}" if sr["immediate_leaks"] else "")))
        # wrapper exits
        codes: dict[str, int] = {}
        for c in self.contenders:
            for tag, rc, _ in c.exits:
                codes[str(rc)] = codes.get(str(rc), 0) + 1
        odd = {k: v for k, v in codes.items() if k != "None" and int(k) not in self.expected_exit}
        panics = []
        for c in self.contenders:
            c.errf.flush()
            with open(c.errf.name, "rb") as f:
                for ln in f.read().decode(errors="replace").splitlines():
                    if "panicked at" in ln:
                        panics.append(f"contender {c.slot}: {ln.strip()[:200]}")
        # 143 (or 0: its command had just ended) is the answer to the final SIGTERM. 101 is right too
        # when the last faults had broken that wrapper's lock (while its command ran, or during
        # its takeover wait, when no child shows it as the holder): it was already on its way out
        # for the loss when the SIGTERM came. A loss shows within TTL + kill grace of a fault.
        recent = self.t_shutdown - int((self.ttl + self.kill_grace + 2) * 1e9)
        late_faults = any(f.get("t_end", 0) >= recent for f in self.faults)
        final_bad = {t: rc for t, rc in self.final_exit.items()
                     if rc is None or (rc not in (143, 0) and rc not in self.final_ok_exits
                                       and not (rc == 101 and late_faults))}
        checks.append(("wrappers: no panic, hang or unexpected exit code",
                       not odd and not panics and not self.problems and not final_bad,
                       f"exit codes {codes}; unexpected {odd}; panics {len(panics)}; "
                       f"problems {len(self.problems)}; final SIGTERM exits {self.final_exit}"))
        trials = sum(self.counts.values())
        # Every kind must have been injected. The short run needs 4 of the 8: kill -9 and the
        # partitions need a holder whose command runs, and in 70 s of faults a takeover delay of a
        # whole TTL after each external break leaves few such moments (the full run needs all 8).
        kinds_needed = min(4, trials) if self.args.short else len(self.kinds)
        kinds_seen = sum(1 for k in self.kinds if self.counts[k] > 0)
        checks.append(("fault trials ran", trials >= min(self.args.trials, self.args.min_trials) and
                       kinds_seen >= kinds_needed if not self.args.allow_partial else
                       trials > 0,
                       f"{trials} trials (asked {self.args.trials}, at least "
                       f"{min(self.args.trials, self.args.min_trials)}), {self.skipped} skipped picks; "
                       f"by kind {self.counts}"))
        checks.append(("progress: critical sections completed", len(ivs) > 0, f"{len(ivs)} sections"))
        # Liveness: the longest stretch with no critical section running, counted from the end of
        # the last fault inside it (a storm of faults can keep every new holder from starting, which
        # is exclusion working, not a missed lock). A kill -9'd holder keeps the lock up to 2×TTL,
        # plus the takeover delay, so a quiet gap above --max-gap means waiting contenders missed
        # a free lock.
        fault_ends = sorted(f["t"] + int(f.get("duration_s", 0) * 1e9) for f in self.faults
                            if "t" in f)
        gaps = checker.quiet_gaps(ivs, fault_ends)
        long_gaps = [{"gap_s": round(g / 1e9, 1), "from_rel_s": round((t - self.t0_mono) / 1e9, 1),
                      "next": tag} for g, t, tag in gaps if g > self.args.max_gap * 1e9]
        longest = round(gaps[0][0] / 1e9, 1) if gaps else 0.0
        checks.append((f"liveness: no fault-free stretch > {self.args.max_gap:.0f}s without a holder",
                       not long_gaps, f"longest {longest}s; {len(long_gaps)} longer than "
                       f"{self.args.max_gap:.0f}s {long_gaps[:5]}; starved standbys "
                       f"{len(self.starved)}"))
        detail = {"overlaps": hard, "tolerated_overlaps": tolerated, "fencing_violations": bad_tok,
                  "unended": unended, "still_running": still, "sessions": sr, "exit_codes": codes,
                  "panics": panics, "problems": self.problems, "sections": len(ivs),
                  "final_exit": self.final_exit, "starved_standbys": self.starved}
        return checks, detail

    def close(self) -> None:
        self.stop_flag = True
        for c in self.contenders:
            c.running = False
            c.proxy.close()
        self.agent.sigcont()
        self.tracker.kill_all()
        try:
            self.agent.stop()
        except Exception:  # noqa: BLE001
            pass
        self.tracker.kill_all()
        self.deaths.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockwrap", default=os.path.join(ROOT, "target", "release", "lockwrap"))
    ap.add_argument("--contenders", type=int, default=3)
    ap.add_argument("--trials", type=int, default=1000, help="fault trials to inject (upper bound)")
    ap.add_argument("--budget", type=float, default=3600.0,
                    help="time budget in seconds for the fault phase (the run stops at whichever of "
                         "--trials / --budget comes first)")
    ap.add_argument("--min-trials", type=int, default=1000,
                    help="fail unless at least min(--trials, this) trials ran")
    ap.add_argument("--allow-partial", action="store_true",
                    help="do not fail when the budget ran out before --min-trials")
    ap.add_argument("--short", action="store_true", help="≈2 minute run for `make test`")
    ap.add_argument("--strict", action="store_true",
                    help="with --takeover-delay 0: also fail on overlaps that follow an external "
                         "lock break (always on when the takeover delay is > 0)")
    ap.add_argument("--takeover-delay", type=float, default=TTL,
                    help="lockwrap --takeover-delay in seconds for every contender (default the "
                         "TTL, which guarantees exclusion after state loss: the old holder's "
                         "command is dead by its last renew + TTL; 0 = no guard, overlaps after "
                         "external breaks are tolerated)")
    ap.add_argument("--holder-bias", type=float, default=0.0,
                    help="probability (0…1) that a trial first waits for a live holder, so that "
                         "faults hit running critical sections rather than the takeover wait")
    ap.add_argument("--holder-wait", type=float, default=2 * TTL + TTL + 10,
                    help="bound in seconds of that wait (default 2×TTL + takeover delay + 10 s)")
    ap.add_argument("--hold-min", type=float, default=0.2)
    ap.add_argument("--hold-max", type=float, default=2.0)
    ap.add_argument("--gap-min", type=float, default=0.1)
    ap.add_argument("--gap-max", type=float, default=1.5)
    ap.add_argument("--wrapper-timeout", type=float, default=120.0)
    ap.add_argument("--max-gap", type=float, default=60.0,
                    help="fail if no critical section ran for longer than this (seconds)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--report", default="", help="write a JSON report here")
    a = ap.parse_args()
    if a.short:
        a.trials, a.budget, a.min_trials = min(a.trials, 40), min(a.budget, 70.0), 8
        a.allow_partial = False
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    try:
        subprocess.run([a.lockwrap, "run", "--help"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        print(f"chaos: {a.lockwrap} is missing or `run --help` fails (cargo build --release)")
        return summary(0, 1)
    become_subreaper()
    # The revision the run started from (the binary is normally built from it).
    source = source_revision()
    log(f"seed {a.seed} (re-run with --seed {a.seed})")
    ch = Chaos(a)
    ch.t0_mono = mono()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    checks: list[tuple[str, bool, str]] = []
    detail: dict = {}
    try:
        ch.run()
        checks, detail = ch.check()
    except KeyboardInterrupt:
        checks = [("run completed", False, "interrupted")]
    except Exception as e:  # noqa: BLE001
        checks = [("run completed", False, repr(e))]
    finally:
        ch.close()
    trials = sum(ch.counts.values())
    print(f"\nchaos: {trials} fault trials in {time.monotonic() - ch.t_start:.0f}s, "
          f"{detail.get('sections', 0)} critical sections, {a.contenders} contenders, seed {a.seed}")
    print("faults: " + ", ".join(f"{k}={v}" for k, v in ch.counts.items()))
    print("  of which with a live holder: " + ", ".join(f"{k}={v}" for k, v in ch.on_holder.items())
          + f" (total {sum(ch.on_holder.values())})")
    print(f"standbys that got no lock within {a.wrapper_timeout:.0f}s (starved, restarted): "
          f"{len(ch.starved)}")
    for name, ok, info in checks:
        print(check_line(ok, name, info))
    for ov in detail.get("overlaps", [])[:10]:
        print(f"    overlap: {ov}")
    for ov in detail.get("tolerated_overlaps", [])[:5]:
        print(f"    tolerated overlap after external break: {ov}")
    for p in detail.get("problems", [])[:10]:
        print(f"    problem: {p}")
    if a.report:
        os.makedirs(os.path.dirname(os.path.abspath(a.report)), exist_ok=True)
        with open(a.report, "w") as f:
            json.dump({"machine": machine_info(), "lockwrap_source": source, "args": vars(a), "counts": ch.counts,
                       "counts_with_live_holder": ch.on_holder,
                       "trials": trials, "checks": [{"name": n, "ok": o, "info": i}
                                                    for n, o, i in checks],
                       "detail": detail, "faults": [{k: v for k, v in r.items()
                                                     if k not in ("t", "t_end")} for r in ch.faults]},
                      f, indent=1, default=str)
    print(f"logs: {ch.work}")
    return Tally().checks(checks).close()


if __name__ == "__main__":
    sys.exit(main())
