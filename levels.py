"""Where a model's denoising error lies: the x̂0 error per noise level on held-out images, beside the exact
denoiser of its training data as one Gaussian (and as a mixture of Gaussians).

    python levels.py --ckpt runs/ddpm_coffee64/ckpt.pt --ref coffee:test --data-root ../shared/data
    python levels.py --ckpt A/ckpt_10min.pt A/ckpt.pt B/ckpt.pt --snrs 0.01,0.1,1,10 --n 256 --out runs/levels

Each held-out image is noised once per level (x_t = α x0 + σ ε, the same ε for every checkpoint), and each
denoiser's x̂0 is compared with x0: the mean squared error per pixel in [-1, 1] units, unclipped. The Gaussian
is a linear denoiser that knows only the data's colours and spectrum; where the network does not beat it, the
network has not learned the data's shapes at that level (there --gauss-snr sampling hands the level to the
Gaussian). Prints a table per checkpoint and writes one card per checkpoint to levels.jsonl (`plots.py results`
lists them) and levels.png: error against SNR, every checkpoint beside the Gaussians.
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import datetime
import json
import math
import os

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import (POSITIVE, POSITIVE_INT, Parser, UserError, add_run_args, ensure_writable, number_list,
                 resolve_device, run_cli)
from data import to_model
from features import load_ref_data, parse_ref
from gaussian import gaussian_x0
from checkpoint import data_gaussian, schedule_of
from machine import autocast, describe, provenance, resolve_precision, set_threads, setup_device
from samplers import make_denoiser

SNRS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="DDPM checkpoint(s)")
    p.add_argument("--ref", default=None, help="held-out images, e.g. coffee:test, mnist:test, folder:PATH "
                                               "(default: the first checkpoint's dataset, test split)")
    p.add_argument("--data-root", default=None, help="where the reference datasets live (default: the first checkpoint's)")
    p.add_argument("--n", type=POSITIVE_INT, default=256, help="reference images (a fixed subset when the split is larger)")
    p.add_argument("--snrs", type=number_list(POSITIVE), default=list(SNRS),
                   help="comma-separated SNRs α²/σ², each taken at the schedule's nearest level")
    p.add_argument("--gauss-mix", action=argparse.BooleanOptionalAction, default=True,
                   help="also the mixture of Gaussians that training stored, where it stored one (default on)")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--batch", type=POSITIVE_INT, default=64, help="images per network call")
    add_run_args(p, "where levels.jsonl and levels.png go (default: the first checkpoint's folder)")
    args = p.parse_args()
    run_cli(lambda: _main(args))


def level_of(sched, snr):
    """The schedule's timestep whose SNR is nearest (in log) to snr; refused when no level is within 2x."""
    gap = (sched.snr().log() - math.log(snr)).abs()
    t = int(gap.argmin())
    if gap[t] > 0.7:
        lo, hi = sched.snr().min().item(), sched.snr().max().item()
        raise UserError(f"--snrs {snr:g}: this schedule's levels span SNR {lo:.3g} to {hi:.3g}; give SNRs inside it")
    return t


def level_errors(denoisers, sched, x0, snrs, seed=0):
    """{name: [mean squared x̂0 error per pixel at each SNR]} for denoisers {name: f(x_t, t, alpha, sigma) -> x̂0},
    every one given the same noisy images."""
    errors = {name: [] for name in denoisers}
    for k, snr in enumerate(snrs):
        t = level_of(sched, snr)
        abar = sched.abar[t].item()
        alpha, sigma = abar ** 0.5, (1 - abar) ** 0.5
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + k))
        xt = alpha * x0 + sigma * eps
        for name, f in denoisers.items():
            errors[name].append(((f(xt, t, alpha, sigma).float().cpu() - x0) ** 2).mean().item())
    return errors


def network_denoiser(ck, device, precision, labels, batch, ema=True):
    """The checkpoint's network as f(x_t, t, alpha, sigma) -> x̂0 (unclipped), batch by batch."""
    model = model_from_checkpoint(ck, ema=ema, device=device)
    sched = schedule_of(ck)
    num_classes = len(ck.get("class_names") or [])

    @torch.no_grad()
    def f(xt, t, alpha, sigma):
        out = []
        for i in range(0, len(xt), batch):
            lab = None if labels is None else labels[i:i + batch].to(device)
            d = make_denoiser(model, sched, ck["args"]["pred"], labels=lab, num_classes=num_classes, clip=False)
            with autocast(device, precision):
                out.append(d(xt[i:i + batch].to(device), t)[0].float().cpu())
        return torch.cat(out)
    return f


