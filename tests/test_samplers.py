"""Samplers against closed forms: exact Gaussian denoisers, the paper's update written out by hand,
DDIM η=1 = ancestral (respaced too), learned-variance respacing, CFG endpoints, per-image seeds, Cold
Diffusion updates and the zoom start states."""
import math

import pytest
import torch

from generate import default_spacing, generate_ddpm
from nn_unet import UNet
from samplers import (SAMPLERS, SPACINGS, PerImageNoise, make_denoiser, sample_ancestral, sample_cold, sample_ddim,
                      timesteps_for)
from schedules import Schedule, zoom_degrade


# ---- samplers ---------------------------------------------------------------------------------

class Recorded:
    """The same noise sequence on every replay."""

    def __init__(self, shape, seed=0):
        self.shape, self.gen = shape, torch.Generator().manual_seed(seed)

    def __call__(self):
        return torch.randn(self.shape, generator=self.gen)


def tiny_model(c=1, size=8, **kw):
    torch.manual_seed(0)
    m = UNet(c, size, ch=8, mults=(1, 2), blocks=1, attn_res=4, **kw).eval()
    for p in m.parameters():  # the zero-initialised head would make every output 0
        torch.nn.init.normal_(p, std=0.05)
    return m


def test_ddim_eta1_equals_ancestral():
    sched = Schedule.make("linear", 40)
    m = tiny_model()
    d = make_denoiser(m, sched, "eps")
    ts = torch.arange(40)
    snaps_a, snaps_d = [], []
    with torch.no_grad():
        xa = sample_ancestral(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1),
                                callback=lambda i, x, x0: snaps_a.append(x))
        xd = sample_ddim(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1), eta=1.0,
                           callback=lambda i, x, x0: snaps_d.append(x))
    for a, b in zip(snaps_a, snaps_d):  # step for step
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(xa, xd, atol=1e-4)


@pytest.mark.parametrize("var_out,which", [(1.0, "beta"), (-1.0, "posterior")])
def test_learned_variance_uses_the_respaced_schedule(var_out, which):
    """Ancestral steps with a learned variance on a respacing: var_out = 1 means β' = 1 − ᾱ_t/ᾱ_prev and −1
    means β̃' = β' (1 − ᾱ_prev)/(1 − ᾱ_t) of the respaced schedule, not of the original one. With x̂0 = 0 the
    first step is x_prev = coef_xt x + √var z, written out here from the original ᾱ."""
    sched = Schedule.make("cosine", 1000)
    ts = torch.tensor([0, 300, 600, 999])
    d = lambda x, t: (torch.zeros_like(x), None, torch.full_like(x, var_out))  # noqa: E731
    x, z = torch.ones(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    got = {}
    sample_ancestral(d, sched, x, ts, lambda: z, callback=lambda i, xi, x0: got.setdefault(i, xi))
    a_t, a_prev = sched.abar[999].item(), sched.abar[600].item()
    beta = 1 - a_t / a_prev
    var = beta if which == "beta" else beta * (1 - a_prev) / (1 - a_t)
    coef_xt = (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t)
    assert torch.allclose(got[3], coef_xt * x + math.sqrt(var) * z, atol=1e-5), (got[3], var)


def test_respaced_ddim_eta1_equals_respaced_ancestral():
    sched = Schedule.make("cosine", 100)
    m = tiny_model()
    d = make_denoiser(m, sched, "v")
    ts = timesteps_for(sched, 10)
    with torch.no_grad():
        xa = sample_ancestral(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1))
        xd = sample_ddim(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1), eta=1.0)
    assert torch.allclose(xa, xd, atol=1e-4)


def gaussian_denoiser(sched, s2):
    """The exact denoiser for data N(0, s2): E[x0 | x_t] = α s2 x_t / (α² s2 + σ²)."""
    def d(x, t):
        tt = torch.full((x.shape[0],), int(t))
        a, sg = sched.alpha_sigma(tt, x)
        x0 = a * s2 * x / (a * a * s2 + sg * sg)
        return x0, (x - a * x0) / sg, None
    return d


