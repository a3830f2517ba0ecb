"""Sample a trained checkpoint.

    python sample.py --ckpt runs/ddpm_maps64/ckpt.pt --n 64           # default: SDE-DPM-Solver++(2M), 15 steps
    python sample.py --ckpt runs/ddpm_maps64/ckpt.pt --sampler ancestral --steps 1000

Samplers are small pure functions of a denoiser d(x, t) -> (x0, eps, v) and a schedule:
DDPM ancestral (all T steps or respaced), DDIM (eta) and DPM-Solver++(2M), as an ODE (dpmpp2m)
or an SDE (dpmpp2m_sde). Image i always gets the noise of seed (seed, i), so an image does not
change with the batch size.
Writes grid.png, images/NNNNN.png and samples.npz (uint8, N x H x W x C) to --out.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import (FINITE, NONNEG, POSITIVE_INT, Parser, UserError, add_run_args, ensure_writable, resolve_device,
                 run_cli)
from machine import autocast, describe, resolve_precision, set_threads, setup_device
from data import to_uint8
from schedules import Schedule

SAMPLERS = ("ancestral", "ddim", "dpmpp2m", "dpmpp2m_sde")
SPACINGS = ("uniform", "karras")
# The default: 1,000 32x32 images in about a minute on 2 CPU cores; --sampler ancestral --steps 100 scores
# a lower FD (2.44 vs 3.72 on the 20-min MNIST model) in 6.7x the time (README, Samplers).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp2m_sde", 15
# Images per network call: 64 keeps the activations in cache; 256 ran 1.3x (bf16) to 1.6x (fp32, AVX2) slower
# per image on 2 CPU cores (README, Speed). Results do not depend on it (per-image seeds).
SAMPLE_BATCH = 64


class PerImageNoise:
    """Gaussian noise where image i's draws depend only on (seed, i), never on the batch."""

    def __init__(self, seed, indices, shape, device):
        # Generators on the device: drawing on the host and copying would cost a transfer per step on a GPU.
        self.gens = [torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]
        self.shape, self.device = shape, device

    def __call__(self):
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.gens])


def timesteps_for(sched, steps, spacing="uniform"):
    """`steps` increasing integer timesteps in [0, T) (all T when steps >= T). 'uniform': evenly spaced
    in t (DDPM, DDIM). 'karras': T-1 (pure noise), then evenly spaced in σ^(1/7) from σ = min(σ_T, 80)
    down, σ = √((1-ᾱ)/ᾱ) (Karras et al. 2022, eq. 5, their σ_max = 80; a cosine schedule's σ_T is
    ~2e4, and steps up there are wasted), which puts the steps at low noise where detail forms.
    Points are rounded to the nearest trained t; more are drawn until `steps` of them are distinct."""
    T = sched.T
    if steps >= T:
        return torch.arange(T)
    if spacing == "uniform":
        return torch.linspace(0, T - 1, steps).round().long().unique()
    if spacing != "karras":
        raise UserError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    log_sig = 0.5 * torch.log((1 - sched.abar) / sched.abar)  # increasing in t
    lo, hi = (log_sig[0] / 7).exp(), (log_sig[-1].clamp(max=math.log(80)) / 7).exp()
    for m in range(steps - 1, T):
        want = 7 * torch.log(torch.linspace(lo, hi, m, dtype=torch.float64))
        ts = torch.cat([(log_sig[None, :] - want[:, None]).abs().argmin(1), torch.tensor([T - 1])]).unique()
        if len(ts) >= steps:
            return ts
    return timesteps_for(sched, steps, "uniform")  # too many steps to place distinctly this way


def default_spacing(sampler):
    """karras for the DPM-Solver++ pair (measured better at 15 steps, README → Samplers); uniform, as in
    their papers, for ancestral and DDIM (so earlier figures reproduce)."""
    return "karras" if sampler.startswith("dpmpp") else "uniform"


# ---- samplers: x is x_T (pure noise); timesteps increasing; each returns x_0 ------------------

