"""An application beside `lockwrap sidecar` (python3 -S, stdlib only), for the cluster tests.

usage: sidecar_app.py LOGFILE TAG STOP STATUSFILE PIDFILE -- LOCKWRAP sidecar ARGS…
Starts the sidecar (its own child; the sidecar's pid goes to PIDFILE, so the harness can signal or
SIGSTOP the sidecar itself) with `--status-file STATUSFILE`, and reads the status file every 10 ms,
as docs/kubernetes.md tells an application to. What the sidecar promises (README, docs/timing.md):
it reports leadership only after its takeover wait, and reports the loss no later than its stop
deadline, so an application that stops within the kill grace after the report is never active
beside another leader. So this app's critical section is a process (kit/programs/cluster_child.py,
tag TAG.sN, fencing token from the status) started when the status says `isLeader: true` and sent
SIGTERM when it says false or the sidecar is gone (a dead sidecar reports nothing: the app treats
it as a loss); it then keeps running STOP s (~80 % of the kill grace) before it exits.
SIGTERM/SIGINT to the app go to the sidecar; the app exits with the sidecar's code once the last
section has ended.
"""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    logfile, tag, stop, status, pidfile = sys.argv[1:6]
    assert sys.argv[6] == "--"
    sidecar_argv = sys.argv[7:] + ["--status-file", status]
    try:
        os.unlink(status)
    except FileNotFoundError:
        pass
    sc = subprocess.Popen(sidecar_argv, stdin=subprocess.DEVNULL)
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(sc.pid))
    os.rename(pidfile + ".tmp", pidfile)

    def forward(sig, _frame):
        try:
            sc.send_signal(sig)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    section, n = None, 0
    while True:
        rc = sc.poll()
        leader, token = False, None
        if rc is None:
            try:
                with open(status) as f:
                    st = json.load(f)
                leader, token = bool(st.get("isLeader")), st.get("fencingToken")
            except (OSError, ValueError):
                leader = False
        if leader and section is None:
            n += 1
            env = dict(os.environ, LOCKWRAP_FENCING_TOKEN=str(token if token is not None else "-"))
            section = subprocess.Popen([sys.executable, "-S",
                                        os.path.join(HERE, "cluster_child.py"), logfile,
                                        f"{tag}.s{n}", "86400", "86400", stop], env=env)
        elif not leader and section is not None:
            if section.poll() is None:
                section.send_signal(signal.SIGTERM)
            section.wait()
            section = None
        if section is not None and section.poll() is not None:
            section = None
        if rc is not None and section is None:
            sys.exit(rc if rc >= 0 else 128 - rc)
        time.sleep(0.01)


main()
