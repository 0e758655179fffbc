"""The Python test suites (tests.chart, tests.container, tests.cluster), run as modules from the
repository root, e.g. `python3 -m tests.cluster.scenarios --list` (the Makefile does); shared
machinery and the runner are in kit."""
