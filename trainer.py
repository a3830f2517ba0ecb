"""The one training loop behind train_ddpm.py, train_zoom_nearest.py, train_zoom_bilinear.py and distill.py.

An objective (objectives.py) supplies the loss and the progress-grid sampler; a TrainState owns
everything training changes; runs.py keeps the run folder, the budget and the signals.

Randomness: the data order of epoch e is a permutation seeded by (seed, e); every other random
draw (augmentation, t, noise, label drop) comes from one generator whose state is checkpointed,
so a resumed run continues bit for bit. Under DDP each rank draws the randoms of the whole global
batch and keeps its own slice, so K ranks compute what one process with the same global batch would.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from cli import (FRACTION, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, Parser, UserError, add_run_args, number_list,
                 resolve_device, run_cli)
from data import AUGMENTS, add_data_args, augment_batch, data_from_args, to_model
from machine import autocast, ddp_backend, describe, provenance, resolve_precision, set_threads, setup_device
from nn_unet import PRESETS, build_unet, describe_unet
from runs import (LossMeter, Interrupt, RunFolder, Stopper, checkpoint_to_resume, claim_run_dir, data_fingerprint,
                  run_under_torchrun, typed_flags)


def base_parser(description):
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_run_args(p, "run folder (default runs/<kind>_<data><size>, a new one if it exists; with --resume the one to continue)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--preset", default="small", choices=list(PRESETS), help="UNet size (default small)")
    g.add_argument("--ch", type=POSITIVE_INT, default=None,
                   help="override the preset's base width (default: the preset's, or recipes.py's for --data)")
    g.add_argument("--blocks", type=POSITIVE_INT, default=None,
                   help="override the preset's res blocks per level (default: the preset's, or recipes.py's for --data)")
    g.add_argument("--mults", type=number_list(POSITIVE_INT, ordered=True), default=None,
                   help="override the preset's width multipliers, one per resolution level (e.g. 1,2,2,4)")
    g.add_argument("--patch-from", type=NONNEG_INT, default=None,
                   help="override the preset's patching: images this many px or larger enter as patches (0: never)")
    g.add_argument("--patch", type=POSITIVE_INT, default=None,
                   help="patch side for those images (default 2: a 64 px image costs what a 32 px one does; "
                        "4 costs what a 16 px one does)")
    g.add_argument("--cond", action=argparse.BooleanOptionalAction, default=False,
                   help="class-conditional (labelled data), label drop for CFG (default: off; on for mnist, see recipes.py)")
    g.add_argument("--label-drop", type=FRACTION, default=0.1, help="with --cond: share of labels replaced by null")
    g.add_argument("--augment", default="auto", choices=("auto", *AUGMENTS),
                   help="random augmentation of each training image (auto: the dataset's own: flips, 90° turns for "
                        "overhead tiles, none for digits; crop_flip: random resized crops of 50-100 %% of the area, "
                        "then flips, for a few hundred photos)")
    g.add_argument("--batch", type=POSITIVE_INT, default=32, help="global batch size (default 32)")
    g.add_argument("--lr", type=POSITIVE, default=None, help="learning rate (default: the preset's, 1e-3 for small)")
    g.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "nadam", "sgd"])
    g.add_argument("--weight-decay", type=NONNEG, default=0.0)
    g.add_argument("--warmup", type=NONNEG_INT, default=100, help="linear lr warm-up steps (default %(default)s)")
    g.add_argument("--cooldown", type=FRACTION, default=0.0,
                   help="decay the lr linearly to 0 over this last share of the budget (of --steps/--epochs, or of "
                        "this session's --minutes): warm-up, stable, decay (0: constant lr; default 0, 0.3 for mnist "
                        "and coffee: recipes.py)")
    g.add_argument("--grad-clip", type=NONNEG, default=1.0, help="max grad norm (0: off; default 1)")
    g.add_argument("--ema-halflife-kimg", type=POSITIVE, default=50.0,
                   help="EMA half-life in thousands of training images (default 50)")
    g.add_argument("--ema-rampup", type=FRACTION, default=0.1,
                   help="the EMA half-life is at most this share of the images seen so far, so a short run averages "
                        "its last tenth rather than its start (0: off; default 0.1, 0.03 for mnist and coffee: "
                        "recipes.py)")
    g = p.add_argument_group("budget and outputs")
    g.add_argument("--epochs", type=POSITIVE_INT, default=None)
    g.add_argument("--steps", type=POSITIVE_INT, default=None, help="total optimiser steps")
    g.add_argument("--minutes", type=POSITIVE, default=None, help="wall-clock budget (default 15 when no budget given)")
    g.add_argument("--sample-every", type=NONNEG_INT, default=5, help="a sample grid every N epochs (0: only at the end)")
    g.add_argument("--ckpt-every", type=NONNEG, default=5.0, help="a checkpoint every N minutes (default 5)")
    g.add_argument("--keep-ckpts", action="store_true",
                   help="also keep ckpt_epochNNN.pt at each sample grid (for fid.py's FID-vs-epoch table)")
    g.add_argument("--keep-at-minutes", type=number_list(POSITIVE), default=[],
                   help="also keep ckpt_<M>min.pt when training time reaches each of these minutes, e.g. 5,10,20 "
                        "(for quality vs minutes: fid.py --ckpt RUN/ckpt_*min.pt, plots.py scores --x minutes)")
    g.add_argument("--log-every", type=POSITIVE_INT, default=20, help="log every N steps (default 20)")
    g.add_argument("--n", "--num-samples", dest="n", type=POSITIVE_INT, default=32,
                   help="images in each sample grid (under torchrun write --num-samples: torchrun claims --n)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    g.add_argument("--ckpt", default=None, help="with --resume: the checkpoint to continue (default <out>/ckpt.pt)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="auto: on for CUDA; off on CPU, where GroupNorm in bf16 channels_last is several times slower")
    return p


def make_optimizer(name, params, lr, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[name]
    return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)  # foreach: one kernel per op, CPU too


def ema_decay(images_seen, batch, halflife_kimg, rampup):
    """The EMA's decay per step of `batch` images, β = 0.5^(batch / half-life), with the half-life in
    images min(1000 halflife_kimg, rampup · images_seen) (Karras et al. 2022, EDM, training_loop.py):
    the average always spans the same share of a short run, and a fixed number of images of a long one.
    images_seen may be a tensor on the device (no host sync) or a number."""
    halflife = torch.as_tensor(images_seen * rampup if rampup > 0 else float("inf"), dtype=torch.float64)
    return 0.5 ** (batch / halflife.clamp(min=1e-8, max=1000 * halflife_kimg))


def lr_factor(step, warmup, progress, cooldown):
    """The lr's multiplier: linear warm-up over `warmup` steps, constant, then with cooldown > 0 a linear
    decay to 0 over the last `cooldown` share of the budget (progress in [0, 1] is the share done)."""
    f = min(1.0, (step + 1) / max(1, warmup))
    return f * min(1.0, max(0.0, 1 - progress) / cooldown) if cooldown > 0 else f


class TrainState:
    """Everything training changes, with state_dict()/load_state_dict() for bit-for-bit resume: the
    model and its EMA, the optimiser, the lr schedule (linear warm-up), the fp16 grad scaler, the random
    generator, and the position in the data (step, epoch, batch in epoch)."""

    def __init__(self, model, args, device, precision):
        self.model, self.device, self.precision, self.args = model, device, precision, args

        def ema_update(ema_params, params, n_averaged):  # all parameters in two foreach kernels
            d = ema_decay((n_averaged + 1) * args.batch, args.batch, args.ema_halflife_kimg, args.ema_rampup)
            torch._foreach_mul_(ema_params, d.to(ema_params[0].dtype))
            torch._foreach_add_(ema_params, torch._foreach_mul(params, (1 - d).to(ema_params[0].dtype)))
        self.ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
        self.opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
        self.progress = 0.0  # the share of the budget done, set by the loop (a step late) for the lr's cool-down
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, args.warmup, self.progress, args.cooldown))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.gen = torch.Generator(device=device).manual_seed(args.seed)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.seconds = 0.0  # training time so far, over every session of the run

    def train_step(self, net, objective, x0, y, part):
        """One optimiser step on the global batch x0 (this rank's `part` of it); the per-sample losses."""
        with autocast(self.device, self.precision):
            losses, level = objective.loss(net, x0, y, self.gen, part)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(losses.mean()).backward()
        if self.args.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.lr_sched.step()
        self.ema.update_parameters(self.model)
        self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
        return losses.detach(), level.detach()

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


def parse_args(objective, argv=None):
    """The objective's command line, with the defaults of --data's entry in recipes.py where a flag is not
    given; and the set of flags typed."""
    p = base_parser(objective.description)
    objective.add_args(p)
    p.set_defaults(**objective.defaults(p.parse_known_args(argv)[0]))
    args = p.parse_args(argv)
    return args, typed_flags(p, argv, args)


def train(objective, argv=None):
    """Parse the objective's command line and run it; the entry point of every train_*.py and distill.py."""
    def main():
        args, typed = parse_args(objective, argv)
        run_under_torchrun(lambda: _train(objective, args, typed), args)
    run_cli(main)


def _train(objective, args, typed):
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    run = Run.start(objective, args, typed, world, rank)
    if run is None:
        return
    state, data, device = run.state, run.data, run.device
    fwd = torch.compile(run.net) if args.compile else run.net
    images, labels = data.images.to(device), data.labels.to(device)
    n_batches = len(data) // args.batch  # drop the last partial batch: every step has the global batch
    part = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    total_steps = args.steps or (args.epochs * n_batches if args.epochs else None)
    interrupt = Interrupt(world) if run.folder else None
    stopper, meter = Stopper(total_steps, args.minutes, interrupt, world, device), LossMeter(device)
    bar = tqdm(total=total_steps, initial=state.step, disable=run.folder is None, dynamic_ncols=True, unit="step")
    stop, last_ckpt = None, time.time()
    keep_at = [m for m in args.keep_at_minutes if 60 * m > state.seconds]
    state.model.train()
    try:
        while stop is None:
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + state.epoch))
            perm = perm.to(device)
            while state.batch_in_epoch < n_batches and stop is None:
                idx = perm[state.batch_in_epoch * args.batch:(state.batch_in_epoch + 1) * args.batch]
                x0 = augment_batch(to_model(images[idx]), data.augment, state.gen).contiguous(memory_format=run.mem)
                meter.add(*state.train_step(fwd, objective, x0, labels[idx] if args.cond else None, part))
                bar.update(1)
                log_step = state.step % args.log_every == 0
                stop, diverged = stopper.check(state.step, meter.nonfinite, log_step)
                state.progress = objective.progress = stopper.progress  # the lr's cool-down, a curriculum
                if diverged:
                    bar.close()  # so the message starts its own line
                    raise UserError(f"the loss stopped being finite at or before step {state.step}: training diverged "
                                    f"(lower --lr, or another --optimizer); {run.last_good()}")
                if log_step:
                    run.log_row(meter, bar)
                if keep_at and run.elapsed() >= 60 * keep_at[0]:
                    run.save(keep=f"ckpt_{keep_at.pop(0):g}min.pt")
                if stop is None and run.folder and time.time() - last_ckpt > 60 * args.ckpt_every:
                    run.save()
                    last_ckpt = time.time()
            if state.batch_in_epoch >= n_batches:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if args.sample_every and state.epoch % args.sample_every == 0 and stop is None:
                    run.grid(f"epoch{state.epoch:03d}")
                    run.save(keep=f"ckpt_epoch{state.epoch:03d}.pt" if args.keep_ckpts else None)
                    last_ckpt = time.time()
                if args.epochs is not None and state.epoch >= args.epochs and stop is None:
                    stop = "epochs"
        bar.close()
        run.save()
    finally:
        if interrupt:
            interrupt.restore()
    run.finish(stop)
    if stop == "interrupt":
        sys.exit(interrupt.code if interrupt else 130)