def sample_ancestral(denoise, sched, x, timesteps, noise, callback=None):
    """DDPM ancestral sampling (Ho et al. eq. 11) on the respaced schedule of `timesteps`:
    x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), with the learned variance when the model has one."""
    sub = Schedule.respaced(sched, timesteps)
    for i in reversed(range(len(timesteps))):
        ti = torch.full((x.shape[0],), i, dtype=torch.long)
        x0, _, v = denoise(x, timesteps[i])
        mean, logvar = sub.posterior(x0, x, ti)
        if v is not None:
            logvar = sub.model_logvar(v, ti, x)
        x = mean + (0.5 * logvar).exp() * noise() if i > 0 else mean
        if callback:
            callback(i, x, x0)
    return x


def sample_ddim(denoise, sched, x, timesteps, noise, eta=0.0, callback=None):
    """DDIM (Song et al. eq. 12): eta=0 deterministic, eta=1 equals ancestral sampling."""
    abar = sched.abar[timesteps].tolist()
    for i in reversed(range(len(timesteps))):
        x0, eps, _ = denoise(x, timesteps[i])
        a_t, a_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise()
        if callback:
            callback(i, x, x0)
    return x


def sample_dpmpp_2m(denoise, sched, x, timesteps, noise=None, eta=0.0, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data prediction, λ = log(α/σ), r = h_prev / h;
    eta=1 is its SDE variant (SDE-DPM-Solver++(2M), midpoint form as in k-diffusion): fresh noise each
    step, which scored better than the ODE at equal steps on the briefly trained models here (README).
    The last step lands on x0 (σ = 0), as in k-diffusion."""
    abar = sched.abar[timesteps]
    alpha, sigma = abar.sqrt().tolist(), (1 - abar).sqrt().tolist()
    lam = [np.log(a / s) for a, s in zip(alpha, sigma)]
    x0_prev, h_prev = None, None
    for i in reversed(range(len(timesteps))):
        x0, _, _ = denoise(x, timesteps[i])
        if i == 0:
            x = x0
        else:
            h = lam[i - 1] - lam[i]
            d = x0 if x0_prev is None else x0 + (h / (2 * h_prev)) * (x0 - x0_prev)
            x = (sigma[i - 1] / sigma[i]) * np.exp(-eta * h) * x - alpha[i - 1] * np.expm1(-(1 + eta) * h) * d
            if eta > 0:
                x = x + sigma[i - 1] * np.sqrt(-np.expm1(-2 * eta * h)) * noise()
            x0_prev, h_prev = x0, h
        if callback:
            callback(i, x, x0)
    return x


def make_denoiser(model, sched, pred, labels=None, cfg=None, num_classes=0, clip=True):
    """d(x, t) -> (x0, eps, v): the network's output turned into x0 and eps (x0 clipped to
    [-1, 1] and eps recomputed from it), v = raw learned-variance output or None. With labels and a
    cfg scale w: out = out_uncond + w (out_cond - out_uncond), so w = 0 is unconditional."""
    def denoise(x, t):
        b = x.shape[0]
        tt = torch.full((b,), int(t), device=x.device)
        if cfg is not None and labels is not None and cfg != 1.0:
            null = torch.full_like(labels, num_classes)
            out = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
            cond, unc = out.chunk(2)
            c = x.shape[1]
            mean_out = unc[:, :c] + cfg * (cond[:, :c] - unc[:, :c])
            out = torch.cat([mean_out, cond[:, c:]], dim=1)
        else:
            out = model(x, tt, labels).float()
        c = x.shape[1]
        v = out[:, c:] if out.shape[1] == 2 * c else None
        x0, eps = sched.x0_eps(pred, out[:, :c], x, torch.full((b,), int(t)), clip=clip)
        return x0, eps, v
    return denoise


def run_sampler(name, denoise, sched, x, timesteps, noise, eta=0.0, callback=None):
    if name == "ancestral":
        return sample_ancestral(denoise, sched, x, timesteps, noise, callback)
    if name == "ddim":
        return sample_ddim(denoise, sched, x, timesteps, noise, eta, callback)
    if name in ("dpmpp2m", "dpmpp2m_sde"):
        return sample_dpmpp_2m(denoise, sched, x, timesteps, noise, 1.0 if name == "dpmpp2m_sde" else 0.0, callback)
    raise UserError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")


@torch.no_grad()
def generate_ddpm(model, sched, pred, n, device, sampler=None, steps=None, eta=0.0, labels=None, cfg=None,
                  seed=0, batch=SAMPLE_BATCH, precision="fp32", first_index=0, progress=False, snapshots=None, spacing=None):
    """n images in [-1, 1] (float32, CPU). Image k uses the noise of (seed, first_index + k)."""
    model.eval()
    c, s = model.in_ch, model.size
    sampler, steps = sampler or DEFAULT_SAMPLER, steps or DEFAULT_STEPS
    ts = timesteps_for(sched, steps, spacing or default_spacing(sampler))
    out = []
    bar = tqdm(total=n, disable=not progress, unit="img", desc=f"{sampler} {len(ts)} steps")
    for start in range(0, n, batch):
        idx = range(first_index + start, first_index + min(n, start + batch))
        noise = PerImageNoise(seed, idx, (c, s, s), device)
        lab = None if labels is None else labels[start:start + len(idx)].to(device)
        denoise = make_denoiser(model, sched, pred, lab, cfg, model.num_classes)
        cb = None
        if snapshots is not None and start == 0:
            cb = lambda i, x, x0: snapshots.append((i, x.float().cpu(), x0.float().cpu()))
        with autocast(torch.device(device), precision):
            x = run_sampler(sampler, denoise, sched, noise(), ts, noise, eta, cb)
        out.append(x.float().clamp(-1, 1).cpu())
        bar.update(len(idx))
    bar.close()
    return torch.cat(out)


def generate_from_checkpoint(ck, n, device, sampler=None, steps=None, eta=0.0, start=None, noise=0.0, labels=None,
                             cfg=None, seed=0, batch=SAMPLE_BATCH, precision="fp32", ema=True, progress=True, snapshots=None,
                             spacing=None):
    """n images in [-1, 1] from any checkpoint of this project, and a short description with the NFE.
    DDPM: one of SAMPLERS (default DEFAULT_SAMPLER, DEFAULT_STEPS) over `steps` timesteps placed by
    `spacing` (default: the sampler's own); zoom: naive|improved (default naive) from `start`."""
    model = model_from_checkpoint(ck, ema=ema, device=device)
    if ck["kind"] == "zoom":
        from zoom import ZOOM_SAMPLERS, generate_zoom
        sampler = sampler or "naive"
        if sampler not in ZOOM_SAMPLERS:
            raise UserError(f"'{sampler}' is a DDPM sampler; a zoom checkpoint takes --sampler naive or improved")
        if cfg is not None or eta or spacing or steps is not None:
            raise UserError("--cfg, --eta, --spacing and --steps are DDPM options; a zoom checkpoint walks its own T "
                            "steps from --start (add --noise for variety)")
        start = start or "bank"
        obj = ck["objective"]
        x = generate_zoom(model, obj["stats"], obj["T"], obj["mode"], n, device, start, sampler, noise, labels, seed,
                          batch, progress=progress, snapshots=snapshots, precision=precision)
        return x, dict(sampler=sampler, start=start, noise=noise, nfe=obj["T"])
    sampler, steps = sampler or DEFAULT_SAMPLER, steps or DEFAULT_STEPS
    if start is not None or noise:
        raise UserError("--start and --noise are Cold Zoom options; a DDPM checkpoint starts from Gaussian noise")
    if eta and sampler != "ddim":
        raise UserError(f"--eta is DDIM's; {sampler} fixes its own noise (use --sampler ddim --eta {eta})")
    if cfg is not None and not ck.get("class_names"):
        raise UserError("--cfg needs a class-conditional checkpoint (trained with --cond); this one is unconditional")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}' for a DDPM checkpoint; choose one of {', '.join(SAMPLERS)}")
    spacing = spacing or default_spacing(sampler)
    sched = schedule_of(ck)
    ts = timesteps_for(sched, steps, spacing)  # checks the spacing before any work
    x = generate_ddpm(model, sched, ck["args"]["pred"], n, device, sampler, steps, eta, labels, cfg, seed, batch,
                      precision, progress=progress, snapshots=snapshots, spacing=spacing)
    nfe = len(ts) * (2 if cfg is not None and labels is not None and cfg != 1 else 1)
    return x, dict(sampler=sampler, steps=steps, spacing=spacing, eta=eta, cfg=cfg, nfe=nfe)


