"""Deterministic cluster scenarios for the paths by which two holders could happen besides the
partitions of scenarios.py's table: one fast scenario per path (`make cluster-test` runs them
after the table; `python3 -m tests.cluster.scenarios --only NAME` runs one).

Every contender's command is kit/programs/cluster_child.py: on SIGTERM it keeps running ~80 % of
its kill grace (kit.settings.STOP_FRACTION), and a section ends when its process is really gone
(the death watcher's pidfd), so an overlap while the old command is stopping counts. The assertion is
always the same: no more than `limit` sections at once (1, or 2 for `-n 2`), fencing tokens
increase, every section ended. Against a build without the corresponding fix these scenarios are
EXPECTED TO FAIL (they reproduce the bugs); they are never weakened to pass.

PATHS (name: what happens -> what must hold):
  sem-destroy-stopping   `-n 2`, kill grace 5 s, 3 contenders: the session of one holder is
                         destroyed while its command needs 4 s to stop -> the waiting third must
                         not start before that command is gone (at most 2 at once)
  sem-lock-delete        `-n 2`, 4 contenders: the semaphore's `.lock` entry is deleted (and, on a
                         second key, the whole prefix with `?recurse`) while both holders run ->
                         the waiting third creates `.lock` again, a fourth arrives 1 s later, and
                         neither may start before both old commands (4 s to stop) are gone (the
                         third started at once before one fix; the fourth took the other, free
                         slot of the new `.lock` before the next)
  stop-in-takeover       `execute` defaults (lock-delay 0, kill grace 5 s): the holder's session is
                         destroyed, the next contender takes the lock and, during its takeover
                         wait, gets SIGTERM -> the third must not start before the first holder's
                         command (4 s to stop) is gone
  force-leave-blind      `execute` defaults: kill -9 of the holder's client agent (the holder is
                         blind, its command runs on), then `consul force-leave` of that node from
                         a server (docs' runbook step) -> nobody starts before the blind holder's
                         command is gone
  escape-worker          fast setting, `run`: the command leaves a `setsid -f` worker (30 s) and
                         exits -> the next holder must not start while the worker lives; and the
                         same with `execute` and a `nohup … &` worker (escape-worker-nohup)
  escape-worker-destroy  `execute --lock-delay 0` (kill grace 5 s, takeover 8 s): the
                         running command has left a `setsid -f` worker, both ignore SIGTERM; the
                         holder's session is destroyed -> command and worker must both be gone
                         (SIGKILL at the end of one kill grace) before the next holder starts:
                         the worker gets its TERM with the group, not after the command's grace.
                         (The build before that change passes too: the guardian's deadline, 2 s
                         after the loss here, TERMs the whole tree; the scenario checks the bound
                         both keep.)
  stall-sigstop          fast setting: SIGSTOP of the holder's lockwrap alone for 6 s (longer than
                         its 2 s deadline), then SIGCONT -> no overlap (docs/timing.md lists this
                         as an assumption of the model; the scenario measures what happens)
  stderr-pipe            fast setting, -vv, the holder's stderr a pipe nobody reads, the holder's
                         link cut for 5 s (lots of log lines) -> no overlap, the standby takes over
  lib-execute-takeover   the library's LockManager::execute (examples/lib_execute): the lock key
                         is deleted under the holder (no lock-delay) -> the next one must not
                         start before the old command (4 s to stop) is gone. LockManager::execute
                         has no way to be stopped by a signal, so lib contenders are stopped with
                         SIGKILL (of the process and its command) at the end
  sidecar-stepdown       two `lockwrap sidecar`s (defaults) with an application reading the status
                         file (kit/programs/sidecar_app.py); the leader sidecar gets SIGTERM (its
                         pod is deleted) -> the other must not report leadership before the first
                         application, which stops within the kill grace of the "not leader"
                         report, is done
"""
from __future__ import annotations

import os
import signal
import time

