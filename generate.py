"""Images from a network: the kernel's samplers run in batches, on a device, under autocast, with per-image
seeds (image i gets the noise of (seed, i) whatever the batch), for the training loop's progress grids and,
through sample_spec.py, for sample.py, fid.py and bench.py."""
import torch
from tqdm import tqdm

from machine import autocast
from samplers import SAMPLERS, PerImageNoise, make_denoiser, sample_cold, timesteps_for
from schedules import zoom_degrade
from zoom import start_states

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
    """karras for the DPM-Solver++ pair (better at few steps); uniform, as in their papers, for ancestral and DDIM;
    trailing for consistency sampling, which never calls the network at t = 0 (its output there is its input)."""
    return "karras" if sampler.startswith("dpmpp") else "trailing" if sampler == "consistency" else "uniform"


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
    ts = timesteps_for(sched, steps, spacing or default_spacing(sampler))
    if init is not None:
        ts = ts[sched.snr()[ts] >= init_snr]
        a = sched.abar[ts[-1]].item()
    extra = dict(eta=eta) if sampler == "ddim" else {}
    device = torch.device(device)

    def one_batch(idx, start):
        noise = PerImageNoise(seed, idx, (c, size, size), device, calls=len(ts) + 1)  # the start and each step
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
        noise = PerImageNoise(seed + 7, idx, (c, size, size), device, calls=T if noise_std else 1)
        restore = lambda xs, s: model(xs, torch.full((xs.shape[0],), s, device=device), lab).float().clamp(-1, 1)  # noqa: E731
        callback = _snapshot(snapshots, b0)
        if callback:
            snapshots.append((T, x.float().cpu(), x.float().cpu()))
        with autocast(device, precision):
            return sample_cold(restore, degrade, x, T, sampler == "improved", noise_std, noise, callback)
    return _in_batches(n, sample_batch(device, batch), first_index, progress, f"zoom {sampler} from {start}", one_batch)

