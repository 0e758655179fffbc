#!/usr/bin/env python3
"""A real multi-node Consul cluster on loopback, with iptables partitions (docs/performance.md,
"On a real cluster").

Standard library only; needs root (iptables, setpriv). Used by tests/cluster/scenarios.py
(`make cluster-test`) and chaos/cluster_chaos.py (`make chaos-cluster`).

Topology (Consul's default ports on each address, so no clash with the -dev agents the other tests
start on 127.0.0.1 with random ports):
    servers  127.0.0.11 .12 .13   -server -bootstrap-expect=3 -retry-join the three
    clients  127.0.0.21 .22 .23   (one lockwrap contender per client agent, more if asked)
Each agent runs under its own uid (41000 + last octet: 41011…, 41021…) with setpriv, with its own
data dir (chowned to that uid) under a temp dir; `-bind`, `-advertise`, `-client` on its address,
`-dns-port -1 -grpc-port -1`, raft_multiplier 1 (fast elections, as Consul recommends for
production). Each lockwrap contender runs under its own uid too (41101…).

Partitions: rules in a dedicated chain LWTEST, jumped to from OUTPUT for `-o lo`, where the
sending uid is known. A packet to drop is MARKed there (bit 0x100000) and dropped by chain LWTEST_IN
(from INPUT `-i lo`): a real partition loses packets silently, while a DROP in OUTPUT would fail the
sender's sendto() with EPERM at once (memberlist then skips the probe instead of suspecting the
node). Isolating node X from node Y marks X→Y and Y→X by address pair AND by owner uid (Consul dials
some TCP connections without binding the source address, which then is 127.0.0.1; the owner match
catches those). A lockwrap↔agent cut: every connection of a contender's uid carries a CONNMARK
(installed when the contender is registered); the cut marks the packets of those connections in
both directions ("drop"), or answers them with a TCP reset ("reset"). Heal removes the fault rules. At the end (also on failure, SIGTERM, SIGINT, and
atexit) every rule and the chain are removed and every process is stopped by PID.
Only 127.0.0.0/8 addresses are ever used. One harness per slot at a time (flock on
/tmp/lockwrap-cluster.lock); slot N (LOCKWRAP_CLUSTER_SLOT=N) moves everything to 127.0.N.x, uids
+1000·N, chains LWTEST<N>/LWTEST<N>_IN and its own lock file, so clusters can run side by side.

    python3 -m kit.cluster smoke     # start, partition a client, heal, kill the leader, stop
"""
from __future__ import annotations

import atexit
import fcntl
import http.client as httpclient
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from kit.logs import CHILD, CLUSTER_CHILD, SIDECAR_APP
from kit.procs import ProcTracker, alive, find_consul, log, mono, signal_pid, wait_until

# Several clusters can run side by side (`make chaos-cluster` runs one per job): slot N (env
# LOCKWRAP_CLUSTER_SLOT, 0-9, default 0) uses addresses 127.0.N.x, uids shifted by 1000·N, its own
# iptables chains and its own lock file, so the slots share nothing but the kernel.
SLOT = int(os.environ.get("LOCKWRAP_CLUSTER_SLOT") or 0)
if not 0 <= SLOT <= 9:
    raise SystemExit(f"LOCKWRAP_CLUSTER_SLOT={SLOT}: expected 0-9")
SERVERS = tuple(f"127.0.{SLOT}.{n}" for n in (11, 12, 13))
CLIENTS = tuple(f"127.0.{SLOT}.{n}" for n in (21, 22, 23))
HTTP_PORT = 8500
AGENT_UID_BASE = 41000 + 1000 * SLOT
CONTENDER_UID_BASE = 41100 + 1000 * SLOT
# from OUTPUT -o lo: marks the packets a fault drops (or resets them)
CHAIN = "LWTEST" if SLOT == 0 else f"LWTEST{SLOT}"
CHAIN_IN = f"{CHAIN}_IN"  # from INPUT -i lo: drops the marked packets, silently
DROP_MARK = "0x100000/0x100000"
LOCK_PATH = "/tmp/lockwrap-cluster.lock" if SLOT == 0 else f"/tmp/lockwrap-cluster-{SLOT}.lock"
# The child and the contenders run as unprivileged uids: use a python they can execute.
PYTHON = next((p for p in ("/usr/bin/python3", "/bin/python3") if os.access(p, os.X_OK)),
              sys.executable)
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")


