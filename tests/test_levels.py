"""levels.py: the x̂0 error per noise level, its closed form for the Gaussian, the script end to end and its bad input."""
import json
import re

import torch

from gaussian import fit_gaussian
from helpers import one_line_error, run_here
from levels import gaussian_denoiser, level_errors, level_of
from schedules import Schedule


def test_the_gaussians_error_on_its_own_images_is_its_posterior_variance_at_every_level():
    # pixels independent across space and channels, N(m_c, s_c²): each channel's posterior variance is
    # s² σ² / (α² s² + σ²), the whole error of the Gaussian's x̂0 on images drawn from it
    m, s = torch.tensor([0.2, -0.2, 0.0]), torch.tensor([0.25, 0.15, 0.08])  # 3.2 std inside [-1, 1]

    def draw(n, seed):  # as uint8 images, the form the data has
        x = m.view(1, 3, 1, 1) + s.view(1, 3, 1, 1) * torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        return x.mul(127.5).add(127.5).round().clamp(0, 255).to(torch.uint8)
    stats = fit_gaussian(draw(8000, 0))
    sched = Schedule.make("cosine", 1000)
    x0 = draw(1024, 99).float() / 127.5 - 1  # not a seed level_errors draws its noise with
    snrs = [0.01, 0.3, 3, 100]
    err = level_errors({"gaussian": gaussian_denoiser(stats, None)}, sched, x0, snrs)["gaussian"]
    for snr, e in zip(snrs, err):
        abar = sched.abar[level_of(sched, snr)].item()
        a2, s2 = abar, 1 - abar
        want = (s ** 2 * s2 / (a2 * s ** 2 + s2)).mean().item()
        assert abs(e / want - 1) < 0.06, (snr, e, want)
    assert err == sorted(err, reverse=True)  # cleaner levels, smaller errors


def test_level_of_takes_the_nearest_level_and_refuses_snrs_outside_the_schedule():
    sched = Schedule.make("cosine", 1000)
    t = level_of(sched, 1.0)
    assert abs(sched.snr()[t].log().item()) < 0.05
    for bad in (1e-12, 1e12):
        try:
            level_of(sched, bad)
        except Exception as e:
            assert "levels span SNR" in str(e)
        else:
            raise AssertionError(f"SNR {bad} was accepted")


def test_levels_script_writes_cards_a_figure_and_a_results_section(ddpm_run, cond_run, tmp_path):
    """An unconditional checkpoint is set beside its Gaussian and the mixture training stored (as coffee's runs
    store one), a conditional one beside its class Gaussians."""
    import torch
    from data import make_maps
    from gaussian import fit_gaussian
    ck = torch.load(ddpm_run[0] / "ckpt.pt", weights_only=True)
    ck["objective"]["gauss"] = fit_gaussian(make_maps(64, 16, seed=1).images, components=2)
    (tmp_path / "mixed").mkdir()
    mixed = tmp_path / "mixed" / "ckpt.pt"
    torch.save(ck, mixed)
    out = tmp_path / "lv"
    code, log = run_here("levels.py", "--ckpt", str(mixed), str(cond_run[0] / "ckpt.pt"),
                         "--ref", "maps:test", "--n", "12", "--snrs", "10,0.1", "--out", str(out))
    cards = [json.loads(line) for line in open(out / "levels.jsonl")]
    assert len(cards) == 2 and (out / "levels.png").stat().st_size > 0
    plain, cond = cards
    assert plain["snr"][0] < 0.2 < 5 < plain["snr"][1]  # sorted, each the schedule's nearest level
    assert set(plain["mse"]) == {"network", "gaussian", "mixture of 2"}
    assert set(cond["mse"]) == {"network", "gaussian"}  # a conditional model is set beside its class Gaussians
    assert all(len(v) == 2 and all(e > 0 for e in v) for c in cards for v in c["mse"].values())
    assert plain["n"] == 12 and plain["ref"] == "maps:test" and plain["commit"] and "levels.py" in plain["command"]
    assert "network / Gaussian" in log
    run_here("plots.py", "levels", str(out / "levels.jsonl"), "--out", str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").stat().st_size > 0
    code, page = run_here("plots.py", "results", str(out / "levels.jsonl"))
    rows = [line for line in page.splitlines() if line.startswith("| " + str(mixed))]
    assert "## Denoising error per noise level" in page and len(rows) == 1
    assert re.search(r"\| 0\.1\d*: [\d.]+ / [\d.]+ / [\d.]+ · (9\.\d+|10\.?\d*): ", rows[0]), rows[0]  # net / Gaussian / mixture


def test_levels_bad_input_is_one_line(zoom_run, ddpm_run, tmp_path):
    ck = str(ddpm_run[0] / "ckpt.pt")
    one_line_error(*run_here("levels.py", "--ckpt", str(zoom_run[0] / "ckpt.pt"), "--ref", "maps:test", ok=False))
    one_line_error(*run_here("levels.py", "--ckpt", ck, "--ref", "maps:test", "--snrs", "1e9", "--n", "4",
                             "--out", str(tmp_path), ok=False))
    one_line_error(*run_here("levels.py", "--ckpt", ck, "--snrs", "0,1", ok=False))
    code, out = run_here("levels.py", "--ckpt", ck, "--ref", "mnist:test", "--data-root", str(tmp_path), "--n", "4",
                         "--out", str(tmp_path), ok=False)
    one_line_error(code, out)
    assert not (tmp_path / "levels.jsonl").exists()  # nothing written for a refused run
    one_line_error(*run_here("plots.py", "levels", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "f.png"), ok=False))