def test_ode_samplers_converge_at_their_order_on_gaussian_data():
    """For data N(0, s2) the probability-flow ODE keeps x_t / √(ᾱ s2 + 1 - ᾱ) fixed, so its exact end
    is known: DDIM is first order (error halves as steps double), DPM-Solver++(2M) second (÷4)."""
    sched, s2 = Schedule.make("linear", 1000), 0.25
    d = gaussian_denoiser(sched, s2)
    x_T = torch.randn(512, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratios = {}
    for name in ("ddim", "dpmpp2m"):
        errs = []
        for n in (20, 40, 80):
            ts = timesteps_for(sched, n, "karras")
            var = sched.abar[ts] * s2 + 1 - sched.abar[ts]
            want = d(x_T * (var[0] / var[-1]).sqrt(), ts[0])[0]  # the ODE carried to t_0, then denoised
            errs.append((SAMPLERS[name](d, sched, x_T.clone(), ts, None) - want).abs().max().item())
        ratios[name] = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.8 < r < 2.3 for r in ratios["ddim"]), ratios
    assert all(r > 3.5 for r in ratios["dpmpp2m"]), ratios


def test_dpmpp2m_step_is_algorithm_2_of_the_paper():
    """Two steps by hand: a first-order step, then D = x0 + h / (2 h_prev) (x0 - x0_prev) (Lu et al. 2022,
    Alg. 2, r = h_prev / h) on deliberately unequal steps."""
    sched = Schedule.make("cosine", 1000)
    ts = torch.tensor([100, 400, 900])
    lam = (0.5 * torch.log(sched.abar / (1 - sched.abar))).tolist()
    al, sg = sched.abar.sqrt().tolist(), (1 - sched.abar).sqrt().tolist()
    pred = {900: 0.7, 400: 0.1, 100: -0.3}  # x0 predictions at each t, whatever x is
    d = lambda x, t: (torch.full_like(x, pred[int(t)]), torch.zeros_like(x), None)
    got = {}
    SAMPLERS["dpmpp2m"](d, sched, torch.ones(1, 1, 1, 1), ts, None, callback=lambda i, x, x0: got.setdefault(i, x))
    h1, h2 = lam[400] - lam[900], lam[100] - lam[400]
    x1 = sg[400] / sg[900] * 1.0 - al[400] * math.expm1(-h1) * 0.7
    x2 = sg[100] / sg[400] * x1 - al[100] * math.expm1(-h2) * (0.1 + h2 / (2 * h1) * (0.1 - 0.7))
    assert abs(got[2].item() - x1) < 1e-5 and abs(got[1].item() - x2) < 1e-5, (got, x1, x2)


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "consistency"])  # its f is no denoiser: below
def test_every_sampler_draws_the_right_distribution_on_gaussian_data(name):
    """Data N(0, s2) and its exact denoiser: every sampler's x_{t_0} must follow the true marginal
    N(0, ᾱ s2 + 1 − ᾱ) at t_0, so the denoised output has variance ᾱ s2² / (ᾱ s2 + 1 − ᾱ). A wrong update
    rule (a coefficient, a missing or doubled noise term) moves the variance. Ancestral sampling with the
    plug-in mean x̂0 = E[x0 | x_t] is itself short of the true variance by Σ coef_x0² Var[x0 | x_t] over its
    steps (about 7 % at 200 steps), so its tolerance is wider."""
    sched, s2 = Schedule.make("linear", 1000), 0.25
    g = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn(100_000, 1, 1, 1, dtype=torch.float64, generator=g)  # noqa: E731
    ts = timesteps_for(sched, 200, "karras" if name.startswith("dpmpp") else "uniform")
    x = SAMPLERS[name](gaussian_denoiser(sched, s2), sched, noise(), ts, noise)
    a = sched.abar[ts[0]].item()
    tol = 0.03 if name == "ancestral" else 0.01
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - a * s2 * s2 / (a * s2 + 1 - a)) < tol, x.var()


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_with_the_exact_consistency_function_draws_the_data(steps):
    """For data N(0, s2) the consistency function, the probability-flow ODE's end from x_t, is
    f(x_t) = x_t √(s2 / (ᾱ s2 + 1 − ᾱ)). Sampling with it must give N(0, s2) at any number of steps; each
    call after the first must see x̂0 noised afresh to its level. (With a denoiser E[x0 | x_t] instead, the
    variance shrinks: why a diffusion model needs distilling before it samples this way.)"""
    sched, s2 = Schedule.make("cosine", 1000), 0.25
    g = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn(100_000, 1, 1, 1, dtype=torch.float64, generator=g)  # noqa: E731
    seen = []

    def f(x, t):
        a = sched.abar[int(t)].item()
        seen.append((int(t), x.var().item(), a))
        x0 = x * (s2 / (a * s2 + 1 - a)) ** 0.5
        return x0, None, None
    ts = timesteps_for(sched, steps, default_spacing("consistency"))
    x = SAMPLERS["consistency"](f, sched, noise(), ts, noise)
    assert len(seen) == steps and [t for t, _, _ in seen] == ts.flip(0).tolist() and 0 not in ts and ts[-1] == 999
    for _, var, a in seen:  # every level's input has that level's marginal variance
        assert abs(var - (a * s2 + 1 - a)) < 0.01
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - s2) < 0.005
    if steps == 2:
        assert ts.tolist() == [500, 999]  # σ ≈ 1 at t = T/2 on a cosine schedule, near Song et al.'s 0.821
    if steps > 1:
        assert SAMPLERS["consistency"](gaussian_denoiser(sched, s2), sched, noise(), ts, noise).var() < 0.8 * s2