def has_chain(rules: str) -> bool:
    """Whether `iptables -S` output still has this slot's chains (not another slot's)."""
    return any(w in (CHAIN, CHAIN_IN) for w in rules.split())


def loopback(addr: str) -> str:
    """Refuse anything outside 127.0.0.0/8 (the only addresses this harness may touch)."""
    if ipaddress.ip_address(addr) not in LOOPBACK_NET:
        raise ValueError(f"{addr} is not a loopback address")
    return addr


def http(addr: str, method: str, path: str, body: bytes | None = None, timeout: float = 5.0,
         port: int = HTTP_PORT):
    c = httpclient.HTTPConnection(loopback(addr), port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def get_json(addr: str, path: str, timeout: float = 5.0):
    st, body = http(addr, "GET", path, timeout=timeout)
    if st == 404:
        return None
    if st != 200:
        raise RuntimeError(f"GET {addr}{path}: HTTP {st}: {body[:200]!r}")
    return json.loads(body)


# --------------------------------------------------------------------------------------------
# Cleanup on every way out


_cleanups: list = []
_cleanup_lock = threading.Lock()


def on_exit(fn) -> None:
    """Register an idempotent cleanup: run (LIFO) by run_cleanups(), atexit, and fatal signals."""
    with _cleanup_lock:
        _cleanups.append(fn)


def run_cleanups() -> None:
    while True:
        with _cleanup_lock:
            if not _cleanups:
                return
            fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - keep cleaning
            log(f"cleanup {getattr(fn, '__name__', fn)} failed: {e!r}")


atexit.register(run_cleanups)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become KeyboardInterrupt in the main thread, so try/finally blocks run."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# Preconditions


def _run(argv, timeout=60, check=True):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          check=check)


def ensure_tools() -> str | None:
    """None when iptables (with owner/connmark) and setpriv work; else the reason they cannot.
    Installs Debian's iptables with apt-get when it is missing and we are root."""
    if os.geteuid() != 0:
        return "not root: iptables and setpriv --reuid need root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    if shutil.which("iptables") is None:
        log("iptables missing: apt-get install iptables")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "iptables"]):
            try:
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=600, env=env, check=True)
            except (OSError, subprocess.SubprocessError) as e:
                return f"could not install iptables: {e!r}"
        if shutil.which("iptables") is None:
            return "iptables still missing after apt-get install"
    probe = f"LWPROBE{SLOT}"   # per slot: clusters side by side probe at once
    try:
        _run(["iptables", "-w", "5", "-N", probe])
        try:
            _run(["iptables", "-w", "5", "-A", probe, "-m", "owner", "--uid-owner", "41999",
                  "-j", "CONNMARK", "--set-mark", "41999"])
            _run(["iptables", "-w", "5", "-A", probe, "-m", "connmark", "--mark", "41999",
                  "-j", "DROP"])
        finally:
            _run(["iptables", "-w", "5", "-F", probe], check=False)
            _run(["iptables", "-w", "5", "-X", probe], check=False)
    except subprocess.CalledProcessError as e:
        return f"iptables does not work here: {e.stderr.decode(errors='replace').strip()[:200]}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"iptables does not work here: {e!r}"
    try:
        out = _run(["setpriv", "--reuid=41999", "--regid=41999", "--clear-groups", "id", "-u"])
        if out.stdout.decode().strip() != "41999":
            return "setpriv --reuid did not change the uid"
    except (OSError, subprocess.SubprocessError) as e:
        return f"setpriv does not work here: {e!r}"
    return None


