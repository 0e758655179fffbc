#!/usr/bin/env python3
"""lockwrap chaos on a real Consul cluster (docs/performance.md, "On a real cluster"):
`make chaos-cluster`. Not part of `make test`.

The cluster of kit/cluster.py (3 servers, 3 client agents on 127.0.0.x, each agent and
each contender under its own uid, iptables partitions) and the machinery of chaos/chaos.py
(contenders restarted whenever they exit, the log monitor, the death watcher and every check,
through kit/checker.py). Contender i runs under uid 41101+i against client agent i mod 3:
    lockwrap run --key chaos-cluster/<setting> --consul-addr 127.0.0.2x:8500 <setting's flags> \
                 -- python3 -S kit/programs/cluster_child.py logfile tag HOLD_MIN HOLD_MAX STOP
with the setting's flags from kit/settings.py ("default": lockwrap's defaults; "fast":
the fast-failover setting).

Fault kinds (every kind at least once, then by weight; with --holder-bias 1, the default, each
trial first waits for a live holder):
    node_part    the holder's client agent isolated from every other agent (70 %) or from the
                 servers only (30 %) for 2-20 s, sometimes 20-45 s, then heal
    http_cut     the holder lockwrap's connections to its agent dropped or reset (1-30 s), heal
    leader_part  the leader server isolated from every other agent (minority leader), 3-20 s
    leader_kill  kill -9 the leader server, restart it after 0-5 s (same data dir)
    rolling      rolling restart (SIGTERM + start) of all three servers, followers first
    kill9        kill -9 the holder's lockwrap and its child
    destroy      PUT /v1/session/destroy/<the lock's session> (through a server)
    delete       DELETE /v1/kv/<key>
    heal         partition a node that is not the holder's (a standby's agent or a follower
                 server) for 2-15 s, then heal: the gossip flaps after a heal must not hurt
    force_leave  kill -9 of the holder's client agent (the holder is blind), `consul force-leave`
                 of that node from a server 0.3-2 s later (the runbook step), agent restarted
                 3-25 s later
    agent_leave  `consul leave` of the holder's agent (graceful), restarted 1-10 s later
    sigterm      a stop signal to a wrapper in a random phase: waiting, takeover (the holder's
                 session destroyed, then SIGTERM to a standby as it takes over), acquiring (the
                 newest wrapper), holding, stopping (session destroyed, then SIGTERM to the old
                 holder while its command stops)
    stall        SIGSTOP of the holder's lockwrap alone (the sidecar, not its app) for longer than
                 its deadline (fast 2.5-6 s, default 5-35 s), then SIGCONT

MODES (kit/settings.py MODES; `--modes all` or a list): run, execute, sidecar (an app
reading --status-file, kit/programs/sidecar_app.py), sem2 (`-n 2`: 3 at once is the overlap),
queue, layout (consul-lock), lib (LockManager::execute, examples/lib_execute), mixed (contenders of
one key with different kill graces), escape / escape-nohup (the command leaves a worker behind),
stderr-pipe (contender 0's stderr is a pipe nobody reads). Each MODE/SETTING combo runs on its own
key; the combos are dealt over the --clusters (plan_combos). The command is
kit/programs/cluster_child.py: on SIGTERM it keeps running 80 % of its kill grace; a section ends
when its process is gone.
Each fault that faces a cluster-wide outage waits (bounded) for the cluster to be ready again.

Checks: chaos.py's (no overlap - strict, fencing tokens increase, every child ended, no session
of this key left after SIGTERM of every contender + 2×TTL + 5 s, no panic/hang/unexpected exit,
all kinds injected, liveness) plus: exit 8 only where justified (a wrapper started while its
own link to the agent was cut or its agent was down; one whose agent had no leader during a
fault must keep waiting). Failover per fault kind = time from
the fault to the next START of another contender, over the faults that cost a live holder its
command (stopped or killed, not finished, before the next fault); the others count as "kept".

    python3 -m chaos.cluster_chaos --quick                      # ~10 trials
    python3 -m chaos.cluster_chaos --trials 500 --budget 7200 --setting both \
        --summary chaos/results/cluster-summary.md
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
import time

from chaos import chaos
from kit import checker
from kit import cluster as C
from kit import settings as S
from kit.procs import (ROOT, alive, become_subreaper, log, machine_info, mono, signal_pid,
                       source_revision, wait_until)
from kit.runner import Tally, check_line, summary

KINDS = ["node_part", "http_cut", "leader_part", "leader_kill", "rolling", "kill9", "destroy",
         "delete", "heal", "force_leave", "agent_leave", "sigterm", "stall"]
WEIGHTS = {"node_part": 2, "http_cut": 2, "leader_part": 1, "leader_kill": 1, "rolling": 0.4,
           "kill9": 3, "destroy": 2, "delete": 2, "heal": 1.5, "force_leave": 1,
           "agent_leave": 1, "sigterm": 3, "stall": 1.5}
HOLDER_KINDS = {"node_part", "http_cut", "kill9", "force_leave", "agent_leave", "stall"}
# the phases a stop signal (SIGTERM to a wrapper) is aimed at
SIGTERM_PHASES = ["waiting", "takeover", "acquiring", "holding", "stopping"]
BREAK_KINDS = {"destroy", "delete"}


class PipeSink:
    """A contender's stderr that is a pipe nobody reads (the stderr-pipe mode): subprocess uses
    fileno(); the harness' own writes (tag headers) go nowhere."""

    def __init__(self):
        self.r, self.w = os.pipe()     # the read end stays open, never read
        self.name = os.devnull

    def fileno(self):
        return self.w

    def write(self, _b):
        return 0

    def flush(self):
        pass


