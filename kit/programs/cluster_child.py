"""The cluster tests' command (python3 -S, stdlib only): a critical section that uses most of its
kill grace when told to stop, and optionally leaves an escaping worker behind.

usage: cluster_child.py LOGFILE TAG MIN MAX STOP [ESCAPE]
Records (ONE os.write each, O_APPEND; child.py's format, so kit.logs.read_log parses them):
    "KIND MONOTONIC_NS PID TAG TOKEN [EXTRA]"   TOKEN = $LOCKWRAP_FENCING_TOKEN or "-"
START, then hold a random time in [MIN, MAX] s (END done, exit 0); on SIGTERM/SIGINT/SIGHUP write
STOPPING and KEEP RUNNING for STOP s (the caller passes ~80 % of the kill grace), then END, exit
143. Further signals are ignored meanwhile (SIGKILL still ends it: then only its death, observed by
the harness' death watcher, ends the section). The checker ends a section at the process' real
death when it saw one, so the time between END and exit counts too.

ESCAPE (the command leaves a worker behind and exits at once, as a careless script does):
    setsid   `setsid -f` a worker (new session and process group) that records its own section
             (tag TAG.w) and lives 30 s (same STOP behaviour), then END the command itself
    nohup    the same with `nohup … &` (stays in the command's process group)
"""
import os
import signal
import subprocess
import sys
import time

SIGS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
WORKER_LIFE = 30.0


def main():
    logfile, tag = sys.argv[1], sys.argv[2]
    lo, hi, stop = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    escape = sys.argv[6] if len(sys.argv) > 6 else ""
    token = os.environ.get("LOCKWRAP_FENCING_TOKEN") or "-"
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def rec(kind, extra=""):
        line = f"{kind} {time.monotonic_ns()} {pid} {tag} {token}"
        if extra:
            line += " " + extra
        os.write(fd, (line + "\n").encode())

    rec("START", f"ppid={os.getppid()} pgid={os.getpgid(0)} sid={os.getsid(0)}")
    if escape:
        me = os.path.abspath(__file__)
        worker = [sys.executable, "-S", me, logfile, tag + ".w", str(WORKER_LIFE),
                  str(WORKER_LIFE), str(stop)]
        if escape == "setsid":
            subprocess.run(["setsid", "-f", *worker], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        else:
            q = " ".join("'" + a.replace("'", "'\\''") + "'" for a in worker)
            subprocess.run(["sh", "-c", f"nohup {q} >/dev/null 2>&1 &"], stdin=subprocess.DEVNULL,
                           timeout=10)
        time.sleep(0.2)   # the worker has written its START
    import random
    secs = random.uniform(lo, hi)
    info = signal.sigtimedwait(SIGS, secs) if secs > 0 else None
    if info is None:
        rec("END", "done")
        os._exit(0)
    rec("STOPPING", signal.Signals(info.si_signo).name)
    end = time.monotonic() + stop
    while True:   # keep running (signals stay blocked, so they are ignored)
        left = end - time.monotonic()
        if left <= 0:
            break
        signal.sigtimedwait(SIGS, left)
    rec("END", signal.Signals(info.si_signo).name)
    os._exit(143)


main()