from kit import checker
from kit import cluster as C
from kit import settings as S
from kit.logs import LogWatcher
from kit.procs import alive, log, mono, signal_pid, wait_until

PATHS = ["sem-destroy-stopping", "sem-lock-delete", "stop-in-takeover", "force-leave-blind", "escape-worker",
         "escape-worker-destroy", "escape-crash", "mixed-grace-delete", "stall-sigstop", "stderr-pipe", "lib-execute-takeover", "sidecar-stepdown"]
LONG_HOLD = ["3600", "3600"]   # MIN MAX of a holder that holds until told


class PathGroup:
    """One key, contenders of one mode, the new child; checked with the mode's limit."""

    def __init__(self, suite, name: str, mode: str, setting: str | None, args: list[str] | None = None):
        self.s = suite
        self.name = name
        self.mode = S.MODES[mode]
        self.key = f"cluster-test/{name}"
        self.logfile = C.make_logfile(suite.cl, f"{name}.log")
        self.lw = LogWatcher(self.logfile)
        self.limit = self.mode["limit"]
        self.args = args if args is not None else (
            [] if self.mode.get("fixed_settings") else S.setting(setting or "default", suite.a.lockwrap)
            + list(self.mode["extra"]))
        self.contenders: list[C.Contender] = []
        self.exits: dict[str, int | None] = {}
        self.result: dict = {"scenario": name, "args": f"{self.mode['cmd']} " + (" ".join(self.args) or "(defaults)")}
        self.extra_pids: list[int] = []

    def spawn(self, agent, hold=LONG_HOLD, escape: str = "", stderr_pipe: bool = False,
              args: list[str] | None = None, stop: float | None = None) -> C.Contender:
        """`stop`: how long the command (and its worker) keeps running after SIGTERM; by default
        80 % of its kill grace."""
        args = self.args if args is None else args
        tag = f"{self.name}-{len(self.contenders)}"
        if stop is None:
            stop = (S.stop_time(args) if self.mode["cmd"] != "lib"
                    else S.STOP_FRACTION * S.DEFAULT_KILL_GRACE)
        child_args = [*hold, str(stop)]
        if escape:
            child_args.append(escape)
        c = C.Contender(self.s.cl, agent, self.s.a.lockwrap, self.key, args, self.logfile, tag,
                        cmd=self.mode["cmd"], child_args=child_args, stderr_pipe=stderr_pipe)
        self.contenders.append(c)
        return c.start()

    def starts(self):
        # the suite's monitor thread polls the log (and watches every START's death)
        return [ln for ln in self.lw.lines if ln.kind == "START"]

    def wait_start(self, c: C.Contender, timeout: float = 60.0):
        def got():
            ln = next((x for x in self.starts() if C_tag(x.tag) == c.tag), None)
            if ln is None and c.poll() is not None:
                raise RuntimeError(f"{c.tag} exited {c.poll()} before START: {c.stderr()[-400:]}")
            return ln
        return wait_until(got, timeout, 0.01, f"START of {c.tag}")

    def session_of(self, c: C.Contender) -> str | None:
        """The Consul session of contender c (its session name carries its wrapper pid)."""
        pid = c.wrapper_pid()
        for s in self.s.cl.sessions():
            name = s.get("Name", "")
            if pid and S.session_of_pid(name, pid):
                return s["ID"]
        if self.limit == 1 and c is self.holder_contender():
            v = self.s.cl.kv(self.key)
            return v.get("Session") if v else None
        return None

    def holder_contender(self):
        live = [ln for ln in self.starts() if alive(ln.pid)]
        if not live:
            return None
        tag = C_tag(max(live, key=lambda x: x.t).tag)
        return next((c for c in self.contenders if c.tag == tag), None)

    def destroy(self, c: C.Contender) -> str:
        sid = wait_until(lambda: self.session_of(c), 10, 0.05, f"session of {c.tag}")
        st = C.http(self.s.cl.any_server().addr, "PUT", "/v1/session/destroy/" + sid)[0]
        self.s.cl.note(f"destroy session {sid} of {c.tag}: HTTP {st}")
        return sid

    def idle_until_settled(self, timeout: float) -> None:
        """Until every START has ended (or timeout)."""
        def done():
            st = self.starts()
            return st and all(not alive(ln.pid) for ln in st)
        try:
            wait_until(done, timeout, 0.05, f"{self.name}: every section ended")
        except TimeoutError:
            pass

    def stop_all(self) -> None:
        if self.mode["cmd"] == "lib":   # execute() cannot be cancelled: kill process + command
            for c in self.contenders:
                if c.tag not in self.exits and c.poll() is not None:
                    self.exits[c.tag] = c.poll()
            for ln in self.starts():
                if alive(ln.pid):
                    c = next((x for x in self.contenders if x.tag == C_tag(ln.tag)), None)
                    if c is not None and c.tag not in self.exits:
                        c.kill9()
                        self.exits[c.tag] = c.proc.wait(timeout=10)
                        self.exits[c.tag + " (SIGKILLed, then its command)"] = None
                    signal_pid(ln.pid, signal.SIGKILL)
        for c in self.contenders:
            if c.tag not in self.exits:
                self.exits[c.tag] = c.terminate(timeout=S.DEFAULT_KILL_GRACE + 15)
        # escaped workers are nobody's children: end them by PID (after the verdict's data is in)
        deadline = time.monotonic() + 5
        for ln in self.starts():
            if alive(ln.pid) and time.monotonic() < deadline:
                self.extra_pids.append(ln.pid)

    def check(self, t_fault: int | None, faulted: str | None = None) -> bool:
        """Zero overlap, fencing, every section ended; the next START after `t_fault` by another
        contender than `faulted` (whose own late START, a worker's, is no failover)."""
        time.sleep(0.1)        # the monitor reads the last records
        lines = list(self.lw.lines)
        starts = [ln for ln in lines if ln.kind == "START"]
        # a worker still alive now is ended "now" by the checker (it overlapped at least until now)
        ivs, unended = checker.intervals(lines, self.s.deaths.dead_at, lambda _pid: False, mono)
        hard = checker.overlaps_n(ivs, self.s.t0, self.limit)
        bad_tok, missing = checker.fencing(starts) if self.limit == 1 else ([], [])
        still = [ln.tag for ln in starts if alive(ln.pid)]
        for pid in [ln.pid for ln in starts if alive(ln.pid)]:
            signal_pid(pid, signal.SIGKILL)
        r = self.result
        r.update(sections=len(ivs), overlaps=len(hard),
                 overlap_max_ms=max((o["overlap_ms"] for o in hard), default=0.0),
                 fencing_violations=bad_tok + [f"no token: {m}" for m in missing],
                 unended=unended, still_running_at_check=still, exit_codes=self.exits)
        if t_fault is not None:
            after = [ln for ln in starts if ln.t > t_fault
                     and not (faulted and ln.tag.startswith(faulted))]
            if after:
                r["next_start_s"] = round((after[0].t - t_fault) / 1e9, 2)
        ok = not hard and not bad_tok and not missing and not unended
        r["verdict"] = "zero overlap" if not hard else f"OVERLAP x{len(hard)}"
        if hard:
            r["detail"] = {"overlaps": hard[:3]}
        if not ok:
            r.setdefault("detail", {})["errs"] = {c.tag: c.stderr()[-300:] for c in self.contenders}
        return ok