class NoLink:
    """The contender talks to its agent directly; faults are iptables rules, not a proxy."""

    def heal(self) -> None:
        pass

    def close(self) -> None:
        pass


class ClusterContender(chaos.Contender):
    def make_link(self):
        s = self.s
        self.agent = s.cl.clients[self.slot % len(s.cl.clients)]
        self.uid = s.uid_base + self.slot
        s.cl.fw.register_uid(self.uid)
        self.exit_times: list[tuple[str, int | None, int, int]] = []   # tag, rc, spawn, exit (ns)
        self.spawned_at = 0
        m = S.MODES[s.mode]
        self.cmd = m["cmd"]
        self.flags = S.mode_args(s.mode, s.setting, s.args.lockwrap, self.slot)
        self.grace = S.DEFAULT_KILL_GRACE if self.cmd == "lib" else S.kill_grace_of(self.flags)
        self.private = os.path.join(s.work, f"u{self.uid}")
        os.makedirs(self.private, exist_ok=True)
        os.chown(self.private, self.uid, self.uid)
        self.env_extra = {}
        return NoLink()

    def __init__(self, suite, slot: int):
        super().__init__(suite, slot)
        if S.MODES[suite.mode].get("stderr_pipe") and slot == 0:
            self.errf.close()
            self.errf = PipeSink()

    def argv(self, tag: str) -> list[str]:
        s, a = self.s, self.s.args
        self.spawned_at = mono()
        child = [str(a.hold_min), str(a.hold_max), str(round(S.STOP_FRACTION * self.grace, 3))]
        if S.MODES[s.mode].get("escape"):
            child.append(S.MODES[s.mode]["escape"])
        argv, self.env_extra = C.command_argv(self.cmd, a.lockwrap, s.key, self.agent.addr,
                                              self.flags, s.logfile, tag, child, self.private)
        if self.env_extra:   # the library reads CONSUL_HTTP_ADDR
            argv = ["env", *[f"{k}={v}" for k, v in self.env_extra.items()], *argv]
        return C.as_uid(self.uid, argv)

    def wrapper_pid(self) -> int | None:
        """lockwrap itself (the sidecar, not its application; env/setpriv exec it)."""
        return C.wrapper_pid(self.proc, self.cmd, self.private, self.tag)

    def wrapper_live(self) -> bool:
        """For the sidecar, lockwrap itself: the application beside a kill -9'd sidecar runs on
        for its section's stop time and then exits 137, the fault's answer, not the shutdown's."""
        if not super().wrapper_live():
            return False
        if self.cmd != "sidecar":
            return True
        pid = self.wrapper_pid()
        return pid is not None and alive(pid)

    def stop(self):
        """Final SIGTERM, but never in the first second of a wrapper's life: setpriv may not
        have exec'd lockwrap yet (it would die of the signal, -15, a harness artefact).
        The library's LockManager::execute cannot be stopped by a signal: SIGKILL, then its
        command (by the PIDs of this contender's live sections)."""
        with self.lock:
            self.running = False      # no respawn from here on
            p = self.proc
        if p is not None:
            wait_until(lambda: mono() - self.spawned_at >= 1e9 or p.poll() is not None, 2, 0.01,
                       "the wrapper's first second")
        if self.cmd == "lib" and p is not None:
            signal_pid(p.pid, signal.SIGKILL)
            rc = p.wait(timeout=10)
            with self.s.mon_lock:
                pids = [pid for pid, ln in self.s.starts.items()
                        if checker.holder_of(ln.tag) == self.tag]
            for pid in pids:
                if alive(pid):
                    signal_pid(pid, signal.SIGKILL)
            return rc
        return super().stop()

    def supervise(self, p, tag, t_spawn):
        t0 = mono() - int((time.monotonic() - t_spawn) * 1e9)
        rc = super().supervise(p, tag, t_spawn)
        self.exit_times.append((tag, rc, t0, mono()))
        return rc


