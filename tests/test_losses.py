"""The losses against closed forms and invariants, each able to fail for the bug it names."""
import math

import numpy as np
import pytest
import torch

from losses import (diffusion_loss, discretized_gaussian_nll, min_snr_weight, mse, normal_kl,
                    pseudo_huber, restoration_loss, vlb_term)
from schedules import Schedule


def test_normal_kl_matches_the_closed_form_and_torch():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([-0.2, 0.5])
    lv1, lv2 = torch.tensor([-1.0, 0.4]), torch.tensor([0.2, -0.7])
    s1, s2 = (0.5 * lv1).exp(), (0.5 * lv2).exp()
    want = torch.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), want, atol=1e-6)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, atol=1e-6)


@pytest.mark.parametrize("mean,logvar", [(0.0, -6.0), (0.37, -3.0), (-0.9, 0.0), (1.2, -1.0)])
def test_discretized_nll_is_a_distribution_over_the_256_values(mean, logvar):
    """exp(−NLL) over the 256 values of 8-bit data sums to 1, for any mean and variance (the edge bins
    take the tails)."""
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    p = (-discretized_gaussian_nll(x, torch.tensor(mean, dtype=torch.float64),
                                   torch.tensor(logvar, dtype=torch.float64))).exp()
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-6), p.sum()