def C_tag(tag: str) -> str:
    return checker.holder_of(tag)


def run_path(suite, name: str) -> None:
    """Run the scenario `name` (one of PATHS) on the suite's running cluster and record it."""
    fn = globals()["p_" + name.replace("-", "_")]
    groups = fn(suite)
    for g, ok in groups:
        suite.record(g, ok)


def _register(suite, g: PathGroup) -> PathGroup:
    suite.groups.append(g)
    return g


def p_sem_destroy_stopping(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "sem-destroy-stopping", "sem2", "default",
                                   S.setting("default", suite.a.lockwrap) + ["-n", "2"]))
    a = g.spawn(c1)
    g.wait_start(a)
    b = g.spawn(c2)
    g.wait_start(b)
    g.spawn(c3)
    time.sleep(2)                       # the third waits for a slot
    t_fault = mono()
    g.destroy(a)
    log(f"{g.name}: destroyed {a.tag}'s session; its command stops for {S.stop_time(g.args)}s")
    time.sleep(S.kill_grace_of(g.args) + S.takeover_for(S.kill_grace_of(g.args), 0) + 2)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_sem_lock_delete(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    args = S.setting("default", suite.a.lockwrap) + ["-n", "2"]
    groups = [_register(suite, PathGroup(suite, name, "sem2", "default", args))
              for name in ("sem-lock-delete", "sem-lock-delete-recurse")]
    for g in groups:
        a = g.spawn(c1)
        g.wait_start(a)
        b = g.spawn(c2)
        g.wait_start(b)
        g.spawn(c3)
    time.sleep(4)                       # the thirds wait, their last renew seconds old
    t_fault = mono()
    server = cl.any_server().addr
    for g, path in zip(groups, (f"/v1/kv/{groups[0].key}/.lock", f"/v1/kv/{groups[1].key}?recurse")):
        st = C.http(server, "DELETE", path)[0]
        cl.note(f"DELETE {path}: HTTP {st}")
    log(f"sem-lock-delete: deleted .lock (and a whole prefix); the holders' commands stop for "
        f"{S.stop_time(args)}s")
    time.sleep(1)
    for g in groups:
        g.spawn(c1)                     # a newcomer: the re-created .lock must have no free slot
    time.sleep(S.kill_grace_of(args) + S.takeover_for(S.kill_grace_of(args), 0) + 3)
    res = []
    for g in groups:
        g.stop_all()
        res.append((g, g.check(t_fault)))
    return res


def p_stop_in_takeover(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "stop-in-takeover", "execute", "default", []))
    a = g.spawn(c1)
    g.wait_start(a)
    b = g.spawn(c2)
    time.sleep(1.5)
    c = g.spawn(c3)   # noqa: F841 (a contender of the scenario)
    time.sleep(2)
    t_fault = mono()
    old_sid = g.destroy(a)

    # whichever of b and c took the lock waits its takeover delay: SIGTERM that one during it
    def taker():
        v = cl.kv(g.key)
        sid = v.get("Session") if v else None
        if not sid or sid == old_sid:
            return None
        for x in (b, c):
            if g.session_of(x) == sid:
                return x
        return None
    try:
        t = wait_until(taker, 3.0, 0.02, "the next holder's session on the key")
    except TimeoutError:
        t = b
    C.pace(max(0.0, 1.0 - (mono() - t_fault) / 1e9))
    started = any(C_tag(x.tag) == t.tag for x in g.starts())
    signal_pid(t.proc.pid, signal.SIGTERM)
    g.result["sigterm_to"] = t.tag
    g.result["sigterm_during_takeover_wait"] = not started
    log(f"{g.name}: destroyed {a.tag}'s session, SIGTERM to {t.tag} (the one taking over) 1 s "
        f"later (its command started: {started})")
    time.sleep(S.DEFAULT_KILL_GRACE + 4)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_force_leave_blind(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "force-leave-blind", "execute", "default", []))
    a = g.spawn(c1)
    g.wait_start(a)
    g.spawn(c2)
    g.spawn(c3)
    time.sleep(3)
    t_fault = mono()
    cl.note("kill -9 c1 (the holder's agent)")
    c1.kill9()
    time.sleep(1.0)
    srv = cl.any_server()
    rc = srv.consul_cli("force-leave", c1.name)
    cl.note(f"force-leave {c1.name}: exit {rc}")
    g.result["force_leave_exit"] = rc
    log(f"{g.name}: kill -9 of {c1.name}, force-leave from {srv.name} (exit {rc})")
    # the blind holder keeps its command until its own deadline (≤ TTL after its last renew)
    try:
        wait_until(lambda: not alive(next((x.pid for x in g.starts() if C_tag(x.tag) == a.tag), 0))
                   and any(C_tag(x.tag) != a.tag for x in g.starts()), 45, 0.1,
                   "the blind holder's command gone and a new holder")
    except TimeoutError:
        pass
    c1.start()
    try:
        cl.wait_ready(60)
    except TimeoutError as e:
        log(f"{g.name}: cluster not ready after restarting c1: {e}")
    time.sleep(0.5)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_escape_worker(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    out = []
    for name, mode, esc in (("escape-worker", "run", "setsid"),
                            ("escape-worker-nohup", "execute", "nohup")):
        g = _register(suite, PathGroup(suite, name, mode, "fast"))
        out.append(g)
    for g, esc in zip(out, ("setsid", "nohup")):
        g.esc = esc
        g.holder = g.spawn(c1, hold=["1", "1"], escape=esc)
        g.wait_start(g.holder)
        g.spawn(c2)
    t_fault = mono()
    time.sleep(6.0)   # the workers live 30 s; the next holders start meanwhile (or not)
    res = []
    for g in out:
        g.stop_all()
        res.append((g, g.check(t_fault)))
    return res


def p_escape_worker_destroy(suite):
    cl = suite.cl
    c1, c2, _ = cl.clients
    g = _register(suite, PathGroup(suite, "escape-worker-destroy", "execute", "default",
                                   ["--lock-delay", "0"]))
    # Command and worker ignore SIGTERM: each uses the whole kill grace and needs SIGKILL.
    a = g.spawn(c1, escape="setsid", stop=60.0)
    g.wait_start(a)
    g.spawn(c2)
    time.sleep(2)                       # the worker runs; the second contender waits
    t_fault = mono()
    g.destroy(a)
    log(f"{g.name}: destroyed {a.tag}'s session; its command and its setsid worker ignore "
        f"SIGTERM (the kill grace, {S.DEFAULT_KILL_GRACE}s, ends each)")
    time.sleep(S.takeover_for(S.DEFAULT_KILL_GRACE, 0) + 2 * S.DEFAULT_KILL_GRACE + 2)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_escape_crash(suite):
    """The wrapper is SIGKILLed while its command forks a `setsid` worker (as soon as the
    command's START is seen, and 50 and 150 ms later; one key each): the worker is younger than
    the guardian's last snapshot and outside the command's group, and its parent link no longer
    leads to the wrapper; the guardian finds it by the variable the command's tree inherits. A
    standby (fast setting) takes over once the health check fails."""
    cl = suite.cl
    c1, c2, _ = cl.clients
    out = []
    for ms in (0, 50, 150):
        g = _register(suite, PathGroup(suite, f"escape-crash-{ms}ms", "run", "fast"))
        a = g.spawn(c1, escape="setsid")
        g.wait_start(a)
        C.pace(ms / 1000.0)
        a.kill9()
        out.append((g, mono(), a.tag))
        log(f"{g.name}: SIGKILL to {a.tag}'s wrapper {ms} ms after its command's START was seen")
        g.spawn(c2)
    time.sleep(S.takeover_for(S.kill_grace_of(out[0][0].args), 0) + 8)
    res = []
    for g, t_fault, killed in out:
        g.stop_all()
        res.append((g, g.check(t_fault, killed)))
    return res


def p_mixed_grace_delete(suite):
    """A rollout that lowers the kill grace: the holder (grace 5 s, its command stops in 4 s)
    and a new contender (grace 2 s, own takeover delay 3 s); the key is deleted under the
    holder. The new one must wait the holder's announced 6 s, not its own 3 s."""
    cl = suite.cl
    c1, c2, _ = cl.clients
    base = S.setting("default", suite.a.lockwrap)
    g = _register(suite, PathGroup(suite, "mixed-grace-delete", "run", "default"))
    old, new = base + ["--kill-grace", "5s"], base + ["--kill-grace", "2s"]
    a = g.spawn(c1, args=old)
    g.wait_start(a)
    g.spawn(c2, args=new)
    time.sleep(2)                       # the new contender waits
    t_fault = mono()
    st = C.http(cl.any_server().addr, "DELETE", f"/v1/kv/{g.key}")[0]
    cl.note(f"DELETE /v1/kv/{g.key}: HTTP {st}")
    log(f"{g.name}: deleted the key under {a.tag} (grace 5 s, stops in {S.stop_time(old)} s); "
        f"the contender has grace 2 s")
    time.sleep(S.takeover_for(5.0, 0) + 3)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_stall_sigstop(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "stall-sigstop", "run", "fast"))
    a = g.spawn(c1)
    g.wait_start(a)
    g.spawn(c2)
    time.sleep(3)
    t_fault = mono()
    pid = a.wrapper_pid()
    cl.note(f"SIGSTOP {a.tag} wrapper {pid}")
    signal_pid(pid, signal.SIGSTOP)
    try:
        C.pace(6.0)
    finally:
        signal_pid(pid, signal.SIGCONT)
    cl.note(f"SIGCONT {a.tag}")
    time.sleep(S.kill_grace_of(g.args) + 3)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_stderr_pipe(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "stderr-pipe", "stderr-pipe", "fast"))
    a = g.spawn(c1, stderr_pipe=True)
    g.wait_start(a)
    g.spawn(c2)
    time.sleep(2)
    g.result["pipe_filled_bytes"] = a.fill_stderr_pipe()   # from now on every log line blocks
    t_fault = mono()
    cl.cut_contender(a.uid, "reset")     # lockwrap retries and logs (-vv) into the full pipe
    try:
        C.pace(5.0)
    finally:
        cl.heal()
    time.sleep(4)
    g.stop_all()
    ok = g.check(t_fault)
    return [(g, ok)]