def _setup_process(args, world):
    set_threads(world)
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    setup_device(device)
    if world > 1:
        dist.init_process_group(ddp_backend(device))
    return device


def _check_flags(args, world, data):
    if args.batch % world:
        raise UserError(f"--batch {args.batch} is not divisible by the {world} processes; pick a multiple of {world}")
    if sum(x is not None for x in (args.epochs, args.steps, args.minutes)) > 1:
        raise UserError("give one budget: --epochs, --steps or --minutes")
    if args.epochs is None and args.steps is None and args.minutes is None:
        args.minutes = 15.0
    if data is None:
        return
    if args.cond and data.num_classes == 0:
        raise UserError(f"--cond needs labels, and '{args.data}' has none; drop --cond")
    if len(data) < args.batch:
        raise UserError(f"the dataset has {len(data)} images, fewer than --batch {args.batch}; lower --batch")
    patch_from = PRESETS[args.preset]["patch_from"] if args.patch_from is None else args.patch_from
    if args.patch is not None and patch_from and data.size >= patch_from and data.size % args.patch:
        raise UserError(f"--patch {args.patch} does not divide the {data.size} px images; pick a divisor of {data.size}")
    side = data.size // ((args.patch or 2) if patch_from and data.size >= patch_from else 1)  # the first level's maps
    if args.mults is not None and side >> (len(args.mults) - 1) < 1:
        raise UserError(f"--mults gives {len(args.mults)} levels, which halve the {side} px feature maps below 1 px; "
                        f"give at most {side.bit_length()} multipliers")


