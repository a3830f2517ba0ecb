"""Sample a trained checkpoint.

    python sample.py --ckpt runs/ddpm_maps64/ckpt.pt --n 64           # default: SDE-DPM-Solver++(2M), 15 steps
    python sample.py --ckpt runs/ddpm_maps64/ckpt.pt --sampler ancestral --steps 1000
    python sample.py --ckpt runs/zoom_nearest_mnist28/ckpt.pt --start bank --sampler naive
    python sample.py --ckpt runs/consistency_mnist28/ckpt.pt          # a distill.py student: its own few steps
    python sample.py --ckpt runs/ddpm_coffee64/ckpt.pt --init coffee:test --init-snr 0.1 --data-root DIR  # SDEdit

DDPM: ancestral (all T steps or respaced), DDIM (--eta), DPM-Solver++(2M) as an ODE (dpmpp2m) or an SDE
(dpmpp2m_sde), multistep consistency sampling (consistency: distill.py's students), with classifier-free
guidance (--cfg) on class-conditional checkpoints. Cold Zoom: naive
or improved updates from a start state (--start). --init starts a DDPM from real images noised to
--init-snr instead of pure noise (SDEdit, Meng et al. 2022): a low SNR keeps only their layout, a high one
all but the finest detail. Image i always gets the noise of (seed, i), so an image does not change with
--batch or --n.
Writes grid.png, images/NNNNN.png and samples.npz (uint8, N x H x W x C) to --out.
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import os
import time

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from checkpoint import load_checkpoint
from cli import (FINITE, NONNEG, POSITIVE, POSITIVE_INT, Parser, UserError, add_run_args, ensure_writable,
                 resolve_device, run_cli)
from data import to_uint8
from features import load_ref_data, parse_ref
from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLE_BATCH, SAMPLE_BATCH_CUDA
from sample_spec import generate_from_checkpoint, parse_labels, resolve_spec
from machine import describe, resolve_precision, set_threads, setup_device
from samplers import SAMPLERS, SPACINGS
from zoom import STARTS


def save_outputs(x, out, snapshots=None, nrow=None):
    """grid.png, one PNG per image, samples.npz (uint8 NHWC) and, given snapshots, progression.png."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    u8 = to_uint8(x)
    save_image(make_grid(u8.float() / 255, nrow=nrow or int(np.ceil(len(x) ** 0.5)), padding=1),
               os.path.join(out, "grid.png"))
    for i, img in enumerate(u8):
        save_image(img.float() / 255, os.path.join(out, "images", f"{i:05d}.png"))
    np.savez_compressed(os.path.join(out, "samples.npz"), images=u8.permute(0, 2, 3, 1).numpy())
    if snapshots:
        write_progression(snapshots, os.path.join(out, "progression.png"))
    return f"{out}/grid.png, {out}/images/, {out}/samples.npz" + (f", {out}/progression.png" if snapshots else "")


