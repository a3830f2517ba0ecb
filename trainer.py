"""The one training loop behind train_ddpm.py, train_zoom_nearest.py and train_zoom_bilinear.py.

An objective (DDPM or Cold Zoom) supplies four things: extra argparse flags, the per-sample loss
of a batch, a sampler for the progress grids, and extra checkpoint state. Everything else lives
here: data, UNet, optimiser, warm-up, grad clip, EMA, autocast, channels_last, DDP, logs, grids,
atomic checkpoints and bit-for-bit resume.

Randomness: the data order of epoch e is a permutation seeded by (seed, e); every other random
draw (augmentation, t, noise, label drop) comes from one generator whose state is checkpointed.
Under DDP each rank draws the randoms of the whole global batch and keeps its own slice, so K
ranks compute what one process with the same global batch would.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from checkpoint import load_checkpoint, save_atomic
from cli import (FRACTION, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, Parser, UserError, add_run_args, resolve_device,
                 run_cli)
from data import DataError, add_data_args, augment_batch, data_from_args, to_model
from machine import autocast, ddp_backend, describe, machine_name, resolve_precision, set_threads, setup_device
from nn_unet import PRESETS, build_unet

# Flags that define the model and the data: on --resume they come from the checkpoint.
# The data's path is not among them: a moved dataset resumes, checked by its content (data_fingerprint).
FROZEN_ON_RESUME = ("data", "size", "folds", "preset", "ch", "cond", "batch", "lr", "optimizer",
                    "weight_decay", "warmup", "grad_clip", "ema_decay", "seed", "label_drop", "n_maps")


def base_parser(description, default_preset="small"):
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(p)
    add_run_args(p, "run folder (default runs/<kind>_<data><size>, a new one if it exists; with --resume the one to continue)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--preset", default=default_preset, choices=list(PRESETS), help="UNet size")
    g.add_argument("--ch", type=POSITIVE_INT, default=None, help="override the preset's base width")
    g.add_argument("--cond", action="store_true", help="class-conditional (labelled data), label drop for CFG")
    g.add_argument("--label-drop", type=FRACTION, default=0.1, help="with --cond: share of labels replaced by null")
    g.add_argument("--batch", type=POSITIVE_INT, default=32, help="global batch size")
    g.add_argument("--lr", type=POSITIVE, default=None, help="learning rate (default: the preset's, 1e-3 for small)")
    g.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "nadam", "sgd"])
    g.add_argument("--weight-decay", type=NONNEG, default=0.0)
    g.add_argument("--warmup", type=NONNEG_INT, default=100, help="linear lr warm-up steps")
    g.add_argument("--grad-clip", type=NONNEG, default=1.0, help="max grad norm (0: off)")
    g.add_argument("--ema-decay", type=FRACTION, default=0.999, help="EMA decay (warmed up as (1+n)/(10+n))")
    g = p.add_argument_group("budget and outputs")
    g.add_argument("--epochs", type=POSITIVE_INT, default=None)
    g.add_argument("--steps", type=POSITIVE_INT, default=None, help="total optimiser steps")
    g.add_argument("--minutes", type=POSITIVE, default=None, help="wall-clock budget (default 15 when no budget given)")
    g.add_argument("--sample-every", type=NONNEG_INT, default=5, help="write a sample grid every N epochs (0: only at the end)")
    g.add_argument("--ckpt-every", type=NONNEG, default=5.0, help="write a checkpoint every N minutes")
    g.add_argument("--keep-ckpts", action="store_true",
                   help="also keep ckpt_epochNNN.pt at each sample grid (for fid.py's FID-vs-epoch table)")
    g.add_argument("--log-every", type=POSITIVE_INT, default=20, help="log every N steps")
    g.add_argument("--n", "--num-samples", dest="n", type=POSITIVE_INT, default=32,
                   help="images in each sample grid (under torchrun write --num-samples: torchrun claims --n)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    g.add_argument("--ckpt", default=None, help="with --resume: the checkpoint to continue (default <out>/ckpt.pt)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="auto: on for CUDA; off on CPU, where GroupNorm in bf16 channels_last is ~7x slower")
    return p


def make_optimizer(name, params, lr, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[name]
    return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)  # foreach: one kernel per op, CPU too


def ema_multi_avg(decay):
    """EMA with warm-up, d = min(decay, (1 + n) / (10 + n)), so early samples are not dominated by the random
    init. All parameters in two foreach kernels, the decay computed on the device: no host sync."""
    def avg(ema_params, params, n):
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(ema_params[0].dtype)
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1 - d))
    return avg


def agree(rank0_flags, nonfinite, device):
    """Under DDP: rank 0's stop flags (clock, Ctrl-C) and whether any rank saw a non-finite loss, the same on
    every rank, in one collective on the training device."""
    mine = [float(f) for f in rank0_flags] if dist.get_rank() == 0 else [0.0] * len(rank0_flags)
    flags = torch.cat([torch.tensor(mine, device=device), nonfinite.float()[None]])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    *out, bad = [v > 0 for v in flags.tolist()]
    return out, bad


def claim_run_dir(kind, args):
    """The run folder, claimed atomically: the first of base, base_2, ... where this process creates
    config.json itself (O_EXCL), so two runs started at once never share one, and a folder left by
    another run, finished or failed, is never appended to."""
    base = args.out or os.path.join("runs", f"{kind}_{args.data}{args.size}")
    out, k = base, 2
    while True:
        try:
            os.makedirs(out, exist_ok=True)
            os.close(os.open(os.path.join(out, "config.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return out
        except FileExistsError:
            out, k = f"{base}_{k}", k + 1
        except OSError as e:
            raise UserError(f"cannot write the run folder {out} ({e.strerror}); pick another --out")


def heldout_images(args):
    """Up to 512 images of the test split (model scale) when the dataset has one, else None."""
    if args.data not in ("mnist", "cifar10", "maps", "flowers102"):
        return None  # coffee and folders have no separate test split here
    try:
        test = data_from_args(args, "test")
    except DataError:
        return None
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:512]
    return to_model(test.images[idx])


def keep_copy(src, dst):
    """A second name for the checkpoint just written (a hard link: free, and atomic)."""
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)


class Interrupt:
    """First Ctrl-C (or SIGTERM outside torchrun): finish the step, save, exit 130 (143), so `train && sample`
    does not go on as if training had finished. Second: exit at once."""

    def __init__(self, world):
        self.requested, self.code = False, 0
        signal.signal(signal.SIGINT, self.handler)
        if world == 1:  # under torchrun, SIGTERM means another worker failed (_train_under_torchrun)
            signal.signal(signal.SIGTERM, self.handler)

    def handler(self, signum, _frame):
        if self.requested:
            print("\nsecond signal: exiting without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.requested, self.code = True, 128 + signum
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{name}: saving a checkpoint after this step ({name} again to quit at once)", file=sys.stderr)


def train(objective, argv=None):
    """Parse the objective's command line and run it; the entry point of every train_*.py."""
    p = base_parser(objective.description, objective.default_preset)
    objective.add_args(p)
    args = p.parse_args(argv)
    run_cli(lambda: _train_under_torchrun(objective, args, typed_flags(p, argv, args)))


