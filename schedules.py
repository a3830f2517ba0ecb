"""Noise schedules and the closed forms of the DDPM forward process (Ho et al. 2020; cosine from
Nichol & Dhariwal 2021; sigmoid from Jabri et al. 2022), plus the Cold Zoom degradation D(x, s).
All tables are float64 and indexed by integer t in [0, T); t = 0 is the least noisy step."""
import math

import torch
import torch.nn.functional as F


def make_betas(kind, T, beta_start=1e-4, beta_end=0.02):
    if kind == "linear":  # Ho et al.: 1e-4..0.02 at T=1000; rescaled so other T keep the same ᾱ_T.
        scale = 1000.0 / T
        return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64).clamp(max=0.999)
    if kind == "cosine":
        s = 0.008
        f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        abar = f(torch.arange(T + 1, dtype=torch.float64)) / f(torch.tensor(0.0, dtype=torch.float64))
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if kind == "sigmoid":
        start, end, tau = -3.0, 3.0, 1.0
        v = lambda u: torch.sigmoid(torch.tensor(u, dtype=torch.float64) / tau)
        u = torch.arange(T + 1, dtype=torch.float64) / T
        abar = (-torch.sigmoid((u * (end - start) + start) / tau) + v(end)) / (v(end) - v(start))
        abar = abar.clamp(min=1e-9)
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule '{kind}'; choose linear, cosine or sigmoid")


class Schedule:
    """Everything derived from β_1..β_T. Methods take integer timesteps t (B,) on any device."""

    def __init__(self, betas):
        self.betas = betas.double()
        self.T = len(betas)
        self.alphas = 1 - self.betas
        self.abar = torch.cumprod(self.alphas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, var)
        self.post_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        self.post_logvar = torch.log(torch.cat([self.post_var[1:2], self.post_var[1:]]))  # var_0 = 0: clip the log
        self.post_coef_x0 = self.betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.post_coef_xt = (1 - self.abar_prev) * self.alphas.sqrt() / (1 - self.abar)

    @classmethod
    def make(cls, kind="linear", T=1000):
        return cls(make_betas(kind, T))

    @classmethod
    def respaced(cls, base, timesteps):
        """The schedule that jumps between the given (increasing) original timesteps."""
        abar = base.abar[timesteps]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return cls(1 - abar / prev)

    def snr(self, t=None):
        s = self.abar / (1 - self.abar)
        return s if t is None else s.to(t.device)[t]

    def _at(self, table, t, x):
        """table[t] as float32 on x's device, shaped to broadcast over x. Indexed where t lives: reading t
        back to the host would stall a GPU every step."""
        return table.to(t.device)[t].to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0, t, noise):
        return self._at(self.abar.sqrt(), t, x0) * x0 + self._at((1 - self.abar).sqrt(), t, x0) * noise

    def posterior(self, x0, xt, t):
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.post_coef_x0, t, xt) * x0 + self._at(self.post_coef_xt, t, xt) * xt
        return mean, self._at(self.post_logvar, t, xt)

    # Conversions between what the network predicts and (x0, eps). v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho).
    def x0_eps(self, pred_type, out, xt, t, clip=False):
        a, s = self._at(self.abar.sqrt(), t, xt), self._at((1 - self.abar).sqrt(), t, xt)
        if pred_type == "eps":
            x0 = (xt - s * out) / a
        elif pred_type == "x0":
            x0 = out
        elif pred_type == "v":
            x0 = a * xt - s * out
        else:
            raise ValueError(f"unknown prediction type '{pred_type}'")
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (xt - a * x0) / s  # recomputed so x0 and eps always describe the same x_t
        return x0, eps

    def target(self, pred_type, x0, noise, t):
        if pred_type == "eps":
            return noise
        if pred_type == "x0":
            return x0
        return self._at(self.abar.sqrt(), t, x0) * noise - self._at((1 - self.abar).sqrt(), t, x0) * x0

    def model_logvar(self, v, t, x):
        """Learned variance (improved DDPM): v in [-1, 1] interpolates log β_t and log β̃_t."""
        frac = (v + 1) / 2
        return frac * self._at(torch.log(self.betas), t, x) + (1 - frac) * self._at(self.post_logvar, t, x)


# ---- Cold Zoom degradation -------------------------------------------------------------------

def zoom_degrade(x, s, mode="nearest"):
    """D(x, s): crop the central (N-s)x(N-s) window (⌈s/2⌉ px off the top-left, ⌊s/2⌋ off the
    bottom-right) and resize it back to NxN. Vectorised over a batch with per-sample s, as one
    gather of a precomputed sampling grid; D(x, 0) = x exactly."""
    n = x.shape[-1]
    s = torch.as_tensor(s, device=x.device).long().expand(x.shape[0])
    lo = (s + 1) // 2  # first kept index
    size = (n - s).to(torch.float32)  # kept window length
    i = torch.arange(n, device=x.device, dtype=torch.float32)
    # Source coordinate of output pixel i, with align_corners=False semantics (as F.interpolate).
    scale = (size / n)[:, None]  # computed as F.interpolate does, so results match it bit for bit
    src = scale * (i[None] + 0.5) - 0.5  # (B, N) in window coords
    if mode == "nearest":
        idx = lo[:, None] + torch.floor(i[None] * scale).long()  # F.interpolate 'nearest'
        rows = idx[:, None, :, None].expand(-1, x.shape[1], n, n)
        cols = idx[:, None, None, :].expand(-1, x.shape[1], n, n)
        return x.gather(2, rows).gather(3, cols)
    if mode == "bilinear":
        src = src.clamp(min=0)
        i0 = torch.floor(src).long()
        i1 = torch.minimum(i0 + 1, (size.long() - 1)[:, None])
        w = (src - i0).to(x.dtype)
        i0, i1 = i0 + lo[:, None], i1 + lo[:, None]

        def take(rows, cols):
            r = rows[:, None, :, None].expand(-1, x.shape[1], n, n)
            c = cols[:, None, None, :].expand(-1, x.shape[1], n, n)
            return x.gather(2, r).gather(3, c)

        wr, wc = w[:, None, :, None], w[:, None, None, :]
        top = take(i0, i0) * (1 - wc) + take(i0, i1) * wc
        bot = take(i1, i0) * (1 - wc) + take(i1, i1) * wc
        out = top * (1 - wr) + bot * wr
        return torch.where((s == 0)[:, None, None, None], x, out)
    raise ValueError(f"unknown zoom interpolation '{mode}'; choose nearest or bilinear")


def zoom_degrade_reference(img, s, mode="nearest"):
    """Per-image D(x, s) with torch's own crop + F.interpolate: the definition the batched one matches."""
    n = img.shape[-1]
    if s == 0:
        return img.clone()
    lo, hi = (s + 1) // 2, s // 2
    crop = img[..., lo:n - hi, lo:n - hi]
    kw = dict(mode=mode) if mode == "nearest" else dict(mode=mode, align_corners=False)
    return F.interpolate(crop[None], size=(n, n), **kw)[0]
