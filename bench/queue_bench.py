#!/usr/bin/env python3
"""Fair queue benchmark (docs/performance.md). Standard library only; loopback only.

For N waiting contenders (default 1, 10, 50, 200) it measures, side by side on ONE Consul dev agent
and in the same run:

  * lockwrap run            (waiters race on each release; 0-30 ms spread once they have lost)
  * lockwrap run --queue    (fair queue: each waiter watches only the entry ahead of it)
  * consul lock             (HashiCorp's; at most N = 50: ~45 MB per waiting process)

and per configuration:

  * handoff latency: the holder's child writes EXIT (CLOCK_MONOTONIC) -> the next child's START;
  * Raft writes per handoff: /v1/agent/self Stats.raft.commit_index before / after each handoff;
  * HTTP requests per handoff: every contender talks to Consul through a counting loopback Proxy
    (the first holder through its own, all waiters through a shared one); raw count between the
    release and the settled state, and net of the idle background measured in the steady window;
  * steady requests per minute per waiting contender while nobody releases (--window seconds).

N stays constant during every measured handoff: before each handoff exactly N contenders wait
(the one that will get the lock included); after the handoff a new waiter is added (and has
settled in its long poll) before the next release. Every child is `kit/programs/child.py wait`,
released by the harness with SIGUSR1, so the holder's child ends when the harness says so.

FIFO: a separate series with --queue: 50 waiters (children hold 50 ms) started one by one, each
only after its queue entry exists; every waiter that finishes is replaced by a new one (re-queue at
the back) until --fifo-handoffs handoffs have happened; the order of the START records must equal
the order in which the entries were created (violations must be 0), and START/END must not overlap.

  python3 -m bench.queue_bench                       # full run, writes bench/results/queue.{json,md}
  python3 -m bench.queue_bench --quick --out ''      # N = 1, 10; short window; nothing written
  python3 -m bench.queue_bench --ns 1,10 --handoffs 10 --window 20
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

from kit.agent import ConsulAgent
from kit.logs import LogWatcher, child_argv, shell_quote
from kit.procs import (ROOT, ProcTracker, alive, check_lockwrap, find_consul, loadavg, log,
                       machine_info, median, mono, run_interruptibly, signal_pid, source_revision,
                       wait_until)
from kit.proxy import Proxy

CONSUL_LOCK_MAX_N = 50


class QueueAgent(ConsulAgent):
    """The harness's dev agent, allowing more than Consul's default 200 HTTP connections per client
    address: every contender reaches it from 127.0.0.1 (through the proxies)."""

    def argv(self) -> list[str]:
        return super().argv() + ["-hcl", "limits { http_max_conns_per_client = 5000 }"]


# --------------------------------------------------------------------------------------------
# The three configurations


class Config:
    def __init__(self, short: str, label: str, binary: str, queue: bool = False):
        self.short, self.label, self.bin, self.queue = short, label, binary, queue

    @property
    def is_consul(self) -> bool:
        return self.short == "consul"

    def argv(self, key: str, addr: str, child: list[str]) -> list[str]:
        if self.is_consul:
            # consul lock runs its child through `sh -c`; `exec` keeps the child's PID.
            return [self.bin, "lock", f"-http-addr={addr}", key, shell_quote(["exec", *child])]
        opts = ["--kill-grace", "1s"] + (["--queue"] if self.queue else [])
        return [self.bin, "run", "--key", key, "--consul-addr", addr, *opts, "--", *child]


def blocking_in_flight(px: Proxy) -> int:
    return sum(1 for e in px.in_flight() if e.is_blocking())


def other_in_flight(px: Proxy) -> int:
    return sum(1 for e in px.in_flight() if not e.is_blocking())


class Group:
    """One configuration at one N: a first holder (own proxy) and the waiters (shared proxy)."""

    def __init__(self, qb: "QueueBench", cfg: Config, n: int):
        self.qb, self.cfg, self.n = qb, cfg, n
        self.key = f"bench/queue/{cfg.short}/n{n}/{qb.seq}"
        qb.seq += 1
        self.hp = Proxy(qb.agent.http_port, f"hp-{cfg.short}-{n}")
        self.wp = Proxy(qb.agent.http_port, f"wp-{cfg.short}-{n}")
        qb.proxies += [self.hp, self.wp]
        self.procs: dict[str, subprocess.Popen] = {}
        self.waiting: list[str] = []        # tags in spawn (= arrival) order
        self.holder: str | None = None      # tag whose child runs now
        self.holder_blocking = 0            # long polls the holder keeps in flight
        self.holder_on_wp = False           # the first holder uses hp, later ones wp
        self.res: dict = {"config": cfg.short, "label": cfg.label, "n": n, "key": self.key}

    def tag(self) -> str:
        self.qb.seq += 1
        return f"q{self.cfg.short[:2]}{self.n}x{self.qb.seq}"

    def spawn(self, tag: str, px: Proxy) -> subprocess.Popen:
        child = child_argv("wait", self.qb.logfile, tag)
        err = open(os.path.join(self.qb.work, f"{tag}.err"), "wb")
        p = self.qb.tracker.spawn(self.cfg.argv(self.key, px.addr, child),
                                  stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        self.procs[tag] = p
        return p

    def start_holder(self) -> None:
        tag = self.tag()
        p = self.spawn(tag, self.hp)
        self.qb.start_of(tag, 30, p)
        self.holder = tag
        # Let the holder reach its steady state (session renew loop, monitoring long poll).
        time.sleep(0.3)
        self.holder_blocking = blocking_in_flight(self.hp)

    def add_waiter(self, timeout: float = 30.0) -> str:
        """Spawn one waiter and wait until it sits in its long poll (one more blocking query in
        flight on the waiters' proxy, nothing else in flight) - for --queue that is after its entry
        was written, so arrival order = spawn order."""
        before = blocking_in_flight(self.wp)
        tag = self.tag()
        p = self.spawn(tag, self.wp)

        def settled():
            if p.poll() is not None:
                raise RuntimeError(f"waiter {tag} exited with {p.returncode} "
                                   f"(stderr: {self.qb.work}/{tag}.err)")
            return blocking_in_flight(self.wp) >= before + 1 and other_in_flight(self.wp) == 0
        wait_until(settled, timeout, 0.002, f"waiter {tag} in its long poll")
        self.waiting.append(tag)
        return tag

    def settle_after_handoff(self, old_proc: subprocess.Popen | None, timeout: float = 15.0) -> bool:
        """After a handoff: the old holder's wrapper has exited, every remaining waiter and the new
        holder are back in their long polls and nothing else is in flight, twice 100 ms apart."""
        expect = len(self.waiting) + (self.holder_blocking if self.holder_on_wp else 0)

        def ok():
            if old_proc is not None and old_proc.poll() is None:
                return False
            return (blocking_in_flight(self.wp) >= expect and other_in_flight(self.wp) == 0
                    and other_in_flight(self.hp) == 0)

        def check():
            if not ok():
                return False
            time.sleep(0.1)
            return ok()
        try:
            wait_until(check, timeout, 0.005, "settled after a handoff")
            return True
        except TimeoutError:
            log(f"{self.cfg.label} N={self.n}: not settled after {timeout}s "
                f"(blocking {blocking_in_flight(self.wp)}/{expect}); measuring anyway")
            return False

    def exchanges(self) -> int:
        return len(self.hp.snapshot()) + len(self.wp.snapshot())

    def requests_between(self, t0: int, t1: int) -> int:
        return sum(1 for px in (self.hp, self.wp) for e in px.snapshot() if t0 <= e.t_req <= t1)

    # -- phases
    def setup(self) -> None:
        t = time.monotonic()
        self.start_holder()
        for _ in range(self.n):
            self.add_waiter()
        self.res["setup_s"] = round(time.monotonic() - t, 2)
        self.res["holder_long_polls"] = self.holder_blocking
        log(f"{self.cfg.label} N={self.n}: holder + {self.n} waiters ready in "
            f"{self.res['setup_s']}s")

    def steady_begin(self) -> None:
        self.t_steady = mono()

    def steady_end(self, t_end: int) -> None:
        window_s = (t_end - self.t_steady) / 1e9
        ex = [e for e in self.wp.snapshot() if self.t_steady <= e.t_req <= t_end]
        kinds: dict[str, int] = {}
        for e in ex:
            parts = e.path.split("/")
            k = f"{e.method} /{'/'.join(parts[1:4])}"
            kinds[k] = kinds.get(k, 0) + 1
        waiters = len(self.waiting)
        self.res["steady"] = {
            "window_s": round(window_s, 2), "waiters": waiters, "requests": len(ex),
            "per_waiter_per_min": round(len(ex) / waiters * 60.0 / window_s, 3) if waiters else None,
            "by_kind": kinds,
            "holder_requests": sum(1 for e in self.hp.snapshot() if self.t_steady <= e.t_req <= t_end)}
        self.bg_rate = len(ex) / window_s if window_s > 0 else 0.0  # waiter requests per second

    def handoffs(self, k: int) -> None:
        lat, writes, raw, net, fifo_bad, unsettled = [], [], [], [], 0, 0
        qb = self.qb
        for j in range(k):
            while len(self.waiting) < self.n:
                self.add_waiter()
            old = self.holder
            old_proc = self.procs[old]
            self.settle_after_handoff(None)
            ci0 = qb.commit_index()
            sa = qb.lw.find(lambda x, t=old: x.kind == "START" and x.tag == t)
            t_rel = mono()
            signal_pid(sa.pid, signal.SIGUSR1)
            ex = qb.line("EXIT", old, 10)
            waiting = set(self.waiting)

            def next_start():
                qb.lw.poll()
                for ln in qb.lw.lines[qb.scan_from:]:
                    if ln.kind == "START" and ln.tag in waiting:
                        return ln
                return None
            st = wait_until(next_start, 60, 0.0005, f"next START after {old}")
            self.holder = st.tag
            self.holder_on_wp = True
            first = self.waiting[0]
            self.waiting.remove(st.tag)
            if not self.settle_after_handoff(old_proc):
                unsettled += 1
            t_done = mono()
            ci1 = qb.commit_index()
            try:
                old_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            qb.tracker.forget(old_proc)
            n_req = self.requests_between(t_rel, t_done)
            if j == k - 1:
                # The last measured handoff's requests, ms after the release (for the docs).
                self.res["last_handoff_timeline"] = sorted(
                    [round((e.t_req - t_rel) / 1e6, 2), src, e.method, e.target[:120], e.status]
                    for src, px in (("holder0", self.hp), ("waiters", self.wp))
                    for e in px.snapshot() if t_rel <= e.t_req <= t_done) + [
                    [round((ex.t - t_rel) / 1e6, 2), "child", "EXIT", old, None],
                    [round((st.t - t_rel) / 1e6, 2), "child", "START", st.tag, None]]
            lat.append((st.t - ex.t) / 1e6)
            writes.append(ci1 - ci0)
            raw.append(n_req)
            net.append(n_req - getattr(self, "bg_rate", 0.0) * (t_done - t_rel) / 1e9)
            if st.tag != first:
                fifo_bad += 1
        self.res["handoffs"] = {
            "count": k, "waiting_at_each": self.n,
            "latency_ms": lat, "raft_writes": writes, "requests_raw": raw,
            "requests_net_of_background": [round(x, 2) for x in net],
            "not_arrival_order": fifo_bad, "unsettled": unsettled}
        log(f"{self.cfg.label} N={self.n}: {k} handoffs, latency median {median(lat):.1f} ms, "
            f"raft writes/handoff {sum(writes) / k:.2f}, requests/handoff {sum(raw) / k:.1f}, "
            f"out of arrival order {fifo_bad}")

    def teardown(self) -> None:
        qb = self.qb
        qb.lw.poll()
        for tag in self.waiting:
            p = self.procs[tag]
            if p.poll() is None:
                signal_pid(p.pid, signal.SIGTERM)
        if self.holder:
            sa = qb.lw.find(lambda x, t=self.holder: x.kind == "START" and x.tag == t)
            if sa and alive(sa.pid):
                signal_pid(sa.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        codes = {}
        for tag, p in self.procs.items():
            try:
                codes[tag] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"wrapper {tag} pid {p.pid} did not exit; SIGKILL")
                signal_pid(-p.pid, signal.SIGKILL)
                signal_pid(p.pid, signal.SIGKILL)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                codes[tag] = None
            qb.tracker.forget(p)
        bad = {t: c for t, c in codes.items() if c not in (0, 143, 130, 1, 2)}
        self.res["teardown_unusual_exit_codes"] = dict(list(bad.items())[:10])
        self.hp.close()
        self.wp.close()
        if self.cfg.queue:
            left = qb.kv_keys(self.key + "/.queue/")
            self.res["queue_entries_left"] = len(left)


# --------------------------------------------------------------------------------------------


class QueueBench:
    def __init__(self, args):
        self.args = args
        self.tracker = ProcTracker()
        self.work = tempfile.mkdtemp(prefix="lockwrap-qbench-")
        self.logfile = os.path.join(self.work, "child.log")
        open(self.logfile, "w").close()
        self.lw = LogWatcher(self.logfile)
        self.scan_from = 0
        self.consul_bin = find_consul()
        self.agent = QueueAgent(self.consul_bin, self.work, self.tracker)
        # A private copy: a rebuild of target/release during the run must not change the binary.
        self.lockwrap = os.path.join(self.work, "lockwrap")
        shutil.copy2(args.lockwrap, self.lockwrap)
        self.configs = [Config("lockwrap", "lockwrap", self.lockwrap),
                        Config("queue", "lockwrap --queue", self.lockwrap, queue=True),
                        Config("consul", "consul lock", self.consul_bin)]
        self.proxies: list[Proxy] = []
        self.seq = 0
        self.results: dict = {"runs": [], "fifo": None, "notes": []}

    # -- helpers
    def commit_index(self) -> int:
        st = self.agent.get_json("/v1/agent/self")
        return int(st["Stats"]["raft"]["commit_index"])

    def kv_keys(self, prefix: str) -> list[str]:
        v = self.agent.get_json("/v1/kv/" + urllib.parse.quote(prefix) + "?keys")
        return v or []

    def sessions(self) -> list[dict]:
        return self.agent.get_json("/v1/session/list") or []

    def start_of(self, tag: str, timeout: float, proc=None):
        return self.lw.start_of(tag, timeout, proc, self.work)

    def line(self, kind: str, tag: str, timeout: float):
        return self.lw.line(kind, tag, timeout)

    # -- one N: set up all configurations, one shared steady window, then the handoff series
    def run_n(self, n: int) -> None:
        a = self.args
        cfgs = [c for c in self.configs if c.short in a.tools and
                not (c.is_consul and n > CONSUL_LOCK_MAX_N)]
        if n > CONSUL_LOCK_MAX_N and "consul" in a.tools:
            self.results["notes"].append(f"consul lock not run at N={n} (at most N={CONSUL_LOCK_MAX_N}: "
                                         "~45 MB per waiting process)")
        order = cfgs if (n // 10) % 2 == 0 else list(reversed(cfgs))
        groups = [Group(self, c, n) for c in order]
        try:
            for g in groups:
                g.setup()
            ci0 = self.commit_index()
            for g in groups:
                g.steady_begin()
            window = a.window
            log(f"N={n}: steady window {window:.0f}s with {len(groups)} configurations waiting")
            end = time.monotonic() + window
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                for g in groups:
                    dead = [t for t in g.waiting if g.procs[t].poll() is not None]
                    if dead:
                        raise RuntimeError(f"{g.cfg.label} N={n}: waiters exited during the window: "
                                           f"{dead[:5]}")
            t_end = mono()
            ci1 = self.commit_index()
            for g in groups:
                g.steady_end(t_end)
                g.res["steady"]["raft_writes_in_window_all_configs"] = ci1 - ci0
            self.lw.poll()
            for g in groups:
                self.scan_from = len(self.lw.lines)
                g.handoffs(a.handoffs)
        finally:
            for g in groups:
                try:
                    g.teardown()
                except Exception as e:  # noqa: BLE001
                    log(f"teardown {g.cfg.label} N={n}: {e!r}")
                self.results["runs"].append(g.res)

    # -- FIFO over >= 100 handoffs with --queue
    def fifo(self, waiters: int, handoffs: int, hold: float) -> dict:
        key = f"bench/queue/fifo/{self.seq}"
        self.seq += 1
        cfg = Config("queue", "lockwrap --queue", self.lockwrap, queue=True)
        addr = self.agent.addr
        procs: dict[str, subprocess.Popen] = {}
        order: list[str] = []
        prefix = key + "/.queue/"

        def spawn(tag, mode, *extra):
            err = open(os.path.join(self.work, f"{tag}.err"), "wb")
            p = self.tracker.spawn(cfg.argv(key, addr, child_argv(mode, self.logfile, tag, *extra)),
                                   stdout=subprocess.DEVNULL, stderr=err)
            err.close()
            procs[tag] = p
            return p

        def entry_pids() -> set[int]:
            st, body = self.agent.request("GET", "/v1/kv/" + urllib.parse.quote(prefix) + "?recurse",
                                          timeout=5)
            if st != 200:
                return set()
            pids = set()
            for kv in json.loads(body):
                try:
                    v = json.loads(base64.b64decode(kv.get("Value") or ""))
                    pids.add(int(v["holder"]["pid"]))
                except (ValueError, KeyError, TypeError):
                    pass
            return pids

        def enqueue():
            self.seq += 1
            tag = f"fifo{self.seq}"
            p = spawn(tag, "hold", str(hold))

            def has_entry():
                if p.poll() is not None:
                    raise RuntimeError(f"fifo waiter {tag} exited with {p.returncode}")
                return p.pid in entry_pids()
            wait_until(has_entry, 30, 0.002, f"queue entry of {tag}")
            order.append(tag)

        res: dict = {"waiters": waiters, "target_handoffs": handoffs, "child_hold_ms": hold * 1000}
        ht = "fifoH"
        h = spawn(ht, "wait")
        t0 = time.monotonic()
        try:
            hs = self.start_of(ht, 30, h)
            for _ in range(waiters):
                enqueue()
            res["enqueue_s"] = round(time.monotonic() - t0, 2)
            log(f"fifo: {waiters} waiters queued in {res['enqueue_s']}s; releasing the holder")
            signal_pid(hs.pid, signal.SIGUSR1)
            replaced: set[str] = set()
            deadline = time.monotonic() + max(120.0, handoffs * 2.0)
            while time.monotonic() < deadline:
                self.lw.poll()
                done = [t for t in order if t not in replaced and procs[t].poll() is not None]
                for t in done:
                    replaced.add(t)
                    if len(order) < handoffs:
                        enqueue()
                if len(replaced) >= handoffs:
                    break
                time.sleep(0.005)
            wait_until(lambda: all(procs[t].poll() is not None for t in order), 60, 0.01,
                       "every fifo waiter finished")
        finally:
            self.lw.poll()
            for t, p in procs.items():
                if p.poll() is None:
                    signal_pid(p.pid, signal.SIGTERM)
            sa = self.lw.find(lambda x: x.kind == "START" and x.tag == ht)
            if sa and alive(sa.pid):
                signal_pid(sa.pid, signal.SIGUSR1)
            for t, p in procs.items():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    signal_pid(-p.pid, signal.SIGKILL)
                    signal_pid(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
                self.tracker.forget(p)
        self.lw.poll()
        tags = set(order)
        starts = sorted((ln.t, ln.tag) for ln in self.lw.lines if ln.kind == "START" and ln.tag in tags)
        ends = {ln.tag: ln.t for ln in self.lw.lines if ln.kind == "END" and ln.tag in tags}
        got = [t for _, t in starts]
        violations = sum(1 for i, t in enumerate(got) if i >= len(order) or order[i] != t)
        missing = len(order) - len(got)
        overlaps, last_end = 0, 0
        for st, t in starts:
            if st < last_end:
                overlaps += 1
            last_end = max(last_end, ends.get(t, st))
        lat = [(starts[i + 1][0] - ends[starts[i][1]]) / 1e6 for i in range(len(starts) - 1)
               if starts[i][1] in ends]
        codes = [procs[t].returncode for t in order]
        res.update({"handoffs": len(got), "order_violations": violations, "missing_starts": missing,
                    "overlaps": overlaps, "nonzero_exits": sum(1 for c in codes if c != 0),
                    "handoff_latency_ms_median": median(lat) if lat else None,
                    "queue_entries_left": len(self.kv_keys(prefix)),
                    "order_source": "START records (CLOCK_MONOTONIC) vs. the order in which the "
                                    "harness saw each entry appear (one waiter at a time)"})
        log(f"fifo: {res}")
        return res

    def run(self) -> None:
        a = self.args
        self.results["machine"] = machine_info()
        self.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.results["lockwrap_source"] = source_revision()
        self.results["config"] = {k: v for k, v in vars(a).items()}
        try:
            ver = subprocess.run([self.consul_bin, "version"], stdout=subprocess.PIPE,
                                 timeout=10).stdout.decode().splitlines()[0]
        except Exception:  # noqa: BLE001
            ver = "?"
        self.results["consul_version"] = ver
        self.results["loadavg"] = {"start": loadavg()}
        self.results["other_load"] = other_load()
        self.agent.start()
        log(f"consul agent {ver} on {self.agent.addr}; work dir {self.work}")
        for n in a.ns:
            t = time.monotonic()
            self.results["loadavg"][f"N={n}"] = loadavg()
            try:
                self.run_n(n)
            except Exception as e:  # noqa: BLE001 - record and go on
                log(f"N={n} FAILED: {e!r}")
                self.results.setdefault("errors", {})[f"N={n}"] = repr(e)
            log(f"N={n} done in {time.monotonic() - t:.0f}s")
        if a.fifo_handoffs > 0 and "queue" in a.tools:
            self.results["loadavg"]["fifo"] = loadavg()
            try:
                self.results["fifo"] = self.fifo(a.fifo_waiters, a.fifo_handoffs, 0.05)
            except Exception as e:  # noqa: BLE001
                log(f"fifo FAILED: {e!r}")
                self.results.setdefault("errors", {})["fifo"] = repr(e)
        self.lw.poll()
        try:
            # Sessions still on the agent once every contender has exited (TTL sessions of
            # waiters stopped by SIGTERM would show up here), by name without the pid.
            left: dict[str, int] = {}
            for s in self.sessions():
                name = s.get("Name") or "?"
                name = ("consul lock" if name.startswith("Consul lock") else
                        " ".join(name.split()[:2]) if name.startswith("lockwrap") else name[:40])
                left[name] = left.get(name, 0) + 1
            self.results["sessions_left_after_all"] = sum(left.values())
            self.results["sessions_left_by_name"] = left
        except Exception:  # noqa: BLE001
            pass
        self.results["loadavg"]["end"] = loadavg()
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def close(self) -> None:
        for p in self.proxies:
            p.close()
        self.agent.sigcont()
        self.tracker.kill_all()
        try:
            self.agent.stop()
        except Exception:  # noqa: BLE001
            pass
        self.tracker.kill_all()
        shutil.rmtree(self.work, ignore_errors=True) if not self.args.keep else None


def other_load() -> list[str]:
    """Other timing-sensitive test runs on this machine (noted in the results, not acted upon)."""
    try:
        out = subprocess.run(["pgrep", "-f", "cluster_chaos|tests/cluster/scenarios"],
                             stdout=subprocess.PIPE, timeout=5).stdout.decode().split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [p for p in out if p != str(os.getpid())]


# --------------------------------------------------------------------------------------------
# Report


def render(res: dict) -> str:
    m = res["machine"]
    out = [f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_gib']} GiB; "
           f"{res.get('consul_version', '')}; lockwrap built from {res.get('lockwrap_source', '?')}; "
           f"run {res.get('started')}; load average {res.get('loadavg', {}).get('start')} at the "
           f"start, {res.get('loadavg', {}).get('end')} at the end"
           + ("; other timing tests were running on the machine" if res.get("other_load") else ""),
           "",
           "| waiting (N) | tool | handoff latency ms, median (min–max) | Raft writes / handoff | "
           "HTTP requests / handoff (net of idle) | steady req/min per waiter | handoffs | "
           "out of arrival order |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(res["runs"], key=lambda r: (r["n"], ["lockwrap", "queue", "consul"].index(
            r["config"]))):
        h, s = r.get("handoffs"), r.get("steady")
        if h and h["count"]:
            lat = h["latency_ms"]
            k = h["count"]
            lat_s = f"{median(lat):.1f} ({min(lat):.1f}–{max(lat):.1f})"
            w = f"{sum(h['raft_writes']) / k:.2f}"
            q = f"{sum(h['requests_raw']) / k:.1f} ({sum(h['requests_net_of_background']) / k:.1f})"
            oo = str(h["not_arrival_order"])
        else:
            lat_s = w = q = oo = "—"
            k = 0
        st = f"{s['per_waiter_per_min']:.2f}" if s and s.get("per_waiter_per_min") is not None else "—"
        out.append(f"| {r['n']} | {r['label']} | {lat_s} | {w} | {q} | {st} | {k} | {oo} |")
    f = res.get("fifo")
    if f:
        out += ["", f"FIFO with `--queue`: {f['handoffs']} handoffs among {f['waiters']} waiters "
                    f"(each re-queued at the back after its turn, child holds {f['child_hold_ms']:.0f} ms): "
                    f"**{f['order_violations']} order violations**, {f['overlaps']} overlapping critical "
                    f"sections, {f['missing_starts']} missing, {f['nonzero_exits']} non-zero exits, "
                    f"{f['queue_entries_left']} queue entries left; median END → next START "
                    f"{(f['handoff_latency_ms_median'] or 0):.1f} ms."]
    notes = list(res.get("notes", []))
    if "sessions_left_after_all" in res:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(res.get("sessions_left_by_name", {}).items()))
        notes.append(f"sessions left on the agent after every contender had exited (waiters were "
                     f"stopped with SIGTERM): {res['sessions_left_after_all']}" + (f" ({by})" if by else ""))
    if notes:
        out += [""] + [f"- {x}" for x in notes]
    if res.get("errors"):
        out += ["", "Errors:"] + [f"- {k}: {v}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


METHOD = """How: one Consul dev agent; lockwrap `run --kill-grace 1s [--queue]` and `consul lock`, every child
`python3 -S kit/programs/child.py wait` released by the harness (SIGUSR1). Before each measured handoff
exactly N contenders wait (the one that gets the lock included); after it a new waiter is added and
has settled in its long poll before the next release, so N is constant. Latency: holder's child EXIT
→ next child START (CLOCK_MONOTONIC, child start-up included). Raft writes: `commit_index` of
`/v1/agent/self` before the release and after the state has settled (old wrapper gone, every waiter
back in its long poll). Requests: every contender talks to Consul through a counting loopback proxy;
in brackets net of the waiters' idle traffic (steady rate × handoff duration). Steady: requests of all
waiters over the window, per waiter and minute, while the first holder holds."""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockwrap", default=os.path.join(ROOT, "target", "release", "lockwrap"))
    ap.add_argument("--tools", default="lockwrap,queue,consul", help="comma list: lockwrap,queue,consul")
    ap.add_argument("--ns", default="1,10,50,200", help="comma list of waiting-contender counts")
    ap.add_argument("--handoffs", type=int, default=20, help="measured handoffs per configuration")
    ap.add_argument("--window", type=float, default=60.0, help="steady window, seconds")
    ap.add_argument("--fifo-waiters", type=int, default=50)
    ap.add_argument("--fifo-handoffs", type=int, default=120, help="0 = skip the FIFO series")
    ap.add_argument("--quick", action="store_true", help="N = 1, 10; 5 handoffs; 10 s window; "
                    "FIFO 20 handoffs among 10 waiters")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"),
                    help="directory for queue.json / queue.md ('' = do not write)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.quick:
        a.ns, a.handoffs, a.window, a.fifo_waiters, a.fifo_handoffs = "1,10", 5, 10.0, 10, 20
    random.seed(a.seed)
    a.ns = [int(x) for x in a.ns.split(",") if x.strip()]
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if any(n < 1 or n > 500 for n in a.ns) or a.handoffs < 1 or a.handoffs > 1000:
        sys.exit("queue_bench: N must be 1..500 and --handoffs 1..1000")
    if {"lockwrap", "queue"} & set(a.tools):
        check_lockwrap(a.lockwrap, "queue_bench")
    b = QueueBench(a)
    run_interruptibly(b)
    text = render(b.results)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "queue.json"), "w") as f:
            json.dump(b.results, f, indent=1, sort_keys=True, default=str)
        with open(os.path.join(a.out, "queue.md"), "w") as f:
            f.write("# Fair queue benchmark — latest run\n\nProduced by `make bench-queue` "
                    "(bench/queue_bench.py). See docs/performance.md, \"Fair queue\".\n\n"
                    + METHOD + "\n\n" + text)
        log(f"wrote {a.out}/queue.json and queue.md")
    f = b.results.get("fifo")
    bad = bool(b.results.get("errors")) or (f is not None and (f["order_violations"] or f["overlaps"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
