"""The child program run under the lock by the bench (bench/) and the chaos suite (chaos/chaos.py),
run by path (python3 -S, stdlib only; kit.logs.child_argv).

usage: child.py MODE LOGFILE TAG [ARGS]
Every record is ONE os.write() to LOGFILE opened with O_APPEND, so concurrent writers never
interleave: "KIND MONOTONIC_NS PID TAG TOKEN [EXTRA]\n" (TOKEN = $LOCKWRAP_FENCING_TOKEN or "-").

MODE wait        START, then block until SIGUSR1 (write EXIT, exit 0) or TERM/INT/HUP
                 (write TERM, exit 143).
MODE hold SECS   START, hold SECS (or until TERM/INT/HUP), END, exit 0 (143 after a signal).
MODE chaos MIN MAX  like hold with a random duration in [MIN, MAX] seconds.
"""
import os
import signal
import sys
import time

SIGS = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)


def main():
    mode, logfile, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    token = os.environ.get("LOCKWRAP_FENCING_TOKEN") or "-"
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def rec(kind, extra=""):
        line = f"{kind} {time.monotonic_ns()} {pid} {tag} {token}"
        if extra:
            line += " " + extra
        os.write(fd, (line + "\n").encode())

    rec("START", f"ppid={os.getppid()} pgid={os.getpgid(0)}")
    if mode == "wait":
        sig = signal.sigwait(SIGS)
        if sig == signal.SIGUSR1:
            rec("EXIT")
            os._exit(0)
        rec("TERM", signal.Signals(sig).name)
        os._exit(143)
    if mode == "hold":
        secs = float(sys.argv[4])
    elif mode == "chaos":
        import random
        lo, hi = float(sys.argv[4]), float(sys.argv[5])
        secs = random.uniform(lo, hi)
    else:
        rec("BADMODE")
        os._exit(2)
    info = signal.sigtimedwait(SIGS, secs) if secs > 0 else None
    if info is None:
        rec("END", "done")
        os._exit(0)
    rec("END", signal.Signals(info.si_signo).name)
    os._exit(143)


main()