def _setup(seed=0, pred_shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    sched = Schedule.make("cosine", 1000)
    x0 = torch.rand(pred_shape, generator=g) * 2 - 1
    noise = torch.randn(pred_shape, generator=g)
    t = torch.tensor([0, 30, 400, 950])
    return sched, x0, noise, t, sched.q_sample(x0, t, noise)


def _outputs_for(sched, x0_hat, xt, t):
    """What an ε-, x0- and v-network would output to mean the estimate x0_hat at x_t."""
    alpha, sigma = sched.alpha_sigma(t, xt)
    eps_hat = (xt - alpha * x0_hat) / sigma
    return {"eps": eps_hat, "x0": x0_hat, "v": alpha * eps_hat - sigma * x0_hat}


@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_min_snr_gives_the_same_loss_for_the_same_x0_error_whatever_the_prediction(gamma):
    """min-SNR-γ (Hang et al. eq. 7): the loss is min(SNR, γ) ‖x̂0 − x0‖², whether the network predicts
    ε, x0 or v."""
    sched, x0, noise, t, xt = _setup()
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    want = sched.snr(t).flatten().clamp(max=gamma) * mse(x0_hat, x0)
    for pred, out in _outputs_for(sched, x0_hat, xt, t).items():
        got = diffusion_loss(sched, out, x0, xt, noise, t, pred, min_snr=gamma)
        assert torch.allclose(got, want, rtol=2e-3), (pred, got, want)
    w = min_snr_weight(torch.tensor([0.1, 100.0]), 5.0, "eps")
    assert torch.allclose(w, torch.tensor([1.0, 0.05]))  # ε loss is left alone at low SNR, cut to γ/SNR at high


def test_simple_loss_is_the_mse_to_the_target():
    sched, x0, noise, t, xt = _setup()
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(diffusion_loss(sched, out, x0, xt, noise, t, "eps"), mse(out, noise))
    alpha, sigma = sched.alpha_sigma(t, x0)
    assert torch.allclose(diffusion_loss(sched, out, x0, xt, noise, t, "v"), mse(out, alpha * noise - sigma * x0))


def _true_posterior(betas, x0, xt, t):
    """q(x_{t−1} | x_t, x0) by Bayes' rule from the betas alone, in float64: the prior q(x_{t−1} | x0) =
    N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}) times the likelihood q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t), a product of
    Gaussians in x_{t−1}: precision 1/(1 − ᾱ_{t−1}) + α_t/β_t, mean = variance × (√ᾱ_{t−1} x0/(1 − ᾱ_{t−1})
    + √α_t x_t/β_t). Returns (mean, variance) for t ≥ 1."""
    b = np.asarray(betas, dtype=np.float64)
    mean, var = np.empty(x0.shape), np.empty(len(t))
    for i, ti in enumerate(t.tolist()):
        assert ti >= 1
        abar_prev = np.prod(1 - b[:ti])  # ᾱ_{t−1} = Π_{s < t} (1 − β_s), t counted from 0
        prec = 1 / (1 - abar_prev) + (1 - b[ti]) / b[ti]
        var[i] = 1 / prec
        mean[i] = var[i] * (np.sqrt(abar_prev) * x0[i].double().numpy() / (1 - abar_prev)
                            + np.sqrt(1 - b[ti]) * xt[i].double().numpy() / b[ti])
    return torch.from_numpy(mean), torch.from_numpy(var).view(-1, 1, 1, 1)


def test_true_posterior_reference_is_ho_et_al_eq_7():
    """The Bayes reference above agrees with the closed form μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x0 + √α_t (1 − ᾱ_{t−1})
    /(1 − ᾱ_t) x_t, β̃ = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t, both written out here from the betas (not the Schedule)."""
    sched, x0, noise, t, xt = _setup()
    t = torch.tensor([1, 30, 400, 950])
    b = sched.betas.numpy()
    mean, var = _true_posterior(b, x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev = np.prod(1 - b[:ti + 1]), np.prod(1 - b[:ti])
        mu = (np.sqrt(ab_prev) * b[ti] / (1 - ab) * x0[i].double() + np.sqrt(1 - b[ti]) * (1 - ab_prev) / (1 - ab)
              * xt[i].double())
        assert torch.allclose(mean[i], mu, rtol=1e-9, atol=1e-9)
        assert math.isclose(var[i].item(), (1 - ab_prev) / (1 - ab) * b[ti], rel_tol=1e-9)


def test_schedule_posterior_is_the_true_posterior():
    """Schedule.posterior against Bayes' rule on the betas, for every schedule kind and t from 1 to T − 1."""
    g = torch.Generator().manual_seed(5)
    for kind in ("linear", "cosine", "sigmoid"):
        sched = Schedule.make(kind, 1000)
        t = torch.tensor([1, 2, 10, 100, 500, 900, 999])
        x0, xt = torch.rand(len(t), 2, 4, 4, generator=g) * 2 - 1, torch.randn(len(t), 2, 4, 4, generator=g)
        mean, logvar = sched.posterior(x0, xt, t)
        true_mean, true_var = _true_posterior(sched.betas, x0, xt, t)
        assert torch.allclose(mean.double(), true_mean, rtol=1e-4, atol=1e-5), kind
        assert torch.allclose(logvar.double().exp(), true_var.expand_as(logvar), rtol=1e-4), kind


def test_hybrid_vlb_trains_the_variance_only_and_is_the_kl_to_the_true_posterior():
    """The VLB term sends no gradient to the mean channels (the mean is stopped), does send one to the
    variance channels, and equals KL(q(x_{t−1}|x_t, x0) ‖ N(μ̃(x̂0, x_t), Σ)) in bits for t > 0, with q and μ̃ from
    Bayes' rule on the betas, x̂0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t and log Σ = v log β_t + (1 − v) log β̃_t,
    v = (out + 1)/2 (Nichol & Dhariwal eq. 15), written out here, none of them taken from the Schedule."""
    sched, x0, noise, t, xt = _setup()
    out = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    vlb = vlb_term(sched, "eps", out[:, :3], out[:, 3:], x0, xt, t)
    vlb.sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    with torch.no_grad():
        b = sched.betas.numpy()
        k = t[1:]  # t = 30, 400, 950
        abar = torch.tensor([np.prod(1 - b[:ti + 1]) for ti in k.tolist()]).view(-1, 1, 1, 1)
        x0_hat = (xt[1:].double() - (1 - abar).sqrt() * out[1:, :3].double()) / abar.sqrt()
        true_mean, true_var = _true_posterior(b, x0[1:], xt[1:], k)
        mean, post_var = _true_posterior(b, x0_hat, xt[1:], k)
        frac = (out[1:, 3:].double() + 1) / 2
        logvar = frac * torch.from_numpy(np.log(b[k.numpy()])).view(-1, 1, 1, 1) + (1 - frac) * post_var.log()
        q = torch.distributions.Normal(true_mean, true_var.sqrt().expand_as(true_mean))
        p = torch.distributions.Normal(mean, (0.5 * logvar).exp())
        kl_bits = torch.distributions.kl_divergence(q, p).mean(dim=(1, 2, 3)) / math.log(2)
        assert torch.allclose(vlb[1:].double(), kl_bits, rtol=1e-3)
        # t = 0: the decoder's NLL of x0 under N(μ(x̂0), Σ), with the schedule's mean at t = 0 (x̂0 itself:
        # β̃_0 = 0, ᾱ_{−1} = 1) and its log-variance clipped to log β̃_1
        x0_hat0 = (xt[:1] - (1 - sched.abar[0]).sqrt().float() * out[:1, :3]) / sched.abar[0].sqrt().float()
        frac0 = (out[:1, 3:] + 1) / 2
        logvar0 = frac0 * math.log(b[0]) + (1 - frac0) * math.log(_true_posterior(b, x0[:1], xt[:1], torch.tensor([1]))[1].item())
        nll_bits = discretized_gaussian_nll(x0[:1], x0_hat0, logvar0).mean(dim=(1, 2, 3)) / math.log(2)
        assert torch.allclose(vlb[:1], nll_bits, rtol=1e-4)
        hybrid = diffusion_loss(sched, out, x0, xt, noise, t, "eps", learn_sigma=True)
        assert torch.allclose(hybrid, mse(out[:, :3], noise) + 0.001 * 1000 * vlb, rtol=1e-5)  # λ = 0.001, T = 1000


def test_restoration_loss():
    pred, x0 = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, -3.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert torch.equal(restoration_loss(pred, x0, "mse"), torch.tensor([1.0, 9.0]))
    assert torch.equal(restoration_loss(pred, x0, "l1"), torch.tensor([1.0, 3.0]))


def test_pseudo_huber_is_its_closed_form_l2_near_zero_and_l1_far_out():
    """√(‖a − b‖² + c²) − c per sample, ‖·‖ over all of a sample's channels and pixels (written out here in
    float64 on multi-channel data); ≈ ‖a − b‖²/(2c) for ‖a − b‖ ≪ c and ≈ ‖a − b‖ − c for ‖a − b‖ ≫ c."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, 6, generator=g), torch.randn(5, 3, 4, 6, generator=g)
    scale = torch.tensor([0.0, 1e-4, 1.5e-3, 1.0, 30.0]).view(-1, 1, 1, 1)  # ‖a − b‖ = 0, ~1e-3, ~1e-2, ~8, ~260
    b = a + scale * b
    for c in (0.03, 0.5):
        got = pseudo_huber(a, b, c)
        diff = (a - b).double().numpy().reshape(5, -1)
        norm2 = np.array([sum(v * v for v in row) for row in diff])
        want = np.sqrt(norm2 + c * c) - c
        # float32 round-off of √(‖a − b‖² + c²) near c: about 1e-7 c
        assert got.shape == (5,) and np.allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6 * c), (c, got, want)
        assert got[0] == 0
        small = ((0.02 * c) ** 2 < norm2) & (norm2 < (0.05 * c) ** 2)  # small, yet above that round-off
        assert small.sum() >= 1 and np.allclose(got.numpy()[small], norm2[small] / (2 * c), rtol=2e-3)
        large = norm2 > (100 * c) ** 2
        assert large.sum() >= 1 and np.allclose(got.numpy()[large], np.sqrt(norm2[large]) - c, rtol=1e-3)
    # a single pixel off by 3 in a sample: exactly √(9 + c²) − c; and 4 pixels off by 1e-3: ≈ 4e-6 / 2c
    a, b, c = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2), 0.03
    b[1, 0, 0, 0], b[2, 0, :, :] = 3.0, 1e-3
    d = pseudo_huber(a, b, c)
    assert d[0] == 0 and abs(d[1] - (math.sqrt(9 + c * c) - c)) < 1e-6
    assert abs(d[2] / (4e-6 / (2 * c)) - 1) < 0.01
