"""The training loop end to end on tiny settings: CLI, sampling from what it wrote, determinism,
bit-for-bit resume, DDP, no host reads per step, the EMA."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import HERE, TINY, one_line_error, run, run_here
from nn_unet import build_unet
from samplers import SAMPLERS
from train_state import StepDraws


@pytest.mark.parametrize("opts", [dict(pred="eps"), dict(pred="v", min_snr=5.0), dict(pred="x0", learn_sigma=True)])
def test_loss_falls_on_a_fixed_batch(opts):
    import argparse
    from objectives import DDPM
    from data import make_maps, to_model
    args = argparse.Namespace(data="maps", schedule="cosine", T=100, pred="eps", min_snr=0.0, learn_sigma=False,
                              label_drop=0.1, cond=False)
    vars(args).update(opts)
    data = make_maps(16, 16, seed=1)
    obj = DDPM()
    obj.setup(args, data)
    torch.manual_seed(0)
    m = build_unet("tiny", 3, 16, learn_sigma=args.learn_sigma)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    x0 = to_model(data.images)

    def loss_at(seed):
        return obj.loss(m, x0, None, StepDraws(torch.Generator().manual_seed(seed), torch.Generator(), seed, 0, len(x0)))[0].mean()

    with torch.no_grad():
        before = loss_at(123).item()
    for i in range(60):
        opt.zero_grad()
        loss_at(i).backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(123).item()
    assert after < 0.7 * before, (before, after)


def test_train_then_sample_cli(ddpm_run, tmp_path):
    out, log = ddpm_run
    assert "stopped (steps) at step 6" in log and (out / "ckpt.pt").exists() and (out / "samples_final.png").exists()
    # 4 generated and 4 real 16 px tiles, 3 a row (2-pixel padding): black tiles end the generated ones' last row, so
    # the real ones start a row of their own
    grid = np.asarray(Image.open(out / "samples_final.png").convert("L"))
    assert grid.shape == (4 * 18 + 2, 3 * 18 + 2)
    tile = lambda r, c: grid[2 + 18 * r:18 * (r + 1), 2 + 18 * c:18 * (c + 1)]  # noqa: E731
    assert tile(1, 1).max() == 0 and tile(1, 2).max() == 0 and tile(2, 0).max() > 0 and tile(1, 0).max() > 0
    with open(out / "log.csv") as f:
        rows = f.read().splitlines()
    assert rows[0] == "step,epoch,loss,lr,img_per_s,loss_q1,loss_q2,loss_q3,loss_q4,elapsed_s,ema_decay" and len(rows) == 4
    assert 0 < float(rows[-1].split(",")[-1]) < 1
    for sampler in SAMPLERS:
        so = tmp_path / sampler
        run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", sampler, "--steps", "4", "--n", "5",
                 "--out", str(so), "--device", "cpu", "--progression")
        imgs = np.load(so / "samples.npz")["images"]
        assert imgs.shape == (5, 16, 16, 3) and imgs.dtype == np.uint8
        assert (so / "grid.png").exists() and (so / "progression.png").exists() and len(os.listdir(so / "images")) == 5


def test_class_conditional_cli_with_cfg(cond_run, tmp_path):
    ckpt = str(cond_run[0] / "ckpt.pt")
    run_here("sample.py", "--ckpt", ckpt, "--sampler", "ancestral", "--steps", "3", "--n", "4",
             "--cfg", "2", "--labels", "1", "--out", str(tmp_path / "s"), "--device", "cpu")
    run_here("sample.py", "--ckpt", ckpt, "--steps", "3", "--n", "4", "--no-clip", "--out", str(tmp_path / "u"), "--device", "cpu")
    imgs = np.load(tmp_path / "u" / "samples.npz")["images"]
    assert imgs.shape[0] == 4 and imgs.dtype == np.uint8
    one_line_error(*run_here("sample.py", "--ckpt", ckpt, "--labels", "7", "--n", "2", "--device", "cpu", ok=False))


def test_checkpoints_kept_at_training_minutes_carry_their_time(tmp_path):
    """--keep-at-minutes keeps a checkpoint when the run's training time reaches each mark; every checkpoint
    says how long the run has trained, over resumes too."""
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "3", "--sample-every", "0", "--keep-at-minutes",
             "1000,0.00001", "--out", str(out))
    assert (out / "ckpt_1e-05min.pt").exists() and not list(out.glob("ckpt_1000min.pt"))
    first = torch.load(out / "ckpt.pt", weights_only=True)["train_seconds"]
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "5", "--resume", "--out", str(out))
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert 0 < first < ck["train_seconds"] and ck["provenance"]["command"].startswith("python train_ddpm.py")


def test_width_depth_and_patching_overrides_build_and_survive_resume(tmp_path):
    """--ch, --blocks, --mults and --patch change single fields of the preset; a resumed run keeps them
    and refuses a contradicting value in one line."""
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "2", "--sample-every", "0", "--ch", "24",
             "--blocks", "2", "--mults", "1,2,4", "--patch", "2", "--out", str(out))
    cfg = torch.load(out / "ckpt.pt", weights_only=True)["model_config"]
    assert (cfg["ch"], cfg["blocks"], cfg["mults"], cfg["patch"]) == (24, 2, (1, 2, 4), 2)
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--steps", "2",
                         "--out", str(tmp_path / "s"))
    assert code == 0 and "Traceback" not in log, log
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "3", "--resume", "--out", str(out))
    assert torch.load(out / "ckpt.pt", weights_only=True)["model_config"] == cfg
    code, log = run_here("train_ddpm.py", "--resume", "--out", str(out), "--blocks", "1", ok=False)
    one_line_error(code, log)
    assert "--blocks 1 contradicts" in log
    code, log = run_here("train_ddpm.py", "--resume", "--out", str(out), "--mults", "1,2", ok=False)
    one_line_error(code, log)
    assert "--mults [1, 2] contradicts" in log
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--mults", "1,1,1,1,1,1",
                         "--out", str(tmp_path / "deep"), ok=False)
    one_line_error(code, log)  # 6 levels would halve 16 px maps to nothing: refused before any run folder
    assert "give at most 5 multipliers" in log and not (tmp_path / "deep").exists(), log
    # --patch sets the patch side; one that does not divide the image is refused before any work
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--sample-every", "0",
                         "--patch", "4", "--out", str(tmp_path / "p4"))
    assert torch.load(tmp_path / "p4" / "ckpt.pt", weights_only=True)["model_config"]["patch"] == 4
    assert "4x4 patches" in log
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--patch", "3", "--out", str(tmp_path / "p3"), ok=False)
    one_line_error(code, log)
    assert "--patch 3 does not divide the 16 px images" in log and not (tmp_path / "p3").exists()


def _states(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck["ema"], ck["optimizer"]["state"]


def _assert_same(a, b):
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            va, vb = sa[k], sb[k]
            if isinstance(va, dict):
                _assert_same([va], [vb])
            else:
                assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), k


@pytest.mark.slow
def test_same_seed_twice_gives_identical_checkpoints(tmp_path):
    for name in ("a", "b"):
        run("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--out", str(tmp_path / name))
    _assert_same(_states(tmp_path / "a" / "ckpt.pt"), _states(tmp_path / "b" / "ckpt.pt"))


@pytest.mark.slow
def test_resume_is_bit_for_bit(tmp_path):
    # 9 batches of 16 per epoch at 150 maps: 12 steps cross an epoch boundary, 5 + 7 resumes mid-epoch.
    common = [*TINY, "--n-maps", "150", "--size", "16", "--sample-every", "0"]
    run("train_ddpm.py", *common, "--steps", "12", "--out", str(tmp_path / "full"))
    run("train_ddpm.py", *common, "--steps", "5", "--out", str(tmp_path / "half"))
    code, log = run("train_ddpm.py", *common, "--steps", "12", "--resume", "--out", str(tmp_path / "half"))
    assert "resumed" in log and "at step 5" in log
    _assert_same(_states(tmp_path / "full" / "ckpt.pt"), _states(tmp_path / "half" / "ckpt.pt"))


COUNT_COLLECTIVES = """
import json, os, runpy, sys
sys.path.insert(0, {here!r})
import torch.distributed as dist
calls = []
def counted(name, orig):
    def f(*a, **k):
        calls.append([name, [x.device.type for x in a if hasattr(x, "device")]])
        return orig(*a, **k)
    return f
