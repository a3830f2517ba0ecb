"""What the tests share: running a script as a user would (in a subprocess, or in this process to skip
the interpreter's start-up), the tiny settings, and the one-line error check."""
import contextlib
import io
import os
import runpy
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
SHARED_DATA = os.path.join(HERE, "..", "shared", "data")
TINY = ["--preset", "tiny", "--n-maps", "128", "--batch", "16", "--n", "4", "--log-every", "2", "--device", "cpu"]


def run(*args, ok=True, env=None, timeout=300):
    """Run a script as a user would; returns (code, stdout+stderr)."""
    r = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    out = r.stdout + r.stderr
    if ok:
        assert r.returncode == 0, out[-3000:]
    return r.returncode, out


def run_here(script, *args, ok=True):
    """Run a script in this process: (exit code, stdout+stderr). conftest puts back what it changes
    (signal handlers, threads, seeds)."""
    buf, argv, code = io.StringIO(), sys.argv, 0
    sys.argv = [script, *args]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_path(os.path.join(HERE, script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    if ok:
        assert code == 0, buf.getvalue()[-3000:]
    return code, buf.getvalue()


def one_line_error(code, out):
    """Bad input: exit code 2, an 'error:' line, no traceback."""
    assert code == 2, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert "error:" in out


def inception_or_skip():
    """The FID Inception network, or a skip when its weights are not installed."""
    import pytest
    from cli import UserError
    from features import Inception
    try:
        return Inception()
    except UserError as e:
        pytest.skip(str(e))
