"""What keeps a GPU busy, checked on the CPU: a training step reads nothing back to the host (no .item(), no
bool() of a tensor), converts no float64 table and copies nothing across devices; sampling draws each image's
noise in one piece per run, with the images the per-step draws made."""
import argparse

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from data import make_maps, to_model
from nn_unet import build_unet
from samplers import PerImageNoise
from train_state import TrainState

aten = torch.ops.aten


class StepRecorder(TorchDispatchMode):
    """Every op a step runs that would stall a GPU: a read back to the host, a float64 table (or a gather from one)
    converted, a copy from one device to another (a 0-dim float64 on the device, the EMA's decay, is no table). `host` holds tensors that live on the host by design (the optimiser's step counts)."""

    def __init__(self, host):
        super().__init__()
        self.host, self.found = {id(t) for t in host}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func is aten._local_scalar_dense.default and id(first) not in self.host:
            self.found.append(f"host read of a {tuple(first.shape)} {first.dtype} tensor")
        if func is aten._to_copy.default and first is not None:
            if first.dtype == torch.float64 and first.dim() and kwargs.get("dtype", first.dtype) != torch.float64:
                self.found.append(f"float64 -> {kwargs.get('dtype')} of {tuple(first.shape)}")
            if kwargs.get("device") is not None and torch.device(kwargs["device"]) != first.device:
                self.found.append(f"copy {first.device} -> {kwargs['device']}")
        if func is aten.copy_.default and args[0].device != args[1].device:
            self.found.append(f"copy {args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


def _objective(kind, **over):
    from objectives import ColdZoom, DDPM
    args = argparse.Namespace(data="maps", schedule="cosine", T=100, pred="v", min_snr=5.0, learn_sigma=False,
                              label_drop=0.1, cond=False, final_size=4, loss="mse", seed=0, grid_start="bank")
    vars(args).update(over)
    obj = DDPM() if kind == "ddpm" else ColdZoom("nearest")
    data = make_maps(32, 16, seed=1)
    return obj, args, data, obj.setup(args, data)


@pytest.mark.parametrize("kind,over", [("ddpm", {}), ("ddpm", dict(pred="eps", learn_sigma=True, cond=True)),
                                       ("ddpm", dict(pred="x0", min_snr=0.0)), ("zoom", {})])
def test_a_training_step_reads_nothing_back_and_converts_no_table(kind, over):
    from runs import LossMeter, Stopper
    obj, args, data, kw = _objective(kind, **over)
    targs = argparse.Namespace(batch=8, ema_halflife_kimg=50.0, ema_rampup=0.1, optimizer="adamw", lr=1e-3,
                               weight_decay=0.0, warmup=10, cooldown=0.3, seed=0, grad_clip=1.0)
    torch.manual_seed(0)
    model = build_unet("tiny", 3, 16, num_classes=data.num_classes if args.cond else 0, **kw)
    state = TrainState(model, targs, torch.device("cpu"), "fp32")
    meter, stopper = LossMeter("cpu"), Stopper(100, None, None, 1, "cpu")
    x0, y = to_model(data.images[:8]), data.labels[:8] if args.cond else None
    for _ in range(2):  # the first steps build what stays: the schedule's tables, the optimiser's state
        meter.add(*state.train_step(model, obj, x0, y, state.draws()))
    steps = [s["step"] for s in state.opt.state.values()]
    with StepRecorder(steps) as rec:
        for _ in range(3):
            meter.add(*state.train_step(model, obj, x0, y, state.draws()))
            stopper.check(state.step, meter.nonfinite, log_step=False)
    assert not rec.found, rec.found[:5]
    assert state.ema.n_averaged.device == x0.device and int(state.ema.n_averaged) == 5


def test_the_old_ema_update_would_have_been_caught():
    """The recorder sees AveragedModel.update_parameters' host read of its counter: the test above can fail."""
    model = torch.nn.Linear(2, 2)
    ema = torch.optim.swa_utils.AveragedModel(model)
    with StepRecorder([]) as rec:
        ema.update_parameters(model)
    assert any("host read" in f for f in rec.found)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16), (3, 5, 5)])
