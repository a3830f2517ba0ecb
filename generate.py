"""Images from a trained network: the kernel's samplers run in batches, on a device, under autocast,
with per-image seeds (image i gets the noise of (seed, i) whatever the batch), for sample.py, fid.py,
bench.py and the training loop's progress grids."""
import sys

import torch
from tqdm import tqdm

from checkpoint import model_from_checkpoint
from cli import UserError
from data import to_model
from gaussian import eigenbasis
from machine import autocast
from recipes import sampling_defaults
from samplers import SAMPLERS, SPACINGS, PerImageNoise, make_denoiser, sample_cold, timesteps_for
from schedules import Schedule, zoom_degrade
from zoom import STARTS, start_states

# The default: a stochastic second-order solver, few steps placed densely at low noise (RESULTS.md: quality vs NFE).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp2m_sde", 15
ZOOM_SAMPLERS = ("naive", "improved")
# Images per network call: 64 keeps a CPU's activations in cache; a GPU is launch-bound at 64 (one
# forward of the small 64 px UNet takes as long at 512 as at 64 on an H200). Results do not depend on it.
SAMPLE_BATCH, SAMPLE_BATCH_CUDA = 64, 512


def sample_batch(device, batch=None):
    """The batch asked for, else the device's default."""
    return batch or (SAMPLE_BATCH_CUDA if torch.device(device).type == "cuda" else SAMPLE_BATCH)


def default_spacing(sampler):
    """karras for the DPM-Solver++ pair (better at few steps); uniform, as in their papers, for ancestral and DDIM,
    and for consistency sampling (its 2-step level on a cosine schedule, t = T/2, is σ ≈ 1, near Song et al.'s
    0.821; karras puts its few levels near pure noise)."""
    return "karras" if sampler.startswith("dpmpp") else "uniform"


def sampler_timesteps(sched, sampler, steps, spacing):
    """The timesteps `sampler` visits in `steps` network calls. Consistency sampling never calls the network at
    t = 0 (its output there is its input): it takes the `steps` highest of steps + 1 levels."""
    if sampler == "consistency":
        ts = timesteps_for(sched, steps + 1, spacing)
        return ts[1:] if len(ts) > 1 else ts
    return timesteps_for(sched, steps, spacing)


def checkpoint_sampling(ck):
    """(sampler, steps) a checkpoint samples with by default: a distilled student names its own."""
    own = ck.get("objective") or {}
    return own.get("sampler", DEFAULT_SAMPLER), own.get("steps", DEFAULT_STEPS)


def student_sampling(ck, sampler):
    """A distilled student's own spacing and clipping when sampled with its own sampler, else {}."""
    own = ck.get("objective") or {}
    if own.get("method") != "consistency" or sampler != own.get("sampler"):
        return {}
    return {k: own[k] for k in ("spacing", "clip") if k in own}


def _in_batches(n, batch, first_index, progress, desc, one_batch):
    """one_batch(indices, start) -> images, for consecutive slices of n images; float32 on the CPU."""
    out = []
    bar = tqdm(total=n, disable=not progress, unit="img", desc=desc)
    for start in range(0, n, batch):
        idx = range(first_index + start, first_index + min(n, start + batch))
        out.append(one_batch(idx, start).float().clamp(-1, 1).cpu())
        bar.update(len(idx))
    bar.close()
    return torch.cat(out)


def _snapshot(snapshots, start):
    """A sampler callback that keeps (step, x, x0) of the first batch, or None."""
    if snapshots is None or start != 0:
        return None
    return lambda i, x, x0: snapshots.append((i, x.float().cpu(), x0.float().cpu()))