class ClusterFacade:
    """What chaos.Chaos asks of `self.agent`, answered by the cluster."""

    def __init__(self, cl: C.Cluster):
        self.cl = cl
        self.stopped = False
        self.addr = ",".join(c.addr for c in cl.clients)
        self.http_port = C.HTTP_PORT

    def start(self) -> None:
        pass

    def sigcont(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def kv_session(self, key: str):
        try:
            v = self.cl.kv(key)
        except (OSError, RuntimeError, ValueError):
            return None
        return v.get("Session") if v else None

    def sessions(self) -> list[dict]:
        return self.cl.sessions()


class ClusterChaos(chaos.Chaos):
    kinds = KINDS
    contender_cls = ClusterContender
    expected_exit = {0, 8, 101, 143, 137, -9, -15}
    ttl = S.SESSION_TTL

    def __init__(self, args, cl: C.Cluster, setting: str, uid_base: int, mode: str = "run"):
        self.cl = cl
        self.setting = setting
        self.mode = mode
        self.limit = S.MODES[mode]["limit"]
        self.flags = S.mode_args(mode, setting, args.lockwrap, 0)
        self.kill_grace = max([S.DEFAULT_KILL_GRACE if S.MODES[mode]["cmd"] == "lib" else
                               S.kill_grace_of(S.mode_args(mode, setting, args.lockwrap, i))
                               for i in range(max(1, args.contenders))])
        self.key = f"chaos-cluster/{mode}/{setting}"
        self.uid_base = uid_base
        if S.MODES[mode]["cmd"] == "lib":
            self.kinds = [k for k in KINDS if k != "sigterm"]
            self.final_ok_exits = {-9}
        args.workdir = os.path.join(cl.work, f"chaos-{mode}-{setting}")
        os.makedirs(args.workdir, exist_ok=True)
        os.chmod(args.workdir, 0o755)
        super().__init__(args)
        os.chmod(self.logfile, 0o666)
        self.agent = ClusterFacade(cl)

    def hung_after(self) -> float:
        """A wrapper whose agent is cut off retries its release until the session's TTL makes it
        moot (Consul invalidates by 2×TTL after the last renew), plus one HTTP timeout."""
        return self.kill_grace + 2 * self.ttl + 15

    def list_sessions(self) -> list[dict]:
        return [s for s in self.cl.sessions() if self.key in s.get("Name", "")]

    def holder(self):
        """(contender, START line) of a live section, newest first; a sidecar application's
        section (TAG.sN) or an escaped worker (TAG.w) belongs to the wrapper TAG."""
        with self.mon_lock:
            live = [ln for pid, ln in self.starts.items() if pid not in self.ends and alive(pid)
                    and not self.deaths.dead_at(pid) and not ln.tag.endswith(".w")]
        for ln in sorted(live, key=lambda x: -x.t):
            for c in self.contenders:
                if c.tag == checker.holder_of(ln.tag) and c.proc is not None and c.proc.poll() is None:
                    return c, ln
        return None

    def session_of(self, c) -> str | None:
        """The lock session of contender c's current wrapper (its name ends in `pid <pid>`)."""
        pid = c.wrapper_pid()
        if pid:
            for sess in self.cl.sessions():
                name = sess.get("Name", "")
                if S.session_of_pid(name, pid):
                    return sess["ID"]
        return self.agent.kv_session(self.key) if self.limit == 1 else None

    def shutdown(self) -> None:
        super().shutdown()
        # escaped workers (escape modes) outlive every wrapper by design, bounded by their 30 s
        # life: wait for them, so their sections end by an observed death (the overlap they
        # caused is counted either way)
        with self.mon_lock:
            pids = [pid for pid, ln in self.starts.items() if ln.tag.endswith(".w")]
        try:
            wait_until(lambda: not any(alive(p) for p in pids), 35, 0.1, "escaped workers")
        except TimeoutError:
            pass

    def heal_all(self) -> None:
        self.cl.heal()
        for ag in self.cl.agents:        # an agent a fault left down (interrupted force_leave)
            if not ag.running():
                ag.start()
        try:
            self.cl.wait_ready(90)
        except TimeoutError as e:
            self.problem(f"cluster not ready for the final cleanup: {e}")

    def close(self) -> None:
        self.stop_flag = True
        for c in self.contenders:
            c.running = False
        for c in self.contenders:
            if c.proc is not None and c.proc.poll() is None:
                signal_pid(c.proc.pid, signal.SIGKILL)
        self.deaths.close()

    # -- faults
    def pick(self, first_round: list[str]):
        h = self.holder()
        ok = set(KINDS)
        if S.MODES[self.mode]["cmd"] == "lib":   # execute() has no stop signal (see stop())
            ok.discard("sigterm")
        if not h:
            ok -= HOLDER_KINDS
        if not h and not self.agent.kv_session(self.key):
            ok.discard("destroy")
        left = self.deadline - time.monotonic()
        if left < 60:
            ok -= {"node_part", "rolling", "leader_kill", "force_leave", "agent_leave", "stall"}
        for k in list(first_round):
            if k in ok:
                first_round.remove(k)
                return k, h
        if not ok:
            return "", h
        kinds = sorted(ok)
        return self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0], h

    def contender_of(self, tag: str):
        return next((c for c in self.contenders if c.tag == tag), None)

    def inject(self, kind: str, h) -> dict:
        rng, cl = self.rng, self.cl
        rec = {"kind": kind, "t": mono(), "t_rel_s": round(time.monotonic() - self.t_start, 3)}
        if h:
            c, ln = h
            rec.update(tag=ln.tag, agent=c.agent.name)
        if kind == "kill9":
            c, ln = h
            w = c.wrapper_pid()
            if c.cmd == "sidecar":     # the sidecar crashes; its application sees it gone
                signal_pid(w, signal.SIGKILL)
            else:   # the container dies: the wrapper and every process of its holder
                signal_pid(c.proc.pid, signal.SIGKILL)
                signal_pid(ln.pid, signal.SIGKILL)
                with self.mon_lock:
                    mine = [pid for pid, x in self.starts.items()
                            if checker.holder_of(x.tag) == c.tag]
                for pid in mine:
                    signal_pid(pid, signal.SIGKILL)
        elif kind == "force_leave":
            c, _ = h
            ag = c.agent
            cl.note(f"kill -9 {ag.name}")
            ag.kill9()
            pace = rng.uniform(0.3, 2.0)
            C.pace(pace)
            srv = cl.any_server()
            rec.update(agent_down=ag.name, force_leave_after_s=round(pace, 2),
                       force_leave_exit=srv.consul_cli("force-leave", ag.name))
            # the blind holder runs on until its own deadline; keep the agent down a while
            self.pace(rng.uniform(3, 25))
            ag.start()
            try:
                cl.wait_ready(90)
            except TimeoutError as e:
                self.problem(f"cluster not ready 90 s after restarting {ag.name}: {e}")
            rec["duration_s"] = round((mono() - rec["t"]) / 1e9, 2)
        elif kind == "agent_leave":
            c, _ = h
            ag = c.agent
            cl.note(f"consul leave {ag.name}")
            ag.graceful_leave()
            self.pace(rng.uniform(1, 10))
            ag.start()
            try:
                cl.wait_ready(90)
            except TimeoutError as e:
                self.problem(f"cluster not ready 90 s after {ag.name} left and restarted: {e}")
            rec["duration_s"] = round((mono() - rec["t"]) / 1e9, 2)
        elif kind == "stall":
            c, _ = h
            pid = c.wrapper_pid()
            # longer than the holder's deadline (fast: 2 s after the last pass; default: 30 s
            # after the last renew), bounded
            d = rng.uniform(*S.STALL_SECONDS[self.setting])
            rec.update(duration_s=round(d, 2), wrapper_pid=pid)
            if pid:
                signal_pid(pid, signal.SIGSTOP)
                try:
                    self.pace(d)
                finally:
                    signal_pid(pid, signal.SIGCONT)
        elif kind == "sigterm":
            phase = rng.choice(SIGTERM_PHASES)
            rec["phase"] = phase
            holder_c = h[0] if h else None
            others = [x for x in self.contenders if x is not holder_c and x.proc is not None
                      and x.proc.poll() is None]
            target = None
            if phase in ("takeover", "stopping") and holder_c is not None:
                sid = self.session_of(holder_c)
                if sid:
                    C.http(cl.any_server().addr, "PUT", "/v1/session/destroy/" + sid)
                    rec["destroyed"] = sid
                C.pace(rng.uniform(0.05, 1.5))
                target = holder_c if phase == "stopping" else (rng.choice(others) if others else None)
            elif phase == "holding":
                target = holder_c
            elif phase == "acquiring":
                # the most recently (re)spawned wrapper: it is creating its session / acquiring
                target = max(others, key=lambda x: x.spawned_at, default=None)
            else:
                target = rng.choice(others) if others else None
            if target is not None:
                rec["target"] = target.tag
                signal_pid(target.wrapper_pid() or target.proc.pid, signal.SIGTERM)
        elif kind == "node_part":
            c, _ = h
            d = rng.uniform(2, 20) if rng.random() < 0.75 else rng.uniform(20, 45)
            only_servers = rng.random() < 0.3   # gossip with the other clients still flows
            rec.update(duration_s=round(d, 2), scope="servers" if only_servers else "all")
            cl.partition_node(c.agent, only_servers=only_servers)
            self.hold_fault(d)
        elif kind == "http_cut":
            c, _ = h
            d = rng.uniform(1, 8) if rng.random() < 0.6 else rng.uniform(8, 30)
            mode = rng.choice(["drop", "reset"])
            rec.update(duration_s=round(d, 2), mode=mode)
            cl.cut_contender(c.uid, mode)
            self.hold_fault(d, wait_ready=False)
        elif kind == "leader_part":
            d = rng.uniform(3, 20)
            rec["duration_s"] = round(d, 2)
            lead = cl.partition_leader()
            rec["node"] = lead.name if lead else None
            self.hold_fault(d)
        elif kind == "heal":
            holder_agent = h[0].agent if h else None
            lead = cl.leader()
            cands = [a for a in cl.clients if a is not holder_agent] + \
                    [s for s in cl.servers if s is not lead]
            node = rng.choice(cands)
            d = rng.uniform(2, 15)
            rec.update(node=node.name, duration_s=round(d, 2))
            cl.partition_node(node)
            self.hold_fault(d)
        elif kind == "leader_kill":
            down = rng.uniform(0, 5)
            rec["down_s"] = round(down, 2)
            lead = cl.kill_leader(down, wait=90)
            rec["node"] = lead.name if lead else None
            rec["duration_s"] = round((mono() - rec["t"]) / 1e9, 2)
        elif kind == "rolling":
            cl.rolling_restart(wait=90)
            rec["duration_s"] = round((mono() - rec["t"]) / 1e9, 2)
        elif kind == "destroy":
            sid = self.session_of(h[0]) if h else self.agent.kv_session(self.key)
            rec["session"] = sid
            if sid:
                rec["http"] = C.http(cl.any_server().addr, "PUT", "/v1/session/destroy/" + sid)[0]
        elif kind == "delete":
            rec["http"] = C.http(cl.any_server().addr, "DELETE", "/v1/kv/" + self.key)[0]
        rec["holder"] = h[1].tag if h else None
        rec["t_end"] = mono()
        return rec

    def hold_fault(self, seconds: float, wait_ready: bool = True) -> None:
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end and not self.stop_flag:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        finally:
            rejoin = self.rng.random() < 0.5
            self.cl.heal(rejoin=rejoin)
            self.faults_rejoin = getattr(self, "faults_rejoin", 0) + rejoin
        if wait_ready:
            try:
                self.cl.wait_ready(90)
            except TimeoutError as e:
                self.problem(f"cluster not ready 90 s after heal: {e}")

    # -- extra checks and figures
    def failovers(self) -> dict:
        """Per kind, over the faults that hit a live holder: how often the fault cost the holder
        its command (its child ended by a signal or died, not by finishing its work, before the
        next fault), and for those the failover: fault start -> next START of another contender."""
        lines = self.lw.lines
        starts = sorted((ln for ln in lines if ln.kind == "START"), key=lambda x: x.t)
        start_by_tag = {ln.tag: ln for ln in starts}
        end_by_pid = {ln.pid: ln for ln in lines if ln.kind == "END"}
        faults = sorted(self.faults, key=lambda f: f["t"])
        per: dict[str, list[float]] = {k: [] for k in KINDS}
        kept = {k: 0 for k in KINDS}
        for i, f in enumerate(faults):
            st = start_by_tag.get(f.get("holder") or "")
            if st is None:
                continue
            nxt_fault = faults[i + 1]["t"] if i + 1 < len(faults) else float("inf")
            end = end_by_pid.get(st.pid)
            natural = end is not None and (end.extra or "").startswith("done")
            end_t = end.t if end is not None else self.deaths.dead_at(st.pid)
            lost = not natural and end_t is not None and end_t < nxt_fault
            nxt = next((s for s in starts if s.t > f["t"] and s.tag != st.tag), None)
            if lost and nxt is not None:
                per[f["kind"]].append((nxt.t - f["t"]) / 1e9)
            else:
                kept[f["kind"]] += 1
        return {k: dict(checker.summary(v), kept=kept[k], samples=[round(x, 3) for x in v])
                for k, v in per.items()}

    def exit8_check(self):
        """Exit 8 means the agent never answered since the wrapper started (README, "Exit
        codes"). Justified: a wrapper started while its own link to the agent was cut (http_cut
        of its contender) or while its agent was down; a fault that only leaves its agent
        without a leader is waited out instead."""
        cuts = [(f["tag"].rsplit("g", 1)[0], f["t"], f["t_end"]) for f in self.faults
                if f["kind"] == "http_cut" and f.get("tag")]
        # an agent killed (force_leave) or left (agent_leave) refuses connections until restarted
        down = [(f.get("agent"), f["t"], f["t_end"] + int(5e9)) for f in self.faults
                if f["kind"] in ("force_leave", "agent_leave")]
        bad, cut_off = [], 0
        for c in self.contenders:
            for tag, rc, t0, _t1 in c.exit_times:
                if rc != 8:
                    continue
                who = tag.rsplit("g", 1)[0]
                if any(w == who and a <= t0 <= b for w, a, b in cuts):
                    cut_off += 1
                elif any(ag == c.agent.name and a <= t0 <= b for ag, a, b in down):
                    cut_off += 1
                else:
                    bad.append(tag)
        return ("exit 8 only where justified", not bad,
                f"{cut_off} started while their own link to the agent was cut or their agent "
                f"was down; unjustified {bad[:5]}")

    def check(self):
        checks, detail = super().check()
        checks.append(self.exit8_check())
        detail["failover"] = self.failovers()
        return checks, detail