for name in ("broadcast", "all_reduce", "all_gather", "all_gather_object", "reduce", "barrier"):
    setattr(dist, name, counted(name, getattr(dist, name)))
sys.argv = ["train_ddpm.py", *sys.argv[1:]]
try:
    runpy.run_path(os.path.join({here!r}, "train_ddpm.py"), run_name="__main__")
finally:
    with open(os.environ["COUNT_OUT"] + os.environ["RANK"], "w") as f:
        json.dump(calls, f)
"""


@pytest.mark.slow
def test_ddp_two_processes_gloo_agree_at_log_steps_only(tmp_path):
    """Two ranks train the same replica, and talk outside DDP's own gradient all-reduce only at log steps
    and the last step (a collective per step stalls a GPU), with tensors on the training device; each rank draws
    its own half of the global batch, so the run is one process's with the same seed (up to the all-reduce's
    rounding)."""
    wrapper = tmp_path / "count_collectives.py"
    wrapper.write_text(COUNT_COLLECTIVES.format(here=HERE))
    args = [{"--n": "--num-samples"}.get(a, a) for a in TINY]  # torchrun's parser claims '--n' as a prefix
    common = [*args, "--size", "16", "--steps", "8", "--log-every", "4", "--sample-every", "0", "--augment", "flip_rot90"]
    code, log = run("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(wrapper),
                    *common, "--out", str(tmp_path / "ddp"), env={"COUNT_OUT": str(tmp_path / "calls")}, timeout=600)
    assert "DDP check: parameters identical on all 2 ranks: True" in log, log[-3000:]
    run("train_ddpm.py", *common, "--out", str(tmp_path / "one"))
    two, one = (torch.load(tmp_path / d / "ckpt.pt", weights_only=False)["model"] for d in ("ddp", "one"))
    assert all(torch.allclose(two[k], one[k], rtol=1e-3, atol=1e-5) for k in one)
    import json
    for rank in (0, 1):
        calls = json.loads((tmp_path / f"calls{rank}").read_text())
        in_loop = [c for c in calls if c[0] != "all_gather_object"]  # the replica check after training
        assert [c[0] for c in in_loop] == ["all_reduce", "all_reduce"], calls  # steps 4 and 8 of 8
        assert all(d == "cpu" for c in in_loop for d in c[1]), calls


def test_ddp_backend_serves_cpu_and_gpu_tensors_on_cuda():
    from machine import ddp_backend
    assert ddp_backend(torch.device("cpu")) == "gloo"
    assert ddp_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"  # nccl alone refuses CPU tensors


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def project_host_reads(fn):
    """Run fn() and list the host reads of tensor values (.item(), bool(t), .cpu(), ...) made by this project's
    modules. On a GPU each one waits for the queue to drain; torch's own internals are not counted."""
    reads, originals = [], {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def counted(name, orig):
        def f(self, *a, **k):
            frame = sys._getframe(1)
            path = os.path.abspath(frame.f_code.co_filename)
            if os.path.dirname(path) == HERE and os.path.basename(path) != "test_smoke.py":
                reads.append(f"{os.path.basename(path)}:{frame.f_lineno} {name}")
            return orig(self, *a, **k)
        return f

    for n, o in originals.items():
        setattr(torch.Tensor, n, counted(n, o))
    try:
        fn()
    finally:
        for n, o in originals.items():
            setattr(torch.Tensor, n, o)
    return reads


def test_training_steps_do_not_read_tensors_back_to_the_host(tmp_path):
    """Between log steps the loop never reads a tensor back to the host: 4 more steps add no read."""
    def train(steps):
        return project_host_reads(lambda: run_here(
            "train_ddpm.py", *TINY, "--size", "16", "--steps", str(steps), "--log-every", "1000", "--sample-every",
            "0", "--cond", "--learn-sigma", "--min-snr", "5", "--out", str(tmp_path / f"r{steps}")))
    few, more = train(2), train(6)
    extra = sorted(set(more) - set(few)) or sorted(more)[len(few):]
    assert len(more) == len(few), f"{len(more) - len(few)} more host reads for 4 more steps: {extra[:8]}"


def test_ema_decay_is_edms_half_life_with_ramp_up():
    """β = 0.5^(batch / half-life), half-life = min(1000 · kimg, rampup · images seen) (EDM): a short run
    averages a fixed share of itself, a long one a fixed number of images."""
    from train_state import ema_decay
    assert ema_decay(10_000, 32, 50, 0.1).item() == pytest.approx(0.5 ** (32 / 1_000))  # 10 % of 10k images
    assert ema_decay(10_000_000, 32, 50, 0.1).item() == pytest.approx(0.5 ** (32 / 50_000))  # capped at 50 kimg
    assert ema_decay(10_000, 32, 50, 0.0).item() == pytest.approx(0.5 ** (32 / 50_000))  # no ramp-up
    on_device = ema_decay(torch.tensor(10_000), 32, 50, 0.1)
    assert isinstance(on_device, torch.Tensor) and on_device.item() == pytest.approx(0.5 ** 0.032)


def test_ema_in_the_train_state_follows_its_decay():
    """The EMA weights after k updates are the closed-form average with β_k = ema_decay(k · batch) (the
    first update copies), and the decay logged is the one used."""
    import argparse
    from train_state import TrainState, ema_decay
    args = argparse.Namespace(batch=4, ema_halflife_kimg=0.01, ema_rampup=0.5, optimizer="sgd", lr=0.1,
                              weight_decay=0.0, warmup=1, cooldown=0.0, seed=0, grad_clip=0.0)
    net = torch.nn.Linear(1, 1, bias=False)
    state = TrainState(net, args, torch.device("cpu"), "fp32")
    want = None
    for k in range(1, 8):
        with torch.no_grad():
            net.weight.fill_(float(k))
        state.update_ema()
        state.step = k
        d = ema_decay(k * 4, 4, 0.01, 0.5).item()
        want = float(k) if k == 1 else d * want + (1 - d) * k
        assert state.ema.module.weight.item() == pytest.approx(want, rel=1e-6), k
        assert state.ema_decay_now() == pytest.approx(d)


def test_main_job_defaults_are_maps_small_15_minutes():
    import trainer
    from objectives import DDPM
    from train_args import base_parser
    obj = DDPM()
    p = base_parser("x")
    obj.add_args(p)
    a = p.parse_args([])
    assert a.data == "maps" and a.preset == "small" and a.minutes is None
    trainer._check_flags(a, 1, None)  # no budget given: 15 minutes
    assert a.minutes == 15.0 and a.steps is None and a.epochs is None
    b = p.parse_args(["--steps", "7"])
    trainer._check_flags(b, 1, None)  # a budget given: no minutes added
    assert b.minutes is None and b.steps == 7
    assert (a.pred, a.min_snr, a.cond) == ("v", 5.0, False)


def test_data_chooses_its_defaults_and_the_command_line_overrides_them(monkeypatch):
    import machine
    from objectives import DDPM, ColdZoom
    from recipes import DATA_DEFAULTS, FP32_CPU_DEFAULTS
    from train_args import parse_args
    a, b = parse_args(DDPM(), ["--data", "mnist"])[0], parse_args(DDPM(), ["--data", "maps"])[0]
    for data in DATA_DEFAULTS["ddpm"]:  # every entry of every data set's recipe reaches its parsed flags
        parsed = parse_args(DDPM(), ["--data", data])[0]
        assert {k: getattr(parsed, k) for k in DATA_DEFAULTS["ddpm"][data]} == DATA_DEFAULTS["ddpm"][data], data
    assert (a.cooldown, a.ema_rampup, b.cooldown, b.ema_rampup) == (0.3, 0.03, 0.0, 0.1)
    assert parse_args(DDPM(), ["--data", "mnist", "--cooldown", "0"])[0].cooldown == 0.0
    assert parse_args(DDPM(), ["--data", "mnist"])[0].min_snr == 0.0 and parse_args(DDPM(), ["--data", "cifar10"])[0].min_snr == 5.0
    c = parse_args(DDPM(), ["--data", "coffee"])[0]
    assert (c.pred, c.min_snr, c.cooldown, c.ema_rampup) == ("eps", 0.0, 0.3, 0.03)
    assert parse_args(DDPM(), ["--data", "coffee", "--pred", "v"])[0].pred == "v"
    assert parse_args(DDPM(), ["--data", "mnist", "--min-snr", "5"])[0].min_snr == 5.0
    # The machine's entry: a CPU without fast bf16 trains the cheaper MNIST network; bf16 CPUs and GPUs the preset's.
    monkeypatch.setattr(machine, "cpu_bf16", lambda: (False, "test"))
    assert parse_args(DDPM(), ["--data", "mnist"])[0].blocks == FP32_CPU_DEFAULTS["ddpm"]["mnist"]["blocks"] == 1
    assert parse_args(DDPM(), ["--data", "mnist", "--blocks", "2"])[0].blocks == 2
    assert parse_args(DDPM(), ["--data", "cifar10"])[0].blocks is None
    monkeypatch.setattr(machine, "cpu_bf16", lambda: (True, "test"))
    assert parse_args(DDPM(), ["--data", "mnist"])[0].blocks is None
    args, typed = parse_args(DDPM(), ["--data", "mnist"])
    assert args.cond and "cond" not in typed  # a default, so --resume takes the checkpoint's
    args, typed = parse_args(DDPM(), ["--data", "mnist", "--no-cond", "--pred", "eps"])
    assert not args.cond and args.pred == "eps" and {"cond", "pred"} <= typed
    assert not parse_args(DDPM(), ["--data", "cifar10"])[0].cond
    assert not parse_args(ColdZoom("nearest"), ["--data", "mnist"])[0].cond  # the entries are per script kind


def test_zoom_sample_cli_every_start_and_update(zoom_run, tmp_path):
    out, log = zoom_run
    assert "zoom: maps" in log and (out / "samples_final.png").exists()
    for start, sampler in (("hist", "improved"), ("single", "naive"), ("bank", "improved"), ("gmm", "naive")):
        so = tmp_path / f"{start}_{sampler}"
        run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--start", start, "--sampler", sampler, "--n", "3",
                 "--noise", "0.1", "--out", str(so), "--device", "cpu", "--progression")
        assert np.load(so / "samples.npz")["images"].shape == (3, 16, 16, 3) and (so / "progression.png").exists()
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", "dpmpp2m", ok=False))


