"""The data as a Gaussian (gaussian.py) against closed forms and dense linear algebra, and the sampler's
closed-form levels (--gauss-snr) end to end."""
import pytest
import torch

from checkpoint import data_gaussian, load_checkpoint
from cli import UserError
from gaussian import fit_gaussian, gaussian_x0
from generate import generate_ddpm
from helpers import one_line_error, run_here
from sample_spec import generate_from_checkpoint, resolve_spec
from samplers import make_denoiser
from schedules import Schedule
from test_samplers import tiny_model


def _images(n, c, size, seed=0):
    """uint8 images whose pixels are correlated across space and channels, with a random colour per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g)
    x = x + x.roll(1, dims=-1) + 0.5 * x.roll(1, dims=-2) + torch.randn(n, c, 1, 1, generator=g)  # blur + colour
    x = x + 0.5 * x[:, :1]  # channels correlated
    return (128 + 25 * x).round().clamp(0, 255).to(torch.uint8)


def test_one_pixel_gaussian_x0_is_the_scalar_posterior_mean():
    """A 1×1 grey image: E[x0 | x_t] = m + α v / (α² v + σ²) (x_t − α m), m and v the data's mean and variance."""
    images = _images(5000, 1, 1)
    x = images.float() / 127.5 - 1
    m, v = x.mean().item(), x.var(unbiased=False).item()
    stats = fit_gaussian(images)
    xt = torch.linspace(-2, 2, 9).view(-1, 1, 1, 1)
    for alpha, sigma in ((0.9, 0.44), (0.2, 0.98)):
        want = m + alpha * v / (alpha ** 2 * v + sigma ** 2) * (xt - alpha * m)
        assert torch.allclose(gaussian_x0(stats, xt, alpha, sigma), want, atol=1e-5)


def test_fit_gaussian_finds_the_colour_covariance_of_white_noise_at_every_frequency():
    """Pixels independent in space with a 3×3 colour covariance K: the spectrum is K at every frequency."""
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.9]])
    z = torch.einsum("cd,ndhw->nchw", mix, torch.randn(4000, 3, 4, 4, generator=g))
    images = (128 + 30 * z).round().clamp(0, 255).to(torch.uint8)
    want = (30 / 127.5) ** 2 * mix @ mix.T
    s = torch.view_as_complex(fit_gaussian(images)["spectrum"])
    assert s.shape == (4, 4, 3, 3)
    assert (s.real - want).abs().max() < 0.02 and s.imag.abs().max() < 0.02, (s[1, 2], want)


def test_gaussian_x0_equals_the_dense_posterior_mean_of_its_covariance():
    """The per-frequency formula is the dense E[x0 | x_t] = μ + α Σ (α² Σ + σ² I)⁻¹ (x_t − α μ) with Σ the
    covariance the spectrum stands for (Σ v = IFFT(S · FFT(v)), built column by column)."""
    images = _images(300, 2, 4)
    stats = fit_gaussian(images)
    s = torch.view_as_complex(stats["spectrum"]).to(torch.complex128)
    d = 2 * 4 * 4
    basis = torch.eye(d, dtype=torch.float64).view(d, 2, 4, 4)
    f = torch.fft.fft2(basis, norm="ortho")
    cov = torch.fft.ifft2(torch.einsum("hwcd,bdhw->bchw", s, f), norm="ortho").real.reshape(d, d)
    assert torch.allclose(cov, cov.T, atol=1e-6)  # a real, symmetric covariance
    mean = stats["mean"].double().flatten()
    xt = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    alpha, sigma = 0.5, 0.8
    want = mean + alpha * torch.linalg.solve(alpha ** 2 * cov + sigma ** 2 * torch.eye(d, dtype=torch.float64),
                                             (xt - alpha * mean).T).T @ cov.T
    got = gaussian_x0(stats, xt.float().view(3, 2, 4, 4), alpha, sigma).flatten(1)
    assert torch.allclose(got.double(), want, atol=1e-4), (got - want).abs().max()


def test_sampling_only_with_the_closed_form_draws_the_datas_colours():
    """With every level closed-form (no network call), the sampler draws from the Gaussian: the samples'
    per-channel mean and std match the data's."""
    images = _images(2000, 3, 8)
    stats = fit_gaussian(images)
    model = tiny_model(c=3, size=8)
    model.forward = None  # never called
    x = generate_ddpm(model, Schedule.make("cosine", 1000), "v", 1000, "cpu", steps=100, gauss=stats, gauss_snr=1e12)
    data = images.float() / 127.5 - 1
    for got, want in ((x.mean(dim=(0, 2, 3)), data.mean(dim=(0, 2, 3))), (x.std(dim=(0, 2, 3)), data.std(dim=(0, 2, 3)))):
        assert (got - want).abs().max() < 0.05 * data.std().item() + 0.01, (got, want)


