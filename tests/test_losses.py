"""The losses against closed forms and invariants, each able to fail for the bug it names."""
import math

import pytest
import torch

from losses import (consistency_level, diffusion_loss, discretized_gaussian_nll, min_snr_weight, mse, normal_kl,
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


@pytest.mark.parametrize("gamma,plus_one,floor", [(0.5, False, 0.0), (5.0, False, 0.0), (5.0, True, 0.0),
                                                  (5.0, False, 0.25)])
def test_min_snr_gives_the_same_loss_for_the_same_x0_error_whatever_the_prediction(gamma, plus_one, floor):
    """min-SNR-γ (Hang et al. eq. 7): the loss is min(SNR, γ) ‖x̂0 − x0‖², whether the network predicts
    ε, x0 or v; with plus_one, min(1 + SNR, γ) ‖x̂0 − x0‖²; with a floor, max(that, floor) ‖x̂0 − x0‖²."""
    sched, x0, noise, t, xt = _setup()
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    want = (sched.snr(t).flatten() + plus_one).clamp(max=gamma).clamp(min=floor) * mse(x0_hat, x0)
    for pred, out in _outputs_for(sched, x0_hat, xt, t).items():
        got = diffusion_loss(sched, out, x0, xt, noise, t, pred, min_snr=gamma, min_snr_plus_one=plus_one,
                             min_snr_floor=floor)
        assert torch.allclose(got, want, rtol=2e-3), (pred, got, want)
    w = min_snr_weight(torch.tensor([0.1, 100.0]), 5.0, "eps")
    assert torch.allclose(w, torch.tensor([1.0, 0.05]))  # ε loss is left alone at low SNR, cut to γ/SNR at high
    w = min_snr_weight(torch.tensor([1e-4, 100.0]), 5.0, "v", plus_one=True)
    assert torch.allclose(w, torch.tensor([1.0, 5 / 101]))  # v loss left alone at high noise, capped at low
    w = min_snr_weight(torch.tensor([1e-4, 0.5, 100.0]), 5.0, "x0", floor=0.25)
    assert torch.allclose(w, torch.tensor([0.25, 0.5, 5.0]))  # only the levels below the floor change


def test_simple_loss_is_the_mse_to_the_target():
    sched, x0, noise, t, xt = _setup()
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(diffusion_loss(sched, out, x0, xt, noise, t, "eps"), mse(out, noise))
    alpha, sigma = sched.alpha_sigma(t, x0)
    assert torch.allclose(diffusion_loss(sched, out, x0, xt, noise, t, "v"), mse(out, alpha * noise - sigma * x0))


def test_hybrid_vlb_trains_the_variance_only_and_is_the_kl_to_the_true_posterior():
    """The VLB term sends no gradient to the mean channels (the mean is stopped), does send one to the
    variance channels, and equals KL(q(x_{t−1}|x_t, x0) ‖ N(μ(x̂0), Σ)) in bits for t > 0."""
    sched, x0, noise, t, xt = _setup()
    out = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    vlb = vlb_term(sched, "eps", out[:, :3], out[:, 3:], x0, xt, t)
    vlb.sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    with torch.no_grad():
        x0_hat, _ = sched.x0_eps("eps", out[:, :3], xt, t)
        mean, _ = sched.posterior(x0_hat, xt, t)
        true_mean, true_logvar = sched.posterior(x0, xt, t)
        logvar = sched.learned_logvar(out[:, 3:], t, xt)
        q = torch.distributions.Normal(true_mean, (0.5 * true_logvar).exp().expand_as(true_mean))
        p = torch.distributions.Normal(mean, (0.5 * logvar).exp())
        kl_bits = torch.distributions.kl_divergence(q, p).mean(dim=(1, 2, 3)) / math.log(2)
        assert torch.allclose(vlb[1:], kl_bits[1:], rtol=1e-4)  # t = 30, 400, 950
        nll_bits = discretized_gaussian_nll(x0, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2)
        assert torch.allclose(vlb[:1], nll_bits[:1])  # t = 0: the decoder's NLL
        hybrid = diffusion_loss(sched, out, x0, xt, noise, t, "eps", learn_sigma=True)
        assert torch.allclose(hybrid, mse(out[:, :3], noise) + 0.001 * 1000 * vlb, rtol=1e-5)  # λ = 0.001, T = 1000


def test_restoration_loss():
    pred, x0 = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, -3.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert torch.equal(restoration_loss(pred, x0, "mse"), torch.tensor([1.0, 9.0]))
    assert torch.equal(restoration_loss(pred, x0, "l1"), torch.tensor([1.0, 3.0]))


def test_pseudo_huber_is_l2_near_zero_and_l1_far_out():
    a, b, c = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2), 0.03
    b[1, 0, 0, 0], b[2, 0, :, :] = 3.0, 1e-3
    d = pseudo_huber(a, b, c)
    assert d[0] == 0 and abs(d[1] - (math.sqrt(9 + c * c) - c)) < 1e-6  # ‖a − b‖ = 3: about |3| − c
    assert abs(d[2] / (4e-6 / (2 * c)) - 1) < 0.01  # ‖a − b‖² = 4e-6 ≪ c²: about ‖a − b‖² / 2c


def test_consistency_level_halves_the_gap_and_steps_back_at_least_once():
    t = torch.tensor([999, 800, 100, 5, 1])
    assert consistency_level(t, 0).tolist() == [0, 0, 0, 0, 0]  # r = 0: plain denoising
    assert consistency_level(t, 1).tolist() == [500, 400, 50, 3, 0]
    assert consistency_level(t, 3).tolist() == [875, 700, 88, 4, 0]
    assert consistency_level(t, 6).tolist() == [984, 788, 99, 4, 0]  # the gap never shrinks below one step
