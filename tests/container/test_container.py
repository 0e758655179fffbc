#!/usr/bin/env python3
"""Container tests of the lockwrap image: run by tests/container/run.sh (`make container-test`),
which starts a private dockerd (DOCKER_HOST) and passes DOCKER and CONSUL_BIN.

Builds the shipped image from the host's static binary (Dockerfile, LOCKWRAP_FROM=prebuilt) and two
test-only images from Debian's static busybox: `shell` (the lockwrap image plus /bin/sh and
busybox, so lockwrap as PID 1 has a command to run) and `app` (busybox alone, no lockwrap: the
"application image" the chart's wrapper mode copies lockwrap into). The shipped image is not changed.
Every container runs with --network host against a Consul dev agent on 127.0.0.1, read-only, with
all capabilities dropped, as the image's user 65532. Python 3 standard library only.
Ends with `N passed, M failed`.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from kit.agent import DevAgent, free_port, http_get
from kit.procs import wait_until
from kit.runner import run_tests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, nothing else needed
IMAGE = "lockwrap:test"
SHELL_IMAGE = "lockwrap-test-shell:latest"
APP_IMAGE = "lockwrap-test-app:latest"
PREFIX = "lockwrap-test-"  # every container and volume the tests create, removed at start and end
# The hardening every container gets (the chart's securityContext, in docker flags).
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]

TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn))
    return fn


def docker(*args, check=True, timeout=120):
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    p = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def build(tag, context, dockerfile=None, build_args=()):
    args = ["build", "-t", tag]
    for a in build_args:
        args += ["--build-arg", a]
    if dockerfile:
        args += ["-f", dockerfile]
    return docker(*args, context, timeout=600)


def remove_leftovers():
    ids = docker("ps", "-aq", "--filter", f"name={PREFIX}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    vols = [v for v in docker("volume", "ls", "-q").stdout.split() if v.startswith(PREFIX)]
    if vols:
        docker("volume", "rm", "-f", *vols, check=False)


CONSUL = None  # the agent of this run (started in main)


def key(name):
    return f"lockwrap-test/{name}"


def holder_session(k):
    """The session holding key k in Consul, or None."""
    status, body = http_get(CONSUL.http_port, f"/v1/kv/{k}")
    if status != 200:
        return None
    return json.loads(body)[0].get("Session")


def run_holder(name, k, http_port, command, *lockwrap_args, image=SHELL_IMAGE):
    """Starts `lockwrap run` as PID 1 of a detached container; returns the container name."""
    cname = PREFIX + name
    docker("run", "-d", "--name", cname, "--network", "host", *HARDENED,
           "-e", f"CONSUL_HTTP_ADDR=127.0.0.1:{CONSUL.http_port}", "-e", "LOCKWRAP_LOG_FORMAT=text",
           image, "run", "--key", k, "--http-addr", f"127.0.0.1:{http_port}", "-v", *lockwrap_args,
           "--", *command)
    return cname


def wait_ready(port, cname, timeout=30):
    def ready():
        if docker("inspect", "-f", "{{.State.Running}}", cname).stdout.strip() != "true":
            raise AssertionError(f"{cname} exited: {docker('logs', cname, check=False).stderr[-2000:]}")
        return http_get(port, "/readyz")[0] == 200
    wait_until(ready, timeout, 0.05, f"{cname} to hold the lock")


def exit_code(cname):
    return int(docker("inspect", "-f", "{{.State.ExitCode}}", cname).stdout.strip())


def stop(cname, grace=30):
    """`docker stop` (SIGTERM, SIGKILL after `grace` s); returns the seconds it took."""
    t0 = time.monotonic()
    docker("stop", "-t", str(grace), cname, timeout=grace + 30)
    return time.monotonic() - t0


def processes(cname):
    """(pid, ppid, state, comm) of every process in the container, from /proc (busybox cat)."""
    out = docker("exec", cname, "/bin/busybox", "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null").stdout
    procs = []
    for line in out.splitlines():
        m = re.match(r"^(\d+) \((.*)\) (\S) (\d+)", line)
        if m:
            procs.append((int(m.group(1)), int(m.group(4)), m.group(3), m.group(2)))
    return procs


# ---------------------------------------------------------------------------------------------


@test
def image_is_one_static_binary_in_scratch_running_as_nonroot():
    info = json.loads(docker("image", "inspect", IMAGE).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "65532:65532", cfg["User"]
    assert cfg["Entrypoint"] == ["/lockwrap"] and cfg["Cmd"] == ["--help"], cfg
    assert cfg["Labels"]["org.opencontainers.image.base.name"] == "scratch"
    size = info["Size"]
    print(f"     image {IMAGE}: {size} bytes ({size / 1e6:.1f} MB), "
          f"{len(info['RootFS']['Layers'])} layers")
    assert size < 30_000_000, f"image grew to {size} bytes"
    out = docker("run", "--rm", *HARDENED, IMAGE, "--version").stdout
    assert out.startswith("lockwrap "), out
    # Nothing but the binary, the CA bundle and the user database: no shell to exec into.
    p = docker("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c", "true", check=False)
    assert p.returncode != 0, "the shipped image has a shell"


@test
def pid1_holds_the_lock_as_nonroot_read_only_without_capabilities():
    k, port = key("pid1"), free_port()
    c = run_holder("pid1", k, port, ["/bin/sh", "-c", 'echo "holding, token $LOCKWRAP_FENCING_TOKEN"; '
                                      "exec busybox sleep 600"])
    try:
        wait_ready(port, c)
        assert holder_session(k), f"{k} is not held in Consul"
        leader = json.loads(http_get(port, "/leader")[1])
        assert leader["isLeader"] is True and leader["session"] == holder_session(k), leader
        procs = {p[0]: p for p in processes(c)}
        assert procs[1][3] == "lockwrap", f"PID 1 is {procs[1]}"
        status = docker("exec", c, "/bin/busybox", "cat", "/proc/1/status").stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[:2] == ["65532", "65532"], fields["Uid"]
        assert fields["CapEff"].strip() == "0000000000000000", fields["CapEff"]
        assert fields["CapBnd"].strip() == "0000000000000000", fields["CapBnd"]
        assert fields["NoNewPrivs"].strip() == "1"
        p = docker("exec", c, "/bin/busybox", "touch", "/probe", check=False)
        assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stderr
        logs = docker("logs", c)
        text = logs.stdout + logs.stderr
        assert "holding, token " in text, text
        assert "\x1b[" not in text, f"colour codes in docker logs: {text[:300]!r}"
    finally:
        docker("rm", "-f", c, check=False)


@test
def docker_stop_forwards_term_and_passes_the_commands_exit_code():
    k, port = key("stop"), free_port()
    c = run_holder("stop", k, port, [
        "/bin/sh", "-c", 'trap "echo got TERM; exit 42" TERM; while :; do busybox sleep 0.2; done'])
    try:
        wait_ready(port, c)
        took = stop(c)
        print(f"     docker stop of a holder: {took:.2f} s, exit {exit_code(c)}")
        assert exit_code(c) == 42, docker("logs", c).stderr[-2000:]
        assert took < 5, f"docker stop took {took:.1f} s"
        assert "got TERM" in docker("logs", c).stdout
        assert holder_session(k) is None, "the lock was not released"
    finally:
        docker("rm", "-f", c, check=False)


@test
def term_ignoring_command_is_killed_after_kill_grace():
    k, port = key("grace"), free_port()
    c = run_holder("grace", k, port, ["/bin/sh", "-c", 'trap "" TERM; while :; do busybox sleep 0.2; done'],
                   "--kill-grace", "1s")
    try:
        wait_ready(port, c)
        took = stop(c, grace=30)
        print(f"     TERM ignored: killed by lockwrap after {took:.2f} s (kill grace 1 s), exit {exit_code(c)}")
        assert exit_code(c) == 137, exit_code(c)
        # docker itself would have sent SIGKILL only after 30 s.
        assert 1 <= took < 10, f"took {took:.1f} s"
        assert holder_session(k) is None, "the lock was not released"
    finally:
        docker("rm", "-f", c, check=False)


@test
def orphans_are_reaped_by_pid1():
    k, port = key("orphans"), free_port()
    # Each `( … &)` subshell exits at once, so its sleep is re-parented to PID 1 (lockwrap).
    c = run_holder("orphans", k, port, [
        "/bin/sh", "-c", "for i in 1 2 3 4 5; do (busybox sleep 1 &); done; exec busybox sleep 600"])
    try:
        wait_ready(port, c)
        # PID 1's children: the command (sh, exec'd into sleep), lockwrap's guardian process (a
        # fork of lockwrap, docs/timing.md) and the orphans (`docker exec`'s processes have
        # parent 0).
        def children():
            return [p for p in processes(c) if p[1] == 1 and p[3] != "lockwrap"]
        wait_until(lambda: len(children()) >= 6, 10, 0.05, "the orphans to be re-parented to PID 1")

        def reaped():
            procs = processes(c)
            return len(children()) == 1 and not [p for p in procs if p[2] == "Z"]
        wait_until(reaped, 10, 0.05, "the orphans to exit and be reaped (no zombies)")
        assert docker("inspect", "-f", "{{.State.Running}}", c).stdout.strip() == "true"
    finally:
        docker("rm", "-f", c, check=False)


@test
def install_copies_the_binary_into_a_volume_that_runs_in_an_app_container():
    vol = PREFIX + "bin"
    # A named volume on a directory owned by the image's user: what an emptyDir with fsGroup is in a pod.
    host_dir = tempfile.mkdtemp()
    os.chown(host_dir, 65532, 65532)
    os.chmod(host_dir, 0o755)
    docker("volume", "create", "--driver", "local", "--opt", "type=none", "--opt", "o=bind",
           "--opt", f"device={host_dir}", vol)
    try:
        docker("run", "--rm", *HARDENED, "-v", f"{vol}:/shared", IMAGE, "install", "/shared/lockwrap")
        k = key("install")
        out = docker("run", "--rm", "--network", "host", *HARDENED, "--user", "65532:65532",
                     "-v", f"{vol}:/lockwrap:ro", "-e", f"CONSUL_HTTP_ADDR=127.0.0.1:{CONSUL.http_port}",
                     APP_IMAGE, "/lockwrap/lockwrap", "run", "--key", k, "--",
                     "/bin/sh", "-c", 'echo "copy ran, token $LOCKWRAP_FENCING_TOKEN"; exit 7', check=False)
        assert out.returncode == 7, f"exit {out.returncode}: {out.stderr}"
        assert re.search(r"copy ran, token \d+", out.stdout), out.stdout
        assert holder_session(k) is None, "the lock was not released"
    finally:
        docker("volume", "rm", "-f", vol, check=False)
        shutil.rmtree(host_dir, ignore_errors=True)


@test
def a_second_container_takes_over_after_the_first_releases():
    k = key("takeover")
    ports = [free_port(), free_port()]
    names = [run_holder(f"takeover-{i}", k, ports[i], ["/bin/sh", "-c", "exec busybox sleep 600"])
             for i in range(2)]
    try:
        def ready():
            return [i for i in range(2) if http_get(ports[i], "/readyz")[0] == 200]
        first = wait_until(ready, 30, 0.05, "one container to hold the lock")
        assert len(first) == 1, f"two holders: {first}"
        holder, standby = first[0], 1 - first[0]
        assert http_get(ports[standby], "/readyz")[0] == 503
        before = holder_session(k)
        t0 = time.monotonic()
        stopped = stop(names[holder])
        wait_until(lambda: ready() == [standby], 20, 0.05, "the standby to take over")
        took = time.monotonic() - t0
        print(f"     takeover: holder stopped in {stopped:.2f} s, standby Ready {took:.2f} s after docker stop began")
        now = holder_session(k)
        assert now not in (None, before), f"holder session {now!r} (before: {before!r})"
        code = exit_code(names[holder])
        assert code == 143, f"the holder exited {code}, not 143 (the command stopped by the forwarded SIGTERM)"
    except BaseException:
        # This test failed now and then under a full `make test`: keep what each container said.
        for name in names:
            logs = docker("logs", name, check=False)
            state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name, check=False)
            print(f"     --- docker logs {name} ({state.stdout.strip()}):\n{logs.stdout}{logs.stderr}")
        raise
    finally:
        docker("rm", "-f", *names, check=False)


# ---------------------------------------------------------------------------------------------


def build_images():
    """The shipped image from target/image/ (make image-context) and the two test-only images."""
    t0 = time.monotonic()
    build(IMAGE, ROOT, build_args=["LOCKWRAP_FROM=prebuilt"])
    ctx = tempfile.mkdtemp()
    try:
        shutil.copy(BUSYBOX, os.path.join(ctx, "busybox"))
        with open(os.path.join(ctx, "Dockerfile.shell"), "w") as f:
            f.write(f"FROM {IMAGE}\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n")
        with open(os.path.join(ctx, "Dockerfile.app"), "w") as f:
            f.write("FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nUSER 65532:65532\n")
        build(SHELL_IMAGE, ctx, dockerfile=os.path.join(ctx, "Dockerfile.shell"))
        build(APP_IMAGE, ctx, dockerfile=os.path.join(ctx, "Dockerfile.app"))
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    print(f"# images built in {time.monotonic() - t0:.1f} s")


def main():
    global CONSUL
    consul = os.environ.get("CONSUL_BIN")
    if not consul:
        print("FAIL set CONSUL_BIN (tests/container/run.sh does)")
        return 1
    remove_leftovers()
    try:
        build_images()
        with DevAgent(consul) as agent:
            CONSUL = agent
            return run_tests(TESTS, sys.argv[1:]).close()
    finally:
        remove_leftovers()


if __name__ == "__main__":
    sys.exit(main())