def schedule_of(ck):
    a = ck["args"]
    return Schedule.make(a["schedule"], a["T"])


def parse_labels(text, n, ck):
    classes = ck.get("class_names") or []
    if text is None:
        return (torch.arange(n) % len(classes)) if classes else None
    if not classes:
        raise UserError("--labels given, but this checkpoint is unconditional (trained without --cond)")
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--labels '{text}': give comma-separated class indices, e.g. 0,1")
    bad = [v for v in vals if not 0 <= v < len(classes)]
    if bad:
        raise UserError(f"--labels {bad}: classes are 0..{len(classes) - 1} ({', '.join(classes)})")
    return torch.tensor(vals).repeat((n + len(vals) - 1) // len(vals))[:n]


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


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a training run's ckpt.pt")
    p.add_argument("--n", type=POSITIVE_INT, default=64, help="number of images")
    p.add_argument("--sampler", default=None,
                   help=f"DDPM: {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER}); zoom: naive (default), improved")
    p.add_argument("--steps", type=POSITIVE_INT, default=None, help=f"sampling steps = NFE, x2 with CFG (default {DEFAULT_STEPS})")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="where the steps sit: uniform in t, or karras (dense at low noise); default: karras for dpmpp*, else uniform")
    p.add_argument("--eta", type=NONNEG, default=0.0, help="DDIM noise (0 deterministic, 1 = ancestral)")
    p.add_argument("--cfg", type=FINITE, default=None, help="classifier-free guidance scale (0 = unconditional, 1 = conditional)")
    p.add_argument("--labels", default=None, help="comma-separated class indices, cycled (default: all classes in turn)")
    p.add_argument("--start", default=None, help="zoom only: start state hist, single, bank (default) or gmm")
    p.add_argument("--noise", type=NONNEG, default=0.0, help="zoom only: std of noise injected while sampling")
    p.add_argument("--batch", type=POSITIVE_INT, default=SAMPLE_BATCH, help="images per network call")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--progression", action="store_true", help="also write progression.png (x_t and predicted x0 over time)")
    add_run_args(p, "output folder (default <run>/samples_<sampler><steps>)")
    args = p.parse_args()
    run_cli(lambda: _main(args))


def _main(args):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    set_threads()
    setup_device(device)
    print(describe(device, precision))
    ck = load_checkpoint(args.ckpt)
    if args.n < 1 or (args.steps is not None and args.steps < 1):
        raise UserError("--n and --steps must be positive")
    zoom = ck["kind"] == "zoom"
    sampler = args.sampler
    labels = parse_labels(args.labels, args.n, ck)
    snaps = [] if args.progression else None
    name = (f"{args.sampler or 'naive'}_{args.start or 'bank'}" if zoom else
            f"{args.sampler or DEFAULT_SAMPLER}{args.steps or DEFAULT_STEPS}")
    out = ensure_writable(args.out or os.path.join(os.path.dirname(args.ckpt), f"samples_{name}"), "--out")
    t0 = time.time()
    x, info = generate_from_checkpoint(ck, args.n, device, sampler, args.steps, args.eta, args.start, args.noise, labels,
                                       args.cfg, args.seed, args.batch, precision, ema=not args.raw, snapshots=snaps,
                                       spacing=args.spacing)
    dt = time.time() - t0
    written = save_outputs(x, out, snaps)
    what = f"start {info['start']}" if zoom else f"{info['steps']} steps"
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
