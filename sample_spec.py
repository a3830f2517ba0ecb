"""Sampling a checkpoint: its stored defaults and the user's flags resolve once into a SampleSpec, which
`generate_from_checkpoint` hands to the kernel's sampler (generate.py). Needs only the checkpoint: the data's
Gaussian and the zoom start states travel in it. For sample.py, fid.py and bench.py."""
import dataclasses
import sys

import torch

from checkpoint import data_gaussian, model_from_checkpoint, schedule_of
from cli import UserError
from data import to_model
from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, ZOOM_SAMPLERS, default_spacing, generate_ddpm, generate_zoom
from recipes import sampling_defaults
from samplers import SAMPLERS, SPACINGS, timesteps_for
from zoom import STARTS


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How to sample one checkpoint, every default resolved. DDPM: sampler, steps, spacing, eta (DDIM), cfg, the
    data's Gaussian below gauss_snr (a mixture with gauss_mix), clip, init_snr (SDEdit starts). Zoom: sampler,
    start, noise. ema: the averaged weights, else the raw ones."""
    kind: str
    sampler: str
    steps: int = 0
    spacing: str = "uniform"
    eta: float = 0.0
    cfg: float = None
    gauss_snr: float = 0.0
    gauss_mix: bool = False
    clip: bool = True
    init_snr: float = None
    start: str = None
    noise: float = 0.0
    ema: bool = True


def checkpoint_sampling(ck):
    """(sampler, steps) a checkpoint samples with by default: a distilled student names its own."""
    own = ck.get("objective") or {}
    return own.get("sampler", DEFAULT_SAMPLER), own.get("steps", DEFAULT_STEPS)


def resolve_spec(ck, sampler=None, steps=None, spacing=None, eta=0.0, cfg=None, gauss_snr=None, gauss_mix=None,
                 clip=None, init_snr=None, start=None, noise=0.0, ema=True):
    """The flags (None: not given) over the checkpoint's own defaults and its data's (recipes.py). Flags that do not
    apply to the checkpoint's kind are refused here, before any work."""
    if ck["kind"] == "zoom":
        sampler, start = sampler or "naive", start or "bank"
        if sampler not in ZOOM_SAMPLERS:
            raise UserError(f"'{sampler}' is a DDPM sampler; a zoom checkpoint takes --sampler naive or improved")
        if start not in STARTS:
            raise UserError(f"unknown start state '{start}'; choose one of {', '.join(STARTS)}")
        if (cfg is not None or eta or spacing or steps is not None or gauss_snr or clip is not None
                or init_snr is not None or gauss_mix is not None):
            raise UserError("--cfg, --eta, --spacing, --steps, --gauss-snr, --gauss-mix, --(no-)clip and --init are DDPM "
                            "options; a zoom checkpoint walks its own T steps from --start (add --noise for variety)")
        return SampleSpec("zoom", sampler, ck["objective"]["T"], start=start, noise=noise, ema=ema)
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
    student = ck.get("objective") or {}
    own = sampling_defaults(ck["args"]["data"], bool(ck["args"].get("cond")))
    if student.get("method") == "consistency" or sampler == "consistency":  # its first call is at pure noise
        own.pop("gauss_snr", None)
    if student.get("method") == "consistency" and sampler == student.get("sampler"):
        own.update({k: student[k] for k in ("spacing", "clip") if k in student})
    spacing = spacing or own.get("spacing") or default_spacing(sampler)
    if spacing not in SPACINGS:
        raise UserError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    if student.get("method") == "consistency" and sampler == student.get("sampler"):  # trained at its levels only
        sched = schedule_of(ck)
        trained = timesteps_for(sched, student["steps"], "trailing").tolist()
        if not set(timesteps_for(sched, steps, spacing).tolist()) <= set(trained):
            print(f"warning: this student learned levels {trained} only; {steps} {spacing} steps visit others, where "
                  f"it was never trained (use --steps {student['steps']}, or fewer that share its levels)", file=sys.stderr)
    gauss_snr = own.get("gauss_snr", 0.0) if gauss_snr is None else gauss_snr
    gauss_mix = bool(own.get("gauss_mix")) if gauss_mix is None else gauss_mix
    return SampleSpec("ddpm", sampler, steps, spacing, eta, cfg, gauss_snr, gauss_mix and gauss_snr > 0,
                      own.get("clip", True) if clip is None else clip, init_snr, ema=ema)


def generate_from_checkpoint(ck, spec, n, device, labels=None, seed=0, batch=None, precision="fp32", progress=True,
                             snapshots=None, init=None):
    """n images in [-1, 1] from any checkpoint of this project sampled as `spec` says, and what made them (a card's
    fields, with the NFE). init: uint8 images (N, C, H, W); image k starts from init[k mod N] noised to SNR
    spec.init_snr (SDEdit)."""
    model = model_from_checkpoint(ck, ema=spec.ema, device=device)
    if spec.kind == "zoom":
        obj = ck["objective"]
        x = generate_zoom(model, obj["stats"], obj["T"], obj["mode"], n, device, spec.start, spec.sampler, spec.noise,
                          labels, seed, batch, progress=progress, snapshots=snapshots, precision=precision)
        return x, dict(sampler=spec.sampler, start=spec.start, noise=spec.noise, nfe=obj["T"])
    sched = schedule_of(ck)
    ts = timesteps_for(sched, spec.steps, spec.spacing)
    if init is not None:
        init = check_init(init, model, sched.snr()[ts], spec.init_snr, n)
        ts = ts[sched.snr()[ts] >= spec.init_snr]
    gauss = data_gaussian(ck, spec.gauss_mix) if spec.gauss_snr else None
    x = generate_ddpm(model, sched, ck["args"]["pred"], n, device, spec.sampler, spec.steps, spec.eta, labels, spec.cfg,
                      seed, batch, precision, progress=progress, snapshots=snapshots, spacing=spec.spacing, gauss=gauss,
                      gauss_snr=spec.gauss_snr, clip=spec.clip, init=init, init_snr=spec.init_snr)
    guided = spec.cfg is not None and labels is not None and spec.cfg != 1  # two network calls per step
    calls = int((sched.snr()[ts] >= spec.gauss_snr).sum())  # the closed-form levels call no network
    info = dict(sampler=spec.sampler, steps=spec.steps, spacing=spec.spacing, eta=spec.eta, cfg=spec.cfg,
                nfe=calls * (2 if guided else 1))
    if init is not None:
        info.update(init_snr=spec.init_snr, init_levels=len(ts))
    if not spec.clip:
        info["clip"] = False
    if gauss is not None and "mix_weight" in gauss and not ck["args"].get("cond"):
        info["gauss_mix"] = len(gauss["mix_weight"])
    return x, dict(info, gauss_snr=spec.gauss_snr) if spec.gauss_snr else info


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