class Run:
    """One training process's setup and outputs: device, data, model, TrainState, and (rank 0) its RunFolder."""

    @classmethod
    def start(cls, objective, args, typed, world, rank):
        """Resume or start: check the flags, load the data, build the model, state and run folder. None when a
        resumed run has already met its budget."""
        device = _setup_process(args, world)
        log = print if rank == 0 else (lambda *a, **k: None)
        resume_ck = checkpoint_to_resume(objective, args, typed) if args.resume else None
        _check_flags(args, world, None)
        precision = resolve_precision(args.precision, device)
        args.lr = PRESETS[args.preset]["lr"] if args.lr is None else args.lr
        data = data_from_args(args)
        args.size = data.size
        if args.augment != "auto":
            data.augment = args.augment
        fingerprint = data_fingerprint(data)
        if resume_ck is not None and resume_ck.get("data_fingerprint", fingerprint) != fingerprint:
            raise UserError(f"the {args.data} data under {args.data_root} is not the data this run trained on "
                            f"(its content differs); point --data-root at that data, or start a new run")
        _check_flags(args, world, data)
        if resume_ck is not None and ((args.steps and resume_ck["step"] >= args.steps)
                                      or (args.epochs and resume_ck["epoch"] >= args.epochs)):
            log(f"{args.out} is already at step {resume_ck['step']} (epoch {resume_ck['epoch']}), which meets the "
                f"budget given: nothing to do (raise --steps or --epochs to train on)")
            if world > 1:
                dist.destroy_process_group()
            return None
        model_kwargs = objective.setup(args, data)
        if resume_ck is None:  # only rank 0 has a run folder
            args.out = claim_run_dir(objective.run_name, args) if rank == 0 else None
        log(describe(device, precision) + f", {world} process(es)")
        log(f"{objective.kind}: {args.data} {len(data)} images {data.channels}x{data.size}x{data.size}, "
            f"{'%d classes' % data.num_classes if args.cond else 'unconditional'}")
        torch.manual_seed(args.seed)  # the initial weights, and dropout's draws
        model = build_unet(args.preset, data.channels, data.size, num_classes=data.num_classes if args.cond else 0,
                           ch=args.ch, blocks=args.blocks, mults=args.mults,
                           patch_from=args.patch_from, patch=args.patch, **model_kwargs).to(device)
        objective.init_model(model)
        log(describe_unet(model, args.preset))
        return cls(objective, args, model, data, device, precision, world, rank, resume_ck, fingerprint, log)

    def __init__(self, objective, args, model, data, device, precision, world, rank, resume_ck, fingerprint, log):
        self.objective, self.args, self.data, self.device, self.precision = objective, args, data, device, precision
        self.world, self.fingerprint, self.log = world, fingerprint, log
        use_cl = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
        self.mem = torch.channels_last if use_cl else torch.contiguous_format
        self.model = model.to(memory_format=self.mem)
        self.state = TrainState(self.model, args, device, precision)
        if resume_ck is not None:
            self.state.load_state_dict(resume_ck)
            objective.load_state(resume_ck.get("objective", {}))
            log(f"resumed {args.out} at step {self.state.step} (epoch {self.state.epoch}, batch {self.state.batch_in_epoch})")
        self.net = DistributedDataParallel(self.model) if world > 1 else self.model
        self.provenance = {**provenance(device), "precision": precision, "world_size": world}
        self.folder = RunFolder(args.out, args, data, {**vars(args), "kind": objective.kind, **self.provenance,
                                                       "model_config": model.config}) if rank == 0 else None
        self.t0 = self.last_log = time.time()
        self.first_step, self.last_log_step, self.seconds_before = self.state.step, self.state.step, self.state.seconds

    def elapsed(self):
        """Training seconds of the whole run, earlier sessions included."""
        return self.seconds_before + time.time() - self.t0

    def last_good(self):
        return self.folder.last_good() if self.folder else "see rank 0's message"

    def log_row(self, meter, bar):
        """A log.csv row and the progress bar's figures: loss (all and per noise quartile), lr, img/s, EMA decay."""
        if not self.folder:
            return
        state, now = self.state, time.time()
        mean, per_q = meter.read()
        ips = (state.step - self.last_log_step) * self.args.batch / (now - self.last_log)
        self.folder.write_row(step=state.step, epoch=state.epoch, loss=f"{mean:.5f}",
                              lr=f"{state.lr_sched.get_last_lr()[0]:.3g}", img_per_s=f"{ips:.1f}",
                              **{f"loss_q{i + 1}": f"{v:.5f}" for i, v in enumerate(per_q)},
                              elapsed_s=f"{now - self.t0:.1f}", ema_decay=f"{state.ema_decay_now():.6f}")
        bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}", epoch=state.epoch)
        self.last_log, self.last_log_step = now, state.step

    def save(self, keep=None):
        """ckpt.pt (rank 0), and a second name for it if `keep`."""
        self.state.seconds = self.elapsed()
        if not self.folder:
            return
        a, data = self.args, self.data
        self.folder.save({"kind": self.objective.kind, "model_config": self.model.config, "args": vars(a),
                          "data_fingerprint": self.fingerprint, "class_names": data.class_names if a.cond else [],
                          "channels": data.channels, "size": data.size, "objective": self.objective.state(),
                          "provenance": self.provenance, **self.state.state_dict()}, self.model)
        if keep:
            self.folder.keep_copy(keep)

    def grid(self, tag):
        """A sample grid and the held-out loss, from the EMA model (rank 0); the grid's path."""
        if not self.folder:
            return None
        self.model.eval()
        ema = self.state.ema.module
        path = self.folder.write_grid(tag, self.objective, ema, self.device)
        self.folder.log_heldout(self.objective, ema, self.device, self.precision, self.state.step, self.state.epoch)
        self.model.train()
        return path

    def finish(self, stop):
        state, elapsed, log = self.state, time.time() - self.t0, self.log
        log(f"stopped ({stop}) at step {state.step}, epoch {state.epoch}: "
            f"{(state.step - self.first_step) * self.args.batch / elapsed:.1f} img/s over {elapsed:.0f} s; "
            f"EMA decay {state.ema_decay_now():.5f} per step")
        log(f"checkpoint: {self.folder.ckpt if self.folder else None}")
        if stop == "interrupt":
            log(f"continue with: --resume --out {self.args.out}")
        else:
            log(f"samples (generated above, real below): {self.grid('final')}")
        if self.folder:
            self.folder.close()
        if self.world > 1:
            # Cheap proof that DDP kept the replicas identical.
            flat = torch.cat([p.detach().float().flatten().cpu() for p in self.model.parameters()])
            sums = [None] * self.world
            dist.all_gather_object(sums, (flat.double().sum().item(), flat.double().abs().sum().item()))
            log(f"DDP check: parameters identical on all {self.world} ranks: {all(s == sums[0] for s in sums)}")
            dist.destroy_process_group()
