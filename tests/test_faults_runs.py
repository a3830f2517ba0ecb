"""Faults that could lose work: two writers on one run folder, a zoom run resumed by the other zoom script, a
full disk, samples of two runs mixed in one folder, damaged checkpoints, Ctrl-C while torch imports."""
import fcntl
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from helpers import HERE, TINY, one_line_error, run_here

SHORT = [*TINY, "--size", "16", "--sample-every", "0"]


def _files(folder):
    """{name: bytes} of a folder's files (what a refused command must leave as it was)."""
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, f)) and f != ".lock"}


def test_a_zoom_run_resumed_by_the_other_zoom_script_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *SHORT, "--data", "maps", "--steps", "2", "--out", str(out))
    before = _files(out)
    code, log = run_here("train_zoom_bilinear.py", "--resume", "--out", str(out), "--steps", "4", ok=False)
    one_line_error(code, log)
    assert "train_zoom_nearest.py --resume" in log and _files(out) == before


def test_a_run_folder_has_one_writer(tmp_path):
    """While a process holds the run folder (training, resuming or distilling), a resume of it is refused in one
    line naming the holder, and writes nothing; once the holder is gone the resume goes on."""
    out = tmp_path / "run"
    run_here("train_ddpm.py", *SHORT, "--steps", "2", "--out", str(out))
    before = _files(out)
    fd = os.open(out / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live training process holds it
    try:
        code, log = run_here("train_ddpm.py", "--resume", "--out", str(out), "--steps", "4", ok=False)
        one_line_error(code, log)
        assert "is in use by process" in log and "train_ddpm.py" in log and _files(out) == before, log
        code, log = run_here("distill.py", "--teacher", str(out / "ckpt.pt"), "--resume", "--out", str(out),
                             "--steps", "4", ok=False)
        assert code == 2 and _files(out) == before
    finally:
        os.close(fd)
    run_here("train_ddpm.py", "--resume", "--out", str(out), "--steps", "4")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4


def test_two_trainings_at_once_one_is_refused(tmp_path):
    """A real second writer: a resume started while the first training still runs."""
    out = tmp_path / "run"
    run_here("train_ddpm.py", *SHORT, "--steps", "1", "--out", str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "train_ddpm.py", "--resume", "--out", str(out), "--steps", "100000"],
                             cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # until it holds the folder: it has said so
            if "resumed" in line:
                break
        code, log = run_here("train_ddpm.py", "--resume", "--out", str(out), "--steps", "5", ok=False)
        one_line_error(code, log)
        assert f"process {first.pid}" in log, log
    finally:
        first.send_signal(signal.SIGINT)  # saves and exits 130
        first.wait(timeout=120)
    assert first.returncode == 130


def _limit_file_size(limit):
    def apply():  # writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_keeps_the_last_checkpoint_removes_the_partial_one_and_says_how_to_go_on(tmp_path):
    out = tmp_path / "run"
    run_here("train_ddpm.py", *SHORT, "--steps", "2", "--out", str(out))
    size = os.path.getsize(out / "ckpt.pt")
    r = subprocess.run([sys.executable, "train_ddpm.py", "--resume", "--out", str(out), "--steps", "4"], cwd=HERE,
                       capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(size // 2),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and err[-1].startswith("error: cannot write"), r.stderr
    assert "free there" in err[-1] and f"--resume --out {out}" in err[-1] and "last good checkpoint" in err[-1]
    assert not (out / "ckpt.pt.tmp").exists() and torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    rows = open(out / "log.csv").read().splitlines()
    assert len({len(r.split(",")) for r in rows}) == 1  # whole rows only
    run_here("train_ddpm.py", "--resume", "--out", str(out), "--steps", "4")  # space again: it goes on
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4


def test_samples_never_mix_runs(ddpm_run, tmp_path):
    ck = str(ddpm_run[0] / "ckpt.pt")
    out = tmp_path / "s"
    run_here("sample.py", "--ckpt", ck, "--n", "4", "--steps", "2", "--out", str(out))
    before = _files(out)
    code, log = run_here("sample.py", "--ckpt", ck, "--n", "2", "--steps", "2", "--out", str(out), ok=False)
    one_line_error(code, log)
    assert "already holds files" in log and _files(out) == before
    first = run_here("sample.py", "--ckpt", ck, "--n", "3", "--steps", "2", "--seed", "1")[1]
    second = run_here("sample.py", "--ckpt", ck, "--n", "3", "--steps", "2", "--seed", "1")[1]
    folders = [line.split("-> ")[1].split("/grid.png")[0] for line in (first, second) for line in line.splitlines()
               if "-> " in line]
    assert len(set(folders)) == 2 and folders[0].endswith("_n3_seed1") and folders[1].endswith("_n3_seed1_2"), folders
    for f in folders:
        assert len(os.listdir(os.path.join(f, "images"))) == len(np.load(os.path.join(f, "samples.npz"))["images"]) == 3


def test_damaged_or_hand_made_checkpoints_are_one_line(ddpm_run, tmp_path):
    good = torch.load(ddpm_run[0] / "ckpt.pt", weights_only=True)
    cases = {"unknown_key": dict(good, model_config={**good["model_config"], "wings": 2}),
             "no_args": {k: v for k, v in good.items() if k != "args"},
             "args_not_dict": dict(good, args=[1, 2]),
             "bad_kind": dict(good, kind="gan"),
             "wrong_weights": dict(good, model={k: v[..., :1] for k, v in good["model"].items()}, ema=None),
             "zoom_without_states": dict(good, kind="zoom", objective={})}
    for name, ck in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(ck, path)
        for script, extra in (("sample.py", ["--n", "2", "--out", str(tmp_path / f"s_{name}")]),
                              ("train_ddpm.py", ["--resume", "--ckpt", str(path), "--steps", "9"])):
            args = ["--ckpt", str(path)] if script == "sample.py" else []
            code, log = run_here(script, *args, *extra, ok=False)
            one_line_error(code, log)
        assert not (tmp_path / f"s_{name}").exists(), name


def test_ctrl_c_while_torch_imports_is_one_line_and_130():
    p = subprocess.Popen([sys.executable, "train_ddpm.py", "--steps", "1"], cwd=HERE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # the interpreter is up, torch is importing
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and err.strip() == "interrupted", err