@torch.no_grad()
def generate_ddpm(model, sched, pred, n, device, sampler=None, steps=None, eta=0.0, labels=None, cfg=None, seed=0,
                  batch=None, precision="fp32", first_index=0, progress=False, snapshots=None, spacing=None,
                  gauss=None, gauss_snr=0.0, clip=True, init=None, init_snr=None):
    """n images in [-1, 1]. Image k starts from, and draws, the noise of (seed, first_index + k). Levels with
    SNR < gauss_snr take the closed-form x̂0 of the data's Gaussian `gauss` instead of the network. clip: clip
    every step's x̂0 to [-1, 1] (the images are clamped at the end either way). init: n images in [-1, 1] that
    image k starts from instead, noised to the first level with SNR >= init_snr, the sampler's levels above it
    skipped (SDEdit, Meng et al. 2022)."""
    model.eval()
    c, size = model.in_ch, model.size
    sampler, steps = sampler or DEFAULT_SAMPLER, steps or DEFAULT_STEPS
    ts = sampler_timesteps(sched, sampler, steps, spacing or default_spacing(sampler))
    if init is not None:
        ts = ts[sched.snr()[ts] >= init_snr]
        a = sched.abar[ts[-1]].item()
    extra = dict(eta=eta) if sampler == "ddim" else {}
    device = torch.device(device)

    def one_batch(idx, start):
        noise = PerImageNoise(seed, idx, (c, size, size), device)
        lab = None if labels is None else labels[start:start + len(idx)].to(device)
        denoise = make_denoiser(model, sched, pred, lab, cfg, model.num_classes, clip, gauss, gauss_snr)
        x = noise() if init is None else a ** 0.5 * init[start:start + len(idx)].to(device) + (1 - a) ** 0.5 * noise()
        with autocast(device, precision):
            return SAMPLERS[sampler](denoise, sched, x, ts, noise, callback=_snapshot(snapshots, start), **extra)
    return _in_batches(n, sample_batch(device, batch), first_index, progress, f"{sampler} {len(ts)} steps", one_batch)


@torch.no_grad()
def generate_zoom(model, stats, T, mode, n, device, start="bank", sampler="naive", noise_std=0.0, labels=None, seed=0,
                  batch=None, first_index=0, progress=False, snapshots=None, precision="fp32"):
    """n images in [-1, 1] by Cold Diffusion sampling from start states `start`."""
    model.eval()
    c, size = model.in_ch, model.size
    device = torch.device(device)
    degrade = lambda x, s: zoom_degrade(x, s, mode)  # noqa: E731

    def one_batch(idx, b0):
        lab = None if labels is None else labels[b0:b0 + len(idx)].to(device)
        x = start_states(stats, start, len(idx), c, size, mode, seed, idx[0], lab).to(device)
        noise = PerImageNoise(seed + 7, idx, (c, size, size), device)
        restore = lambda xs, s: model(xs, torch.full((xs.shape[0],), s, device=device), lab).float().clamp(-1, 1)  # noqa: E731
        callback = _snapshot(snapshots, b0)
        if callback:
            snapshots.append((T, x.float().cpu(), x.float().cpu()))
        with autocast(device, precision):
            return sample_cold(restore, degrade, x, T, sampler == "improved", noise_std, noise, callback)
    return _in_batches(n, sample_batch(device, batch), first_index, progress, f"zoom {sampler} from {start}", one_batch)


def schedule_of(ck):
    """The noise schedule a DDPM checkpoint trained with; for pred 'gauss' with its data's Gaussian."""
    a = ck["args"]
    prior = eigenbasis(ck["objective"]["gauss"]) if a.get("pred") == "gauss" else None
    return Schedule.make(a.get("schedule", "linear"), a.get("T", 1000), a.get("schedule_shift", 1.0), prior)