def split_combo(combo: str) -> tuple[str, str]:
    """"MODE/SETTING" (a plain SETTING means mode run) -> (mode, setting)."""
    mode, _, setting = combo.rpartition("/")
    return mode or "run", setting


def run_setting(a, cl: C.Cluster, combo: str, trials: int, budget: float, uid_base: int) -> dict:
    mode, setting = split_combo(combo)
    sa = argparse.Namespace(**vars(a))
    sa.trials, sa.budget = trials, budget
    sa.min_trials = trials if not a.allow_partial else 0
    sa.takeover_delay = S.takeover_delay(setting)     # > 0: every overlap fails (strict)
    ch = ClusterChaos(sa, cl, setting, uid_base, mode)
    setting = combo
    ch.t0_mono = mono()
    log(f"[{setting}] flags {' '.join(ch.flags) or '(defaults)'}; trials {trials}, budget {budget:.0f}s")
    checks, detail = [], {}
    interrupted = False
    try:
        ch.run()
        checks, detail = ch.check()
    except KeyboardInterrupt:
        interrupted = True
        checks = [("run completed", False, "interrupted")]
        try:     # still check what ran (the contenders are stopped by now or killed below)
            more, detail = ch.check()
            checks += more
        except Exception:  # noqa: BLE001
            pass
    except Exception as e:  # noqa: BLE001
        checks = [("run completed", False, repr(e))]
    finally:
        ch.close()
        try:     # the raw fault records stay with the logs (not committed)
            with open(os.path.join(ch.work, "faults.json"), "w") as f:
                json.dump(ch.faults, f, default=str)
        except OSError:
            pass
        out = {"setting": setting, "mode": mode, "limit": ch.limit,
               "flags": f"{S.MODES[mode]['cmd']} " + (" | ".join(
                   " ".join(c.flags) or "(defaults)" for c in ch.contenders[:2]) or
                   " ".join(ch.flags) or "(defaults)"),
               "trials": sum(ch.counts.values()), "counts": ch.counts,
               "with_live_holder": ch.on_holder, "seconds": round(time.monotonic() - ch.t_start),
               "sections": detail.get("sections", 0), "checks": checks,
               "overlaps": detail.get("overlaps", []), "exit_codes": detail.get("exit_codes", {}),
               "failover": detail.get("failover", {}), "starved": len(ch.starved),
               "problems": detail.get("problems", ch.problems)[:10], "seed": sa.seed,
               "logs": ch.work, "interrupted": interrupted}
        print_setting(out)
    return out


