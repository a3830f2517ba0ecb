"""Faults: kill -9, Ctrl-C, a dying DDP worker, the bench, the machine's precision decision."""
import json
import os
import subprocess
import sys

import pytest
import torch

from generate import DEFAULT_SAMPLER, DEFAULT_STEPS
from helpers import HERE, TINY, inception_or_skip, one_line_error, run, run_here


# ---- reliability: faults and bad input --------------------------------------------------------

@pytest.mark.slow
def test_kill_9_loop_never_leaves_a_broken_checkpoint(tmp_path):
    """kill -9 at random moments while a checkpoint is written after every step; each time the
    checkpoint on disk loads, and --resume carries on from it to the end."""
    import random
    import time
    from checkpoint import load_checkpoint
    out = tmp_path / "run"
    cmd = [sys.executable, "train_ddpm.py", *TINY, "--size", "16", "--steps", "150", "--ckpt-every", "0",
           "--sample-every", "0", "--out", str(out)]
    rng, steps, kills = random.Random(0), [], 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(4):
        before = os.stat(out / "ckpt.pt").st_mtime_ns if (out / "ckpt.pt").exists() else None
        p = subprocess.Popen(cmd + (["--resume"] if before else []), cwd=HERE, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment after this run has written a checkpoint: a slow CPU waits longer, never fails.
        while p.poll() is None and (not (out / "ckpt.pt").exists() or os.stat(out / "ckpt.pt").st_mtime_ns == before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.5))
        if p.poll() is None:
            p.kill()  # SIGKILL: no handler runs
            kills += 1
        p.wait()
        if (out / "ckpt.pt").exists():
            steps.append(load_checkpoint(str(out / "ckpt.pt"))["step"])
    assert kills >= 3 and steps == sorted(steps) and steps[-1] > 0, (kills, steps)
    code, log = run(*cmd[1:], "--resume")
    assert "stopped (steps) at step 150" in log and f"resumed {out} at step" in log
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 150