def fresh_folder(out, default):
    """An empty folder for one sampling's outputs, so that images/ and samples.npz never mix two runs: --out must be
    new or empty; the default takes the first free of default, default_2, ..."""
    if out:
        if os.path.isdir(out) and os.listdir(out):
            raise UserError(f"--out {out} already holds files; give a new or empty folder (two samplings must not mix)")
        return ensure_writable(out, "--out")
    out, k = default, 2
    while os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        out, k = f"{default}_{k}", k + 1
    return ensure_writable(out, "--out")


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a training run's ckpt.pt")
    p.add_argument("--n", type=POSITIVE_INT, default=64, help="number of images")
    p.add_argument("--sampler", default=None,
                   help=f"DDPM: {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER}, or a distilled checkpoint's own); zoom: "
                        "naive (default), improved")
    p.add_argument("--steps", type=POSITIVE_INT, default=None,
                   help=f"levels visited (default {DEFAULT_STEPS}, or a distilled checkpoint's own); NFE: those not taken by "
                        "--gauss-snr, x2 with CFG")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="where the steps sit: uniform in t, karras (dense at low noise), or trailing (uniform without t = 0: the "
                        "last step lands on the data); default: karras for dpmpp*, a distilled checkpoint's own, else uniform")
    p.add_argument("--eta", type=NONNEG, default=0.0, help="DDIM noise (0 deterministic, 1 = ancestral)")
    p.add_argument("--gauss-snr", type=NONNEG, default=None,
                   help="levels with SNR below this take the closed-form x̂0 of the training data as one Gaussian instead of the network "
                        "(no network call; gaussian.py; default: the data's, recipes.py: 0.05 for coffee, 0.1 for cifar10, maps "
                        "and class-conditional mnist, else 0 = off)")
    p.add_argument("--gauss-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="with --gauss-snr, an unconditional model's closed-form levels take the mixture of Gaussians that "
                        "training stored, one per k-means cluster of the images' mean colours (default: the data's, "
                        "recipes.py: on for coffee)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip each step's x̂0 to [-1, 1]; the images are clamped at the end either way. Clipping biases x̂0 "
                        "inward wherever the data sit at the range's edge, MNIST's black background: a grey haze (default: "
                        "the data's, recipes.py)")
    p.add_argument("--cfg", type=FINITE, default=None, help="classifier-free guidance scale (0 = unconditional, 1 = conditional)")
    p.add_argument("--labels", default=None, help="comma-separated class indices, cycled (default: all classes in turn)")
    p.add_argument("--start", default=None, choices=STARTS, help="zoom only: start state (default bank)")
    p.add_argument("--noise", type=NONNEG, default=0.0, help="zoom only: std of noise injected while sampling")
    p.add_argument("--batch", type=POSITIVE_INT, default=None,
                   help=f"images per network call (default {SAMPLE_BATCH} on CPU, {SAMPLE_BATCH_CUDA} on CUDA)")
    p.add_argument("--init", default=None, metavar="SPLIT",
                   help="DDPM only: start image i from image i of a real split (e.g. coffee:test, folder:PATH), cycled, "
                        "noised to --init-snr")
    p.add_argument("--init-snr", type=POSITIVE, default=None, help="with --init: the start's SNR (the sampler's levels "
                   "below it run)")
    p.add_argument("--data-root", default=None, help="with --init: where the datasets live (default: where the "
                   "checkpoint's data was)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--progression", action="store_true", help="also write progression.png (x_t and predicted x0 over time)")
    add_run_args(p, "output folder, new or empty (default <run>/samples_<sampler><steps>_n<N>_seed<S>, numbered if taken)")
    args = p.parse_args()
    run_cli(lambda: _main(args))


def _main(args):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    set_threads()
    setup_device(device)
    print(describe(device, precision))
    if (args.init is None) != (args.init_snr is None):
        raise UserError("--init SPLIT and --init-snr SNR go together: the real images to start from and how noisy")
    ck = load_checkpoint(args.ckpt)
    zoom = ck["kind"] == "zoom"
    labels = parse_labels(args.labels, args.n, ck)
    snaps = [] if args.progression else None
    spec = resolve_spec(ck, args.sampler, args.steps, args.spacing, args.eta, args.cfg, args.gauss_snr, args.gauss_mix,
                        args.clip, args.init_snr, args.start, args.noise, ema=not args.raw)
    name = (f"{spec.sampler}_{spec.start}" if zoom else f"{spec.sampler}{spec.steps}" +
            (f"_init{args.init_snr:g}" if args.init else ""))
    root = args.data_root or ck["args"].get("data_root", "data")
    init = load_ref_data(*parse_ref(args.init), root, ck["args"]["size"]).images if args.init else None
    out = fresh_folder(args.out, os.path.join(os.path.dirname(args.ckpt), f"samples_{name}_n{args.n}_seed{args.seed}"))
    t0 = time.time()
    try:
        x, info = generate_from_checkpoint(ck, spec, args.n, device, labels, args.seed, args.batch, precision,
                                           snapshots=snaps, init=init)
    except BaseException:  # refused (or interrupted) before anything was written: the empty folder goes too
        if not os.listdir(out):
            os.rmdir(out)
        raise
    dt = time.time() - t0
    written = save_outputs(x, out, snaps)
    what = f"start {info['start']}" if zoom else f"{info['steps']} steps"
    if init is not None:
        what += f", the last {info['init_levels']} from {args.init} at SNR {args.init_snr:g}"
    print(f"{args.n} images in {dt:.1f} s ({args.n / dt:.2f} img/s, {info['sampler']}, {what}, NFE {info['nfe']}, "
          f"{'raw' if args.raw else 'ema'}) -> {written}")


def write_progression(snaps, path, cols=10, rows=4):
    """For each of a few images a row of x_t and a row of predicted x0, from the start (left) to data."""
    pick = np.linspace(0, len(snaps) - 1, min(cols, len(snaps))).round().astype(int)
    rows = min(rows, snaps[0][1].shape[0])
    tiles = []
    for r in range(rows):
        tiles += [snaps[k][1][r] for k in pick] + [snaps[k][2][r] for k in pick]
    save_image(make_grid(torch.stack(tiles).clamp(-1, 1) * 0.5 + 0.5, nrow=len(pick), padding=1), path)


if __name__ == "__main__":
    main()