def data_gaussian(ck, mix=0):
    """The checkpoint's training data as a Gaussian (gaussian.py), or with mix > 1 as a mixture of that many:
    stored by training, or, for a checkpoint made before it was (or before a conditional model's stored one per
    class, or without that mixture), fitted to its data again."""
    stored = (ck.get("objective") or {}).get("gauss")
    cond = ck["args"].get("cond")
    has_mix = stored is not None and len(stored.get("mix_weight", ())) == mix
    if stored is not None and (not cond or "class_mean" in stored) and (mix <= 1 or has_mix):
        return stored if mix > 1 else _one_gaussian(stored)
    import argparse
    from data import DataError, data_from_args
    from gaussian import fit_gaussian
    a = {"download": False, "folds": None, "n_maps": 10000, **ck["args"]}
    try:
        data = data_from_args(argparse.Namespace(**a))
    except DataError as e:
        if stored is not None:  # the pooled Gaussian still serves; the label then waits for the network's levels
            if mix > 1 and not has_mix:
                print(f"warning: --gauss-mix {mix} needs the training data, which cannot be read ({e}); "
                      f"sampling with the checkpoint's single Gaussian", file=sys.stderr)
            return _one_gaussian(stored)
        raise UserError(f"--gauss-snr needs the training data's statistics, which this checkpoint does not hold, "
                        f"and its data cannot be read ({e})")
    return fit_gaussian(data.images, data.labels, data.num_classes if cond else 0, components=mix)


def _one_gaussian(stats):
    """The stats without their mixture, if they hold one."""
    return {k: v for k, v in stats.items() if not k.startswith("mix_")} if "mix_weight" in stats else stats