def typed_flags(parser, argv, args):
    """The dests of the flags typed on the command line, a value equal to the default included: parsed
    again with every default replaced by a marker."""
    marker = object()
    defaults = {d: parser.get_default(d) for d in vars(args)}
    parser.set_defaults(**{d: marker for d in defaults})
    try:
        again = parser.parse_args(argv)
    finally:
        parser.set_defaults(**defaults)
    return {d for d, v in vars(again).items() if v is not marker}


def data_fingerprint(data):
    """The data's identity: its decoded images and labels, wherever they were read from."""
    h = hashlib.sha256(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def _train_under_torchrun(objective, args, typed):
    """Under torchrun a dead worker reaches the others as torchrun's SIGTERM or as a failed collective:
    say which, in one line with the backend's own message, the last checkpoint and how to resume. Any
    other error is a bug and keeps its traceback."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world == 1:
        return _train(objective, args, typed)

    def where():
        ck = os.path.join(args.out, "ckpt.pt") if args.out else None
        return (f"last checkpoint: {ck}; resume with torchrun ... --resume --out {args.out}"
                if ck and os.path.exists(ck) else "no checkpoint was written yet")

    def on_term(*_):
        print(f"error: rank {rank}: stopped by torchrun (another worker failed); {where()}", file=sys.stderr)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return _train(objective, args, typed)
    except RuntimeError as e:
        if not (isinstance(e, dist.DistError) or _from_a_collective(e)):
            raise  # not about the other workers: a bug, keep its traceback
        raise UserError(f"rank {rank}: a collective failed: {str(e).strip().splitlines()[0][:300]}; {where()}")


def _from_a_collective(e):
    """gloo and nccl report a peer's death from inside DDP's backward as a plain RuntimeError."""
    return any(k in str(e) for k in ("gloo", "NCCL", "nccl", "Connection reset", "Connection closed"))


def _train(objective, args, typed):
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    set_threads(world)
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    setup_device(device)
    if world > 1:
        dist.init_process_group(ddp_backend(device))
    main = rank == 0
    log = print if main else (lambda *a, **k: None)

    resume_ck = None
    if args.resume:
        if args.out is None and args.ckpt is None:
            raise UserError("--resume needs --out RUN_DIR (or --ckpt RUN_DIR/ckpt.pt) of the run to continue")
        path = args.ckpt or os.path.join(args.out, "ckpt.pt")
        resume_ck = load_checkpoint(path, kind=objective.kind)
        for k in FROZEN_ON_RESUME + tuple(objective.frozen_args):
            given, saved = getattr(args, k), resume_ck["args"][k]
            if k in typed and given != saved:
                raise UserError(f"--{k.replace('_', '-')} {given} contradicts the checkpoint being resumed "
                                f"({saved}); drop the flag (a resumed run keeps its settings) or start a new run")
            setattr(args, k, saved)
        if "data_root" not in typed:
            args.data_root = resume_ck["args"]["data_root"]
        args.out = os.path.dirname(os.path.abspath(path))
    if args.batch % world:
        raise UserError(f"--batch {args.batch} is not divisible by the {world} processes; pick a multiple of {world}")
    if sum(x is not None for x in (args.epochs, args.steps, args.minutes)) > 1:
        raise UserError("give one budget: --epochs, --steps or --minutes")
    if args.epochs is None and args.steps is None and args.minutes is None:
        args.minutes = 15.0
    precision = resolve_precision(args.precision, device)
    args.lr = PRESETS[args.preset]["lr"] if args.lr is None else args.lr

    data = data_from_args(args)
    args.size = data.size
    fingerprint = data_fingerprint(data)
    if resume_ck is not None and resume_ck.get("data_fingerprint", fingerprint) != fingerprint:
        raise UserError(f"the {args.data} data under {args.data_root} is not the data this run trained on "
                        f"(its content differs); point --data-root at that data, or start a new run")
    if args.cond and data.num_classes == 0:
        raise UserError(f"--cond needs labels, and '{args.data}' has none; drop --cond")
    if len(data) < args.batch:
        raise UserError(f"the dataset has {len(data)} images, fewer than --batch {args.batch}; lower --batch")
    if resume_ck is not None and ((args.steps and resume_ck["step"] >= args.steps)
                                  or (args.epochs and resume_ck["epoch"] >= args.epochs)):
        log(f"{args.out} is already at step {resume_ck['step']} (epoch {resume_ck['epoch']}), which meets the budget "
            f"given: nothing to do (raise --steps or --epochs to train on)")
        if world > 1:
            dist.destroy_process_group()
        return
    objective.setup(args, data)
    if resume_ck is None:
        args.out = claim_run_dir(getattr(objective, "run_name", objective.kind), args) if main else None
    log(describe(device, precision) + f", {world} process(es)")
    log(f"{objective.kind}: {args.data} {len(data)} images {data.channels}x{data.size}x{data.size}, "
        f"{'%d classes' % data.num_classes if args.cond else 'unconditional'}")

    num_classes = data.num_classes if args.cond else 0
    torch.manual_seed(args.seed)  # the initial weights, and dropout's draws
    model = build_unet(args.preset, data.channels, data.size, num_classes=num_classes, verbose=main,
                       ch=args.ch, **objective.model_kwargs(args)).to(device)
    use_cl = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    mem = torch.channels_last if use_cl else torch.contiguous_format
    model = model.to(memory_format=mem)
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg(args.ema_decay), use_buffers=True)  # its count on the host
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    step, epoch, batch_in_epoch, done_images = 0, 0, 0, 0
    if resume_ck is not None:
        model.load_state_dict(resume_ck["model"])
        ema.load_state_dict(resume_ck["ema"])
        opt.load_state_dict(resume_ck["optimizer"])
        sched.load_state_dict(resume_ck["lr_sched"])
        scaler.load_state_dict(resume_ck["scaler"])
        gen.set_state(resume_ck["rng"]["gen"])
        torch.set_rng_state(resume_ck["rng"]["torch"])
        if device.type == "cuda" and resume_ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume_ck["rng"]["cuda"], device)
        step, epoch, batch_in_epoch = resume_ck["step"], resume_ck["epoch"], resume_ck["batch_in_epoch"]
        objective.load_state(resume_ck.get("objective", {}))
        log(f"resumed {args.out} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    net = DistributedDataParallel(model) if world > 1 else model
    fwd = torch.compile(net) if args.compile else net

    if main:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({**vars(args), "kind": objective.kind, "precision": precision, "world_size": world,
                       "machine": machine_name(device), "model_config": model.config}, f, indent=1)
    ckpt_path = os.path.join(args.out, "ckpt.pt") if main else None

    def last_good():
        return f"the last good checkpoint is {ckpt_path}" if main and os.path.exists(ckpt_path) else "no checkpoint was written yet"

    def checkpoint():
        if not main:
            return
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never overwrite a good one with NaNs
            raise UserError(f"the weights are no longer finite at step {step}: training diverged (lower --lr, or "
                            f"another --optimizer); {last_good()}")
        save_atomic({
            "kind": objective.kind, "model_config": model.config, "args": vars(args), "data_fingerprint": fingerprint,
            "class_names": data.class_names if args.cond else [], "channels": data.channels, "size": data.size,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "lr_sched": sched.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "rng": {"gen": gen.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "objective": objective.state(),
        }, ckpt_path)

    heldout = heldout_images(args) if main else None
    heldout_path = os.path.join(args.out, "heldout.csv") if main else None

    def log_heldout():
        """The EMA model's loss on up to 512 test images with fixed noise: over-fitting shows here."""
        if heldout is None:
            return
        g = torch.Generator(device=device).manual_seed(12345)  # its own generator: training's draws are untouched
        tot = 0.0
        with torch.no_grad(), autocast(device, precision):
            for i in range(0, len(heldout), 128):
                x = heldout[i:i + 128].to(device)
                tot += objective.loss(ema.module, x, None, g, slice(None))[0].float().sum().item()
        new = not os.path.exists(heldout_path)
        with open(heldout_path, "a") as f:
            f.write(("step,epoch,heldout_loss\n" if new else "") + f"{step},{epoch},{tot / len(heldout):.5f}\n")

    def write_grid(tag):
        if not main:
            return
        n = args.n
        labels = (torch.arange(n) % data.num_classes) if args.cond else None
        fake = objective.sample(ema.module, n, labels, device, seed=args.seed).float().cpu()
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:n]
        real = to_model(data.images[pick])
        path = os.path.join(args.out, f"samples_{tag}.png")
        save_image(make_grid(torch.cat([fake, real]).clamp(-1, 1) * 0.5 + 0.5, nrow=int(math.ceil(n ** 0.5 / 2) * 2)),
                   path)
        return path

    images = data.images.to(device)
    labels_all = data.labels.to(device)
    n_batches = len(data) // args.batch  # drop the last partial batch: every step has the global batch
    local = args.batch // world
    part = slice(rank * local, (rank + 1) * local)
    total_steps = args.steps or (args.epochs * n_batches if args.epochs else None)
    deadline = time.time() + 60 * args.minutes if args.minutes else None
    interrupt = Interrupt(world) if main else None
    log_f = open(os.path.join(args.out, "log.csv"), "a", newline="") if main else None
    log_w = csv.writer(log_f) if main else None
    if main and log_f.tell() == 0:
        log_w.writerow(["step", "epoch", "loss", "lr", "img_per_s", "loss_q1", "loss_q2", "loss_q3", "loss_q4", "elapsed_s"])
    # Per-step bookkeeping stays on the device and is read only at log steps: a host read per step would stall
    # a GPU. Loss sums and counts per t-quartile since the last log, and whether any loss was not finite.
    acc = torch.zeros(2, 4, dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_ckpt_t, t0, last_log_t, last_log_step = time.time(), time.time(), time.time(), step
    bar = tqdm(total=total_steps, initial=step, disable=not main, dynamic_ncols=True, unit="step")
    model.train()
    stop_reason = None
    while stop_reason is None:
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))
        perm = perm.to(device)
        while batch_in_epoch < n_batches:
            idx = perm[batch_in_epoch * args.batch:(batch_in_epoch + 1) * args.batch]
            x0 = augment_batch(to_model(images[idx]), data.augment, gen)
            y = labels_all[idx] if args.cond else None
            with autocast(device, precision):
                losses, tfrac = objective.loss(fwd, x0.contiguous(memory_format=mem), y, gen, part)
            loss = losses.mean()
            nonfinite |= ~torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            ema.update_parameters(model)
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            done_images += args.batch
            q = (tfrac.detach() * 4).long().clamp(0, 3)
            acc[0].index_add_(0, q, losses.detach().double())
            acc[1].index_add_(0, q, torch.ones_like(q, dtype=torch.float64))
            bar.update(1)
            log_step = step % args.log_every == 0
            stop = [total_steps is not None and step >= total_steps,  # the same on every rank
                    deadline is not None and time.time() >= deadline,
                    bool(interrupt and interrupt.requested)]
            if world > 1:  # ranks agree at log steps (and the last step) only: a collective per step stalls GPUs
                check = log_step or stop[0]
                stop[1:], bad = agree(stop[1:], nonfinite, device) if check else ([False, False], False)
            else:
                check = log_step or any(stop)
                bad = check and nonfinite.item()
            if bad:
                bar.close()  # so the message starts its own line
                raise UserError(f"the loss stopped being finite at or before step {step}: training diverged (lower "
                                f"--lr, or another --optimizer); {last_good()}")
            if log_step and main:
                now = time.time()
                ips = (step - last_log_step) * args.batch / (now - last_log_t)
                per_q = (acc[0] / acc[1].clamp(min=1)).tolist()
                mean = (acc[0].sum() / acc[1].sum()).item()
                log_w.writerow([step, epoch, f"{mean:.5f}", f"{sched.get_last_lr()[0]:.3g}", f"{ips:.1f}",
                                *[f"{v:.5f}" for v in per_q], f"{now - t0:.1f}"])
                log_f.flush()
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}", epoch=epoch)
                acc.zero_()
                last_log_t, last_log_step = now, step
            if any(stop):
                stop_reason = ["steps", "time", "interrupt"][stop.index(True)]
                break
            if main and time.time() - last_ckpt_t > 60 * args.ckpt_every:
                checkpoint()
                last_ckpt_t = time.time()
        if batch_in_epoch >= n_batches:
            epoch, batch_in_epoch = epoch + 1, 0
            if args.sample_every and epoch % args.sample_every == 0 and stop_reason is None:
                model.eval()
                write_grid(f"epoch{epoch:03d}")
                log_heldout()
                model.train()
                checkpoint()
                if main and args.keep_ckpts:
                    keep_copy(ckpt_path, os.path.join(args.out, f"ckpt_epoch{epoch:03d}.pt"))
                last_ckpt_t = time.time()
            if args.epochs is not None and epoch >= args.epochs and stop_reason is None:
                stop_reason = "epochs"
    bar.close()
    checkpoint()
    elapsed = time.time() - t0
    log(f"stopped ({stop_reason}) at step {step}, epoch {epoch}: {done_images / elapsed:.1f} img/s over {elapsed:.0f} s")
    log(f"checkpoint: {ckpt_path}")
    if stop_reason == "interrupt":
        log(f"continue with: --resume --out {args.out}")
    else:
        model.eval()
        log(f"samples (generated above, real below): {write_grid('final')}")
        log_heldout()
    if main:
        log_f.close()
    if world > 1:
        # Cheap proof that DDP kept the replicas identical.
        flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
        sums = [None] * world
        dist.all_gather_object(sums, (flat.double().sum().item(), flat.double().abs().sum().item()))
        log(f"DDP check: parameters identical on all {world} ranks: {all(s == sums[0] for s in sums)}")
        dist.destroy_process_group()
    if stop_reason == "interrupt":
        sys.exit(interrupt.code if interrupt else 130)
