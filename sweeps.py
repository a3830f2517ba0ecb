"""The images fid.py scores from checkpoints: every checkpoint sampled with each sampler and step count of a
sweep (a zoom checkpoint: each start state), optionally started from real images noised to each of
several levels (SDEdit), with the card fields that say how each set was drawn."""
import os
import time
from types import SimpleNamespace

import torch

from checkpoint import data_gaussian, load_checkpoint, schedule_of
from cli import UserError
from data import to_uint8
from features import load_ref_data, parse_ref
from sample_spec import check_init, generate_from_checkpoint, parse_labels, resolve_spec
from samplers import timesteps_for


def plan_jobs(args):
    """Every checkpoint, sampler, step count, start and --init level resolved and checked before anything is sampled
    or written: a list of dicts (path, spec, init_snr, label, size, channels, out). A bad entry anywhere refuses the
    whole command."""
    try:
        steps = [int(s) for s in args.sweep_steps.split(",")] if args.sweep_steps else [args.steps]
    except ValueError:
        raise UserError(f"--sweep-steps {args.sweep_steps}: give comma-separated step counts, e.g. 10,20,50")
    if any(s is not None and s < 1 for s in steps):
        raise UserError("--steps and --sweep-steps must be positive")
    samplers = (args.samplers or args.sampler or "").split(",")
    init_snrs = parse_init_snrs(args)
    plan, inits, where = [], {}, {}
    names = dict(zip(args.ckpt, checkpoint_names(args.ckpt)))
    for path in args.ckpt:
        ck = load_checkpoint(path)
        zoom = ck["kind"] == "zoom"
        if not zoom and args.start:
            raise UserError(f"--start is a Cold Zoom option; {path} is a DDPM checkpoint, which starts from Gaussian noise")
        if zoom and (args.steps or args.sweep_steps):
            raise UserError(f"--steps and --sweep-steps are DDPM options; {path} is a zoom checkpoint, which walks its own "
                            "T steps (sweep --start instead)")
        if zoom and args.init:
            raise UserError(f"--init is a DDPM option; {path} is a zoom checkpoint, which starts from --start")
        size, channels = ck["args"]["size"], ck["model_config"]["in_ch"]
        if args.init and size not in inits:
            inits[size] = init_images(args, ck)
        sched = None if zoom else schedule_of(ck)
        jobs = [(None, s, None) for s in (args.start or "bank").split(",")] if zoom else \
            [(st, None, snr) for st in steps for snr in init_snrs]
        for sampler in samplers:
            for st, start, init_snr in jobs:
                spec = resolve_spec(ck, sampler or None, st, args.spacing, args.eta, args.cfg, args.gauss_snr,
                                    args.gauss_mix, args.clip, init_snr, start, args.noise, ema=not args.raw)
                if not zoom:
                    if spec.gauss_snr:
                        data_gaussian(ck, spec.gauss_mix)
                    if args.init:
                        check_init(inits[size], SimpleNamespace(in_ch=channels, size=size),
                                   sched.snr()[timesteps_for(sched, spec.steps, spec.spacing)], init_snr, args.n)
                label = (spec.sampler + (f"_{spec.start}" if zoom else str(spec.steps))
                         + ("" if zoom or spec.clip else "_noclip") + (f"_init{init_snr:g}" if args.init else ""))
                if len(args.ckpt) > 1:  # name the checkpoint too: teacher and student side by side
                    label = f"{names[path]}_{label}"
                out = args.out or os.path.dirname(path) or "."
                key = (os.path.abspath(out), label)
                if key in where:
                    raise UserError(f"two jobs would both write samples_{label}.npz in {out} ({where[key]} and {path}): "
                                    f"give each checkpoint, sampler, step count, start and --init-snr once")
                where[key] = path
                plan.append(dict(path=path, spec=spec, init_snr=init_snr, label=label, size=size, channels=channels,
                                 out=out))
    return plan, inits


def checkpoint_names(paths):
    """A short name for each checkpoint in labels and file names: its run folder, and its file's stem where that is
    not 'ckpt' (runs/a/ckpt_10min.pt: a_ckpt_10min), with as many folders above as it takes to tell different
    checkpoints apart (two runs both called run: teacher_run, student_run)."""
    parts = {p: os.path.abspath(p).split(os.sep) for p in paths}

    def name(p, depth):
        stem = os.path.splitext(p[-1])[0]
        return "_".join([f for f in p[-1 - depth:-1] if f] + ([] if stem == "ckpt" else [stem])) or stem

    depth, distinct = 1, {tuple(p) for p in parts.values()}
    while depth < max(map(len, distinct)) and len({name(p, depth) for p in distinct}) < len(distinct):
        depth += 1
    return [name(parts[p], depth) for p in paths]


def checkpoint_jobs(args, device, precision, plan, inits):
    """(label, images uint8, card fields, output folder) for each job of plan_jobs, sampled one after the other."""
    ck, loaded = None, None
    for job in plan:
        path, spec, label = job["path"], job["spec"], job["label"]
        if loaded != path:  # jobs come checkpoint by checkpoint: one in memory at a time
            ck, loaded = load_checkpoint(path), path
        labels = parse_labels(None, args.n, ck)  # a class-conditional model draws every class in turn
        init = inits.get(job["size"]) if args.init else None
        t0 = time.time()
        x, info = generate_from_checkpoint(ck, spec, args.n, device, labels, args.seed, args.batch, precision,
                                           init=init)
        gen_s = time.time() - t0
        if init is not None:
            info["init"] = args.init
        card = dict(source=path, step=ck.get("step"), epoch=ck.get("epoch"), size=ck["args"]["size"],
                    data=ck["args"]["data"],  # the resolved flags: reproducible after a default moves
                    train={**ck.get("provenance", {}), "args": ck["args"]},
                    kind=(ck.get("objective") or {}).get("method", ck["kind"]),  # 'consistency': a student
                    train_minutes=round(ck["train_seconds"] / 60, 2) if "train_seconds" in ck else None,
                    labels="every class in turn" if labels is not None else "unconditional",
                    ema=not args.raw, seed=args.seed, gen_seconds=round(gen_s, 1), **info)
        if labels is not None:  # the class each sample was drawn for: fid.py keeps it in scores_LABEL.npz, not the card
            card["gen_labels"] = (labels, ck.get("class_names"))
        yield label, to_uint8(x), card, job["out"]


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
