#!/usr/bin/env python3
"""Deterministic cluster scenarios (docs/performance.md, "On a real cluster"), run by
`make cluster-test` (part of `make test`).

On a real cluster (kit/cluster.py: 3 servers, 3 client agents, iptables partitions) each
scenario runs one `lockwrap run` contender per client agent on its own key, the holder first, and
checks from the children's START/END log that no two commands overlapped:

  a  holder's client agent partitioned from every other agent for 40 s, lockwrap defaults
                                                    -> zero overlap; one more contender started
                                                    on that agent during the partition waits
                                                    (no exit 8)
  b  same, `--lock-delay 0`                         -> refused at start (exit 3) OR zero overlap
  b2 same, `--lock-delay 0 --session-checks serfHealth` (the table's row with the old default
     checks)                                        -> refused at start OR zero overlap
  c  holder's HTTP link to its agent cut for 30 s, `--health-check-ttl 2s --lock-delay 0`
                                                    -> refused at start OR zero overlap
  d  the fast-failover setting (kit/settings.py) under the same node partition and the
     same HTTP cut -> zero overlap; then crash failover: kill -9 of the holder lockwrap + child,
     measured from the kill to the next START (3 times), printed
  u  `--unsafe-allow-overlap --lock-delay 0 --session-checks serfHealth`: starts, with a warning
     (nothing asserted about overlap)

Both partitions run their scenarios side by side (one key each, all holders on the partitioned
node / cut uids), so the suite takes ~3 minutes. Fencing tokens must increase, every child must
end, exit codes must be 0/101/143 (3 for a refusal). Skips (exit 0, "SKIP: why") only when
iptables or setpriv cannot work (not root).

    python3 -m tests.cluster.scenarios [--lockwrap PATH] [--partition 40] [--cut 30] [--crashes 3]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from kit import checker
from kit import cluster as C
from kit import settings as S
from kit.logs import LogWatcher
from kit.procs import ROOT, DeathWatcher, alive, become_subreaper, log, mono, wait_until
from kit.runner import Tally, check_line, summary
from tests.cluster import paths as P

# Every scenario of `make cluster-test`, by name (`--only NAME[,NAME…]` runs just those):
# the table (partition, cut, crash, unsafe phases) and one per path of tests/cluster/paths.py.
TABLE_PHASES = ["partition", "cut", "crash", "unsafe"]
SCENARIOS = TABLE_PHASES + P.PATHS

OK_EXIT = {0, 101, 143, -15}


class Group:
    """One scenario: one key, one setting, one contender per chosen client agent."""

    def __init__(self, suite: "Suite", name: str, args: list[str], holder_agent, standby_agents):
        self.s = suite
        self.name = name
        self.args = args
        self.key = f"cluster-test/{name}"
        self.logfile = C.make_logfile(suite.cl, f"{name}.log")
        self.lw = LogWatcher(self.logfile)
        self.holder_agent = holder_agent
        self.standby_agents = standby_agents
        self.contenders: list[C.Contender] = []
        self.exits: dict[str, int | None] = {}
        self.refused = None          # stderr of a refusal at start
        self.killed: set[str] = set()  # tags we kill -9'd (exit -9 expected)
        self.late_agent = None         # start one more contender here once the fault is on
        self.result: dict = {"scenario": name, "args": " ".join(args) or "(defaults)"}

    def spawn(self, agent, n: int) -> C.Contender:
        # kit/programs/cluster_child.py: holds until stopped, then keeps running 80 % of its kill
        # grace
        c = C.Contender(self.s.cl, agent, self.s.a.lockwrap, self.key, self.args, self.logfile,
                        f"{self.name}-{n}", cmd="run",
                        child_args=["3600", "3600", str(S.stop_time(self.args))])
        self.contenders.append(c)
        return c.start()

    def starts(self):
        return [ln for ln in self.lw.lines if ln.kind == "START"]

    def start_holder(self, timeout: float = 60.0) -> bool:
        """Start the holder; False when it was refused at start (exit 3 / 2)."""
        c = self.spawn(self.holder_agent, 0)

        def started():
            if c.poll() is not None:
                return True
            return any(ln.tag == c.tag for ln in self.starts())
        wait_until(started, timeout, 0.01, f"{self.name}: holder START")
        if c.poll() is not None and not any(ln.tag == c.tag for ln in self.starts()):
            rc = c.poll()
            self.exits[c.tag] = rc
            if rc in (S.EXIT_REFUSED, 2):
                self.refused = c.stderr().strip()
                return False
            raise RuntimeError(f"{self.name}: holder exited {rc} before START: {c.stderr()[-400:]}")
        return True

    def start_standbys(self) -> None:
        for i, ag in enumerate(self.standby_agents, 1):
            self.spawn(ag, i)

    def holder_child(self):
        """START line of the running holder's child (newest START without END)."""
        ended = {ln.pid for ln in self.lw.lines if ln.kind == "END"}
        live = [ln for ln in self.starts() if ln.pid not in ended and alive(ln.pid)]
        return max(live, key=lambda ln: ln.t) if live else None

    def settled(self, t_fault: int) -> bool:
        """A START after the fault and every earlier child ended (nothing more can overlap)."""
        ended = {ln.pid for ln in self.lw.lines if ln.kind == "END"}
        st = self.starts()
        if not st or st[-1].t < t_fault:
            return False
        return all(ln.pid in ended or self.s.deaths.dead_at(ln.pid) or not alive(ln.pid)
                   for ln in st[:-1])

    def stop_all(self) -> None:
        for c in self.contenders:
            if c.tag not in self.exits:
                self.exits[c.tag] = c.terminate(timeout=S.KILL_GRACE["default"] + 15)

    def check(self, t_fault: int | None, fault: str) -> bool:
        self.lw.poll()
        r = self.result
        if self.refused is not None:
            # One line naming what to change (e.g. "use --lock-delay 2s or more, …").
            lines = [ln for ln in self.refused.splitlines() if ln.strip()]
            line = lines[-1] if lines else ""
            r.update(verdict="refused at start", message=line[:300])
            return len(lines) == 1 and "--" in line
        ivs, unended = checker.intervals(self.lw.lines, self.s.deaths.dead_at, alive, mono)
        hard, _ = checker.overlaps(ivs, self.s.t0)
        starts = self.starts()
        bad_tok, missing = checker.fencing(starts)
        still = [ln.tag for ln in starts if alive(ln.pid)]
        odd = {t: rc for t, rc in self.exits.items()
               if rc not in OK_EXIT and not (t in self.killed and rc == -9)}
        r.update(fault=fault, sections=len(ivs), overlaps=len(hard),
                 overlap_max_ms=max((o["overlap_ms"] for o in hard), default=0.0),
                 fencing_violations=bad_tok + [f"no token: {m}" for m in missing],
                 unended=unended + still, exit_codes=self.exits, odd_exits=odd)
        if t_fault is not None:
            first = [ln for ln in starts if ln.t > t_fault]
            if first:
                r["failover_s"] = round((first[0].t - t_fault) / 1e9, 2)
            old = [iv for iv in ivs if iv["start"] < t_fault]
            if old:
                r["old_holder_stopped_s"] = round((old[-1]["end"] - t_fault) / 1e9, 2)
        ok = not hard and not bad_tok and not missing and not unended and not still and not odd
        r["verdict"] = "zero overlap" if not hard else f"OVERLAP x{len(hard)}"
        if not ok:
            r["detail"] = {"overlaps": hard[:3], "errs": {c.tag: c.stderr()[-300:]
                                                          for c in self.contenders}}
        return ok


