#!/usr/bin/env python3
"""lockwrap vs `consul lock` benchmark (docs/performance.md). Standard library only; loopback only.

Starts its own `consul agent -dev` on free loopback ports, runs every scenario for lockwrap and for
HashiCorp's `consul lock` in the same run (alternating which tool goes first on each iteration),
prints a table (median / min / max, ratio lockwrap / consul lock) with PASS/MISS per target, and
writes bench/results/latest.json and bench/results/latest.md.

  python3 -m bench.bench                      # everything, default iteration counts
  python3 -m bench.bench --quick              # small counts (smoke test, ~4 min)
  python3 -m bench.bench --only acquire,handoff --iterations 5
  python3 -m bench.bench --tools consul       # only `consul lock` (no lockwrap binary needed)

Timing: every timestamp is CLOCK_MONOTONIC (time.monotonic_ns() in the harness and in the child).
The child is `python3 -S kit/programs/child.py` which needs ~10 ms to start; the `baseline`
scenario measures that start-up alone (harness spawns the child directly) and the acquire→child and
handoff rows are also reported with that baseline median subtracted ("overhead"), which is what the
targets use.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

from kit.agent import ConsulAgent
from kit.logs import LogWatcher, child_argv, shell_quote
from kit.procs import (ROOT, DeathWatcher, ProcTracker, alive, check_lockwrap, find_consul, loadavg,
                       log, machine_info, median, mono, run_interruptibly, signal_pid,
                       source_revision, vm_hwm_kib, wait_until)
from kit.proxy import Proxy

# lockwrap's takeover delay in the partition scenario: its default for --kill-grace 2s and
# --lock-delay 0, max(G + 1, G + 3 - L) (docs/timing.md).
PARTITION_TAKEOVER_S = 5

SCENARIOS = ["baseline", "acquire", "firstuse", "handoff", "loss", "standby", "contention",
             "failover", "partition"]


# --------------------------------------------------------------------------------------------
# The two tools


class Tool:
    name = "?"
    short = "?"

    def __init__(self, binary: str):
        self.bin = binary

    def argv(self, key: str, addr: str, child: list[str], opts: list[str] = ()) -> list[str]:
        raise NotImplementedError

    def lock_key(self, key: str) -> str:
        raise NotImplementedError


class Lockwrap(Tool):
    name = "lockwrap"
    short = "lockwrap"
    ttl = 15.0          # run defaults (docs/cli-surface.md)
    lock_delay = 15.0

    def argv(self, key, addr, child, opts=()):
        return [self.bin, "run", "--key", key, "--consul-addr", addr, *opts, "--", *child]

    def lock_key(self, key):
        return key


class ConsulLock(Tool):
    name = "consul lock"
    short = "consul"
    ttl = 15.0          # fixed in `consul lock` (api.DefaultLockSessionTTL, Consul default lock-delay)
    lock_delay = 15.0

    def argv(self, key, addr, child, opts=()):
        # consul lock runs its child through `sh -c`; `exec` keeps the child's PID = the signalled PID.
        return [self.bin, "lock", f"-http-addr={addr}", *opts, key, shell_quote(["exec", *child])]

    def lock_key(self, key):
        return key + "/.lock"


# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.tracker = ProcTracker()
        self.work = tempfile.mkdtemp(prefix="lockwrap-bench-")
        self.logfile = os.path.join(self.work, "child.log")
        open(self.logfile, "w").close()
        self.lw = LogWatcher(self.logfile)
        self.deaths = DeathWatcher()
        self.consul_bin = find_consul()
        self.agent = ConsulAgent(self.consul_bin, self.work, self.tracker)
        self.tools: list[Tool] = []
        if "lockwrap" in args.tools:
            self.tools.append(Lockwrap(args.lockwrap))
        if "consul" in args.tools:
            self.tools.append(ConsulLock(self.consul_bin))
        self.results: dict = {"scenarios": {}, "notes": []}
        self.seq = 0
        self.proxies: list[Proxy] = []

    # -- helpers
    def tag(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.seq}"

    def order(self, i: int) -> list[Tool]:
        return self.tools if i % 2 == 0 else list(reversed(self.tools))

    def proxy(self, name: str) -> Proxy:
        p = Proxy(self.agent.http_port, name)
        self.proxies.append(p)
        return p

    def start_of(self, tag: str, timeout: float, proc=None):
        return self.lw.start_of(tag, timeout, proc, self.work, interval=0.0005)

    def line(self, kind: str, tag: str, timeout: float):
        return self.lw.line(kind, tag, timeout)

    def spawn(self, tool: Tool, key: str, tag: str, mode: str = "wait", addr: str | None = None,
              opts=(), extra=()):
        child = child_argv(mode, self.logfile, tag, *extra)
        err = open(os.path.join(self.work, f"{tag}.err"), "wb")
        p = self.tracker.spawn(tool.argv(key, addr or self.agent.addr, child, opts),
                               stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        return p

    def finish(self, procs, tags, timeout: float = 20.0) -> list[int | None]:
        """Let children exit normally (SIGUSR1), wait for the wrappers, force-kill leftovers."""
        self.lw.poll()
        # Standbys (no child yet) first: SIGTERM makes a waiting wrapper give up at once; then the
        # holders' children exit normally (SIGUSR1) so the wrappers release and exit.
        for p, t in zip(procs, tags):
            if p.poll() is None and not self.lw.find(lambda x, t=t: x.kind == "START" and x.tag == t):
                signal_pid(p.pid, signal.SIGTERM)
        self.lw.poll()
        for t in tags:
            ln = self.lw.find(lambda x, t=t: x.kind == "START" and x.tag == t)
            if ln and alive(ln.pid):
                signal_pid(ln.pid, signal.SIGUSR1)
        codes = []
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log(f"wrapper pid {p.pid} did not exit in {timeout}s; SIGKILL")
                signal_pid(-p.pid, signal.SIGKILL)
                signal_pid(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
                codes.append(None)
            self.tracker.forget(p)
        for t in tags:
            ln = self.lw.find(lambda x, t=t: x.kind == "START" and x.tag == t)
            if ln and alive(ln.pid):
                signal_pid(ln.pid, signal.SIGKILL)
        return codes

    def wait_standby(self, px: Proxy, proc, timeout: float = 20.0) -> None:
        """Condition: the standby has only a blocking query (index > 0) in flight, stable 50 ms."""
        def check():
            if proc.poll() is not None:
                raise RuntimeError(f"standby exited with {proc.returncode}")
            if not px.waiting_in_long_poll():
                return False
            n = len(px.snapshot())
            time.sleep(0.05)
            return px.waiting_in_long_poll() and len(px.snapshot()) == n
        wait_until(check, timeout, 0.005, "standby waiting in a blocking query")

    def record(self, scen: str, tool: Tool, key: str, value, **extra):
        d = self.results["scenarios"].setdefault(scen, {}).setdefault(tool.short, {"samples": []})
        if value is not None:
            d["samples"].append(value)
        for k, v in extra.items():
            d.setdefault(k, []).append(v)

    # -- scenarios
    def sc_baseline(self, n):
        """python3 -S child start-up alone: Popen → child's START timestamp."""
        class Direct(Tool):
            short = "child"
        for i in range(n):
            tag = self.tag("base")
            t0 = mono()
            p = self.tracker.spawn(child_argv("hold", self.logfile, tag, "0"),
                                   stdout=subprocess.DEVNULL)
            s = self.start_of(tag, 10, None)
            p.wait(timeout=10)
            self.tracker.forget(p)
            self.record("baseline", Direct(""), "", (s.t - t0) / 1e6)

    def prime(self, tool, key: str) -> None:
        """One untimed hold released cleanly, as in steady state (a restarted service finds its
        key released by the previous holder). The first use of a key is measured on its own
        (`sc_firstuse`)."""
        tag = self.tag("prime")
        p = self.spawn(tool, key, tag)
        self.start_of(tag, 30, p)
        self.finish([p], [tag])

    def sc_acquire(self, n):
        for i in range(n):
            self.sc_baseline(1)   # interleaved, so the baseline sees the same machine load
            for tool in self.order(i):
                tag = self.tag("acq")
                key = f"bench/acquire/{tool.short}/{i}"
                self.prime(tool, key)
                t0 = mono()
                p = self.spawn(tool, key, tag)
                s = self.start_of(tag, 30, p)
                codes = self.finish([p], [tag])
                self.record("acquire", tool, key, (s.t - t0) / 1e6, exit=codes[0])

    def sc_firstuse(self, n):
        """A key never used: spawn → child START. lockwrap starts at once when the key has no
        entry and no live session named for it (docs/timing.md, "First use"). Then lockwrap
        `--layout consul-lock` on a prefix that `consul lock` held and released cleanly."""
        lw = next((t for t in self.tools if isinstance(t, Lockwrap)), None)
        cl = next((t for t in self.tools if isinstance(t, ConsulLock)), None)
        for i in range(n):
            for tool in self.order(i):
                key = f"bench/firstuse/{tool.short}/{self.tag('k')}"
                tag = self.tag("fu")
                t0 = mono()
                p = self.spawn(tool, key, tag)
                s = self.start_of(tag, 30, p)
                codes = self.finish([p], [tag])
                self.record("firstuse", tool, key, (s.t - t0) / 1e6, exit=codes[0])
            if lw and cl:
                key = f"bench/after-consul-lock/{self.tag('k')}"
                self.prime(cl, key)
                tag = self.tag("acl")
                t0 = mono()
                p = self.spawn(lw, key, tag, opts=["--layout", "consul-lock"])
                s = self.start_of(tag, 30, p)
                codes = self.finish([p], [tag])
                self.record("after_consul_lock", lw, key, (s.t - t0) / 1e6, exit=codes[0])

    def sc_handoff(self, n):
        for i in range(n):
            for tool in self.order(i):
                key = f"bench/handoff/{tool.short}/{i}"
                ta, tb = self.tag("hoA"), self.tag("hoB")
                a = self.spawn(tool, key, ta)
                self.start_of(ta, 30, a)
                px = self.proxy(f"handoff-{tb}")
                b = self.spawn(tool, key, tb, addr=px.addr)
                try:
                    self.wait_standby(px, b)
                    sa = self.lw.find(lambda x: x.kind == "START" and x.tag == ta)
                    signal_pid(sa.pid, signal.SIGUSR1)
                    ex = self.line("EXIT", ta, 10)
                    sb = self.start_of(tb, 30, b)
                    self.record("handoff", tool, key, (sb.t - ex.t) / 1e6)
                finally:
                    self.finish([a, b], [ta, tb])
                    px.close()

    def sc_loss(self, n):
        for i in range(n):
            for tool in self.order(i):
                key = f"bench/loss/{tool.short}/{i}"
                tag = self.tag("loss")
                p = self.spawn(tool, key, tag)
                try:
                    self.start_of(tag, 30, p)
                    sid = wait_until(lambda: self.agent.kv_session(tool.lock_key(key)), 10,
                                     what="session on the lock key")
                    t0 = mono()
                    st = self.agent.destroy_session(sid)
                    term = self.line("TERM", tag, 30)
                    try:
                        code = p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        code = None
                    self.record("loss", tool, key, (term.t - t0) / 1e6, exit=code, destroy_http=st)
                finally:
                    self.finish([p], [tag])

    def sc_standby(self, window):
        """A holder and a waiting standby per tool (both tools at once, different keys)."""
        setups = []
        try:
            for tool in self.tools:
                key = f"bench/standby/{tool.short}"
                ta, tb = self.tag("sbA"), self.tag("sbB")
                a = self.spawn(tool, key, ta)
                self.start_of(ta, 30, a)
                px = self.proxy(f"standby-{tool.short}")
                b = self.spawn(tool, key, tb, addr=px.addr)
                setups.append([tool, key, ta, tb, a, b, px, None])
            for s in setups:
                self.wait_standby(s[6], s[5])
                s[7] = mono()
            end = max(s[7] for s in setups) + int(window * 1e9)
            log(f"standby: observing for {window:.0f}s")

            def done():
                for s in setups:
                    if s[4].poll() is not None or s[5].poll() is not None:
                        raise RuntimeError(f"{s[0].name}: holder or standby exited during the window")
                return mono() >= end
            wait_until(done, window + 30, 0.2, "standby window")
            for tool, key, ta, tb, a, b, px, t_settle in setups:
                t_end = t_settle + int(window * 1e9)
                ex = [e for e in px.snapshot() if t_settle <= e.t_req <= t_end]
                kinds: dict[str, int] = {}
                for e in px.snapshot():
                    if e.t_req <= t_end:
                        k = f"{e.method} {e.path.split('/')[2] if e.path.count('/') >= 2 else e.path}"
                        kinds[k] = kinds.get(k, 0) + 1
                per_min = len(ex) * 60.0 / window
                self.record("standby_requests", tool, key, per_min, window_s=window,
                            requests_in_window=len(ex), total_by_kind=kinds,
                            requests=[e.as_dict(t_settle) for e in px.snapshot()][:200])
                self.record("rss_holder", tool, key, vm_hwm_kib(a.pid) / 1024)
                self.record("rss_standby", tool, key, vm_hwm_kib(b.pid) / 1024)
        finally:
            for s in setups:
                self.finish([s[4], s[5]], [s[2], s[3]])
                s[6].close()

    def sc_contention(self, contenders, iters):
        for tool in self.tools:
            key = f"bench/contention/{tool.short}"
            self.prime(tool, key)
            base = self.tag("ct")
            errors = []
            t0 = mono()

            def worker(w):
                for j in range(iters):
                    tag = f"{base}w{w}i{j}"
                    p = self.spawn(tool, key, tag, mode="hold", extra=("0",))
                    try:
                        rc = p.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        errors.append(f"{tag}: wrapper hung")
                        signal_pid(-p.pid, signal.SIGKILL)
                        p.wait(timeout=5)
                        rc = None
                    self.tracker.forget(p)
                    if rc != 0:
                        errors.append(f"{tag}: exit {rc}")
            ths = [threading.Thread(target=worker, args=(w,)) for w in range(contenders)]
            for t in ths:
                t.start()
            for t in ths:
                t.join(timeout=contenders * iters * 30)
            elapsed = (mono() - t0) / 1e9
            self.lw.poll()
            mine = [ln for ln in self.lw.lines if ln.tag.startswith(base + "w")]
            starts = {ln.tag: ln for ln in mine if ln.kind == "START"}
            ends = {ln.tag: ln for ln in mine if ln.kind == "END"}
            ivs = sorted((s.t, ends[t].t if t in ends else None, t) for t, s in starts.items())
            overlaps = 0
            last_end = 0
            for st, en, t in ivs:
                if en is None:
                    errors.append(f"{t}: no END")
                    continue
                if st < last_end:
                    overlaps += 1
                last_end = max(last_end, en)
            rate = len(ivs) / elapsed if elapsed else 0
            self.record("contention", tool, key, rate, sections=len(ivs), elapsed_s=round(elapsed, 3),
                        overlaps=overlaps, errors=errors[:20])
            log(f"contention {tool.name}: {len(ivs)} sections in {elapsed:.2f}s, overlaps={overlaps}, "
                f"errors={len(errors)}")

    def failover_configs(self):
        cfgs = []
        for tool in self.tools:
            # (tool, label, flags, TTL, lock-delay, check TTL, takeover delay): after a crash the
            # new holder waits lockwrap's takeover delay (default max(G + 1, G + 3 - L),
            # docs/timing.md).
            if isinstance(tool, Lockwrap):
                base = ["--session-ttl", "10s", "--kill-grace", "2s"]
                cfgs.append((tool, "lockwrap ttl10 delay0", base + ["--lock-delay", "0"], 10, 0, None,
                             5))
                cfgs.append((tool, "lockwrap ttl10 delay15", base + ["--lock-delay", "15s"], 10, 15,
                             None, 3))
                # The documented fast-failover setting (README, "Fast failover, tested").
                cfgs.append((tool, "lockwrap fast failover (check 2 s, grace 1 s)",
                             ["--session-ttl", "10s", "--session-checks", "none",
                              "--health-check-ttl", "2s", "--lock-delay", "0", "--kill-grace", "1s"],
                             10, 0, 2, 4))
            else:
                cfgs.append((tool, "consul lock ttl15 delay15", [], 15, 15, None, 0))
        return cfgs

    def sc_failover(self, n):
        cfgs = self.failover_configs()
        for i in range(n):
            order = cfgs if i % 2 == 0 else list(reversed(cfgs))
            for tool, label, opts, ttl, delay, check, takeover in order:
                key = f"bench/failover/{self.tag('k')}"
                ta, tb = self.tag("foA"), self.tag("foB")
                a = self.spawn(tool, key, ta, opts=opts)
                b = None
                px = self.proxy(f"failover-{tb}")
                try:
                    sa = self.start_of(ta, 30, a)
                    b = self.spawn(tool, key, tb, addr=px.addr, opts=opts)
                    self.wait_standby(px, b)
                    t0 = mono()
                    signal_pid(a.pid, signal.SIGKILL)
                    signal_pid(sa.pid, signal.SIGKILL)
                    signal_pid(-sa.pid, signal.SIGKILL)
                    a.wait(timeout=5)
                    bound = (check if check else 2 * ttl) + delay + takeover + 1
                    sb = self.start_of(tb, 2 * ttl + delay + takeover + 30, b)
                    v = (sb.t - t0) / 1e9
                    log(f"failover {label}: {v:.2f}s (bound {bound}s)")
                    d = self.results["scenarios"].setdefault("failover", {}).setdefault(
                        label, {"samples": [], "tool": tool.short, "bound_s": bound, "ttl_s": ttl,
                                "lock_delay_s": delay, "check_ttl_s": check,
                                "takeover_delay_s": takeover, "opts": opts})
                    d["samples"].append(v)
                finally:
                    self.finish([a] + ([b] if b else []), [ta, tb])
                    px.close()

    def sc_partition(self, n):
        for i in range(n):
            for variant in ("blackhole", "sigstop"):
                for tool in self.order(i):
                    self._partition_one(tool, variant)

    def _partition_one(self, tool: Tool, variant: str):
        if isinstance(tool, Lockwrap):
            # Takeover delay: lockwrap's default (PARTITION_TAKEOVER_S).
            opts, ttl, delay = ["--session-ttl", "10s", "--kill-grace", "2s", "--lock-delay", "0"], 10, 0
        else:
            opts, ttl, delay = [], 15, 15
        key = f"bench/partition/{self.tag('k')}"
        ta, tb = self.tag("ptA"), self.tag("ptB")
        ph, ps = self.proxy(f"part-h-{ta}"), self.proxy(f"part-s-{tb}")
        a = self.spawn(tool, key, ta, addr=ph.addr, opts=opts)
        b = None
        try:
            sa = self.start_of(ta, 30, a)
            self.deaths.watch(sa.pid)
            b = self.spawn(tool, key, tb, addr=ps.addr, opts=opts)
            self.wait_standby(ps, b)

            def renewed():
                ok = [e for e in ph.snapshot() if e.method == "PUT" and
                      e.path.startswith("/v1/session/renew/") and e.status == 200]
                return ok[-1] if ok else None
            wait_until(renewed, ttl + 5, 0.01, "a successful session renew from the holder")
            t0 = mono()
            if variant == "blackhole":
                ph.blackhole()
            else:
                self.agent.sigstop()
            # Last successful renew (or the session create) that the holder saw answered before t0.
            oks = [e for e in ph.snapshot() if e.method == "PUT" and e.status == 200 and
                   e.t_resp is not None and e.t_resp < t0 and
                   (e.path.startswith("/v1/session/renew/") or e.path == "/v1/session/create")]
            last = oks[-1].t_req
            deadline = last + int(ttl * 1e9)
            stop_at = None
            if variant == "sigstop":
                # Fault duration: longer than the TTL (the agent is frozen for ttl + 3 s).
                hold = ttl + 3
                try:
                    wait_until(lambda: self.deaths.dead_at(sa.pid) and mono() >= t0 + hold * 1e9,
                               hold + 1, 0.01, "end of freeze")
                except TimeoutError:
                    pass
                self.agent.sigcont()
                stop_at = mono()
            limit = 2 * ttl + delay + 20

            def settled():
                self.lw.poll()
                sb = self.lw.find(lambda x: x.kind == "START" and x.tag == tb)
                dead = self.deaths.dead_at(sa.pid)
                if sb and dead:
                    return True
                return bool(sb and mono() > sb.t + 3e9)
            try:
                wait_until(settled, limit, 0.01, "standby acquisition")
            except TimeoutError:
                pass
            sb = self.lw.find(lambda x: x.kind == "START" and x.tag == tb)
            term = self.lw.find(lambda x: x.kind == "TERM" and x.tag == ta)
            dead = self.deaths.dead_at(sa.pid)
            child_stop = term.t if term else dead
            rel = lambda t: None if t is None else round((t - t0) / 1e9, 3)  # noqa: E731
            r = {"variant": variant, "ttl_s": ttl, "lock_delay_s": delay,
                 "last_renew_before_cut_s": rel(last), "deadline_s": rel(deadline),
                 "child_stopped_s": rel(child_stop), "child_dead_s": rel(dead),
                 "standby_started_s": rel(sb.t if sb else None),
                 "agent_resumed_s": rel(stop_at),
                 "stopped_before_deadline": bool(child_stop and child_stop <= deadline),
                 "overlap_with_standby": bool(sb and (dead is None or dead > sb.t))}
            log(f"partition {variant} {tool.name}: {r}")
            self.results["scenarios"].setdefault("partition", {}).setdefault(
                f"{tool.short} {variant}", {"tool": tool.short, "runs": []})["runs"].append(r)
        finally:
            self.agent.sigcont()
            ph.heal()
            self.finish([a] + ([b] if b else []), [ta, tb], timeout=30)
            ph.close()
            ps.close()

    # -- driver
    def run(self):
        a = self.args
        only = set(a.only.split(",")) if a.only else set(SCENARIOS)
        self.results["machine"] = machine_info()
        self.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.results["tools"] = {t.short: t.bin for t in self.tools}
        self.results["lockwrap_source"] = source_revision()
        self.results["config"] = vars(a)
        try:
            ver = subprocess.run([self.consul_bin, "version"], stdout=subprocess.PIPE,
                                 timeout=10).stdout.decode().splitlines()[0]
        except Exception:  # noqa: BLE001
            ver = "?"
        self.results["consul_version"] = ver
        self.results["binary_size_mib"] = {t.short: round(os.path.getsize(t.bin) / 1048576, 2)
                                           for t in self.tools}
        self.agent.start()
        log(f"consul agent {ver} on {self.agent.addr}; work dir {self.work}")
        steps = [("baseline", lambda: self.sc_baseline(a.iterations)),
                 ("acquire", lambda: self.sc_acquire(a.iterations)),
                 ("firstuse", lambda: self.sc_firstuse(a.iterations)),
                 ("handoff", lambda: self.sc_handoff(a.iterations)),
                 ("loss", lambda: self.sc_loss(a.iterations)),
                 ("standby", lambda: self.sc_standby(a.standby_window)),
                 ("contention", lambda: self.sc_contention(a.contenders, a.contention_iterations)),
                 ("failover", lambda: self.sc_failover(a.failover_iterations)),
                 ("partition", lambda: self.sc_partition(a.partition_iterations))]
        for name, fn in steps:
            if name not in only:
                continue
            t = time.monotonic()
            self.results.setdefault("loadavg", {})[name] = {"before": loadavg()}
            log(f"scenario {name} ...")
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - record and go on with the next scenario
                log(f"scenario {name} FAILED: {e!r}")
                self.results.setdefault("errors", {})[name] = repr(e)
            self.results["loadavg"][name]["after"] = loadavg()
            self.results["loadavg"][name]["seconds"] = round(time.monotonic() - t, 1)
            log(f"scenario {name} done in {time.monotonic() - t:.1f}s")
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def close(self):
        for p in self.proxies:
            p.close()
        self.agent.sigcont()
        self.tracker.kill_all()
        try:
            self.agent.stop()
        except Exception:  # noqa: BLE001
            pass
        self.tracker.kill_all()
        self.deaths.close()