def test_timestep_spacings():
    sched = Schedule.make("cosine", 1000)
    for n in (5, 15, 50, 200, 999):
        for spacing in SPACINGS:
            ts = timesteps_for(sched, n, spacing)
            assert len(ts) == n and ts[-1] == 999 and (ts.diff() > 0).all(), (n, spacing)
            # trailing never visits t = 0: its last step lands on the data from the lowest level
            assert (ts[0] == 0) == (spacing != "trailing"), (n, spacing)
    assert timesteps_for(sched, 4, "trailing").tolist() == [250, 500, 749, 999]
    for spacing in SPACINGS:  # one step starts from pure noise, never from the data's level t = 0
        assert timesteps_for(sched, 1, spacing).tolist() == [999], spacing
    k = timesteps_for(sched, 15, "karras")
    sigma = ((1 - sched.abar) / sched.abar).sqrt()
    assert sigma[k[-2]] < 85 < sigma[k[-1]]  # start at pure noise, then from σ_max = 80 down (EDM)
    lin = timesteps_for(Schedule.make("linear", 1000), 15, "karras").diff()
    assert lin[0] < lin[-1]  # denser at low noise
    assert len(timesteps_for(sched, 5000, "karras")) == 1000
    with pytest.raises(ValueError):
        timesteps_for(sched, 10, "quadratic")


def test_cfg_scale_zero_is_unconditional_and_one_is_conditional():
    sched = Schedule.make("linear", 50)
    m = tiny_model(num_classes=3)
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        guided0 = make_denoiser(m, sched, "eps", labels, cfg=0.0, num_classes=3)(x, 20)[0]
        uncond = make_denoiser(m, sched, "eps", torch.full_like(labels, 3), num_classes=3)(x, 20)[0]
        guided1 = make_denoiser(m, sched, "eps", labels, cfg=1.0, num_classes=3)(x, 20)[0]
        cond = make_denoiser(m, sched, "eps", labels, num_classes=3)(x, 20)[0]
    assert torch.allclose(guided0, uncond, atol=1e-5) and torch.allclose(guided1, cond, atol=1e-5)
    assert not torch.allclose(uncond, cond, atol=1e-4)