def as_uid(uid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


# --------------------------------------------------------------------------------------------
# Firewall


class Firewall:
    """The LWTEST chain. Permanent rules (connection marks of contender uids) survive heal();
    fault rules are removed by heal(). teardown() removes everything, bounded."""

    def __init__(self):
        self.permanent: list[list[str]] = []
        self.faults: list[list[str]] = []
        self.lock = threading.Lock()
        self.up = False

    def ipt(self, *args, check=True):
        return _run(["iptables", "-w", "10", *args], timeout=30, check=check)

    def setup(self) -> None:
        self.teardown_chain()            # a crashed earlier run (we hold the flock: not a live one)
        self.up = True
        on_exit(self.teardown)
        self.ipt("-N", CHAIN)
        self.ipt("-N", CHAIN_IN)
        self.ipt("-A", CHAIN_IN, "-m", "mark", "--mark", DROP_MARK, "-j", "DROP")
        self.ipt("-I", "INPUT", "1", "-i", "lo", "-j", CHAIN_IN)
        self.ipt("-I", "OUTPUT", "1", "-o", "lo", "-j", CHAIN)

    def teardown_chain(self) -> None:
        for hook, io, chain in (("OUTPUT", "-o", CHAIN), ("INPUT", "-i", CHAIN_IN)):
            for _ in range(20):   # every jump (bounded)
                if self.ipt("-D", hook, io, "lo", "-j", chain, check=False).returncode != 0:
                    break
        for chain in (CHAIN, CHAIN_IN):
            self.ipt("-F", chain, check=False)
            self.ipt("-X", chain, check=False)

    def teardown(self) -> None:
        if not self.up:
            return
        self.teardown_chain()
        self.up = False
        with self.lock:
            self.faults.clear()
            self.permanent.clear()
        left = self.ipt("-S", check=False).stdout.decode()
        if has_chain(left):
            log(f"WARNING: {CHAIN} still present after teardown:\n{left}")

    def _add(self, rule: list[str], permanent: bool) -> None:
        self.ipt("-A", CHAIN, *rule)
        with self.lock:
            (self.permanent if permanent else self.faults).append(rule)

    def register_uid(self, uid: int) -> None:
        """Mark every connection a contender uid takes part in (needed by cut_uid)."""
        self._add(["-m", "owner", "--uid-owner", str(uid), "-j", "CONNMARK",
                   "--set-mark", str(uid)], permanent=True)

    def isolate(self, x, others) -> None:
        """Drop all traffic between agent x and each of `others`, both ways."""
        drop = ["-j", "MARK", "--set-xmark", DROP_MARK]
        for y in others:
            if y is x:
                continue
            self._add(["-s", loopback(x.addr), "-d", loopback(y.addr), *drop], False)
            self._add(["-s", y.addr, "-d", x.addr, *drop], False)
            self._add(["-m", "owner", "--uid-owner", str(x.uid), "-d", y.addr, *drop], False)
            self._add(["-m", "owner", "--uid-owner", str(y.uid), "-d", x.addr, *drop], False)

    def cut_uid(self, uid: int, mode: str = "drop") -> None:
        """Cut every connection of contender uid (its lockwrap and child) - i.e. lockwrap↔agent."""
        if mode == "reset":
            self._add(["-p", "tcp", "-m", "connmark", "--mark", str(uid), "-j", "REJECT",
                       "--reject-with", "tcp-reset"], False)
        self._add(["-m", "connmark", "--mark", str(uid), "-j", "MARK", "--set-xmark", DROP_MARK],
                  False)

    def heal(self) -> None:
        with self.lock:
            rules, self.faults = self.faults, []
        for rule in reversed(rules):
            self.ipt("-D", CHAIN, *rule, check=False)

    def n_fault_rules(self) -> int:
        with self.lock:
            return len(self.faults)


# --------------------------------------------------------------------------------------------
# Consul agents


class Agent:
    def __init__(self, cluster: "Cluster", name: str, addr: str, server: bool):
        self.cluster = cluster
        self.name = name
        self.addr = loopback(addr)
        self.server = server
        self.uid = AGENT_UID_BASE + int(addr.rsplit(".", 1)[1])
        self.data_dir = os.path.join(cluster.work, name, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        os.chown(os.path.dirname(self.data_dir), self.uid, self.uid)
        os.chown(self.data_dir, self.uid, self.uid)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def __repr__(self):
        return f"{self.name}({self.addr})"

    def argv(self) -> list[str]:
        a = [self.cluster.consul, "agent", "-node", self.name, "-bind", self.addr,
             "-advertise", self.addr, "-client", self.addr, "-data-dir", self.data_dir,
             "-dns-port", "-1", "-grpc-port", "-1", "-retry-interval", "1s",
             "-disable-host-node-id", "-log-level", "info",
             "-hcl", "performance { raft_multiplier = 1 }"]
        for s in SERVERS:
            a += ["-retry-join", s]
        if self.server:
            a += ["-server", "-bootstrap-expect", "3"]
        return a

    def start(self) -> None:
        if self.running():
            return
        self.starts += 1
        path = os.path.join(self.cluster.work, self.name, f"consul-{self.starts}.log")
        with open(path, "wb") as logf:
            self.proc = self.cluster.tracker.spawn(as_uid(self.uid, self.argv()), stdout=logf,
                                                   stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None:
            self.cluster.tracker.forget(self.proc)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, bounded wait, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_pid(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.cluster.tracker.forget(self.proc)

    def get(self, path: str, timeout: float = 3.0):
        return get_json(self.addr, path, timeout=timeout)

    def consul_cli(self, *args: str, timeout: float = 30.0) -> int:
        """`consul ARGS -http-addr=<this agent>` (e.g. force-leave, leave); returns the exit code."""
        # flags go between the subcommand and its arguments (`consul force-leave -http-addr=… NODE`)
        r = subprocess.run([self.cluster.consul, args[0], f"-http-addr=http://{self.addr}:{HTTP_PORT}",
                            *args[1:]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        if r.returncode != 0:
            log(f"consul {' '.join(args)} on {self}: exit {r.returncode}: {r.stdout[-200:]!r}")
        return r.returncode

    def graceful_leave(self, timeout: float = 30.0) -> None:
        """`consul leave` (the agent leaves the cluster and exits), then reap it."""
        self.consul_cli("leave", timeout=timeout)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_pid(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.cluster.tracker.forget(self.proc)

    def leader(self) -> str:
        """The leader's server address as this agent sees it ("" when none)."""
        try:
            st, body = http(self.addr, "GET", "/v1/status/leader", timeout=2)
            if st != 200:
                return ""
            return json.loads(body).rsplit(":", 1)[0]
        except (OSError, ValueError):
            return ""


class Cluster:
    def __init__(self, workdir: str | None = None, tracker: ProcTracker | None = None,
                 n_clients: int = 3, consul_bin: str | None = None):
        self.consul = consul_bin or find_consul()
        self.work = workdir or tempfile.mkdtemp(prefix="lockwrap-cluster-")
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o755)
        self.tracker = tracker or ProcTracker()
        self.fw = Firewall()
        self._lockf = None
        self.servers = [Agent(self, f"s{i + 1}", a, True) for i, a in enumerate(SERVERS)]
        self.clients = [Agent(self, f"c{i + 1}", a, False) for i, a in enumerate(CLIENTS[:n_clients])]
        self.agents = self.servers + self.clients
        self.stopped = False
        self.event_log: list[tuple[int, str]] = []   # (mono ns, what) of every fault action
        self.isolated: list[Agent] = []

    def note(self, what: str) -> None:
        self.event_log.append((mono(), what))

    # -- lifecycle
    def acquire_flock(self, timeout: float = 600.0) -> None:
        self._lockf = open(LOCK_PATH, "a")
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"another cluster harness holds {LOCK_PATH} for {timeout:.0f}s")
                if time.monotonic() - t0 < 1:
                    log(f"waiting for {LOCK_PATH}: another cluster harness runs")
                time.sleep(1)

    def start(self, timeout: float = 90.0) -> None:
        self.acquire_flock()
        on_exit(self.stop)
        self.fw.setup()
        t0 = time.monotonic()
        for a in self.agents:
            a.start()
        self.wait_ready(timeout)
        log(f"cluster ready in {time.monotonic() - t0:.1f}s: leader {self.leader_addr()}, "
            f"servers {SERVERS}, clients {CLIENTS[:len(self.clients)]}; work dir {self.work}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.fw.teardown()
        finally:
            # By PID: SIGTERM to every agent at once, a bounded wait, then SIGKILL.
            for a in self.agents:
                if a.running():
                    signal_pid(a.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            for a in self.agents:
                if a.proc is not None:
                    try:
                        a.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                    a.kill9()
            self.tracker.kill_all()
            if self._lockf is not None:
                self._lockf.close()

    # -- state
    def server_by_addr(self, addr: str) -> Agent | None:
        return next((s for s in self.servers if s.addr == addr), None)

    def leader_addr(self) -> str:
        """The leader every running, reachable server agrees on ("" if none or no agreement)."""
        seen = {s.leader() for s in self.servers if s.running()}
        seen.discard("")
        return seen.pop() if len(seen) == 1 else ""

    def leader(self) -> Agent | None:
        return self.server_by_addr(self.leader_addr())

    def any_server(self) -> Agent:
        """A running server that sees the leader (for catalog / session reads)."""
        lead = self.leader()
        if lead is not None and self.fw.n_fault_rules() == 0:
            return lead
        for s in self.servers:
            if s.running() and s.leader():
                return s
        return self.servers[0]

    def ready(self) -> str:
        """"" when: every agent runs, a leader is agreed by all servers, all members alive,
        every client's serfHealth passing and every client sees the leader; else what is missing."""
        for a in self.agents:
            if not a.running():
                return f"{a} is not running (exit {a.proc.returncode if a.proc else None})"
        lead = self.leader_addr()
        if not lead:
            return "no agreed leader"
        for s in self.servers:
            if s.leader() != lead:
                return f"{s} sees leader {s.leader()!r}"
        try:
            members = self.server_by_addr(lead).get("/v1/agent/members")
        except (OSError, RuntimeError, ValueError) as e:
            return f"members: {e!r}"
        status = {m["Name"]: m["Status"] for m in members or []}
        for a in self.agents:
            if status.get(a.name) != 1:
                return f"{a} member status {status.get(a.name)}"
        for c in self.clients:
            if c.leader() != lead:
                return f"{c} sees leader {c.leader()!r}"
            try:
                checks = self.server_by_addr(lead).get(f"/v1/health/node/{c.name}")
            except (OSError, RuntimeError, ValueError) as e:
                return f"health of {c}: {e!r}"
            serf = [x for x in checks or [] if x.get("CheckID") == "serfHealth"]
            if not serf or serf[0].get("Status") != "passing":
                return f"{c} serfHealth {serf[0].get('Status') if serf else 'missing'}"
        return ""

    def wait_ready(self, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        last = ["?"]

        def ok():
            last[0] = self.ready()
            return not last[0]
        try:
            wait_until(ok, timeout, 0.1, "cluster ready")
        except TimeoutError:
            raise TimeoutError(f"cluster not ready after {timeout:.0f}s: {last[0]}") from None
        return time.monotonic() - t0

    # -- faults (each is undone by heal() or finishes by itself)
    def partition_node(self, node: Agent, only_servers: bool = False) -> None:
        others = self.servers if only_servers else self.agents
        self.note(f"partition {node.name} from {'servers' if only_servers else 'all'}")
        self.isolated.append(node)
        self.fw.isolate(node, others)

    def partition_leader(self) -> Agent | None:
        """Isolate the leader from every other agent (a minority of one). Returns it."""
        lead = self.leader()
        if lead is not None:
            self.note(f"partition leader {lead.name}")
            self.isolated.append(lead)
            self.fw.isolate(lead, self.agents)
        return lead

    def cut_contender(self, uid: int, mode: str = "drop") -> None:
        self.note(f"cut uid {uid} ({mode})")
        self.fw.cut_uid(uid, mode)

    def heal(self, rejoin: bool = False) -> None:
        """Remove the fault rules. Serf on its own re-merges a node that was declared failed only
        at its next reconnect attempt (every 30 s); rejoin=True has each isolated node join the
        servers at once (as an operator or a restarted agent's -retry-join would)."""
        self.note("heal" + (" + rejoin" if rejoin else ""))
        self.fw.heal()
        nodes, self.isolated = self.isolated, []
        if rejoin:
            for n in nodes:
                for srv in self.servers:
                    if srv is n:
                        continue
                    try:
                        http(n.addr, "PUT", f"/v1/agent/join/{srv.addr}", timeout=5)
                    except OSError:
                        pass

    def kill_leader(self, down_for: float = 0.0, wait: float = 60.0) -> Agent | None:
        """kill -9 the leader, restart it after `down_for` seconds, wait until ready again."""
        lead = self.leader()
        if lead is None:
            return None
        self.note(f"kill -9 leader {lead.name}")
        lead.kill9()
        pace(down_for)
        lead.start()
        self.note(f"restarted {lead.name}")
        self.wait_ready(wait)
        return lead

    def rolling_restart(self, wait: float = 60.0) -> None:
        """SIGTERM and restart each server in turn (followers first, the leader last), waiting
        for the cluster to be ready before the next one."""
        lead = self.leader_addr()
        order = sorted(self.servers, key=lambda s: s.addr == lead)
        for s in order:
            self.note(f"rolling restart {s.name}")
            s.stop()
            s.start()
            self.wait_ready(wait)

    def sessions(self) -> list[dict]:
        # `consistent`: the leader confirms with a quorum that it still leads before answering,
        # so a just-deposed or just-elected leader cannot list a session already destroyed.
        return self.any_server().get("/v1/session/list?consistent") or []

    def kv(self, key: str):
        v = self.any_server().get("/v1/kv/" + urllib.parse.quote(key))
        return v[0] if v else None


def pace(seconds: float) -> None:
    """A fault's own duration (meant to last this long)."""
    end = time.monotonic() + max(0.0, seconds)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.2, left))


# --------------------------------------------------------------------------------------------
# lockwrap contenders


def lib_example(lockwrap: str) -> str:
    """examples/lib_execute (LockManager::execute): $LOCKWRAP_LIB_EXAMPLE (mk/cluster.mk builds it
    in target/lib-example), else beside the lockwrap binary."""
    env = os.environ.get("LOCKWRAP_LIB_EXAMPLE")
    if env and os.access(env, os.X_OK):
        return env
    here = os.path.dirname(os.path.abspath(lockwrap))
    for p in (os.path.join(here, "examples", "lib_execute"),
              os.path.join(os.path.dirname(os.path.dirname(here)), "target", "lib-example",
                           "release", "examples", "lib_execute")):
        if os.access(p, os.X_OK):
            return p
    return env or os.path.join(here, "examples", "lib_execute")


def shq(argv: list[str]) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)


def command_argv(cmd: str, lockwrap: str, key: str, addr: str, args: list[str], logfile: str,
                 tag: str, child_args: list[str], private_dir: str) -> tuple[list[str], dict]:
    """argv + extra env of one contender of entry point `cmd` (run | execute | sidecar | lib)
    whose critical section is kit/programs/cluster_child.py LOGFILE TAG *child_args (child_args:
    MIN MAX STOP [ESCAPE]). For sidecar, child_args[2] (STOP) is the application's stop time."""
    child = [PYTHON, "-S", CLUSTER_CHILD, logfile, tag, *child_args]
    consul = f"{addr}:{HTTP_PORT}"
    if cmd == "run":
        return [lockwrap, "run", "--key", key, "--consul-addr", consul, *args, "--", *child], {}
    if cmd == "execute":
        return [lockwrap, "execute", "--consul-addr", consul, *args, key, shq(child)], {}
    if cmd == "sidecar":
        return [PYTHON, "-S", SIDECAR_APP, logfile, tag, child_args[2],
                os.path.join(private_dir, f"{tag}.status.json"),
                os.path.join(private_dir, f"{tag}.pid"), "--", lockwrap, "sidecar", "--key", key,
                "--consul-addr", consul, *args], {}
    if cmd == "lib":
        return [lib_example(lockwrap), key, shq(child)], {"CONSUL_HTTP_ADDR": consul}
    raise ValueError(cmd)


class Contender:
    """One contender (`lockwrap run` by default; `cmd` execute | sidecar | lib) under its own uid
    against one client agent; its command (kit/programs/cluster_child.py, or kit/programs/child.py
    with `child=`) logs to `logfile`. The contender's uid is registered with the firewall (so its
    link can be cut)."""
    next_uid = CONTENDER_UID_BASE + 1

    def __init__(self, cluster: Cluster, agent: Agent, lockwrap: str, key: str, settings: list[str],
                 logfile: str, tag: str, child: tuple[str, ...] = ("hold", "3600"),
                 uid: int | None = None, cmd: str | None = None,
                 child_args: list[str] | None = None, stderr_pipe: bool = False):
        self.cluster = cluster
        self.agent = agent
        self.key = key
        self.tag = tag
        self.cmd = cmd
        if uid is None:
            uid = Contender.next_uid
            Contender.next_uid += 1
        self.uid = uid
        cluster.fw.register_uid(uid)
        self.private = os.path.join(cluster.work, f"u{uid}")
        os.makedirs(self.private, exist_ok=True)
        os.chown(self.private, uid, uid)
        self.env_extra: dict = {}
        if cmd is None:
            self.argv = as_uid(uid, [lockwrap, "run", "--key", key, "--consul-addr",
                                     f"{agent.addr}:{HTTP_PORT}", *settings, "--", PYTHON, "-S",
                                     CHILD, *child[:1], logfile, tag, *child[1:]])
        else:
            argv, self.env_extra = command_argv(cmd, lockwrap, key, agent.addr, settings, logfile,
                                                tag, child_args or [], self.private)
            self.argv = as_uid(uid, argv)
        self.errpath = os.path.join(cluster.work, f"{tag}.err")
        self.stderr_pipe = stderr_pipe
        self.pipe_w: int | None = None
        self.proc: subprocess.Popen | None = None
        self.t_spawn = 0

    def start(self) -> "Contender":
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
               **self.env_extra}
        if self.stderr_pipe:
            # A pipe nobody reads: lockwrap's logging must not block the lock's upkeep on it.
            r, w = os.pipe()
            self.pipe_r, self.pipe_w = r, w   # the read end stays open and unread
            self.t_spawn = mono()
            self.proc = self.cluster.tracker.spawn(self.argv, stdout=subprocess.DEVNULL,
                                                   stderr=w, env=env)
            os.close(w)
            return self
        with open(self.errpath, "ab") as errf:
            self.t_spawn = mono()
            self.proc = self.cluster.tracker.spawn(self.argv, stdout=subprocess.DEVNULL,
                                                   stderr=errf, env=env)
        return self

    def fill_stderr_pipe(self) -> int:
        """Fill the unread stderr pipe, so lockwrap's next log line blocks (a new open file
        description through /proc, non-blocking for us only). Returns the bytes written."""
        fd = os.open(f"/proc/self/fd/{self.pipe_r}", os.O_WRONLY | os.O_NONBLOCK)
        n = 0
        try:
            while n < (1 << 24):
                n += os.write(fd, b"x" * 4096)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        return n

    def wrapper_pid(self) -> int | None:
        """The lockwrap process itself (for the sidecar: the sidecar, not its application)."""
        return wrapper_pid(self.proc, self.cmd, self.private, self.tag)

    def poll(self):
        return self.proc.poll() if self.proc else None

    def stderr(self) -> str:
        try:
            with open(self.errpath, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0):
        """SIGTERM by PID; bounded wait; SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_pid(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def kill9(self, child_pid: int | None = None) -> None:
        if self.proc is not None:
            signal_pid(self.proc.pid, signal.SIGKILL)
        w = self.wrapper_pid()
        if w and w != (self.proc.pid if self.proc else None):
            signal_pid(w, signal.SIGKILL)
        if child_pid:
            signal_pid(child_pid, signal.SIGKILL)


def wrapper_pid(proc, cmd: str, private: str, tag: str) -> int | None:
    """The pid of lockwrap itself for a contender started as `proc`: for the sidecar the pid
    file it wrote in `private` (`proc` is the application beside it), else `proc`'s own."""
    if proc is None:
        return None
    if cmd == "sidecar":
        try:
            with open(os.path.join(private, f"{tag}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None
    return proc.pid


def make_logfile(cluster: Cluster, name: str) -> str:
    path = os.path.join(cluster.work, name)
    open(path, "w").close()
    os.chmod(path, 0o666)
    return path


# --------------------------------------------------------------------------------------------
# Manual smoke test


def smoke() -> int:
    why = ensure_tools()
    if why:
        print(f"cluster: SKIP: {why}")
        return 0
    install_signal_handlers()
    cl = Cluster()
    try:
        cl.start()
        c1 = cl.clients[0]
        t0 = time.monotonic()
        cl.partition_node(c1)
        wait_until(lambda: not c1.leader() or None, 30, 0.1, "c1 to lose the leader")
        log(f"c1 partitioned: no leader after {time.monotonic() - t0:.1f}s")

        def serf_critical():
            try:
                checks = cl.servers[0].get(f"/v1/health/node/{c1.name}?stale") or []
            except (OSError, RuntimeError, ValueError):
                return False
            return any(x.get("CheckID") == "serfHealth" and x.get("Status") == "critical"
                       for x in checks)
        wait_until(serf_critical, 30, 0.1, "c1 serfHealth critical")
        log(f"c1 serfHealth critical after {time.monotonic() - t0:.1f}s")
        cl.heal()
        log(f"healed: ready again after {cl.wait_ready(60):.1f}s")
        # lockwrap<->agent cut: a poller under a contender uid loses its agent, and only it.
        uid = CONTENDER_UID_BASE + 99
        cl.fw.register_uid(uid)
        poll_src = ("import http.client,sys,time\n"
                    "c=http.client.HTTPConnection(sys.argv[1],8500,timeout=1)\n"
                    "for i in range(400):\n"
                    "  t=time.monotonic()\n"
                    "  try:\n"
                    "    c.request('GET','/v1/status/leader'); c.getresponse().read(); r='ok'\n"
                    "  except Exception as e:\n"
                    "    r='fail'; c.close(); c=http.client.HTTPConnection(sys.argv[1],8500,timeout=1)\n"
                    "  print(round(t,2), r, flush=True); time.sleep(0.1)\n")
        out = os.path.join(cl.work, "poller.out")
        with open(out, "wb") as f:
            p = cl.tracker.spawn(as_uid(uid, [PYTHON, "-S", "-c", poll_src, c1.addr]), stdout=f)
        time.sleep(2)
        t_cut = time.monotonic()
        cl.cut_contender(uid, "drop")
        time.sleep(4)
        ok_root = bool(c1.leader())
        cl.heal()
        t_heal = time.monotonic()
        time.sleep(3)
        signal_pid(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        res = [ln.split() for ln in open(out).read().splitlines() if ln.strip()]
        before = [r for t, r in res if float(t) < t_cut]
        during = [r for t, r in res if t_cut + 0.1 < float(t) < t_heal - 1.1]
        after = [r for t, r in res if float(t) > t_heal + 1.5]
        log(f"uid cut: before {before.count('ok')}/{len(before)} ok, during "
            f"{during.count('ok')}/{len(during)} ok, after {after.count('ok')}/{len(after)} ok; "
            f"root's request to the same agent during the cut ok={ok_root}")
        assert before and all(r == "ok" for r in before), "poller failed before the cut"
        assert during and not any(r == "ok" for r in during), "the cut did not cut"
        assert after and after[-1] == "ok", "the link did not come back"
        assert ok_root, "the cut hit other uids"
        t0 = time.monotonic()
        lead = cl.partition_leader()
        wait_until(lambda: (cl.clients[0].leader() not in ("", lead.addr)) or None, 30, 0.1,
                   "a new leader")
        log(f"leader {lead} isolated: new leader {cl.clients[0].leader()} after "
            f"{time.monotonic() - t0:.1f}s")
        cl.heal()
        log(f"healed: ready again after {cl.wait_ready(60):.1f}s")
        t0 = time.monotonic()
        lead = cl.kill_leader(1.0)
        log(f"killed leader {lead}, restarted, ready after {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        cl.rolling_restart()
        log(f"rolling restart done in {time.monotonic() - t0:.1f}s")
        print("cluster smoke: ok")
        return 0
    finally:
        cl.stop()
        run_cleanups()
        left = _run(["iptables", "-S"], check=False).stdout.decode()
        log("iptables after stop: " + ("clean" if not has_chain(left) else left))
        alive_agents = [a.name for a in cl.agents if a.proc and alive(a.proc.pid)]
        log(f"agents still alive: {alive_agents}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "smoke":
        sys.exit(smoke())
    print(__doc__)
    sys.exit(2)
