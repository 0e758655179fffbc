"""The support package of the Python tooling: everything bench/, chaos/ and tests/ share.

    procs     one clock, bounded waits, process tracking and reaping, death times
    agent     a private Consul dev agent on loopback (ConsulAgent, DevAgent), http_get
    proxy     the HTTP-aware loopback proxy that counts requests and cuts links
    logs      the child programs' shared log: child_argv, read_log, LogWatcher
    checker   the safety checks of a child log (no overlap, fencing, every child ended)
    settings  the lockwrap settings and modes the cluster suites run with
    cluster   a 3-server Consul cluster on loopback with iptables partitions
    runner    the one test runner and its closing line, `N passed, M failed[, K skipped]`
    programs/ the child programs, run by path with `python3 -S` (never imported)

Imports go one way (scripts/check-imports.py, `make check-imports`): bench, chaos and tests
import kit and their own package, never each other; kit imports only kit. Run everything as
modules from the repository root, e.g. `python3 -m chaos.chaos --short`.
"""
