"""`python3 -m chaos.checker WORKDIR…`: the safety checks of saved chaos runs, again, from their
child log and evidence.json alone (the re-check command the chaos results cite). The checks
themselves are kit/checker.py's."""
import sys

from kit.checker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
