"""Imported first by every script: Ctrl-C while the heavy imports (torch) load exits 130 with one line, as it does
later (cli.run_cli hands Ctrl-C back to KeyboardInterrupt once the script runs). A program of the user's that
imports a module of this project keeps Python's own Ctrl-C."""
import os
import signal
import sys


def _quit(_signum, _frame):
    print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)  # at once: an import that catches every exception would swallow SystemExit, and nothing is written yet


_main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
if os.path.dirname(os.path.abspath(_main)) == os.path.dirname(os.path.abspath(__file__)):
    signal.signal(signal.SIGINT, _quit)
