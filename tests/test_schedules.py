"""The forward processes against closed forms: β schedules, q(x_t|x_0), the posterior, the prediction
conversions, learned variance, respacing, and the zoom degradation D(x, s) against torch's own crop + resize."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schedules import Schedule, make_betas, zoom_degrade


# ---- schedules against closed forms ----------------------------------------------------------

def test_linear_schedule_closed_form():
    s = Schedule.make("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.isclose(s.abar[-1].item(), np.prod(1 - betas), rtol=1e-10)
    assert np.isclose(s.abar[0].item(), 1 - 1e-4)


def test_cosine_endpoints_and_formula():
    T, s0 = 1000, 0.008
    s = Schedule.make("cosine", T)
    f = lambda t: math.cos((t / T + s0) / (1 + s0) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # ᾱ_t = f(t+1)/f(0) while no β is clipped
        assert math.isclose(s.abar[t].item(), f(t + 1) / f(0), rel_tol=1e-9)
    assert s.abar[0].item() > 0.9999 and s.abar[-1].item() < 1e-4


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [10, 1000])
def test_snr_monotone(kind, T):
    s = Schedule.make(kind, T)
    snr = s.snr()
    assert len(snr) == T and (snr[1:] < snr[:-1]).all() and (make_betas(kind, T) > 0).all()


def test_q_sample_and_posterior_closed_form():
    s = Schedule.make("linear", 100)
    x0, xt, noise = torch.randn(3, 2, 4, 4).unbind(0)
    x0, xt, noise = x0[None], xt[None], noise[None]
    t = torch.tensor([37])
    ab = s.abar[37].item()
    assert torch.allclose(s.q_sample(x0, t, noise), math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise, atol=1e-6)
    # Bayes: q(x_{t-1}|x_t,x0) ∝ N(x_t; √α_t x_{t-1}, β_t) N(x_{t-1}; √ᾱ_{t-1} x0, 1-ᾱ_{t-1})
    a, b, abp = s.alphas[37].item(), s.betas[37].item(), s.abar[36].item()
    prec = a / b + 1 / (1 - abp)
    mean = (math.sqrt(a) / b * xt + math.sqrt(abp) / (1 - abp) * x0) / prec
    m, logvar = s.posterior(x0, xt, t)
    assert torch.allclose(m, mean, atol=1e-5)
    assert math.isclose(logvar.exp().flatten()[0].item(), 1 / prec, rel_tol=1e-5)


@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_prediction_conversions_roundtrip(pred):
    s = Schedule.make("cosine", 50)
    x0, noise = torch.randn(2, 4, 3, 8, 8).unbind(0)
    t = torch.tensor([0, 10, 30, 49])
    xt = s.q_sample(x0, t, noise)
    x0_hat, eps_hat = s.x0_eps(pred, s.target(pred, x0, noise, t), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=2e-3)


def test_sigmoid_schedule_closed_form():
    """ᾱ(u) = (σ(3) − σ(6u − 3)) / (σ(3) − σ(−3)) at u = (t + 1) / T (Jabri et al. 2022, τ = 1)."""
    T = 1000
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    s = Schedule.make("sigmoid", T)
    for t in (0, 100, 500, 900):
        want = (sig(3) - sig(6 * (t + 1) / T - 3)) / (sig(3) - sig(-3))
        assert math.isclose(s.abar[t].item(), want, rel_tol=1e-9), t


def test_learned_variance_spans_beta_and_posterior_variance():
    """var_out = 1 gives log β_t, −1 gives log β̃_t, 0 their midpoint (Nichol & Dhariwal eq. 15)."""
    s = Schedule.make("linear", 100)
    t, x = torch.tensor([5, 50]), torch.zeros(2, 1, 2, 2)
    lb, lp = torch.log(s.betas[t]).float(), s.post_logvar[t].float()
    for v, want in ((1.0, lb), (-1.0, lp), (0.0, (lb + lp) / 2)):
        got = s.learned_logvar(torch.full_like(x, v), t, x)[:, 0, 0, 0]
        assert torch.allclose(got, want, atol=1e-6), v


def test_respaced_schedule_keeps_abar_at_its_timesteps():
    """Respacing (Nichol & Dhariwal sec. 4) keeps ᾱ at the chosen timesteps; its betas are the jumps between them."""
    base = Schedule.make("cosine", 1000)
    ts = torch.tensor([0, 99, 399, 999])
    sub = Schedule.respaced(base, ts)
    assert torch.allclose(sub.abar, base.abar[ts], rtol=1e-12)
    assert math.isclose(sub.betas[2].item(), 1 - (base.abar[399] / base.abar[99]).item(), rel_tol=1e-12)


# ---- Cold Zoom --------------------------------------------------------------------------------

def zoom_reference(img, s, mode):
    """D(img, s) for one image by its definition: torch's own crop, then F.interpolate back to N×N."""
    n = img.shape[-1]
    if s == 0:
        return img.clone()
    lo, hi = (s + 1) // 2, s // 2
    kw = dict(mode=mode) if mode == "nearest" else dict(mode=mode, align_corners=False)
    return F.interpolate(img[None, ..., lo:n - hi, lo:n - hi], size=(n, n), **kw)[0]



@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_zoom_identity_at_zero_and_batched_equals_reference(mode):
    x = torch.rand(7, 3, 28, 28)
    assert torch.equal(zoom_degrade(x, 0, mode), x)
    s = torch.tensor([0, 1, 2, 5, 13, 23, 24])
    batched = zoom_degrade(x, s, mode)
    for i in range(7):
        assert torch.allclose(batched[i], zoom_reference(x[i], int(s[i]), mode), atol=1e-5), (mode, int(s[i]))


@pytest.mark.parametrize("n,f", [(28, 4), (32, 4), (16, 3)])
def test_zoom_nearest_final_state_holds_only_window_pixels(n, f):
    x = torch.rand(2, 3, n, n)
    out = zoom_degrade(x, n - f, "nearest")
    for b in range(2):
        for c in range(3):
            vals = out[b, c].unique()
            assert len(vals) <= f * f and torch.isin(vals, x[b, c].flatten()).all()
