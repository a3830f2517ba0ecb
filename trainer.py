"""The one training loop behind train_ddpm.py, train_zoom_nearest.py, train_zoom_bilinear.py and distill.py.

An objective (objectives.py) supplies the loss and the progress-grid sampler; a TrainState owns
everything training changes; runs.py keeps the run folder, the budget and the signals.

Randomness: the data order of epoch e is a permutation seeded by (seed, e); per-sample numbers
(augmentation, t, label drop) come from one generator whose state is checkpointed, and sample j's noise
at step s from a generator seeded by (seed, s, j) (train_state.StepDraws), so a resumed run continues
bit for bit. Under DDP each rank gathers, augments and noises only its own slice of the global batch,
with the images, levels and noise one process with the same global batch would use (distill.py's
trajectories: the same distribution, each rank its own); dropout's masks are each rank's own, seeded
by rank and step.
"""
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cli import UserError, resolve_device, run_cli
from augment import DRAWS, augment_batch
from data import data_from_args, to_model
from machine import ddp_backend, describe, memory_format, provenance, resolve_precision, set_threads, setup_device
from nn_unet import PRESETS, build_unet, describe_unet
from runs import (LossMeter, Interrupt, RunFolder, Stopper, checkpoint_to_resume, claim_run_dir, data_fingerprint,
                  lock_run_dir, release_run_dir, run_under_torchrun)
from train_args import parse_args
from train_state import FUSED, TrainState, seed_of


def train(objective, argv=None):
    """Parse the objective's command line and run it; the entry point of every train_*.py and distill.py."""
    def main():
        args, typed = parse_args(objective, argv)
        run_under_torchrun(lambda: _train(objective, args, typed), args)
    run_cli(main)


def _train(objective, args, typed):
    """Train under the run folder's lock (released however training ends); a failed write is one line."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    held, run = [], None
    try:
        run = Run.start(objective, args, typed, world, rank, held)
        if run is not None:
            _loop(run, objective, args, world, rank)
    except OSError as e:  # a full disk, a folder gone: what was saved stays, and how to go on is said
        if run is None or run.folder is None:
            raise UserError(f"cannot write {e.filename or args.out} ({e.strerror or e})")
        raise run.folder.write_failed(e.filename or args.out, e)
    finally:
        for fd in held:
            release_run_dir(fd)


def _step(run, meter, fwd, objective, x0, y, draws, eager_fallback):
    """One training step; the forward to use from now on. A compiled forward compiles at its first call: where that
    fails, the step reruns eager with the same random draws, and training goes on eager."""
    state = run.state
    if not eager_fallback:
        meter.add(*state.train_step(fwd, objective, x0, y, draws))
        return fwd
    rng, calls = state.gen.get_state(), draws.calls
    try:
        meter.add(*state.train_step(fwd, objective, x0, y, draws))
        return fwd
    except Exception as e:  # noqa: BLE001 - any compiler failure
        run.log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:100]}); training without it "
                f"(--no-compile skips the attempt)")
        state.gen.set_state(rng)
        draws.calls = calls
        meter.add(*state.train_step(run.net, objective, x0, y, draws))
        return run.net


def epoch_order(seed, epoch, n, device):
    """The data order of an epoch, on the device; from pinned memory on CUDA, so the copy does not wait."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else perm


def _loop(run, objective, args, world, rank):
    state, data, device = run.state, run.data, run.device
    fwd = torch.compile(run.net) if args.compile else run.net
    eager_fallback = args.compile  # until the first compiled step has run
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
            perm = epoch_order(args.seed, state.epoch, len(data), device)
            while state.batch_in_epoch < n_batches and stop is None:
                if world > 1:  # dropout's masks: the ranks share a seed, and would drop the same units for their samples
                    torch.manual_seed(seed_of(args.seed, "dropout", rank, state.step))
                idx = perm[state.batch_in_epoch * args.batch:(state.batch_in_epoch + 1) * args.batch][part]
                draws = state.draws(part)
                x0 = augment_batch(to_model(images[idx]), data.augment, draws.uniform(DRAWS[data.augment]))
                x0 = x0.contiguous(memory_format=run.mem)
                fwd = _step(run, meter, fwd, objective, x0, labels[idx] if args.cond else None, draws, eager_fallback)
                eager_fallback = False
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
    if args.patch is not None and data.size % args.patch:
        raise UserError(f"--patch {args.patch} does not divide the {data.size} px images; pick a divisor of {data.size}")
    patch_from = PRESETS[args.preset]["patch_from"] if args.patch is None else 1
    side = data.size // ((args.patch or 2) if patch_from and data.size >= patch_from else 1)  # the first level's maps
    if args.mults is not None and side >> (len(args.mults) - 1) < 1:
        raise UserError(f"--mults gives {len(args.mults)} levels, which halve the {side} px feature maps below 1 px; "
                        f"give at most {side.bit_length()} multipliers")