def test_per_image_noise_drawn_once_per_run_is_the_noise_drawn_per_step(shape):
    """Image i's noise for the whole run in one draw per image (planned calls), the same numbers as one draw per
    image per step, and more calls than planned go on drawing from the same stream."""
    planned = PerImageNoise(7, range(3, 6), shape, "cpu", calls=4)
    gens = [torch.Generator().manual_seed(7 * 1_000_003 + i) for i in range(3, 6)]
    for _ in range(6):  # 2 more than planned
        want = torch.stack([torch.randn(shape, generator=g) for g in gens])
        assert torch.equal(planned(), want)


def test_a_compile_that_fails_trains_eager_with_one_line_and_the_same_weights(tmp_path, monkeypatch):
    """--compile whose compiler fails at the first step: one line says so, and the run is the eager run's, step for
    step (the failed attempt's random draws are given back)."""
    from helpers import TINY, run_here

    def broken_compile(net, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here\nsecond line")
        return fail
    flags = [*TINY, "--size", "16", "--steps", "3", "--sample-every", "0"]
    run_here("train_ddpm.py", *flags, "--out", str(tmp_path / "eager"))
    monkeypatch.setattr(torch, "compile", broken_compile)
    code, log = run_here("train_ddpm.py", *flags, "--compile", "--out", str(tmp_path / "fallback"))
    assert "torch.compile failed (RuntimeError: no compiler here); training without it" in log
    assert "torch.compile on (--compile)" in log
    a, b = (torch.load(tmp_path / r / "ckpt.pt", weights_only=True) for r in ("eager", "fallback"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_the_device_report_runs_and_writes_its_card(tmp_path):
    """bench.py --report on tiny settings: every row, no host reads per step, and a card with the same figures."""
    import json
    from helpers import run_here
    code, log = run_here("bench.py", "--report", "--quick", "--seconds", "0.2", "--cards", str(tmp_path / "r.jsonl"))
    for row in ("matmul peak", "best batch", "% of peak", "host reads and device copies per step | 0.0",
                "8 samples", "DDP, 1 process (gloo)"):
        assert row in log, (row, log[-1500:])
    card = json.loads(open(tmp_path / "r.jsonl").read())
    assert card["type"] == "report" and card["stalls_per_step"] == 0 and card["img_s_best"] > 0 and card["machine"]


def test_ranks_draw_their_own_slices_of_what_one_process_draws():
    """A DDP rank's draws for its part of the global batch are that part of one process's: per-sample numbers and
    the noise (drawn for the part alone), with no rank drawing the others' noise."""
    from train_state import StepDraws

    def draws(part, b=6):
        d = StepDraws(torch.Generator().manual_seed(5), torch.Generator(), 5, 7, b, part)
        n = len(range(b)[part])
        return d.uniform(3), d.integers(0, 1000), d.normal((n, 3, 8, 8))

    whole = draws(slice(None))
    for parts in ((slice(0, 3), slice(3, 6)), (slice(0, 2), slice(2, 4), slice(4, 6))):
        got = [draws(p) for p in parts]
        assert all(torch.equal(torch.cat([g[i] for g in got]), whole[i]) for i in range(3))
    assert not torch.equal(whole[2][0], whole[2][1])  # each sample its own noise
    later = StepDraws(torch.Generator().manual_seed(5), torch.Generator(), 5, 8, 6).normal((6, 3, 8, 8))
    assert not torch.equal(later, whole[2])  # and each step
    twice = StepDraws(torch.Generator().manual_seed(5), torch.Generator(), 5, 7, 6)
    assert not torch.equal(twice.normal((6, 3, 8, 8)), twice.normal((6, 3, 8, 8)))  # a second noise is not the first
