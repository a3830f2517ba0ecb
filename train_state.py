"""What training changes, and how: the optimiser, the EMA (EDM's growing half-life), the lr schedule (warm-up,
stable, linear decay) and TrainState, which owns them with the random generator and the position in the data;
StepDraws, one step's random draws."""
import hashlib

import torch
from torch.optim.swa_utils import AveragedModel

from machine import autocast


FUSED = ("adam", "adamw")  # optimisers with a fused CUDA kernel: one launch for every parameter


def make_optimizer(name, params, lr, weight_decay, device):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[name]
    if device.type == "cuda" and name in FUSED:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)  # foreach: one kernel per op, CPU too


def ema_decay(images_seen, batch, halflife_kimg, rampup):
    """The EMA's decay per step of `batch` images, β = 0.5^(batch / half-life), with the half-life in
    images min(1000 halflife_kimg, rampup · images_seen) (Karras et al. 2022, EDM, training_loop.py):
    the average always spans the same share of a short run, and a fixed number of images of a long one.
    images_seen may be a tensor on the device (no host sync) or a number."""
    seen = torch.as_tensor(images_seen, dtype=torch.float64)  # where images_seen lives
    halflife = seen * rampup if rampup > 0 else torch.full_like(seen, float("inf"))
    return 0.5 ** (batch / halflife.clamp(min=1e-8, max=1000 * halflife_kimg))


def lr_factor(step, warmup, progress, cooldown):
    """The lr's multiplier: linear warm-up over `warmup` steps, constant, then with cooldown > 0 a linear
    decay to 0 over the last `cooldown` share of the budget (progress in [0, 1] is the share done)."""
    f = min(1.0, (step + 1) / max(1, warmup))
    return f * min(1.0, max(0.0, 1 - progress) / cooldown) if cooldown > 0 else f


def seed_of(*parts):
    """A 63-bit generator seed from a tuple of numbers, the same on every machine and Python."""
    key = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(key, "little") >> 1


class StepDraws:
    """One training step's random draws for this rank's `part` of a global batch of b. Per-sample numbers (noise
    levels, flips, label drops) are drawn for the whole global batch from `gen` and sliced: a few numbers. Image-sized
    noise is drawn for this rank's samples only, sample j's from `noise_gen` seeded by (seed, step, call, j). Either way K
    ranks draw what one process with the same global batch would, and a resumed run what the uninterrupted one did."""

    def __init__(self, gen, noise_gen, seed, step, b, part=slice(None)):
        self.gen, self.noise_gen, self.seed, self.step, self.b, self.part = gen, noise_gen, seed, step, b, part
        self.calls = 0  # normal()'s calls this step: a second noise is not the first

    def uniform(self, *cols):
        return torch.rand((self.b, *cols), generator=self.gen, device=self.gen.device)[self.part]

    def integers(self, lo, hi):
        return torch.randint(lo, hi, (self.b,), generator=self.gen, device=self.gen.device)[self.part]

    def normal(self, shape, samples=None):
        """Gaussian noise of `shape`, a row per sample of `samples` (global indices; default this rank's part);
        seeding is a host-side call, no transfer."""
        out, samples = torch.empty(shape, device=self.noise_gen.device), samples or range(self.b)[self.part]
        if len(out) != len(samples):
            raise ValueError(f"noise for {len(out)} samples asked, for {len(samples)} samples")
        for row, j in zip(out, samples):
            row.normal_(generator=self.noise_gen.manual_seed(seed_of(self.seed, self.step, self.calls, j)))
        self.calls += 1
        return out


class TrainState:
    """Everything training changes, with state_dict()/load_state_dict() for bit-for-bit resume: the
    model and its EMA, the optimiser, the lr schedule (linear warm-up), the fp16 grad scaler, the random
    generator, and the position in the data (step, epoch, batch in epoch). The noise generator holds nothing
    between steps: StepDraws seeds it per sample."""

    def __init__(self, model, args, device, precision):
        self.model, self.device, self.precision, self.args = model, device, precision, args

        # The EMA's container (its state dict and .module); update_ema averages into it, with its counter on the device.
        self.ema = AveragedModel(model, device=device, use_buffers=True)
        self.opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay, device)
        self.progress = 0.0  # the share of the budget done, set by the loop (a step late) for the lr's cool-down
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, args.warmup, self.progress, args.cooldown))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.gen = torch.Generator(device=device).manual_seed(args.seed)
        self.noise_gen = torch.Generator(device=device)  # seeded per sample and step by StepDraws
        self.step = self.epoch = self.batch_in_epoch = 0
        self.seconds = 0.0  # training time so far, over every session of the run

    def draws(self, part=slice(None)):
        """This step's random draws for this rank's `part` of the global batch."""
        return StepDraws(self.gen, self.noise_gen, self.args.seed, self.step, self.args.batch, part)

    def train_step(self, net, objective, x0, y, draws):
        """One optimiser step on this rank's samples x0, labels y (None: unconditional) with the step's `draws`;
        the per-sample losses."""
        with autocast(self.device, self.precision):
            losses, level = objective.loss(net, x0, y, draws)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(losses.mean()).backward()
        if self.args.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.lr_sched.step()
        self.update_ema()
        self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
        return losses.detach(), level.detach()

    @torch.no_grad()
    def update_ema(self):
        """ema ← ema + w (θ − ema) over parameters and buffers in one foreach kernel, w = 1 − β (ema_decay), and 1 at
        the first update, which copies. Nothing is read back to the host (AveragedModel.update_parameters asks
        `n_averaged == 0` on the host every step, a stall on a GPU)."""
        a, n = self.args, self.ema.n_averaged
        avg = [*self.ema.module.parameters(), *self.ema.module.buffers()]
        cur = [p.detach() for p in (*self.model.parameters(), *self.model.buffers())]
        d = ema_decay((n + 1) * a.batch, a.batch, a.ema_halflife_kimg, a.ema_rampup)
        w = torch.where(n == 0, 1.0, 1 - d).to(avg[0].dtype)
        torch._foreach_lerp_(avg, cur, [w] * len(avg))
        n += 1

    def ema_decay_now(self):
        a = self.args
        return float(ema_decay(self.step * a.batch, a.batch, a.ema_halflife_kimg, a.ema_rampup))

    def state_dict(self):
        cuda = self.device.type == "cuda"
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                "lr_sched": self.lr_sched.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "train_seconds": self.seconds,
                "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}}

    def load_state_dict(self, sd):
        self.model.load_state_dict(sd["model"])
        self.ema.load_state_dict(sd["ema"])
        self.opt.load_state_dict(sd["optimizer"])
        self.lr_sched.load_state_dict(sd["lr_sched"])
        self.scaler.load_state_dict(sd["scaler"])
        self.gen.set_state(sd["rng"]["gen"])
        torch.set_rng_state(sd["rng"]["torch"])
        if self.device.type == "cuda" and sd["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(sd["rng"]["cuda"], self.device)
        self.step, self.epoch, self.batch_in_epoch = sd["step"], sd["epoch"], sd["batch_in_epoch"]
        self.seconds = sd.get("train_seconds", 0.0)