def test_zoom_bilinear_trains_and_samples(tmp_path):
    out = tmp_path / "run"
    run_here("train_zoom_bilinear.py", *TINY, "--data", "maps", "--size", "16", "--steps", "2", "--out", str(out))
    run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape == (2, 16, 16, 3)


def test_lr_warms_up_holds_then_cools_down_to_zero_at_the_end_of_the_budget(tmp_path):
    from train_state import lr_factor
    assert lr_factor(0, 10, 0.0, 0.0) == pytest.approx(0.1) and lr_factor(50, 10, 0.9, 0.0) == 1.0
    assert lr_factor(50, 10, 0.5, 0.2) == 1.0  # before the last 20 %: constant
    assert lr_factor(50, 10, 0.9, 0.2) == pytest.approx(0.5) and lr_factor(50, 10, 1.0, 0.2) == 0.0
    out = tmp_path / "run"
    run("train_ddpm.py", *TINY, "--steps", "40", "--warmup", "1", "--lr", "1e-3", "--cooldown", "0.5",
        "--log-every", "10", "--out", str(out))
    rows = (out / "log.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[3]) for r in rows]  # the lr for step k + 1, set from the progress after step k - 1
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * 11 / 20, 1e-3 * 1 / 20], rel=1e-2), lrs


def test_sampling_defaults_follow_the_data_and_the_labels():
    from recipes import sampling_defaults
    assert sampling_defaults("coffee") == {"gauss_snr": 0.05, "gauss_mix": 8} and sampling_defaults("flowers102") == {}
    # MNIST: its labels' Gaussians only for a class-conditional model (one Gaussian is no digit); unclipped either way
    assert sampling_defaults("mnist", cond=True) == {"gauss_snr": 0.1, "clip": False}
    assert sampling_defaults("mnist", cond=False) == {"clip": False}