# --------------------------------------------------------------------------------------------
# Report


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(res: dict) -> tuple[list[dict], list[dict]]:
    sc = res["scenarios"]
    rows, targets = [], []
    base = stats(sc.get("baseline", {}).get("child", {}).get("samples", []))
    base_med = base["median"] if base else 0.0
    res["baseline_child_start_ms"] = base

    def row(name, unit, lw_samples, cl_samples, note=""):
        lw, cl = stats(lw_samples or []), stats(cl_samples or [])
        ratio = (lw["median"] / cl["median"]) if lw and cl and cl["median"] else None
        r = {"scenario": name, "unit": unit, "lockwrap": lw, "consul_lock": cl, "ratio": ratio,
             "note": note}
        rows.append(r)
        return r

    def tgt(name, ok, detail):
        targets.append({"target": name, "result": None if ok is None else ("PASS" if ok else "MISS"),
                        "detail": detail})

    def samples(s, tool):
        return sc.get(s, {}).get(tool, {}).get("samples", [])

    if base:
        row("child start-up alone (python3 -S), baseline", "ms", None, None)
        rows[-1]["lockwrap"] = rows[-1]["consul_lock"] = base
    for s, title in (("acquire", "acquire → child start, uncontended"),
                     ("handoff", "graceful handoff: child exit → standby's child start")):
        raw = row(title + " (raw)", "ms", samples(s, "lockwrap"), samples(s, "consul"))
        ov = row(title + " (minus child start-up)", "ms",
                 [x - base_med for x in samples(s, "lockwrap")] if s == "acquire" else
                 [x - base_med for x in samples(s, "lockwrap")],
                 [x - base_med for x in samples(s, "consul")], note=f"baseline {base_med:.2f} ms")
        lw, cl = ov["lockwrap"], ov["consul_lock"]
        if s == "acquire":
            ok = (lw["median"] <= cl["median"] / 3) if lw and cl else None
            tgt("acquire→child ≤ 1/3 of consul lock (median, minus child start-up)", ok,
                f"{lw['median']:.2f} vs {cl['median']:.2f} ms" if lw and cl else "not measured")
        else:
            lwr, clr = raw["lockwrap"], raw["consul_lock"]
            ok = (lwr["median"] <= clr["median"]) if lwr and clr else None
            tgt("graceful handoff ≤ consul lock (median)", ok,
                f"{lwr['median']:.2f} vs {clr['median']:.2f} ms" if lwr and clr else "not measured")
    acq = stats(samples("acquire", "lockwrap"))
    r = row("first use of a never-used key → child start (raw)", "ms", samples("firstuse", "lockwrap"),
            samples("firstuse", "consul"))
    lw = r["lockwrap"]
    tgt("first use ≤ 2× acquire after a clean release (median, raw)",
        (lw["median"] <= 2 * acq["median"]) if lw and acq else None,
        f"{lw['median']:.2f} vs {acq['median']:.2f} ms" if lw and acq else "not measured")
    r = row("--layout consul-lock after `consul lock` released cleanly → child start (raw)", "ms",
            samples("after_consul_lock", "lockwrap"), None)
    lw = r["lockwrap"]
    tgt("after a clean `consul lock` release ≤ 2× acquire after a clean release (median, raw)",
        (lw["median"] <= 2 * acq["median"]) if lw and acq else None,
        f"{lw['median']:.2f} vs {acq['median']:.2f} ms" if lw and acq else "not measured")
    r = row("lock loss (session destroyed) → child gets SIGTERM", "ms", samples("loss", "lockwrap"),
            samples("loss", "consul"))
    lw = r["lockwrap"]
    tgt("loss→SIGTERM ≤ 5 ms (median)", (lw["median"] <= 5) if lw else None,
        f"{lw['median']:.2f} ms" if lw else "not measured")
    r = row("waiting standby: requests to Consul per minute", "req/min",
            samples("standby_requests", "lockwrap"), samples("standby_requests", "consul"))
    lw = r["lockwrap"]
    tgt("waiting standby ≤ 1 request/minute", (lw["median"] <= 1) if lw else None,
        f"{lw['median']:.2f} req/min" if lw else "not measured")
    row("peak RSS (VmHWM) of the holder", "MiB", samples("rss_holder", "lockwrap"),
        samples("rss_holder", "consul"))
    r = row("peak RSS (VmHWM) of a waiting standby", "MiB", samples("rss_standby", "lockwrap"),
            samples("rss_standby", "consul"))
    lw, cl = r["lockwrap"], r["consul_lock"]
    tgt("standby RSS ≤ 1/6 of consul lock", (lw["median"] <= cl["median"] / 6) if lw and cl else None,
        f"{lw['median']:.2f} vs {cl['median']:.2f} MiB" if lw and cl else "not measured")
    bs = res.get("binary_size_mib", {})
    row("binary size", "MiB", [bs["lockwrap"]] if "lockwrap" in bs else None,
        [bs["consul"]] if "consul" in bs else None)
    ct = sc.get("contention", {})
    r = row("5 contenders × 20: critical sections per second", "1/s", samples("contention", "lockwrap"),
            samples("contention", "consul"))
    lw, cl = r["lockwrap"], r["consul_lock"]
    tgt("contention throughput ≥ 1.3× consul lock", (lw["median"] >= 1.3 * cl["median"])
        if lw and cl else None,
        f"{lw['median']:.2f} vs {cl['median']:.2f} /s" if lw and cl else "not measured")
    for tool in ("lockwrap", "consul"):
        if tool in ct:
            ov = sum(ct[tool].get("overlaps", [0]))
            er = sum(len(e) for e in ct[tool].get("errors", [[]]))
            tgt(f"contention exclusion ({tool}): no overlapping critical sections", ov == 0 and er == 0,
                f"overlaps={ov} errors={er}")
    fo = sc.get("failover", {})
    for label, d in fo.items():
        st = stats(d["samples"])
        rows.append({"scenario": f"crash failover (kill -9 holder+child → standby child): {label}",
                     "unit": "s", "lockwrap": st if d["tool"] == "lockwrap" else None,
                     "consul_lock": st if d["tool"] == "consul" else None, "ratio": None,
                     "note": f"bound {d['bound_s']} s"})
        if d["tool"] == "lockwrap" and st:
            what = ("check TTL + lock-delay + takeover delay + 1 s" if d.get("check_ttl_s") else
                    "2×TTL + lock-delay + takeover delay + 1 s")
            tgt(f"crash failover {label} ≤ {what} = {d['bound_s']} s (max)", st["max"] <= d["bound_s"],
                f"max {st['max']:.2f} s")
    pt = sc.get("partition", {})
    for label, d in pt.items():
        runs = d["runs"]
        stop = [x["child_stopped_s"] for x in runs]
        dl = [x["deadline_s"] for x in runs]
        sb = [x["standby_started_s"] for x in runs]
        rows.append({"scenario": f"partition {label}: child stopped / lease deadline / standby "
                                 f"started (s after the fault)", "unit": "s",
                     "lockwrap": None, "consul_lock": None, "ratio": None,
                     "note": "; ".join(f"stop {a} / deadline {b} / standby {c}"
                                       for a, b, c in zip(stop, dl, sb))})
        if d["tool"] == "lockwrap":
            # The timing model (docs/timing.md): nobody else can start before the last renew +
            # TTL + lock-delay + takeover delay; the child must be dead by then, and the standby
            # must start after it died.
            def safe_until(x):
                return round(x["deadline_s"] + x["lock_delay_s"] + PARTITION_TAKEOVER_S, 3)
            ok = all(x["child_dead_s"] is not None and x["child_dead_s"] <= safe_until(x)
                     and not x["overlap_with_standby"] for x in runs)
            tgt(f"partition ({label.split()[-1]}): lockwrap's child is dead before anyone else "
                f"may start (last renew + TTL + lock-delay + takeover delay)", ok,
                "; ".join(f"child dead {x['child_dead_s']} s, others may start at "
                          f"{safe_until(x)} s, standby started {x['standby_started_s']} s"
                          for x in runs))
    return rows, targets