class Suite:
    def __init__(self, a):
        self.a = a
        self.cl = C.Cluster()
        self.deaths = DeathWatcher()
        self.groups: list[Group] = []
        self.results: list[dict] = []
        self.tally = Tally()       # one outcome per recorded group, harness error or skip
        self.t0 = mono()
        self.stop_flag = False
        self.mon = threading.Thread(target=self.monitor, daemon=True, name="monitor")

    def monitor(self) -> None:
        """Tail every group's log; watch each child's death from its START on."""
        while not self.stop_flag:
            for g in list(self.groups):
                for ln in g.lw.poll():
                    if ln.kind == "START":
                        self.deaths.watch(ln.pid)
            time.sleep(0.003)

    def group(self, name, args, holder_agent, standby_agents) -> Group:
        g = Group(self, name, args, holder_agent, standby_agents)
        self.groups.append(g)
        return g

    def record(self, g: Group, ok: bool) -> None:
        self.results.append(g.result)
        log(f"{g.name}: {'ok' if ok else 'FAIL'} {json.dumps(g.result, default=str)[:600]}")
        self.tally.record(g.name, ok)

    def fault_phase(self, groups: list[Group], fault: str, apply, seconds: float) -> None:
        """Start holders (refusals end a group here), then standbys, apply the fault for
        `seconds`, heal, settle, stop every contender, check each group."""
        live = [g for g in groups if g.start_holder()]
        for g in groups:
            if g.refused is not None:
                log(f"{g.name}: refused at start: {g.refused.splitlines()[-1] if g.refused else ''}")
        for g in live:
            g.start_standbys()
        time.sleep(3)   # standbys create their sessions and wait on the lock
        for g in live:
            if g.holder_child() is None or g.holder_child().tag != f"{g.name}-0":
                raise RuntimeError(f"{g.name}: the first contender is not the holder before the fault")
        t_fault = mono()
        log(f"{fault} for {seconds:.0f}s: {[g.name for g in live]}")
        apply()
        # A contender started on the cut-off agent must wait for it (not exit 8: README, "Exit codes").
        for g in live:
            if g.late_agent is not None:
                g.spawn(g.late_agent, len(g.contenders))
        try:
            C.pace(seconds)
        finally:
            self.cl.heal(rejoin=True)
        log(f"healed after {(mono() - t_fault) / 1e9:.1f}s; settling")
        try:
            self.cl.wait_ready(60)
        except TimeoutError as e:
            log(f"cluster not ready after heal: {e}")
        t_heal = time.monotonic()
        try:
            wait_until(lambda: all(g.settled(t_fault) for g in live), 25, 0.05, "settle")
        except TimeoutError:
            pass
        log(f"settled {time.monotonic() - t_heal:.1f}s after heal; stopping contenders")
        for g in groups:
            g.stop_all()
        time.sleep(0.1)
        for g in groups:
            self.record(g, g.check(t_fault, fault))

    def crash_phase(self, n: int) -> None:
        """Fast setting: kill -9 the holder (wrapper + child) n times; kill -> next START."""
        g = self.group("d-crash", S.setting("fast", self.a.lockwrap), self.cl.clients[0],
                       self.cl.clients[1:])
        if not g.start_holder():
            self.tally.record("d-crash: fast setting refused at start", False)
            return
        g.start_standbys()
        time.sleep(3)
        times = []
        spare = len(g.contenders)
        for i in range(n):
            h = g.holder_child()
            owner = next((c for c in g.contenders if c.tag == h.tag), None) if h else None
            if owner is None:
                raise RuntimeError("d-crash: no holder to kill")
            t_kill = mono()
            g.killed.add(owner.tag)
            owner.kill9(h.pid)
            wait_until(lambda: any(ln.t > t_kill for ln in g.starts()), 60, 0.005,
                       "the next START after kill -9")
            nxt = next(ln for ln in g.starts() if ln.t > t_kill)
            times.append((nxt.t - t_kill) / 1e9)
            g.exits[owner.tag] = owner.proc.wait(timeout=10)
            log(f"crash {i + 1}: kill -9 {h.tag} -> START {nxt.tag} after {times[-1]:.2f}s")
            g.spawn(owner.agent, spare)   # keep three contenders
            spare += 1
            time.sleep(1.0)
        g.stop_all()
        ok = g.check(None, "kill -9 holder")
        g.result["crash_failover_s"] = [round(t, 2) for t in times]
        g.result["crash_failover"] = checker.summary(times)
        self.record(g, ok)

    def unsafe_probe(self) -> None:
        g = self.group("u-unsafe", S.TABLE["unsafe"]["args"], self.cl.clients[0], [])
        started = g.start_holder(30)
        err = g.contenders[0].stderr()
        warned = "unsafe" in err.lower() or "warn" in err.lower()
        g.stop_all()
        g.result.update(verdict="started with a warning" if started and warned else
                        f"started={started} warned={warned}", message=err.strip()[-300:])
        self.record(g, started and warned)

    def run(self) -> None:
        self.cl.start()
        self.mon.start()
        only = self.a.only or SCENARIOS
        for name in SCENARIOS:
            if name not in only:
                continue
            t0 = time.monotonic()
            try:
                if name in TABLE_PHASES:
                    getattr(self, "phase_" + name)()
                else:
                    P.run_path(self, name)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one scenario's harness error fails it, not all
                log(f"{name}: harness error: {e!r}")
                self.results.append({"scenario": name, "verdict": f"ERROR {e!r}"[:300]})
                self.tally.record(name, False)
                try:
                    self.cl.heal()
                    self.cl.wait_ready(60)
                except Exception as e2:  # noqa: BLE001
                    log(f"cluster not ready after {name}: {e2!r}")
            log(f"scenario {name} took {time.monotonic() - t0:.0f}s")

    def phase_crash(self) -> None:
        self.crash_phase(self.a.crashes)

    def phase_unsafe(self) -> None:
        self.unsafe_probe()

    def phase_partition(self) -> None:
        cl, a = self.cl, self.a
        c1, c2, c3 = cl.clients
        fast = S.setting("fast", a.lockwrap)
        # Node partition: every holder on c1, standbys on c2 and c3.
        part = [self.group("a-defaults", S.TABLE["a_defaults"]["args"], c1, [c2, c3]),
                self.group("b-lock-delay-0", S.TABLE["b_lock_delay_0"]["args"], c1, [c2, c3]),
                self.group("b2-lock-delay-0-serf", S.TABLE["b2_lock_delay_0_serf"]["args"], c1,
                           [c2, c3]),
                self.group("d-fast-partition", fast, c1, [c2, c3])]
        part[0].late_agent = c1
        self.fault_phase(part, "node partition of the holder's agent",
                         lambda: cl.partition_node(c1), a.partition)

    def phase_cut(self) -> None:
        cl, a = self.cl, self.a
        c1, c2, c3 = cl.clients
        fast = S.setting("fast", a.lockwrap)
        # HTTP cut: holders on c2 (their uids cut), standbys on c3 and c1.
        cut = [self.group("c-hc-ttl-2s-lock-delay-0", S.TABLE["c_hc_ttl_2s_lock_delay_0"]["args"],
                          c2, [c3, c1]),
               self.group("d-fast-http-cut", fast, c2, [c3, c1])]
        self.fault_phase(cut, "HTTP cut lockwrap->agent",
                         lambda: [cl.cut_contender(g.contenders[0].uid, "drop") for g in cut
                                  if g.contenders and g.refused is None], a.cut)

    def close(self) -> None:
        self.stop_flag = True
        for g in self.groups:
            for c in g.contenders:
                if c.proc is not None and c.proc.poll() is None:
                    c.kill9()
        self.cl.stop()
        self.deaths.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockwrap", default=os.environ.get("LOCKWRAP_BIN") or
                    os.path.join(ROOT, "target", "release", "lockwrap"))
    ap.add_argument("--partition", type=float, default=40.0, help="node partition, seconds")
    ap.add_argument("--cut", type=float, default=30.0, help="HTTP cut, seconds")
    ap.add_argument("--crashes", type=int, default=3, help="kill -9 failovers to measure")
    ap.add_argument("--report", default="", help="write the results as JSON here")
    ap.add_argument("--only", default="", help="comma-separated scenario names (--list shows them)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(SCENARIOS))
        return 0
    a.only = [x for x in a.only.split(",") if x]
    unknown = [x for x in a.only if x not in SCENARIOS]
    if unknown:
        print(f"cluster-test: unknown scenario(s) {unknown}; known: {SCENARIOS}")
        return 2
    why = C.ensure_tools()
    if why:
        print(f"cluster-test: SKIP: {why}")
        return 0
    if not os.access(a.lockwrap, os.X_OK):
        print(f"cluster-test: {a.lockwrap} is missing (cargo build --release)")
        return summary(0, 1)
    become_subreaper()
    C.install_signal_handlers()
    log(f"lockwrap {a.lockwrap}")
    suite = Suite(a)
    t0 = time.monotonic()
    err = None
    try:
        suite.run()
    except KeyboardInterrupt:
        err = "interrupted"
    except Exception as e:  # noqa: BLE001
        err = repr(e)
    finally:
        suite.close()
        C.run_cleanups()
    print(f"\ncluster scenarios ({time.monotonic() - t0:.0f}s):")
    for r in suite.results:
        extra = ""
        if "failover_s" in r:
            extra += f" failover {r['failover_s']}s"
        if "old_holder_stopped_s" in r:
            extra += f", old command stopped {r['old_holder_stopped_s']}s after the fault"
        if "crash_failover" in r:
            extra += f" crash failover {r['crash_failover_s']} s"
        if r.get("overlaps"):
            extra += f" max {r['overlap_max_ms']:.0f} ms"
        if "next_start_s" in r:
            extra += f" next START {r['next_start_s']}s after the fault"
        print(f"  {r['scenario']:<26} {r.get('args', '')[:70]:<70} {r.get('verdict')}{extra}")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(suite.results, f, indent=1, default=str)
    if err:
        print(check_line(False, "run", err))
        suite.tally.record("run", False)
    return suite.tally.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