def generate_from_checkpoint(ck, n, device, sampler=None, steps=None, eta=0.0, start=None, noise=0.0, labels=None,
                             cfg=None, seed=0, batch=None, precision="fp32", ema=True, progress=True,
                             snapshots=None, spacing=None, gauss_snr=None, clip=None, init=None, init_snr=None,
                             gauss_mix=None):
    """n images in [-1, 1] from any checkpoint of this project, and what made them (with the NFE).
    Flags that do not apply to the checkpoint's kind are refused before any work. gauss_snr and clip None:
    the defaults for the checkpoint's data (recipes.py). init: uint8 images (N, C, H, W), image k of the n starting
    from init[k mod N] noised to SNR init_snr (generate_ddpm)."""
    model = model_from_checkpoint(ck, ema=ema, device=device)
    if ck["kind"] == "zoom":
        sampler, start = sampler or "naive", start or "bank"
        if sampler not in ZOOM_SAMPLERS:
            raise UserError(f"'{sampler}' is a DDPM sampler; a zoom checkpoint takes --sampler naive or improved")
        if start not in STARTS:
            raise UserError(f"unknown start state '{start}'; choose one of {', '.join(STARTS)}")
        if (cfg is not None or eta or spacing or steps is not None or gauss_snr or clip is not None or init is not None
                or gauss_mix is not None):
            raise UserError("--cfg, --eta, --spacing, --steps, --gauss-snr, --gauss-mix, --(no-)clip and --init are DDPM "
                            "options; a zoom checkpoint walks its own T steps from --start (add --noise for variety)")
        obj = ck["objective"]
        x = generate_zoom(model, obj["stats"], obj["T"], obj["mode"], n, device, start, sampler, noise, labels, seed,
                          batch, progress=progress, snapshots=snapshots, precision=precision)
        return x, dict(sampler=sampler, start=start, noise=noise, nfe=obj["T"])
    own_sampler, own_steps = checkpoint_sampling(ck)
    sampler, steps = sampler or own_sampler, steps or own_steps
    if start is not None or noise:
        raise UserError("--start and --noise are Cold Zoom options; a DDPM checkpoint starts from Gaussian noise")
    if eta and sampler != "ddim":
        raise UserError(f"--eta is DDIM's; {sampler} fixes its own noise (use --sampler ddim --eta {eta})")
    if cfg is not None and not ck.get("class_names"):
        raise UserError("--cfg needs a class-conditional checkpoint (trained with --cond); this one is unconditional")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}' for a DDPM checkpoint; choose one of {', '.join(SAMPLERS)}")
    student_own = student_sampling(ck, sampler)
    spacing = spacing or student_own.get("spacing") or default_spacing(sampler)
    if spacing not in SPACINGS:
        raise UserError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    own = sampling_defaults(ck["args"]["data"], bool(ck["args"].get("cond")))
    own.update(student_own)
    student = ck.get("objective") or {}
    if gauss_snr is None:  # a student's first call is at pure noise: it must stay the network's
        gauss_snr = 0.0 if sampler == "consistency" or student.get("method") == "consistency" else own.get("gauss_snr", 0.0)
    clip = own.get("clip", True) if clip is None else clip
    sched = schedule_of(ck)
    if student.get("target") in ("ode", "trajectory") and sampler == student.get("sampler"):  # trained at its levels only
        trained = timesteps_for(sched, student["steps"], "trailing").tolist()
        if not set(sampler_timesteps(sched, sampler, steps, spacing).tolist()) <= set(trained):
            print(f"warning: this student learned levels {trained} only; {steps} {spacing} steps visit others, where "
                  f"it was never trained (use --steps {student['steps']}, or fewer that share its levels)", file=sys.stderr)
    ts = sampler_timesteps(sched, sampler, steps, spacing)
    if init is not None:
        init = check_init(init, model, sched.snr()[ts], init_snr, n)
        ts = ts[sched.snr()[ts] >= init_snr]
    trained_from = ck["args"].get("train_snr_min", 0.0)  # levels an --init start skips are never asked of it
    untrained = ((sched.snr()[ts] < trained_from) & (sched.snr()[ts] >= gauss_snr)).sum()
    if untrained:
        print(f"warning: this model was trained only where SNR >= {trained_from:g}; --gauss-snr {gauss_snr:g} gives it "
              f"{int(untrained)} levels below, where it never learned (use --gauss-snr {trained_from:g})", file=sys.stderr)
    gauss_mix = own.get("gauss_mix", 0) if gauss_mix is None else gauss_mix
    gauss = data_gaussian(ck, gauss_mix) if gauss_snr else None
    x = generate_ddpm(model, sched, ck["args"]["pred"], n, device, sampler, steps, eta, labels, cfg, seed, batch,
                      precision, progress=progress, snapshots=snapshots, spacing=spacing, gauss=gauss, gauss_snr=gauss_snr,
                      clip=clip, init=init, init_snr=init_snr)
    guided = cfg is not None and labels is not None and cfg != 1  # two network calls per step
    calls = int((sched.snr()[ts] >= gauss_snr).sum())  # the closed-form levels call no network
    info = dict(sampler=sampler, steps=steps, spacing=spacing, eta=eta, cfg=cfg, nfe=calls * (2 if guided else 1))
    if init is not None:
        info.update(init_snr=init_snr, init_levels=len(ts))
    if not clip:
        info["clip"] = False
    if gauss is not None and "mix_weight" in gauss and not ck["args"].get("cond"):
        info["gauss_mix"] = gauss_mix
    return x, dict(info, gauss_snr=gauss_snr) if gauss_snr else info


def check_init(init, model, level_snrs, init_snr, n):
    """--init's uint8 images as n starting images in [-1, 1] (cycled), after checking them against the model and
    the sampler's levels."""
    if init_snr is None:
        raise UserError("--init needs --init-snr: how noisy the start is (e.g. 0.1 keeps the layout, 3 only the details)")
    if tuple(init.shape[1:]) != (model.in_ch, model.size, model.size):
        raise UserError(f"--init images are {tuple(init.shape[1:])}, the model makes "
                        f"{(model.in_ch, model.size, model.size)}; give a split of the data it was trained on")
    if not (level_snrs >= init_snr).any():
        raise UserError(f"--init-snr {init_snr}: no sampler level is that clean (the cleanest has SNR "
                        f"{level_snrs.max().item():.3g}); give a lower one")
    return to_model(init[torch.arange(n) % len(init)])


def parse_labels(text, n, ck):
    """--labels '0,1' -> n labels cycling through them; none given: every class in turn (None if unconditional)."""
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