def _two_colours(n=1200, size=8):
    """Labelled images: class 0 reddish, class 1 bluish (3 channels), as uint8 plus labels."""
    images = _images(n, 3, size)
    labels = torch.arange(n) % 2
    shift = torch.tensor([[40, 0, -40], [-40, 0, 40]])[labels].view(n, 3, 1, 1)
    return (images.int() + shift).clamp(0, 255).to(torch.uint8), labels


def _dense(stats_mean, spectrum):
    """The dense mean and covariance a per-frequency spectrum stands for (Σ v = IFFT(S · FFT(v)), column by column)."""
    c, h, w = stats_mean.shape
    d = c * h * w
    s = torch.view_as_complex(spectrum).to(torch.complex128)
    f = torch.fft.fft2(torch.eye(d, dtype=torch.float64).view(d, c, h, w), norm="ortho")
    return stats_mean.double().flatten(), torch.fft.ifft2(torch.einsum("hwcd,bdhw->bchw", s, f), norm="ortho").real.reshape(d, d)


def test_mixture_x0_equals_the_dense_mixture_posterior_mean():
    """With components, x̂0 is the dense Σ_k p(k | x_t) E[x0 | x_t, k], p(k | x_t) ∝ w_k N(x_t; α μ_k, α² Σ_k + σ² I):
    the clusters are the two colour families, each Gaussian is its cluster's own fit, and at low noise an image
    drawn near one family's colour is given that family's posterior mean."""
    images, labels = _two_colours(600, 4)
    shift = torch.tensor([[50, 0, -50], [-50, 0, 50]])[labels].view(-1, 3, 1, 1)  # families far apart
    images = (images.int() + shift).clamp(0, 255).to(torch.uint8)
    stats = fit_gaussian(images, components=2)
    assert stats["mix_mean"].shape == (2, 3, 4, 4) and stats["mix_spectrum"].shape == (2, 4, 4, 3, 3, 2)
    red_first = stats["mix_mean"][:, 0].mean((1, 2)).argsort(descending=True)  # cluster order is arbitrary
    assert torch.allclose(stats["mix_weight"].sum(), torch.tensor(1.0))
    for k, cls in zip(red_first.tolist(), (0, 1)):
        alone = fit_gaussian(images[labels == cls])  # the clusters recover the two families exactly
        assert torch.allclose(stats["mix_mean"][k], alone["mean"]) and torch.allclose(stats["mix_spectrum"][k], alone["spectrum"])
    d = 3 * 4 * 4
    xt = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for alpha, sigma in ((0.3, 0.95), (0.1, 0.995)):
        logp, x0 = [], []
        for k in range(2):
            mean, cov = _dense(stats["mix_mean"][k], stats["mix_spectrum"][k])
            dist = torch.distributions.MultivariateNormal(alpha * mean, alpha ** 2 * cov + sigma ** 2 * torch.eye(d, dtype=torch.float64))
            logp.append(dist.log_prob(xt) + stats["mix_weight"][k].double().log())
            x0.append(mean + alpha * torch.linalg.solve(dist.covariance_matrix, (xt - alpha * mean).T).T @ cov.T)
        r = torch.stack(logp, 1).softmax(1)
        want = r[:, 0:1] * x0[0] + r[:, 1:2] * x0[1]
        got = gaussian_x0(stats, xt.float().view(4, 3, 4, 4), alpha, sigma).flatten(1)
        assert torch.allclose(got.double(), want, atol=1e-4), (got - want).abs().max()
    red = torch.tensor([0.6, 0.0, -0.6]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # a red image, lightly noised
    got = gaussian_x0(stats, 0.9 * red + 0.44 * torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(4)), 0.9, 0.44)
    assert got[0, 0].mean() > got[0, 2].mean() + 0.5  # red, not the grey between the families
    assert "mix_mean" not in fit_gaussian(images)  # no components: one Gaussian


