"""The two forward processes: Gaussian noising (DDPM) and the Cold Zoom degradation.

Gaussian: β schedules (linear, Ho et al. 2020; cosine, Nichol & Dhariwal 2021 eq. 17; sigmoid,
Jabri et al. 2022), and the closed forms built on them. Notation as in Ho et al.: α_t = 1 − β_t,
ᾱ_t = Π α_s, q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (eq. 4), the posterior q(x_{t−1} | x_t, x_0)
(eqs. 6–7). Tables are float64 and indexed by integer t in [0, T); t = 0 is the least noisy step.

Zoom: D(x, s) crops the central (N − s)² window and resizes it back to N × N (Cold Diffusion,
Bansal et al. 2022, with a zoom-in degradation).
"""
import math

import torch

PREDICTIONS = ("eps", "x0", "v")


def make_betas(kind, T, beta_start=1e-4, beta_end=0.02):
    if kind == "linear":  # Ho et al.: 1e-4..0.02 at T=1000; rescaled so other T keep the same ᾱ_T.
        scale = 1000.0 / T
        return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64).clamp(max=0.999)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    if kind == "cosine":  # ᾱ(u) = cos²((u + s) / (1 + s) · π/2), normalised to ᾱ(0) = 1
        s = 0.008
        abar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    elif kind == "sigmoid":  # ᾱ(u) = (σ(end/τ) − σ((u (end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ))
        start, end, tau = -3.0, 3.0, 1.0
        lo, hi = (torch.sigmoid(torch.tensor(v / tau, dtype=torch.float64)) for v in (start, end))
        abar = ((hi - torch.sigmoid((u * (end - start) + start) / tau)) / (hi - lo)).clamp(min=1e-9)
    else:
        raise ValueError(f"unknown schedule '{kind}'; choose linear, cosine or sigmoid")
    abar = abar / abar[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # β_t = 1 − ᾱ_t / ᾱ_{t−1}


class Schedule:
    """Everything derived from β_1..β_T. Methods take integer timesteps t (B,) on any device."""

    def __init__(self, betas):
        self.betas = betas.double()
        self.T = len(betas)
        self.alphas = 1 - self.betas
        self.abar = torch.cumprod(self.alphas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, β̃_t), Ho et al. eq. 7.
        self.post_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        # β̃_0 = 0: clip the log to β̃_1 (to β_0 for a one-step schedule, whose only step returns the mean)
        self.post_logvar = torch.log(torch.cat([self.post_var[1:2], self.post_var[1:]]) if self.T > 1 else self.betas)
        self.post_coef_x0 = self.betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.post_coef_xt = (1 - self.abar_prev) * self.alphas.sqrt() / (1 - self.abar)
        # What a step reads, by name: computed once in float64, kept as float32 on each device that asks (_at).
        self.tables = {"snr": self.abar / (1 - self.abar), "alpha": self.abar.sqrt(), "sigma": (1 - self.abar).sqrt(),
                       "post_coef_x0": self.post_coef_x0, "post_coef_xt": self.post_coef_xt,
                       "post_logvar": self.post_logvar, "log_beta": torch.log(self.betas)}
        self._on_device = {}

    @classmethod
    def make(cls, kind="linear", T=1000):
        return cls(make_betas(kind, T))

    @classmethod
    def respaced(cls, base, timesteps):
        """The schedule that jumps between the given (increasing) original timesteps (Nichol & Dhariwal
        sec. 4): β'_i = 1 − ᾱ_{t_i} / ᾱ_{t_{i−1}}."""
        abar = base.abar[timesteps]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return cls(1 - abar / prev)

    def snr(self, t=None):
        """SNR(t) = ᾱ_t / (1 − ᾱ_t)."""
        return self.tables["snr"] if t is None else self._at("snr", t, t)

    def _at(self, name, t, like):
        """Table `name` at t as float32 on `like`'s device, shaped to broadcast over it. Indexed where t lives, in a
        copy of the table made on that device the first time: a training step neither reads t back to the host nor
        copies a table to the device, either of which would stall a GPU every step."""
        key = (name, t.device)
        if key not in self._on_device:
            self._on_device[key] = self.tables[name].to(device=t.device, dtype=torch.float32)
        return self._on_device[key][t].to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def alpha_sigma(self, t, like):
        """(√ᾱ_t, √(1 − ᾱ_t)): x_t = alpha x_0 + sigma ε."""
        return self._at("alpha", t, like), self._at("sigma", t, like)

    def q_sample(self, x0, t, noise):
        """x_t ~ q(x_t | x_0), Ho et al. eq. 4."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def posterior(self, x0, xt, t):
        """Mean and log-variance of q(x_{t-1} | x_t, x_0), Ho et al. eq. 7."""
        mean = self._at("post_coef_x0", t, xt) * x0 + self._at("post_coef_xt", t, xt) * xt
        return mean, self._at("post_logvar", t, xt)

    # What the network predicts, and back. v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022, sec. 4).
    def target(self, pred, x0, noise, t):
        if pred == "eps":
            return noise
        if pred == "x0":
            return x0
        if pred == "v":
            alpha, sigma = self.alpha_sigma(t, x0)
            return alpha * noise - sigma * x0
        raise ValueError(f"unknown prediction '{pred}'; choose one of {', '.join(PREDICTIONS)}")

    def x0_eps(self, pred, out, xt, t, clip=False):
        """The network output `out` (a `pred`) as (x0, ε); x0 optionally clipped to [-1, 1], ε then
        recomputed from it so that both describe the same x_t."""
        alpha, sigma = self.alpha_sigma(t, xt)
        if pred == "eps":
            x0 = (xt - sigma * out) / alpha
        elif pred == "x0":
            x0 = out
        elif pred == "v":
            x0 = alpha * xt - sigma * out
        else:
            raise ValueError(f"unknown prediction '{pred}'; choose one of {', '.join(PREDICTIONS)}")
        if clip:
            x0 = x0.clamp(-1, 1)
        return x0, (xt - alpha * x0) / sigma

    def learned_logvar(self, var_out, t, like):
        """Learned variance (Nichol & Dhariwal eq. 15): var_out in [-1, 1] interpolates log β_t and log β̃_t."""
        frac = (var_out + 1) / 2
        return frac * self._at("log_beta", t, like) + (1 - frac) * self._at("post_logvar", t, like)


def zoom_degrade(x, s, mode="nearest"):
    """D(x, s): crop the central (N−s)×(N−s) window (⌈s/2⌉ px off the top-left, ⌊s/2⌋ off the
    bottom-right) and resize it back to N×N as F.interpolate does (align_corners=False), for a batch
    with one s per image, as gathers from a sampling grid. D(x, 0) = x exactly."""
    n = x.shape[-1]
    s = torch.as_tensor(s, device=x.device).long().expand(x.shape[0])
    lo = (s + 1) // 2  # first kept index
    size = (n - s).to(torch.float32)  # kept window length
    scale = (size / n)[:, None]  # computed as F.interpolate does, so results match it bit for bit
    i = torch.arange(n, device=x.device, dtype=torch.float32)[None]

    def take(rows, cols):  # x[b, :, lo + rows[b], lo + cols[b]]
        r = (lo[:, None] + rows)[:, None, :, None].expand(-1, x.shape[1], n, n)
        c = (lo[:, None] + cols)[:, None, None, :].expand(-1, x.shape[1], n, n)
        return x.gather(2, r).gather(3, c)

    if mode == "nearest":
        idx = torch.floor(i * scale).long()
        return take(idx, idx)
    if mode == "bilinear":
        src = (scale * (i + 0.5) - 0.5).clamp(min=0)  # source coordinate of output pixel i
        i0 = torch.floor(src).long()
        i1 = torch.minimum(i0 + 1, (size.long() - 1)[:, None])
        w = (src - i0).to(x.dtype)
        wr, wc = w[:, None, :, None], w[:, None, None, :]
        top = take(i0, i0) * (1 - wc) + take(i0, i1) * wc
        bottom = take(i1, i0) * (1 - wc) + take(i1, i1) * wc
        return torch.where((s == 0)[:, None, None, None], x, top * (1 - wr) + bottom * wr)
    raise ValueError(f"unknown zoom interpolation '{mode}'; choose nearest or bilinear")
