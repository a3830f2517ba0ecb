"""Training losses, per sample (shape (B,)), as pure functions of tensors.

DDPM: L_simple (Ho et al. 2020, eq. 14) on the ε, x0 or v target;
min-SNR-γ weighting (Hang et al. 2023, eq. 7); the hybrid loss of improved DDPM, L_simple + λ L_vlb with
λ = 0.001 and the mean stopped in L_vlb (Nichol & Dhariwal 2021, sec. 3.1, eq. 16). Cold Zoom: ‖R(D(x0, s), s) − x0‖
(Bansal et al. 2022, eq. 1), squared or L1. Consistency distillation: the pseudo-Huber distance between the student's
x̂0 and its target (Song & Dhariwal 2023).
"""
import math

import torch

from schedules import Schedule


def mse(a, b):
    return (a - b).pow(2).mean(dim=(1, 2, 3))


def min_snr_weight(snr, gamma, pred):
    """The weight that turns the `pred`-target MSE into min(SNR, γ) · ‖x̂0 − x0‖²: an x0 error δ is an
    ε error √SNR δ and a v error √(1 + SNR) δ, so the weights divide by SNR and SNR + 1."""
    w = snr.clamp(max=gamma)
    return {"eps": w / snr, "x0": w, "v": w / (snr + 1)}[pred]


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())


def discretized_gaussian_nll(x, mean, logvar):
    """−log p(x) for 8-bit data in [-1, 1] under a Gaussian discretised into 256 bins, the edge bins
    open to ±∞ (Ho et al. sec. 3.3, L_0)."""
    inv_std = (-0.5 * logvar).exp()
    cdf = lambda v: 0.5 * (1 + torch.erf(v / math.sqrt(2)))  # noqa: E731
    upper = cdf(inv_std * (x - mean + 1 / 255))
    lower = cdf(inv_std * (x - mean - 1 / 255))
    p = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1 - lower, upper - lower))
    return -p.clamp(min=1e-12).log()


def vlb_term(sched: Schedule, pred, out_mean, var_out, x0, xt, t):
    """L_t of the variational bound in bits for the learned variance only: the predicted mean is
    detached, so this term trains the variance and L_simple the mean. L_0 is the decoder NLL,
    L_{t>0} = KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t)) (Ho et al. eq. 5)."""
    x0_hat, _ = sched.x0_eps(pred, out_mean.detach(), xt, t)
    mean, _ = sched.posterior(x0_hat, xt, t)
    logvar = sched.learned_logvar(var_out, t, xt)
    true_mean, true_logvar = sched.posterior(x0, xt, t)
    kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2)
    nll = discretized_gaussian_nll(x0, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2)
    return torch.where(t == 0, nll, kl)


def diffusion_loss(sched: Schedule, out, x0, xt, noise, t, pred="eps", min_snr=0.0, learn_sigma=False):
    """The DDPM loss of the network output `out` at x_t = q_sample(x0, t, noise): L_simple on the first
    C channels, min-SNR-weighted if min_snr > 0, plus λ T L_t on the variance channels if learn_sigma
    (λ = 0.001; L_vlb = Σ_t L_t ≈ T · L_t for a uniform t)."""
    c = x0.shape[1]
    loss = mse(out[:, :c], sched.target(pred, x0, noise, t))
    if min_snr > 0:
        loss = loss * min_snr_weight(sched.snr(t).flatten(), min_snr, pred)
    if learn_sigma:
        loss = loss + vlb_term(sched, pred, out[:, :c], out[:, c:], x0, xt, t) * (sched.T / 1000)
    return loss


def restoration_loss(pred, x0, kind="mse"):
    """Cold Diffusion's restoration loss ‖R(D(x0, s), s) − x0‖, squared ('mse') or L1 ('l1')."""
    err = pred - x0
    return (err.abs() if kind == "l1" else err.pow(2)).mean(dim=(1, 2, 3))


def pseudo_huber(a, b, c):
    """√(‖a − b‖² + c²) − c per sample (Song & Dhariwal 2023, "Improved techniques for training consistency
    models", sec. 3.3): quadratic near 0 like L2, linear for large errors, so a few bad targets do not dominate."""
    return ((a - b).float().pow(2).sum(dim=(1, 2, 3)) + c * c).sqrt() - c