def test_resume_with_contradicting_flags_and_unknown_names(tmp_path):
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "2", "--out", str(out))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "32", "--steps", "4", "--resume", "--out", str(out), ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out),
                             "--pred", "eps", ok=False))
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out))
    assert "stopped (steps) at step 4" in log
    before = os.stat(out / "ckpt.pt").st_mtime_ns
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out))
    assert "is already at step 4" in log and os.stat(out / "ckpt.pt").st_mtime_ns == before  # nothing trained
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", "heun", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--start", "gmm", "--sampler", "improved", ok=False))
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "2", "--out", str(zoom))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--resume", "--out", str(zoom), ok=False))  # zoom ckpt to DDPM
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes((out / "ckpt.pt").read_bytes()[:5000])
    one_line_error(*run_here("sample.py", "--ckpt", str(truncated), ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(truncated), ok=False))


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume_second_ctrl_c_quits(tmp_path):
    import signal
    import time
    from checkpoint import load_checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train_ddpm.py", *TINY, "--size", "16", "--steps", "100000", "--sample-every", "0"]

    def start(out):
        p = subprocess.Popen(cmd + ["--out", str(out)], cwd=HERE, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while not (out / "log.csv").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the loop
        return p

    for name, sig, code in (("a", signal.SIGINT, 130), ("b", signal.SIGTERM, 143)):  # `train && sample` stops
        p = start(tmp_path / name)
        p.send_signal(sig)
        log, _ = p.communicate(timeout=120)
        assert p.returncode == code, log[-2000:]
        assert "stopped (interrupt)" in log and "continue with: --resume --out" in log, log[-2000:]
        assert load_checkpoint(str(tmp_path / name / "ckpt.pt"))["step"] > 0
    # The second Ctrl-C: exit at once with 130 (called directly: a race against a fast save otherwise).
    import trainer
    exits = []
    orig_exit, orig_handlers = os._exit, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os._exit = exits.append
    try:
        it = trainer.Interrupt(1)
        it.handler(signal.SIGINT, None)
        assert it.requested and exits == []
        it.handler(signal.SIGINT, None)
        assert exits == [130]
    finally:
        os._exit = orig_exit
        for s, h in orig_handlers.items():
            signal.signal(s, h)


@pytest.mark.slow
def test_ddp_worker_death_is_reported_and_resumable(tmp_path):
    """kill -9 one torchrun worker: rank 0 ends with a one-line message naming the last checkpoint,
    and the run resumes from it."""
    import time
    from checkpoint import load_checkpoint
    out = tmp_path / "ddp"
    args = [{"--n": "--num-samples"}.get(a, a) for a in TINY]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518", "train_ddpm.py",
           *args, "--size", "16", "--steps", "100000", "--ckpt-every", "0", "--sample-every", "0", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "ckpt.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    rank1 = None
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            continue
        if b"RANK=1" in env and b"train_ddpm.py" in cmdline and str(out).encode() in cmdline:
            rank1 = int(pid)
    assert rank1 is not None, "rank 1 not found"
    os.kill(rank1, 9)
    log, _ = p.communicate(timeout=240)
    assert p.returncode != 0
    assert "error: rank 0:" in log and "last checkpoint:" in log, log[-3000:]
    step = load_checkpoint(str(out / "ckpt.pt"))["step"]
    assert step > 0
    code, log = run("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "train_ddpm.py",
                    *args, "--size", "16", "--steps", str(step + 2), "--resume", "--out", str(out), timeout=600)
    assert f"stopped (steps) at step {step + 2}" in log


@pytest.mark.slow
def test_bench_table_and_anchor_rows_skip_when_absent(tmp_path):
    """bench.py end to end on tiny settings: a markdown row per native precision (the others listed as
    skipped), a sampling table with the default and consistency samplers end to end, and the anchor rows
    either measured or skipped with the reason; --cards keeps every measured row for the results page."""
    from machine import native_precisions
    native = native_precisions(torch.device("cpu"))
    cards = tmp_path / "speed.jsonl"
    code, out = run("bench.py", "--quick", "--seconds", "0.05", "--models", "tiny,lucidrains-unet64",
                    "--sample-batch", "4", "--cards", str(cards))
    assert "matmul peaks: " in out and out.startswith("machine: ")
    rows = [line for line in out.splitlines() if line.startswith("| tiny | 1x28 |")]
    assert [r.split("|")[3].strip() for r in rows] == native and all(float(r.split("|")[8]) > 0 for r in rows), out
    assert ("skipped: bf16 rows, not native" in out) == ("bf16" not in native), out
    anchor = [line for line in out.splitlines() if line.startswith("| lucidrains-unet64 |")]
    assert len(anchor) == len(native) and all("not installed" in r or float(r.split("|")[8]) > 0 for r in anchor), out
    assert "| 1000 |" in out and "Sampling 1,000 1x28 images with the `tiny` preset" in out
    assert "End to end, batch 4" in out, out
    for sampler, steps in ((DEFAULT_SAMPLER, DEFAULT_STEPS), ("consistency", 4)):
        cells = [c.strip() for c in out.split(f"| {sampler} | {steps} |")[1].splitlines()[0].split("|")]
        assert float(cells[0]) > 0 and cells[1] == "20" and float(cells[2]) > 0, out
    speed = [json.loads(line) for line in open(cards)]
    assert {c["task"] for c in speed} == {"train", "sample"} and all(c["type"] == "speed" for c in speed)
    assert len([c for c in speed if c["model"] == "tiny"]) == len(native) + 1  # + the sampling row
    _, page = run("plots.py", "results", str(cards))
    rows = [line for line in page.splitlines() if line.startswith("| train: ") or line.startswith("| sample: ")]
    assert "## Speed" in page and len(rows) == len(speed), page
    assert all(speed[0]["machine"] in r and speed[0]["commit"] in r and "python bench.py" in r for r in rows), rows
    assert "consistency 4 steps end to end" in page and "img/s" in page, page
    (tmp_path / "bad.jsonl").write_text('{"type": "speed", "task": "train"}\n')
    one_line_error(*run("plots.py", "results", str(tmp_path / "bad.jsonl"), ok=False))
    one_line_error(*run("bench.py", "--precisions", "fp16", ok=False))  # fp16 needs CUDA


@pytest.mark.slow
def test_machine_decides_precision_from_torchs_view_of_the_cpu(tmp_path):
    """An AVX2-only CPU (or a bf16 one told to act like it) trains and samples in fp32; bf16 where
    torch can use AMX/AVX512-bf16; the choice is said once at start."""
    probe = "import torch, machine; print(machine.native_precisions(torch.device('cpu'))[0])"
    as_avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert run("-c", probe, env=as_avx2)[1].split() == ["fp32"]
    assert run("-c", probe, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})[1].split() == ["fp32"]
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    capability = torch.backends.cpu.get_cpu_capability()
    has_bf16 = ("avx512_bf16" in flags or "amx_bf16" in flags) and ("AVX512" in capability or "AMX" in capability)
    assert run("-c", probe)[1].split() == (["bf16"] if has_bf16 else ["fp32"])
    code, log = run("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--sample-every", "0", "--n", "1",
                    "--out", str(tmp_path / "run"), env=as_avx2)
    assert [line for line in log.splitlines() if line.startswith("machine: ")][0].endswith(", fp32, 1 process(es) of 16 images a step")
    assert "torch runs AVX2 kernels" in log
    # a card must not pass a bf16 CPU held back by the environment off as an AVX2-only one
    assert ("held to it by ATEN_CPU_CAPABILITY" in log) == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_anchor_lucidrains_writes_samples_fid_reads(tmp_path):
    """The quality anchor trains for a few seconds and writes EMA and raw samples that fid.py can read."""
    pytest.importorskip("denoising_diffusion_pytorch")
    out = tmp_path / "anchor"
    run_here("anchor_lucidrains.py", "--data", "maps", "--size", "16", "--n-maps", "64", "--minutes", "0.02",
             "--dim", "8", "--steps", "2", "--n", "3", "--out", str(out))
    from fid import read_samples
    for name in ("samples.npz", "samples_raw.npz"):
        x = read_samples(str(out / name))
        assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    made_by = json.load(open(out / "anchor.json"))
    assert made_by["step"] >= 1 and made_by["command"].startswith("python anchor_lucidrains.py")
    assert {k: (v["weights"], v["steps"]) for k, v in made_by["sampled"].items()} == {
        "samples.npz": ("ema", 2), "samples_raw.npz": ("raw", 2)}  # fid.py puts these on the cards


def test_fid_samples_a_conditional_checkpoint_class_by_class(tmp_path):
    """A class-conditional checkpoint is scored on every class in turn, and the card says so."""
    import json
    inception_or_skip()
    out = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "2", "--cond", "--out", str(out))
    run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--n", "4", "--n-ref", "4", "--metrics", "fid",
             "--cache-dir", str(tmp_path / "cache"))
    card = json.loads(open(out / "scores.jsonl").read())
    assert card["labels"] == "every class in turn" and card["sampler"] == "naive" and card["nfe"] == 12