def test_per_class_gaussians_are_each_class_fitted_alone():
    images, labels = _two_colours(400, 4)
    stats = fit_gaussian(images, labels, 3)  # class 2 has no images: it takes the pooled Gaussian
    pooled = fit_gaussian(images)
    assert torch.equal(stats["mean"], pooled["mean"]) and torch.equal(stats["spectrum"], pooled["spectrum"])
    assert stats["class_mean"].shape == (3, 3, 4, 4) and stats["class_spectrum"].shape == (3, 4, 4, 3, 3, 2)
    for k in range(2):
        alone = fit_gaussian(images[labels == k])
        assert torch.allclose(stats["class_mean"][k], alone["mean"])
        assert torch.allclose(stats["class_spectrum"][k], alone["spectrum"])
    assert torch.equal(stats["class_mean"][2], pooled["mean"])
    assert "class_mean" not in fit_gaussian(images, labels, 0)  # unconditional: one Gaussian


def test_gaussian_x0_takes_each_images_class():
    """Each image takes its class's posterior mean, the null label the pooled one."""
    images, labels = _two_colours(400, 4)
    stats = fit_gaussian(images, labels, 2)
    xt = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    lab = torch.tensor([1, 0, 2])  # 2: the null label
    alpha, sigma = 0.3, 0.95
    alone = [gaussian_x0(fit_gaussian(images[labels == k]), xt, alpha, sigma) for k in range(2)]
    pooled = gaussian_x0(fit_gaussian(images), xt, alpha, sigma)
    got = gaussian_x0(stats, xt, alpha, sigma, lab)
    for i, want in enumerate((alone[1][0], alone[0][1], pooled[2])):
        assert torch.allclose(got[i], want, atol=1e-5), i
    assert torch.allclose(gaussian_x0(stats, xt, alpha, sigma), pooled, atol=1e-6)  # no labels: pooled


def test_guidance_leaves_the_closed_form_levels_alone():
    """Under --cfg w the Gaussian levels give each image its class's x̂0 as it is (w = 1 there): extrapolating
    the class means away from the pooled one would push colours past the data's. Network levels are guided."""
    images, labels = _two_colours(400, 4)
    stats = fit_gaussian(images, labels, 2)
    sched = Schedule.make("cosine", 1000)
    model = tiny_model(c=3, size=4, num_classes=2)
    lab = torch.tensor([1, 0, 2])
    xt = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = 990  # SNR far below 0.1
    abar = sched.abar[t].item()
    want = gaussian_x0(stats, xt, abar ** 0.5, (1 - abar) ** 0.5, lab).clamp(-1, 1)
    guided = make_denoiser(model, sched, "v", lab, 3.0, 2, gauss=stats, gauss_snr=0.1)
    assert torch.allclose(guided(xt, t)[0], want, atol=1e-6)
    plain = make_denoiser(model, sched, "v", lab, None, 2, gauss=stats, gauss_snr=0.1)
    assert not torch.allclose(guided(xt, 10)[0], plain(xt, 10)[0])  # where the network runs, w still acts


def sample(ck, n, **flags):
    """(images, card fields) of n images from ck sampled with these flags (sample.py's, None: not given)."""
    return generate_from_checkpoint(ck, resolve_spec(ck, **flags), n, "cpu", progress=False)


def test_sampling_only_with_the_closed_form_draws_each_labels_colours():
    images, labels = _two_colours()
    stats = fit_gaussian(images, labels, 2)
    model = tiny_model(c=3, size=8)
    model.forward = None  # never called
    lab = torch.arange(400) % 2
    x = generate_ddpm(model, Schedule.make("cosine", 1000), "v", 400, "cpu", steps=100, labels=lab, gauss=stats,
                      gauss_snr=1e12)
    data = images.float() / 127.5 - 1
    for k in range(2):
        got, want = x[lab == k].mean(dim=(0, 2, 3)), data[labels == k].mean(dim=(0, 2, 3))
        assert (got - want).abs().max() < 0.05, (k, got, want)  # the classes' means differ by 0.63 in R and B


def test_a_conditional_checkpoint_carries_one_gaussian_per_class(cond_run):
    ck = load_checkpoint(str(cond_run[0] / "ckpt.pt"))
    g = ck["objective"]["gauss"]
    assert g["class_mean"].shape == (2, 3, 16, 16) and g["class_spectrum"].shape == (2, 16, 16, 3, 3, 2)
    x, info = sample(ck, 4, gauss_snr=0.1, cfg=2.0)
    assert torch.isfinite(x).all() and info["gauss_snr"] == 0.1
    plain = sample(ck, 2, gauss_snr=0)[1]["nfe"]
    ck["args"]["data"] = "mnist"  # a conditional MNIST model takes its labels' Gaussians by default (recipes.py)
    assert sample(ck, 2)[1]["nfe"] < plain
    assert torch.equal(data_gaussian(ck)["class_mean"], g["class_mean"])


