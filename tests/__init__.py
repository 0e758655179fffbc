"""Python test kit package: run its scripts as modules from the repository root,
e.g. `python3 -m chaos.chaos --short` (the Makefile does)."""