def merge_setting(runs: list[dict]) -> dict:
    """One setting's result over the clusters that ran it side by side: counts and failover
    samples add up; every cluster's checks stay listed under its slot."""
    o = dict(runs[0])
    o["clusters"] = [{"slot": r.get("slot", 0), "trials": r["trials"], "seconds": r["seconds"],
                      "sections": r["sections"], "seed": r["seed"], "checks": r["checks"],
                      "logs": r.get("logs", "")} for r in runs]
    for key in ("counts", "with_live_holder", "exit_codes"):
        total: dict = {}
        for r in runs:
            for k, v in r.get(key, {}).items():
                total[k] = total.get(k, 0) + v
        o[key] = total
    for key in ("trials", "sections", "starved"):
        o[key] = sum(r.get(key, 0) for r in runs)
    o["seconds"] = max(r["seconds"] for r in runs)
    o["overlaps"] = [ov for r in runs for ov in r.get("overlaps", [])]
    o["problems"] = [p for r in runs for p in r.get("problems", [])][:10]
    o["checks"] = [(f"cluster {r.get('slot', 0)}: {name}", ok, info)
                   for r in runs for name, ok, info in r["checks"]]
    failover = {}
    for k in KINDS:
        samples = [x for r in runs for x in r.get("failover", {}).get(k, {}).get("samples", [])]
        kept = sum(r.get("failover", {}).get(k, {}).get("kept", 0) for r in runs)
        failover[k] = dict(checker.summary(samples), kept=kept, samples=samples)
    o["failover"] = failover
    o["interrupted"] = any(r.get("interrupted") for r in runs)
    return o