def gaussian_denoiser(stats, labels):
    return lambda xt, t, alpha, sigma: gaussian_x0(stats, xt, alpha, sigma, labels)


def default_ref(ck):
    a = ck["args"]
    return f"folder:{a['data_root']}" if a["data"] == "folder" else f"{a['data']}:test"


def _main(args):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cks = [load_checkpoint(path, kind="ddpm") for path in args.ckpt]
    for ck in cks:  # every level and Gaussian checked before any work (load_checkpoint checked the weights)
        [level_of(schedule_of(ck), snr) for snr in args.snrs]
        data_gaussian(ck)
    ref = args.ref or default_ref(cks[0])
    refs, images = {}, []
    for path, ck in zip(args.ckpt, cks):  # --ref read and checked against every checkpoint before the first card
        size = ck["args"]["size"]
        if size not in refs:
            refs[size] = load_ref_data(*parse_ref(ref), args.data_root or cks[0]["args"].get("data_root", "data"), size)
        images.append(reference_images(path, ck, refs[size], ref, args.n))
    out = ensure_writable(args.out or os.path.dirname(os.path.abspath(args.ckpt[0])), "--out")
    set_threads()
    setup_device(device)
    print(describe(device, precision) + " (networks; the Gaussians in fp32)")
    where = provenance(device)
    cards = []
    for path, ck, (x0, labels) in zip(args.ckpt, cks, images):
        card = dict(type="levels", time=datetime.datetime.now().isoformat(timespec="seconds"), **where, source=path,
                    **checkpoint_levels(ck, x0, labels, ref, args, device, precision))
        cards.append(card)
        with open(os.path.join(out, "levels.jsonl"), "a") as f:
            f.write(json.dumps(card, ensure_ascii=False) + "\n")
        print(table(path, card))
    from plots import levels_figure
    levels_figure(cards).savefig(os.path.join(out, "levels.png"), dpi=120, bbox_inches="tight")
    print(f"-> {out}/levels.jsonl, {out}/levels.png")


def reference_images(path, ck, data, ref, n):
    """(x0 in [-1, 1], labels or None): n images of data for the checkpoint at path, refused where they do not fit it."""
    a = ck["args"]
    shape = (ck["model_config"]["in_ch"], a["size"], a["size"])
    if tuple(data.images.shape[1:]) != shape:
        raise UserError(f"--ref {ref} has {tuple(data.images.shape[1:])} images, {path} makes {shape}: "
                        f"give a split of the data it was trained on")
    idx = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))[:n]
    x0 = to_model(data.images[idx]).float()
    classes = ck.get("class_names") or []
    labels = data.labels[idx] if classes else None  # a conditional model and its Gaussians see each image's class
    if classes and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"--ref {ref} has labels outside the checkpoint's {len(classes)} classes; give a split of its data")
    return x0, labels


def checkpoint_levels(ck, x0, labels, ref, args, device, precision):
    """One checkpoint's card fields: its network's and its data's Gaussians' errors on the images x0."""
    a = ck["args"]
    classes = ck.get("class_names") or []
    ema = not args.raw and bool(ck.get("ema"))
    denoisers = {"network": network_denoiser(ck, device, precision, labels, args.batch, ema=ema),
                 "gaussian": gaussian_denoiser(data_gaussian(ck), labels)}
    stored = (ck.get("objective") or {}).get("gauss") or {}
    if args.gauss_mix and not classes and "mix_weight" in stored:
        denoisers[f"mixture of {len(stored['mix_weight'])}"] = gaussian_denoiser(stored, None)
    sched = schedule_of(ck)
    errors = level_errors(denoisers, sched, x0, args.snrs, seed=args.seed)
    return dict(step=ck.get("step"), data=a["data"], size=a["size"], pred=a["pred"], ema=ema, n=len(x0), ref=ref,
                snr=[round(sched.snr()[level_of(sched, s)].item(), 5) for s in args.snrs],
                mse={k: [round(v, 5) for v in e] for k, e in errors.items()}, train={**ck.get("provenance", {}), "args": a})


def table(path, card):
    names = list(card["mse"])
    rows = [f"{path} (step {card['step']}, {card['n']} images of {card['ref']}): x̂0 mean squared error per pixel",
            "     SNR  " + "".join(f"{n:>16}" for n in names) + "   network / Gaussian"]
    for k, snr in enumerate(card["snr"]):
        e = [card["mse"][n][k] for n in names]
        rows.append(f"{snr:8.3g}  " + "".join(f"{v:16.4f}" for v in e) + f"   {e[0] / e[1]:8.2f}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