class Run:
    """One training process's setup and outputs: device, data, model, TrainState, and (rank 0) its RunFolder."""

    @classmethod
    def start(cls, objective, args, typed, world, rank, held):
        """Resume or start: check the flags, load the data, build the model, state and run folder, whose lock
        rank 0 takes into `held`. None when a resumed run has already met its budget."""
        device = _setup_process(args, world)
        log = print if rank == 0 else (lambda *a, **k: None)
        resume_ck = checkpoint_to_resume(objective, args, typed) if args.resume else None
        if resume_ck is not None and rank == 0:
            held.append(lock_run_dir(args.out))
        _check_flags(args, world, None)
        precision = resolve_precision(args.precision, device)
        if args.compile is None:  # a GPU waits on a step's many small kernels; on a CPU compiled steps were slower (docs/defaults.md)
            args.compile = device.type == "cuda"
        log(f"torch.compile {'on' if args.compile else 'off'} ({('--compile' if args.compile else '--no-compile') if 'compile' in typed else 'the default for ' + device.type}), "
            f"{'fused' if device.type == 'cuda' and args.optimizer in FUSED else 'foreach'} {args.optimizer}")
        args.lr = PRESETS[args.preset]["lr"] if args.lr is None else args.lr
        data = data_from_args(args)
        args.size = data.size
        if args.data == "coffee" and args.folds is None:  # recorded, so the checkpoint says what it trained on
            args.folds = ",".join(str(f) for f in data.folds.unique().tolist())
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
            if rank == 0:
                held.append(lock_run_dir(args.out))
        log(describe(device, precision) + f", {world} process(es) of {args.batch // world} images a step")
        if device.type == "cuda" and args.batch // world < 128:
            log(f"(a batch of {args.batch // world} leaves a GPU waiting on Python: --batch is the global batch; "
                f"`python bench.py --report --device {device}` times larger ones)")
        log(f"{objective.kind}: {args.data} {len(data)} images {data.channels}x{data.size}x{data.size}, "
            f"{'%d classes' % data.num_classes if args.cond else 'unconditional'}")
        torch.manual_seed(args.seed)  # the initial weights, and dropout's draws in one process
        model = build_unet(args.preset, data.channels, data.size, num_classes=data.num_classes if args.cond else 0,
                           ch=args.ch, blocks=args.blocks, mults=args.mults,
                           **({} if args.patch is None else dict(patch_from=1, patch=args.patch)),
                           **model_kwargs).to(device)
        objective.init_model(model)
        log(describe_unet(model, args.preset))
        return cls(objective, args, model, data, device, precision, world, rank, resume_ck, fingerprint, log)

    def __init__(self, objective, args, model, data, device, precision, world, rank, resume_ck, fingerprint, log):
        self.objective, self.args, self.data, self.device, self.precision = objective, args, data, device, precision
        self.world, self.fingerprint, self.log = world, fingerprint, log
        self.mem = memory_format(args.channels_last, device)
        self.model = model.to(memory_format=self.mem)
        self.state = TrainState(self.model, args, device, precision)
        if resume_ck is not None:
            try:
                self.state.load_state_dict(resume_ck)
            except (RuntimeError, KeyError, ValueError) as e:
                raise UserError(f"{args.out}: its checkpoint's training state does not fit this run's network "
                                f"({str(e).splitlines()[0][:100]}); resume an intact ckpt.pt, or start a new run")
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