def print_setting(o: dict) -> None:
    print(f"\n[{o['setting']}] {o['flags']}: {o['trials']} fault trials in {o['seconds']}s, "
          f"{o['sections']} critical sections")
    print("  faults: " + ", ".join(f"{k}={v}" for k, v in o["counts"].items()))
    for name, ok, info in o["checks"]:
        print(check_line(ok, name, info))
    for ov in o["overlaps"][:5]:
        print(f"    overlap: {ov}")
    for k, f in o["failover"].items():
        if f.get("n"):
            print(f"  failover after {k:<12} n={f['n']:<3} median {f['median_s']}s "
                  f"p95 {f['p95_s']}s max {f['max_s']}s (holder's command not cut short: {f['kept']})")


def write_summary(path: str, a, results: list[dict], source: str) -> None:
    lines = ["# lockwrap on a real Consul cluster: chaos summary", "",
             f"`make chaos-cluster` (chaos/cluster_chaos.py), {time.strftime('%Y-%m-%d')}; lockwrap "
             f"source {source}; "
             f"Consul 1.8.7, 3 servers + 3 client agents on loopback, {a.contenders} contenders "
             f"per cluster; {max(1, a.clusters)} cluster(s) side by side; "
             f"machine: {machine_info()['nproc']} cores.", ""]
    total = sum(o["trials"] for o in results)
    all_ok = all(c[1] for o in results for c in o["checks"])
    lines += [f"**{total} fault trials, {sum(len(o['overlaps']) for o in results)} overlaps, "
              f"{'every check passing' if all_ok else 'CHECKS FAIL'}.**", "",
              "Per mode (kit/settings.py MODES; the command keeps running "
              f"{S.STOP_FRACTION:.0%} of its kill grace after SIGTERM; a section ends when its "
              "process is gone; `-n 2`: an overlap is 3 at once):", "",
              "| mode/setting | limit | trials | sections | overlaps | max overlap ms | checks |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in results:
        nfail = sum(1 for c in o["checks"] if not c[1])
        lines.append(f"| {o['setting']} | {o.get('limit', 1)} | {o['trials']} | {o['sections']} | "
                     f"{len(o['overlaps'])} | "
                     f"{max((ov.get('overlap_ms', 0) for ov in o['overlaps']), default=0):.0f} | "
                     f"{'pass' if not nfail else f'{nfail} FAIL'} |")
    lines.append("")
    for o in results:
        ok = all(c[1] for c in o["checks"])
        lines += [f"## setting `{o['setting']}`: {o['flags']}", "",
                  f"{o['trials']} fault trials in {o['seconds']} s, {o['sections']} critical sections, "
                  f"seed {o['seed']}: **{'all checks pass' if ok else 'CHECKS FAIL'}**, "
                  f"{len(o['overlaps'])} overlaps"
                  + (f"; {len(o['clusters'])} clusters: " + ", ".join(
                      f"slot {c['slot']} {c['trials']} trials in {c['seconds']} s (seed {c['seed']})"
                      for c in o["clusters"]) if o.get("clusters") else "") + ".", "",
                  "| fault | trials | with live holder | command not cut short | cut short | "
                  "failover median s | p95 s | max s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k in KINDS:
            f = o["failover"].get(k, {})
            lines.append(f"| {k} | {o['counts'].get(k, 0)} | {o['with_live_holder'].get(k, 0)} | "
                         f"{f.get('kept', 0)} | {f.get('n', 0)} | {f.get('median_s', '-')} | "
                         f"{f.get('p95_s', '-')} | {f.get('max_s', '-')} |")
        lines += ["", "\"Cut short\": the holder's command was stopped or killed (not finished) before "
                  "the next fault; failover = fault start to the next START of another contender.",
                  ""]
        for name, okc, info in o["checks"]:
            lines.append(f"- {'PASS' if okc else 'FAIL'} {name}: {info[:300]}")
        lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump([{k: v for k, v in o.items() if k not in ("logs", "problems")} for o in results],
                  f, indent=1, default=str)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockwrap", default=os.environ.get("LOCKWRAP_BIN") or
                    os.path.join(ROOT, "target", "release", "lockwrap"))
    ap.add_argument("--setting", choices=["default", "fast", "both"], default="both")
    ap.add_argument("--trials", type=int, default=500, help="fault trials in all (split over settings)")
    ap.add_argument("--budget", type=float, default=7200.0, help="seconds for all fault phases")
    ap.add_argument("--allow-partial", action="store_true",
                    help="do not fail when the budget ran out before --trials")
    ap.add_argument("--quick", action="store_true", help="~10 trials (development)")
    ap.add_argument("--contenders", type=int, default=3)
    ap.add_argument("--holder-bias", type=float, default=1.0)
    ap.add_argument("--holder-wait", type=float, default=90.0)
    ap.add_argument("--hold-min", type=float, default=2.0)
    ap.add_argument("--hold-max", type=float, default=8.0)
    ap.add_argument("--gap-min", type=float, default=0.2)
    ap.add_argument("--gap-max", type=float, default=2.0)
    ap.add_argument("--wrapper-timeout", type=float, default=180.0)
    ap.add_argument("--max-gap", type=float, default=80.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--summary", default="", help="write the short markdown (+ .json) summary here")
    ap.add_argument("--modes", default="all",
                    help="comma-separated modes of kit/settings.py MODES, or all")
    ap.add_argument("--combos", default="", help=argparse.SUPPRESS)  # a job: MODE/SETTING=TRIALS,…
    ap.add_argument("--clusters", type=int, default=1,
                    help="clusters side by side (slots 1..N), split evenly over the settings")
    ap.add_argument("--result-json", default="", help=argparse.SUPPRESS)  # a job of --clusters
    a = ap.parse_args()
    a.short = a.quick
    a.strict = True
    a.report = ""
    if a.quick:
        a.trials, a.budget = min(a.trials, 10), min(a.budget, 300.0)
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    why = C.ensure_tools()
    if why:
        print(f"chaos-cluster: SKIP: {why}")
        return 0
    try:
        subprocess.run([a.lockwrap, "run", "--help"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        print(f"chaos-cluster: {a.lockwrap} is missing or `run --help` fails")
        return summary(0, 1)
    become_subreaper()
    C.install_signal_handlers()
    settings = ["default", "fast"] if a.setting == "both" else [a.setting]
    modes = S.CHAOS_MODES if a.modes == "all" else [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in S.MODES]
    if bad:
        print(f"chaos-cluster: unknown mode(s) {bad}; known {list(S.MODES)}")
        return 2
    # the library has no timing flags: one setting is enough
    combos = [f"{m}/{st}" for m in modes for st in settings
              if not (S.MODES[m].get("fixed_settings") and st != settings[0])]
    if a.combos:
        plan = [(c.split("=")[0], int(c.split("=")[1])) for c in a.combos.split(",")]
    else:
        plan = None
    if a.clusters > 1:
        return run_parallel(a, combos)
    return run_sequential(a, combos, plan)


def run_sequential(a, settings: list[str], plan=None) -> int:
    """One cluster (slot LOCKWRAP_CLUSTER_SLOT), the MODE/SETTING combos one after the other
    (`plan`: (combo, trials) pairs; else the trials split evenly)."""
    source = source_revision()
    log(f"seed {a.seed}; lockwrap {a.lockwrap}; "
        f"cluster slot {C.SLOT}")
    cl = C.Cluster()
    results: list[dict] = []
    err = None
    t0 = time.monotonic()
    try:
        cl.start()
        if plan is None:
            plan = [(st, 0) for st in settings]
        est = [max(1, n) * TRIAL_SECONDS[split_combo(c)[1]] for c, n in plan]
        for i, (st, n) in enumerate(plan):
            left = len(plan) - i
            budget = (a.budget - (time.monotonic() - t0)) * est[i] / sum(est[i:])
            done = sum(r["trials"] for r in results)
            trials = n or max(1, (a.trials - done) // left)
            results.append(run_setting(a, cl, st, trials, budget, C.CONTENDER_UID_BASE + 1 + 10 * i))
            results[-1]["slot"] = C.SLOT
            if results[-1]["interrupted"]:
                raise KeyboardInterrupt
            wait_until(lambda: cl.ready() == "", 90, 0.2, "cluster ready between settings")
    except KeyboardInterrupt:
        err = "interrupted"
    except Exception as e:  # noqa: BLE001
        err = repr(e)
    finally:
        cl.stop()
        C.run_cleanups()
    if a.result_json:
        with open(a.result_json, "w") as f:
            json.dump({"results": results, "error": err}, f, default=str)
    if a.summary and results:
        write_summary(a.summary, a, results, source)
        log(f"summary written to {a.summary}")
    return report(results, [err] if err else [], time.monotonic() - t0, cl.work)


# Seconds one fault trial takes per setting, measured on this kind of machine (2 cores): a trial
# lasts until the cluster and a holder are back, so the defaults' 15 s TTL + 15 s lock-delay make
# it ~2.4 times as long as the fast setting's. Jobs share the trials in inverse proportion, so the
# clusters of both settings finish together.
TRIAL_SECONDS = {"default": 23.0, "fast": 9.5}


def plan_combos(combos: list[str], clusters: int, trials: int) -> list[tuple[int, list[tuple[str, int]]]]:
    """(slot, [(combo, trials), …]) per cluster: trials over the MODE/SETTING combos in inverse
    proportion to TRIAL_SECONDS (each combo gets about the same time), the combos dealt to the
    clusters so the estimated times are balanced (longest first)."""
    w = [1.0 / TRIAL_SECONDS[split_combo(c)[1]] for c in combos]
    counts = [max(1, int(trials * x / sum(w))) for x in w]
    for k in range(max(0, trials - sum(counts))):
        counts[k % len(counts)] += 1
    jobs: list[list[tuple[str, int]]] = [[] for _ in range(max(1, clusters))]
    load = [0.0] * len(jobs)
    order = sorted(zip(combos, counts), key=lambda x: -x[1] * TRIAL_SECONDS[split_combo(x[0])[1]])
    for combo, n in order:
        j = load.index(min(load))
        jobs[j].append((combo, n))
        load[j] += n * TRIAL_SECONDS[split_combo(combo)[1]]
    return [(slot + 1, js) for slot, js in enumerate(jobs) if js]


def plan_jobs(settings: list[str], clusters: int, trials: int) -> list[tuple[int, str, int]]:
    """(slot, setting, trials) for each cluster: clusters split evenly over the settings, trials
    in inverse proportion to TRIAL_SECONDS, so every job needs about the same time."""
    per = max(1, clusters // len(settings))
    jobs = [st for st in settings for _ in range(per)]
    weights = [1.0 / TRIAL_SECONDS[st] for st in jobs]
    counts = [int(trials * w / sum(weights)) for w in weights]
    for k in range(trials - sum(counts)):       # rounding remainder, one each
        counts[k % len(counts)] += 1
    return [(slot + 1, st, n) for slot, (st, n) in enumerate(zip(jobs, counts))]


PASS_THROUGH = ("contenders", "holder_bias", "holder_wait", "hold_min", "hold_max", "gap_min",
                "gap_max", "wrapper_timeout", "max_gap", "lockwrap")


def run_parallel(a, settings: list[str]) -> int:
    """Each job is this script on its own cluster slot (kit/cluster.py: own addresses,
    uids, chains); the parent only waits, forwards a stop, and merges the results."""
    source = source_revision()
    work = tempfile.mkdtemp(prefix="lockwrap-chaos-cluster-")
    jobs = plan_combos(settings, a.clusters, a.trials)
    log(f"seed {a.seed}; {len(jobs)} clusters side by side: "
        + "; ".join(f"slot {slot} " + ",".join(f"{c} x{n}" for c, n in js) for slot, js in jobs)
        + f"; logs in {work}")
    procs = []
    t0 = time.monotonic()
    errors: list[str] = []
    try:
        for slot, js in jobs:
            n = sum(k for _, k in js)
            argv = [sys.executable, "-m", "chaos.cluster_chaos", "--setting", a.setting,
                    "--combos", ",".join(f"{c}={k}" for c, k in js), "--trials", str(n),
                    "--budget", str(a.budget), "--seed", str(a.seed + slot),
                    "--result-json", os.path.join(work, f"slot{slot}.json")]
            for name in PASS_THROUGH:
                argv += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
            if a.allow_partial:
                argv.append("--allow-partial")
            env = dict(os.environ, LOCKWRAP_CLUSTER_SLOT=str(slot))
            with open(os.path.join(work, f"slot{slot}.log"), "wb") as out:
                procs.append((slot, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                                     stderr=subprocess.STDOUT)))
        for _, p in procs:
            p.wait()
    except KeyboardInterrupt:
        errors.append("interrupted")
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)      # each job removes its rules and agents
        for _, p in procs:
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
    runs: list[dict] = []
    for slot, p in procs:
        try:
            with open(os.path.join(work, f"slot{slot}.json")) as f:
                got = json.load(f)
        except (OSError, ValueError) as e:
            errors.append(f"cluster {slot}: no result (exit {p.returncode}, {e}); "
                          f"see {work}/slot{slot}.log")
            continue
        runs += got["results"]
        if got.get("error"):
            errors.append(f"cluster {slot}: {got['error']}")
    results = [merge_setting([r for r in runs if r["setting"] == st])
               for st in settings if any(r["setting"] == st for r in runs)]
    asked = sum(k for _, js in jobs for _, k in js)
    total = sum(r["trials"] for r in results)
    if total < asked and not a.allow_partial:
        errors.append(f"{total} trials of {asked}")
    if a.summary and results:
        write_summary(a.summary, a, results, source)
        log(f"summary written to {a.summary}")
    return report(results, errors, time.monotonic() - t0, work)


def report(results: list[dict], errors: list[str], seconds: float, work: str) -> int:
    tally = Tally()
    for r in results:
        tally.checks(r["checks"], prefix=f"{r['setting']}: ")
    for err in errors:
        tally.record(err, False)
        print(check_line(False, "run", err))
    total = sum(r["trials"] for r in results)
    print(f"\nchaos-cluster: {total} trials over {len(results)} setting(s) in "
          f"{seconds:.0f}s; work dir {work}")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