def p_lib_execute_takeover(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "lib-execute-takeover", "lib", None))
    if not os.access(C.lib_example(suite.a.lockwrap), os.X_OK):
        raise RuntimeError(f"{C.lib_example(suite.a.lockwrap)} missing: cargo build --release "
                           "--example lib_execute")
    a = g.spawn(c1)
    g.wait_start(a)
    g.spawn(c2)
    time.sleep(2)
    t_fault = mono()
    # an external break with no lock-delay (README: "an operator deletes the key"): the holder
    # sees it at once and stops its command (4 s); the next one must wait its takeover delay
    st = C.http(cl.any_server().addr, "DELETE", "/v1/kv/" + g.key)[0]
    cl.note(f"DELETE {g.key}: HTTP {st}")
    time.sleep(S.DEFAULT_KILL_GRACE + S.takeover_for(S.DEFAULT_KILL_GRACE, 15) + 2)
    g.stop_all()
    return [(g, g.check(t_fault))]


def p_sidecar_stepdown(suite):
    cl = suite.cl
    c1, c2, c3 = cl.clients
    g = _register(suite, PathGroup(suite, "sidecar-stepdown", "sidecar", "default"))
    a = g.spawn(c1)
    g.wait_start(a)
    g.spawn(c2)
    time.sleep(2)
    t_fault = mono()
    pid = a.wrapper_pid()
    cl.note(f"SIGTERM sidecar {a.tag} ({pid})")
    signal_pid(pid, signal.SIGTERM)      # the sidecar alone: its pod is being deleted
    time.sleep(S.kill_grace_of(g.args) + 3)
    g.stop_all()
    return [(g, g.check(t_fault))]