@pytest.mark.parametrize("sampler,steps", [("ancestral", 20), ("dpmpp2m_sde", 8), (None, None)])
def test_images_do_not_change_with_batch_size(sampler, steps):
    sched = Schedule.make("linear", 20)
    m = tiny_model()
    a = generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=3, batch=5)
    b = generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=3, batch=2)
    assert torch.allclose(a, b, atol=1e-5)
    c = generate_ddpm(m, sched, "eps", 2, "cpu", sampler, steps, seed=3, first_index=3)
    assert torch.allclose(a[3:], c, atol=1e-5)
    assert not torch.allclose(a, generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=4))  # seed matters


def test_default_sampling_batch_follows_the_device_and_an_explicit_one_wins():
    from generate import SAMPLE_BATCH, SAMPLE_BATCH_CUDA, sample_batch
    assert sample_batch("cpu") == SAMPLE_BATCH and sample_batch(torch.device("cuda", 1)) == SAMPLE_BATCH_CUDA
    assert sample_batch("cuda:0") != sample_batch("cpu")  # the device decides (so the line above can fail)
    assert sample_batch("cuda:0", 7) == 7 and sample_batch("cpu", 7) == 7


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_cold_samplers_follow_algorithms_1_and_2_with_an_imperfect_restorer(mode):
    """A restorer that is off by a fixed e, R(x_s, s) = x0 + e, from x_T = D(x0, T). D is linear, so
    naive (Alg. 1) is at D(x0 + e, s) after each step, and improved (Alg. 2) at D(x0, s) + D(e, s) − D(e, T):
    the restorer's error does not pile up (Bansal et al. sec. 3.3). A perfect restorer could not tell
    them apart: both telescope to x0."""
    g = torch.Generator().manual_seed(0)
    x0, e = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1, 0.1 * torch.randn(2, 1, 16, 16, generator=g)
    T = 12
    D = lambda x, s: zoom_degrade(x, s, mode)  # noqa: E731
    for improved in (False, True):
        seen = {}
        out = sample_cold(lambda x, s: x0 + e, D, D(x0, T), T, improved,
                          callback=lambda s, x, _: seen.setdefault(s, x))
        for s, x in seen.items():
            want = D(x0, s) + D(e, s) - D(e, T) if improved else D(x0 + e, s)
            assert torch.allclose(x, want, atol=1e-5), (improved, s)
        assert torch.allclose(out, x0 + e - D(e, T) if improved else x0 + e, atol=1e-5)


