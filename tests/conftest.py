"""Shared fixtures: every test leaves the process as it found it, and a few tiny checkpoints are
trained once per test session instead of once per test."""
import random
import signal
import sys

import numpy as np
import pytest
import torch

from helpers import HERE, TINY, run

sys.path.insert(0, HERE)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of several seconds (left out by --quick)")


@pytest.fixture(autouse=True)
def restore_process_state():
    """Scripts run in this process set signal handlers, the thread count and the global seeds: put them back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    np_state, py_state = np.random.get_state(), random.getstate()
    yield
    for s, h in handlers.items():
        signal.signal(s, h)
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    np.random.set_state(np_state)
    random.setstate(py_state)


def _train(tmp_path_factory, name, script, *flags):
    out = tmp_path_factory.mktemp(name) / "run"
    code, log = run(script, *TINY, *flags, "--out", str(out))
    return out, log


@pytest.fixture(scope="session")
def ddpm_run(tmp_path_factory):
    """(run folder, training log) of an unconditional DDPM with the default loss (v, min-SNR 5): maps 16 px,
    6 steps. Read only."""
    return _train(tmp_path_factory, "ddpm", "train_ddpm.py", "--size", "16", "--steps", "6")


@pytest.fixture(scope="session")
def cond_run(tmp_path_factory):
    """A class-conditional DDPM with learned variance: maps 16 px, 3 steps. Read only."""
    return _train(tmp_path_factory, "cond", "train_ddpm.py", "--size", "16", "--steps", "3", "--cond", "--learn-sigma")


@pytest.fixture(scope="session")
def zoom_run(tmp_path_factory):
    """A Cold Zoom (nearest) restorer: maps 16 px, 4 steps. Read only."""
    return _train(tmp_path_factory, "zoom", "train_zoom_nearest.py", "--data", "maps", "--size", "16", "--steps", "4")
