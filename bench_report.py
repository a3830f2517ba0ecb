"""`python bench.py --report`: the one-command device report, the real training step (TrainState and the DDPM
objective, as train_ddpm.py runs it) timed on the device: img/s at the default batch and the best of larger ones,
achieved TFLOP/s against the measured matmul peak, host reads and cross-device copies per step, eager against
compiled, the time of 1,000 samples with the default sampler, and one DDP process (nccl on a GPU, gloo on a CPU)."""
import argparse
import os
import statistics

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from data import to_model
from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, generate_ddpm
from machine import ddp_backend, memory_format, resolve_precision, setup_device
from nn_unet import PRESETS, build_unet
from objectives import DDPM
from terrain import terrain_tiles
from train_state import TrainState

aten = torch.ops.aten


class Stalls(TorchDispatchMode):
    """Counts the ops that make a GPU wait: reads back to the host and copies between devices."""

    def __init__(self, host=()):
        super().__init__()
        self.host, self.count = {id(t) for t in host}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func is aten._local_scalar_dense.default and id(first) not in self.host:
            self.count += 1
        elif func is aten._to_copy.default and first is not None and kwargs.get("device") is not None:
            self.count += torch.device(kwargs["device"]) != first.device
        return func(*args, **kwargs)


class Trainer:
    """train_ddpm.py's step on `size` px maps tiles: the DDPM objective at its defaults, TrainState, autocast."""

    def __init__(self, device, precision, preset, size, batch, compile_=False, ddp=False):
        images, labels = terrain_tiles(max(batch, 64), size, seed=0)
        args = argparse.Namespace(data="maps", schedule="cosine", T=1000, pred="v", min_snr=5.0, learn_sigma=False,
                                  label_drop=0.1, cond=False, batch=batch, ema_halflife_kimg=50.0, ema_rampup=0.1,
                                  optimizer="adamw", lr=PRESETS[preset]["lr"], weight_decay=0.0, warmup=100,
                                  cooldown=0.0, seed=0, grad_clip=1.0)
        data = argparse.Namespace(images=images, labels=labels, num_classes=0)
        self.objective = DDPM()
        self.objective.setup(args, data)
        torch.manual_seed(0)
        mem = memory_format("auto", device)  # as train_ddpm.py's default
        self.model = build_unet(preset, 3, size).to(device, memory_format=mem)
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if ddp else self.model
        self.fwd = torch.compile(self.net) if compile_ else self.net
        self.state = TrainState(self.model, args, device, precision)
        self.x0 = to_model(images[torch.arange(batch) % len(images)]).to(device, memory_format=mem)
        self.device, self.batch = device, batch

    def step(self):
        return self.state.train_step(self.fwd, self.objective, self.x0, None, self.state.draws())

    def img_per_s(self, seconds, now):
        for _ in range(3):
            self.step()  # warm-up, compilation
        times, end = [], now() + seconds
        while now() < end or len(times) < 3:
            t0 = now()
            self.step()
            times.append(now() - t0)
        return self.batch / statistics.median(times)

    def flop_per_img(self):
        with FlopCounterMode(display=False) as fc:
            self.step()
        return fc.get_total_flops() / self.batch

    def stalls_per_step(self, steps=3):
        host = [s["step"] for s in self.state.opt.state.values() if "step" in s]  # host-side by design
        with Stalls(host) as rec:
            for _ in range(steps):
                self.step()
        return rec.count / steps


def report(device, quick, seconds, n_samples, timer, matmul_peak):
    """The report's rows (what, value) and one card of the same figures."""
    setup_device(device)
    now, precision = timer(device), resolve_precision("auto", device)
    preset, size = ("tiny", 16) if quick else ("small", 64)
    batches = (8, 16) if quick else (32, 64, 128, 256, 512) if device.type == "cuda" else (32, 64)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    peak = matmul_peak(dtype, device, n=512 if quick else 4096 if device.type == "cuda" else 2048)
    card = {"device": str(device), "precision": precision, "preset": preset, "size": size, "matmul_peak_tflops": peak}
    speeds = {}
    for b in batches:
        speeds[b] = Trainer(device, precision, preset, size, b).img_per_s(seconds, now)
    best = max(speeds, key=speeds.get)
    probe = Trainer(device, precision, preset, size, best)
    flops = probe.flop_per_img()
    card.update(img_s_default=speeds[batches[0]], default_batch=batches[0], best_batch=best, img_s_best=speeds[best],
                gflop_per_img=flops / 1e9, tflops_best=flops * speeds[best] / 1e12,
                stalls_per_step=probe.stalls_per_step())
    compiled = None
    if quick and device.type == "cpu":
        card["compile_error"] = "skipped: --quick on a CPU, where compiling takes minutes"
    else:
        try:
            compiled = Trainer(device, precision, preset, size, batches[0], compile_=True).img_per_s(seconds, now)
        except Exception as e:  # noqa: BLE001 - a compiler that fails is a finding, not a crash
            card["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    card["img_s_compiled_default"] = compiled
    model = probe.model.eval()
    t0 = now()
    generate_ddpm(model, probe.objective.sched, "v", n_samples, device, DEFAULT_SAMPLER, DEFAULT_STEPS,
                  precision=precision)
    card.update(samples=n_samples, sample_seconds=now() - t0)
    card["ddp_1_process_img_s"] = _ddp_one_process(device, precision, preset, size, batches[0], seconds, now)
    rows = [("matmul peak", f"{peak:.2f} TFLOP/s ({precision})"),
            (f"training img/s, batch {batches[0]}{' (the default)' if batches[0] == 32 else ''}, {preset} {size} px",
             f"{speeds[batches[0]]:.1f}"),
            (f"training img/s, best batch ({best})", f"{speeds[best]:.1f}"),
            ("achieved at the best batch", f"{card['tflops_best']:.3f} TFLOP/s = {100 * card['tflops_best'] / peak:.1f} % of peak"),
            ("host reads and device copies per step", f"{card['stalls_per_step']:.1f}"),
            (f"compiled, batch {batches[0]}", f"{compiled:.1f} img/s" if compiled else card.get("compile_error", "-")),
            (f"{n_samples:,} samples, {DEFAULT_SAMPLER} {DEFAULT_STEPS} steps", f"{card['sample_seconds']:.1f} s"),
            (f"DDP, 1 process ({ddp_backend(device)}), batch {batches[0]}", f"{card['ddp_1_process_img_s']:.1f} img/s")]
    return rows, card


def _ddp_one_process(device, precision, preset, size, batch, seconds, now):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group(ddp_backend(device), rank=0, world_size=1)
    try:
        return Trainer(device, precision, preset, size, batch, ddp=True).img_per_s(seconds, now)
    finally:
        dist.destroy_process_group()