def test_zoom_start_states_shapes_and_seeds():
    from data import make_maps, to_model
    from zoom import STARTS, enlarge, final_windows, start_stats, start_states
    data = make_maps(64, 16, seed=0)
    windows = to_model(final_windows(data.images, 4))
    stats = start_stats(windows)
    assert torch.allclose(stats["hist"].sum(1), torch.ones(3))
    for kind in STARTS:
        a = start_states(stats, kind, 5, 3, 16, "nearest", seed=1)
        b = start_states(stats, kind, 2, 3, 16, "nearest", seed=1, first_index=3)
        assert a.shape == (5, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
        assert torch.allclose(a[3:], b)  # per-image seeds
        assert len(a[0, 0].unique()) <= 16
    # class-conditional: bank states come from windows of the class asked for
    stats = start_stats(windows, labels=data.labels)
    labels = torch.tensor([0, 1, 1, 0, 1])
    a = start_states(stats, "bank", 5, 3, 16, "nearest", seed=1, labels=labels)
    finals = enlarge(final_windows(to_model(data.images), 4), 16, "nearest")
    for img, k in zip(a, labels):
        match = (img[None] - finals).abs().flatten(1).amax(1) < 1e-2  # the bank is fp16
        assert match.any() and (data.labels[match] == k).all()


@pytest.mark.parametrize("name,steps", [("dpmpp2m_sde", 15), ("ancestral", 100)])
def test_clipping_x0_pushes_data_at_the_range_edge_inward(name, steps):
    """Data N(−1, 0.05²), MNIST's black background, and as the network its exact denoiser plus an unbiased error
    (std 0.02, ~2.5 grey levels, as a trained network has). Clipping each step's x̂0 to [−1, 1] drops the half of
    the error that points outward, so the trajectory drifts inward (a grey haze); unclipped, the clamped images
    sit nearer the clamped data's mean −1 + 0.05 φ(0)."""
    sched, m, s = Schedule.make("cosine", 1000), -1.0, 0.05

    class Imperfect(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(1)

        def forward(self, x, t, labels=None):
            a, sg = (v[t].sqrt().view(-1, 1, 1, 1).double() for v in (sched.abar, 1 - sched.abar))
            exact = m + a * s * s * (x - a * m) / (a * a * s * s + sg * sg)
            return exact + 0.02 * torch.randn(x.shape, dtype=x.dtype, generator=self.gen)

    want = m + s / math.sqrt(2 * math.pi)
    ts = timesteps_for(sched, steps, default_spacing(name))
    means = {}
    for clip in (True, False):
        g = torch.Generator().manual_seed(0)
        noise = lambda: torch.randn(20_000, 1, 1, 1, dtype=torch.float64, generator=g)  # noqa: E731
        d = make_denoiser(Imperfect(), sched, "x0", clip=clip)
        means[clip] = SAMPLERS[name](d, sched, noise(), ts, noise).clamp(-1, 1).mean().item()
    assert means[True] - means[False] > 0.003, means
    assert abs(means[False] - want) < abs(means[True] - want) - 0.003, (means, want)


def test_init_starts_from_the_images_noised_to_the_first_level_at_or_above_init_snr():
    """SDEdit (Meng et al. 2022): the first network call sees √ᾱ x_init + √(1 − ᾱ) z at the noisiest of the sampler's
    levels with SNR >= init_snr, z the image's own first noise draw (what a pure-noise start would be), and the
    levels above it are skipped."""
    from samplers import PerImageNoise
    sched = Schedule.make("cosine", 100)
    m = tiny_model(c=1, size=8)
    calls = []
    m.register_forward_pre_hook(lambda mod, args: calls.append((args[0].clone(), args[1].clone())))
    init = torch.rand(3, 1, 8, 8) * 2 - 1
    ts = timesteps_for(sched, 10, "karras")
    snr = sched.snr()[ts]
    init_snr = float(snr[len(ts) // 2])
    kept = ts[snr >= init_snr]
    generate_ddpm(m, sched, "eps", 3, "cpu", "dpmpp2m_sde", 10, seed=5, init=init, init_snr=init_snr)
    assert len(calls) == len(kept) < len(ts)
    x, t = calls[0]
    a = sched.abar[kept[-1]].item()
    z = PerImageNoise(5, range(3), (1, 8, 8), "cpu")()
    assert torch.allclose(x, a ** 0.5 * init + (1 - a) ** 0.5 * z, atol=1e-6)
    assert (t == kept[-1]).all() and sorted(int(c[1][0]) for c in calls) == kept.tolist()



def test_init_images_that_do_not_fit_the_model_or_its_levels_are_refused():
    from cli import UserError
    from sample_spec import check_init
    m, snrs = tiny_model(c=3, size=8), torch.tensor([0.01, 1.0, 100.0])
    with pytest.raises(UserError, match="--init images are"):
        check_init(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), m, snrs, 1.0, 2)
    with pytest.raises(UserError, match="no sampler level is that clean"):
        check_init(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), m, snrs, 1e3, 2)
    with pytest.raises(UserError, match="needs --init-snr"):
        check_init(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), m, snrs, None, 2)
    x = check_init(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8), m, snrs, 1.0, 5)  # cycled to n, in [-1, 1]
    assert x.shape == (5, 3, 8, 8) and (x == 1).all()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_one_step_samples_are_not_the_start_noise(sampler):
    """--steps 1 calls the network once, at pure noise: the image is its x̂0 there, not the noise it started from
    (a uniform spacing of one step once evaluated t = 0, where x_0 is returned as it came)."""
    model, sched = tiny_model(), Schedule.make("cosine", 100)
    x = generate_ddpm(model, sched, "eps", 2, "cpu", sampler, steps=1, seed=3, clip=False, spacing="uniform")
    start = PerImageNoise(3, range(2), (model.in_ch, model.size, model.size), "cpu")()
    assert not torch.allclose(x, start.clamp(-1, 1), atol=1e-3)