def test_a_checkpoint_carries_its_data_gaussian_and_the_closed_form_levels_save_network_calls(ddpm_run, zoom_run):
    ck = load_checkpoint(str(ddpm_run[0] / "ckpt.pt"))
    assert ck["objective"]["gauss"]["mean"].shape == (3, 16, 16)
    _, plain = sample(ck, 2, gauss_snr=0)
    x, info = sample(ck, 2, gauss_snr=0.1)
    assert x.shape == (2, 3, 16, 16) and info["gauss_snr"] == 0.1 and 0 < info["nfe"] < plain["nfe"], info
    assert sample(ck, 2)[1]["nfe"] == info["nfe"]  # maps: on by default
    assert "gauss_snr" not in sample(ck, 2, sampler="consistency", steps=2)[1]
    ck["args"]["data"] = "mnist"  # off by default for an unconditional one (recipes.py)
    assert sample(ck, 2)[1]["nfe"] == plain["nfe"]
    del ck["objective"]["gauss"]  # sampling needs only the checkpoint: without its Gaussian, one line
    with pytest.raises(UserError, match="stores no Gaussian"):
        sample(ck, 2, gauss_snr=0.1)
    with pytest.raises(UserError, match="--gauss-snr"):
        resolve_spec(load_checkpoint(str(zoom_run[0] / "ckpt.pt")), gauss_snr=0.1)


def test_gauss_mix_takes_the_stored_mixture_and_the_card_says_so(ddpm_run, tmp_path, capsys):
    """--gauss-mix: the mixture training stored changes the images and the card records its size; a checkpoint
    without one samples with its single Gaussian and a warning. Training on coffee stores the mixture its sampling
    takes (recipes.py)."""
    import argparse
    from objectives import DDPM
    from data import make_maps
    ck = load_checkpoint(str(ddpm_run[0] / "ckpt.pt"))
    assert "mix_mean" not in ck["objective"]["gauss"]
    one, info1 = sample(ck, 2, gauss_snr=0.1)
    x, info = sample(ck, 2, gauss_snr=0.1, gauss_mix=True)
    assert "stores no mixture" in capsys.readouterr().err and "gauss_mix" not in info and torch.equal(x, one)
    args = argparse.Namespace(data="coffee", schedule="cosine", T=100, pred="eps", min_snr=0.0, learn_sigma=False,
                              label_drop=0.1, cond=False)
    obj = DDPM()
    obj.setup(args, make_maps(64, 16, seed=1))
    assert obj.state()["gauss"]["mix_mean"].shape[0] == 8
    ck["objective"]["gauss"] = obj.state()["gauss"]
    mix, info8 = sample(ck, 2, gauss_snr=0.1, gauss_mix=True)
    assert info8["gauss_mix"] == 8 and "gauss_mix" not in info1 and not torch.equal(one, mix)
    assert "mix_mean" not in data_gaussian(ck) and data_gaussian(ck, mix=True)["mix_mean"].shape[0] == 8
    code, log = run_here("sample.py", "--ckpt", str(ddpm_run[0] / "ckpt.pt"), "--n", "2", "--gauss-mix", "3",
                         "--out", str(tmp_path / "bad"), ok=False)
    one_line_error(code, log)


@pytest.mark.parametrize("removed", [dict(pred="gauss"), dict(schedule_shift=2.0), dict(min_snr_plus_one=True),
                                     dict(train_snr_min=0.05)])
def test_a_checkpoint_made_with_a_removed_option_samples_or_is_refused_in_one_line(ddpm_run, tmp_path, removed):
    """Options of experiments that were not kept: one that changed the schedule or the prediction is refused when
    sampled; one that only shaped training samples; none resumes."""
    ck = torch.load(ddpm_run[0] / "ckpt.pt", weights_only=True)
    ck["args"].update(removed)
    path = tmp_path / "old" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(ck, path)
    code, log = run_here("sample.py", "--ckpt", str(path), "--n", "2", "--out", str(tmp_path / "s"),
                         ok="min_snr_plus_one" in removed or "train_snr_min" in removed)
    if code:
        one_line_error(code, log)
        assert "no longer has" in log
    code, log = run_here("train_ddpm.py", "--resume", "--out", str(path.parent), "--steps", "9", ok=False)
    one_line_error(code, log)
    assert "no longer has" in log
