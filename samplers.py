"""Samplers: small pure functions that turn a start state into images.

DDPM samplers take a denoiser d(x, t) -> (x0, ε, var_out) (see `make_denoiser`), a Schedule, the
start x_T, increasing integer `timesteps` to visit (all T, or a respacing), and `noise()`, which
returns fresh Gaussian noise shaped like x. They walk the timesteps from the last to the first and
return x_0. `callback(i, x, x0)` sees every step (for progression pictures).

Cold Diffusion samplers take a restorer R(x_s, s) -> x0 and the degradation D(x, s) instead.
"""
import functools
import math

import torch

from gaussian import gaussian_x0
from schedules import Schedule

SPACINGS = ("uniform", "karras", "trailing")


class PerImageNoise:
    """Gaussian noise where image i's draws depend only on (seed, i), never on the batch it is in. One draw per
    image covers `calls` calls (a sampler's whole run), not one launch per image per step."""

    BUFFER = 2 ** 26  # numbers held at once (256 MB of float32)

    def __init__(self, seed, indices, shape, device, calls=1):
        # Generators on the device: drawing on the host and copying would cost a transfer per step on a GPU.
        self.gens = [torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]
        self.shape, self.device = shape, device
        n = math.prod(shape)
        # The CPU's generator makes the same numbers in one draw as in several only for sizes that are multiples of
        # 16 (its normals come in blocks of 16): other sizes draw a call at a time, so that images never change.
        exact = torch.device(device).type != "cpu" or n % 16 == 0
        self.chunk = max(1, min(calls, self.BUFFER // max(1, n * len(self.gens)))) if exact else 1
        self.buf, self.used = None, 0

    def __call__(self):
        if self.buf is None or self.used == self.chunk:
            self.buf = torch.stack([torch.randn((self.chunk, *self.shape), generator=g, device=self.device)
                                    for g in self.gens])
            self.used = 0
        self.used += 1
        return self.buf[:, self.used - 1]


def timesteps_for(sched, steps, spacing="uniform"):
    """`steps` increasing integer timesteps in [0, T) (all T when steps >= T).
    uniform: evenly spaced in t (DDIM, Song et al. 2021).
    trailing: the `steps` highest of steps + 1 uniform ones, from T−1 down, so that the last step lands on the
    data from the lowest (Lin et al. 2024, table 2) and no call is spent at t = 0.
    karras: T−1 (pure noise), then evenly spaced in σ^(1/ρ), ρ = 7, from σ = min(σ_T, 80) down, with
    σ = √((1−ᾱ)/ᾱ) (Karras et al. 2022, eq. 5; a cosine schedule's σ_T is ~2e4, and steps up there are
    wasted). Points are rounded to the nearest trained t; more are drawn until `steps` are distinct."""
    T = sched.T
    if steps >= T:
        return torch.arange(T)
    if spacing == "uniform":  # one step starts, like every other, from pure noise at T−1
        return torch.linspace(0, T - 1, steps).round().long().unique() if steps > 1 else torch.tensor([T - 1])
    if spacing == "trailing":
        return timesteps_for(sched, steps + 1, "uniform")[1:]
    if spacing != "karras":
        raise ValueError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    log_sigma = 0.5 * torch.log((1 - sched.abar) / sched.abar)  # increasing in t
    lo, hi = (log_sigma[0] / 7).exp(), (log_sigma[-1].clamp(max=math.log(80)) / 7).exp()
    for m in range(steps - 1, T):
        want = 7 * torch.log(torch.linspace(lo, hi, m, dtype=torch.float64))
        ts = torch.cat([(log_sigma[None, :] - want[:, None]).abs().argmin(1), torch.tensor([T - 1])]).unique()
        if len(ts) >= steps:
            return ts
    return timesteps_for(sched, steps, "uniform")  # too many steps to place distinctly this way


def sample_ancestral(denoise, sched, x, timesteps, noise, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on the respaced schedule of `timesteps`:
    x_{t−1} ~ q(x_{t−1} | x_t, x̂0) with variance β̃_t, or the learned one when the model has it."""
    sub = Schedule.respaced(sched, timesteps)
    for i in reversed(range(len(timesteps))):
        ti = torch.full((x.shape[0],), i, dtype=torch.long)
        x0, _, var_out = denoise(x, timesteps[i])
        mean, logvar = sub.posterior(x0, x, ti)
        if var_out is not None:
            logvar = sub.learned_logvar(var_out, ti, x)
        x = mean + (0.5 * logvar).exp() * noise() if i > 0 else mean
        if callback:
            callback(i, x, x0)
    return x


def sample_ddim(denoise, sched, x, timesteps, noise, eta=0.0, callback=None):
    """DDIM (Song et al. 2021, eq. 12): x_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev). η = 0 is deterministic, η = 1 is ancestral."""
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
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with the data prediction x̂0, λ = log(α/σ), h = λ_prev − λ:
        x_prev = (σ_prev/σ) x − α_prev (e^(−h) − 1) D,  D = x̂0 + (h / 2h_last)(x̂0 − x̂0_last)
    (D = x̂0 at the first step). eta = 1 is SDE-DPM-Solver++(2M) (Lu et al. 2022b, eq. 18, as in
    k-diffusion): the factors become (σ_prev/σ) e^(−h) and e^(−2h) − 1, plus σ_prev √(1 − e^(−2h)) z.
    The last step lands on x̂0 (σ = 0)."""
    abar = sched.abar[timesteps]
    alpha, sigma = abar.sqrt().tolist(), (1 - abar).sqrt().tolist()
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    x0_last, h_last = None, None
    for i in reversed(range(len(timesteps))):
        x0, _, _ = denoise(x, timesteps[i])
        if i == 0:
            x = x0
        else:
            h = lam[i - 1] - lam[i]
            d = x0 if x0_last is None else x0 + (h / (2 * h_last)) * (x0 - x0_last)
            x = (sigma[i - 1] / sigma[i]) * math.exp(-eta * h) * x - alpha[i - 1] * math.expm1(-(1 + eta) * h) * d
            if eta > 0:
                x = x + sigma[i - 1] * math.sqrt(-math.expm1(-2 * eta * h)) * noise()
            x0_last, h_last = x0, h
        if callback:
            callback(i, x, x0)
    return x


def sample_consistency(denoise, sched, x, timesteps, noise, callback=None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x̂0 = f(x, t) from the last timestep;
    then at each earlier one, noise x̂0 afresh to that level, x = √ᾱ_t x̂0 + √(1 − ᾱ_t) z, and map it back.
    One network call per timestep; on a plain diffusion model f is its one-shot x̂0 (blurry at few steps)."""
    for i in reversed(range(len(timesteps))):
        if i < len(timesteps) - 1:
            a = sched.abar[timesteps[i]].item()
            x = a ** 0.5 * x0 + (1 - a) ** 0.5 * noise()
        x0, _, _ = denoise(x, timesteps[i])
        if callback:
            callback(i, x, x0)
    return x0


# name -> sampler(denoise, sched, x, timesteps, noise, callback=None, [eta=] for ddim)
SAMPLERS = {"ancestral": sample_ancestral, "ddim": sample_ddim,
            "dpmpp2m": functools.partial(sample_dpmpp_2m, eta=0.0),
            "dpmpp2m_sde": functools.partial(sample_dpmpp_2m, eta=1.0), "consistency": sample_consistency}


def make_denoiser(model, sched, pred, labels=None, cfg=None, num_classes=0, clip=True, gauss=None, gauss_snr=0.0):
    """d(x, t) -> (x0, ε, var_out): the network's output as x0 (clipped to [-1, 1]) and ε (recomputed
    from the clipped x0), var_out = the learned-variance channels or None. With labels and a guidance
    scale w (Ho & Salimans 2022): out = out_null + w (out_cond − out_null); w = 0 is unconditional,
    w = 1 conditional (one network call). Levels with SNR < gauss_snr take the closed-form x̂0 of the data's
    Gaussian `gauss` (gaussian.py), the label's own where it holds one per class, and call no network. Those
    levels are not guided: the class Gaussian is already the exact conditional x̂0 of its model, and extrapolating
    it away from the pooled one (w > 1) pushes the images' colours past the data's."""
    def denoise(x, t):
        b, c = x.shape[:2]
        if gauss is not None and sched.snr()[int(t)] < gauss_snr:
            abar = sched.abar[int(t)].item()
            alpha, sigma = abar ** 0.5, (1 - abar) ** 0.5
            x0 = gaussian_x0(gauss, x, alpha, sigma, labels)
            x0 = x0.clamp(-1, 1) if clip else x0
            return x0, (x - alpha * x0) / sigma, None
        tt = torch.full((b,), int(t), device=x.device)
        if cfg is not None and labels is not None and cfg != 1.0:
            null = torch.full_like(labels, num_classes)
            cond, uncond = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float().chunk(2)
            out = torch.cat([uncond[:, :c] + cfg * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], dim=1)
        else:
            out = model(x, tt, labels).float()
        var_out = out[:, c:] if out.shape[1] == 2 * c else None
        x0, eps = sched.x0_eps(pred, out[:, :c], x, torch.full((b,), int(t)), clip=clip)
        return x0, eps, var_out
    return denoise


def sample_cold(restore, degrade, x, T, improved=False, noise_std=0.0, noise=None, callback=None):
    """Cold Diffusion sampling (Bansal et al. 2022) from x_T, for s = T..1 with x̂0 = R(x_s, s):
        naive (Alg. 1):    x_{s−1} = D(x̂0, s−1)
        improved (Alg. 2): x_{s−1} = x_s − D(x̂0, s) + D(x̂0, s−1)
    noise_std > 0 adds noise_std · (s−1)/T · z after each step but the last (variety for a deterministic
    restorer)."""
    for s in range(T, 0, -1):
        x0 = restore(x, s)
        if improved:
            x = x - degrade(x0, s) + degrade(x0, s - 1)
        else:
            x = degrade(x0, s - 1)
        if noise_std > 0 and s > 1:
            x = x + noise_std * (s - 1) / T * noise()
        if callback:
            callback(s - 1, x, x0)
    return x
