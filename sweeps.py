"""The images fid.py scores from checkpoints: every checkpoint sampled with each sampler and step count of a
sweep (a zoom checkpoint: each start state), optionally started from real images noised to each of
several levels (SDEdit), with the card fields that say how each set was drawn."""
import os
import time

import torch

from checkpoint import load_checkpoint
from cli import UserError
from data import to_uint8
from features import load_ref_data, parse_ref
from sample_spec import generate_from_checkpoint, parse_labels, resolve_spec


def checkpoint_jobs(args, device, precision):
    """(label, images uint8, card fields, output folder) for each checkpoint, sampler, step count and start."""
    try:
        steps = [int(s) for s in args.sweep_steps.split(",")] if args.sweep_steps else [args.steps]
    except ValueError:
        raise UserError(f"--sweep-steps {args.sweep_steps}: give comma-separated step counts, e.g. 10,20,50")
    if any(s is not None and s < 1 for s in steps):
        raise UserError("--steps and --sweep-steps must be positive")
    samplers = (args.samplers or args.sampler or "").split(",")
    init_snrs = parse_init_snrs(args)
    for path in args.ckpt:
        ck = load_checkpoint(path)
        zoom = ck["kind"] == "zoom"
        if not zoom and args.start:
            raise UserError("--start is a Cold Zoom option; a DDPM checkpoint starts from Gaussian noise")
        if zoom and (args.steps or args.sweep_steps):
            raise UserError("--steps and --sweep-steps are DDPM options; a zoom checkpoint walks its own T steps "
                            "(sweep --start instead)")
        labels = parse_labels(None, args.n, ck)  # a class-conditional model draws every class in turn
        init = init_images(args, ck)
        jobs = [(None, s, None) for s in (args.start or "bank").split(",")] if zoom else \
            [(st, None, snr) for st in steps for snr in init_snrs]
        for sampler in samplers:
            for st, start, init_snr in jobs:
                t0 = time.time()
                spec = resolve_spec(ck, sampler or None, st, args.spacing, args.eta, args.cfg, args.gauss_snr,
                                    args.gauss_mix, args.clip, init_snr, start, args.noise, ema=not args.raw)
                x, info = generate_from_checkpoint(ck, spec, args.n, device, labels, args.seed, args.batch, precision,
                                                   init=init)
                gen_s = time.time() - t0
                label = (f"{info['sampler']}" + (f"_{start}" if zoom else str(info["steps"]))
                         + ("_noclip" if info.get("clip") is False else "")
                         + (f"_init{init_snr:g}" if init is not None else ""))
                if init is not None:
                    info["init"] = args.init
                if len(args.ckpt) > 1:  # name the checkpoint too: teacher and student side by side
                    run = os.path.basename(os.path.dirname(os.path.abspath(path)))
                    stem = os.path.splitext(os.path.basename(path))[0]
                    label = f"{run}{'' if stem == 'ckpt' else '_' + stem}_{label}"
                card = dict(source=path, step=ck.get("step"), epoch=ck.get("epoch"), size=ck["args"]["size"],
                            data=ck["args"]["data"],  # the resolved flags: reproducible after a default moves
                            train={**ck.get("provenance", {}), "args": ck["args"]},
                            kind=(ck.get("objective") or {}).get("method", ck["kind"]),  # 'consistency': a student
                            train_minutes=round(ck["train_seconds"] / 60, 2) if "train_seconds" in ck else None,
                            labels="every class in turn" if labels is not None else "unconditional",
                            ema=not args.raw, seed=args.seed, gen_seconds=round(gen_s, 1), **info)
                yield label, to_uint8(x), card, args.out or os.path.dirname(path)


def parse_init_snrs(args):
    """--init-snr's levels ([None] without --init)."""
    if args.init is None:
        if args.init_snr is not None:
            raise UserError("--init-snr goes with --init SPLIT (the real images to start from)")
        return [None]
    if args.init_snr is None:
        raise UserError("--init needs --init-snr: how noisy the start is (e.g. 0.1 keeps the layout, 3 only the details)")
    try:
        snrs = [float(v) for v in args.init_snr.split(",")]
    except ValueError:
        raise UserError(f"--init-snr {args.init_snr}: give comma-separated positive SNRs, e.g. 0.05,0.5,5")
    if not all(v > 0 for v in snrs):
        raise UserError(f"--init-snr {args.init_snr}: SNRs must be positive")
    return snrs


def init_images(args, ck):
    """--init's real images at the checkpoint's size, a fixed random subset of --n when the split is larger."""
    if args.init is None:
        return None
    x = load_ref_data(*parse_ref(args.init), args.data_root, ck["args"]["size"]).images
    if len(x) > args.n:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:args.n]]
    return x