def fmt_stat(s, unit):
    if not s:
        return "—"
    p = 1 if unit in ("s",) else 2
    if s["n"] == 1:
        return f"{s['median']:.{p}f}"
    return f"{s['median']:.{p}f} ({s['min']:.{p}f}–{s['max']:.{p}f})"


def render(res, rows, targets) -> str:
    m = res["machine"]
    la = res.get("loadavg", {})
    out = [f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, {m['mem_gib']} GiB; "
           f"{res.get('consul_version', '')}; lockwrap built from {res.get('lockwrap_source', '?')}; "
           f"run {res.get('started')}",
           "",
           "Load average (1/5/15 min) before each scenario: " +
           ", ".join(f"{k} {v.get('before')}" for k, v in la.items()) + ". The child is "
           "`python3 -S kit/programs/child.py`; \"minus child start-up\" subtracts the median of the "
           "baseline row (the same child spawned directly, interleaved with the acquire runs).",
           "",
           "| scenario | unit | lockwrap median (min–max) | consul lock median (min–max) | ratio | note |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else ""
        out.append(f"| {r['scenario']} | {r['unit']} | {fmt_stat(r['lockwrap'], r['unit'])} | "
                   f"{fmt_stat(r['consul_lock'], r['unit'])} | {ratio} | {r.get('note', '')} |")
    out += ["", "| target | result | measured |", "| --- | --- | --- |"]
    for t in targets:
        out.append(f"| {t['target']} | {t['result'] or 'n/a'} | {t['detail']} |")
    if res.get("errors"):
        out += ["", "Scenario errors:"] + [f"- {k}: {v}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockwrap", default=os.path.join(ROOT, "target", "release", "lockwrap"))
    ap.add_argument("--tools", default="lockwrap,consul", help="comma list: lockwrap,consul")
    ap.add_argument("--only", default="", help="comma list of scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--iterations", type=int, default=15, help="acquire/handoff/loss iterations")
    ap.add_argument("--standby-window", type=float, default=120.0, help="seconds")
    ap.add_argument("--contenders", type=int, default=5)
    ap.add_argument("--contention-iterations", type=int, default=20)
    ap.add_argument("--failover-iterations", type=int, default=3)
    ap.add_argument("--partition-iterations", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small counts for a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"),
                    help="directory for latest.json / latest.md ('' = do not write)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rerender", action="store_true",
                    help="only rebuild latest.md (table and targets) from the saved latest.json")
    a = ap.parse_args()
    if a.quick:
        a.iterations, a.standby_window, a.contention_iterations = 3, 20.0, 4
        a.failover_iterations = 1
    random.seed(a.seed)
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if a.rerender:
        with open(os.path.join(a.out, "latest.json")) as f:
            saved = json.load(f)
        rows, targets = summarize(saved)
        with open(os.path.join(a.out, "latest.md"), "w") as f:
            f.write("# lockwrap benchmark — latest run\n\nProduced by `make bench` "
                    "(bench/bench.py). See docs/performance.md.\n\n" + render(saved, rows, targets))
        return 0
    if "lockwrap" in a.tools:
        check_lockwrap(a.lockwrap, "bench", " (or use --tools consul)")
    b = Bench(a)
    run_interruptibly(b)
    rows, targets = summarize(b.results)
    b.results["table"] = rows
    b.results["targets"] = targets
    text = render(b.results, rows, targets)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "latest.json"), "w") as f:
            json.dump(b.results, f, indent=1, sort_keys=True, default=str)
        with open(os.path.join(a.out, "latest.md"), "w") as f:
            f.write("# lockwrap benchmark — latest run\n\nProduced by `make bench` "
                    "(bench/bench.py). See docs/performance.md.\n\n" + text)
        log(f"wrote {a.out}/latest.json and latest.md")
    miss = [t for t in targets if t["result"] == "MISS"]
    print(f"{sum(t['result'] == 'PASS' for t in targets)} targets passed, {len(miss)} missed, "
          f"{sum(t['result'] is None for t in targets)} not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
