"""Per-sample scores (the realism score, the classifier's confidence and class), the scores files fid.py keeps
beside its samples, and plots.py goodbad's sheets of the best and the worst samples."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import SHARED_DATA, one_line_error, run_here
from metrics import knn_radii, precision_recall, realism


# ---- the realism score against its definition ---------------------------------------------------

def realism_by_hand(real, fake, k):
    """Kynkaanniemi et al. 2019, sec. 5, written out: each real's distance to its k-th nearest other real, the half
    with the smallest radii kept (radius <= the median), R(g) = max over kept reals of radius / distance."""
    radii = []
    for i, r in enumerate(real):
        d = sorted(float(np.linalg.norm(r - o)) for j, o in enumerate(real) if j != i)
        radii.append(d[k - 1])
    median = float(np.median(radii))
    return [max(radii[i] / np.linalg.norm(g - real[i]) for i in range(len(real)) if radii[i] <= median) for g in fake]


def test_realism_matches_the_papers_definition():
    real = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])  # 1-NN radii 1, 1, 2: the median drops the point at 3
    fake = np.array([[0.5, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 0.25]])
    r = realism(real, fake, k=1)
    # (0.5, 0): half a radius from both kept points; (3, 0): on the dropped point, 2 and 3 from the kept ones;
    # (0, 2): 2 from (0, 0) and sqrt 5 from (1, 0); (1, 0.25): a quarter radius from (1, 0)
    assert np.allclose(r.numpy(), [2.0, 0.5, 0.5, 4.0], rtol=1e-6), r
    assert np.allclose(r.numpy(), realism_by_hand(real, fake, 1), rtol=1e-6)
    gen = np.random.default_rng(0)
    real, fake = gen.normal(size=(40, 5)), gen.normal(size=(25, 5)) * 1.5
    for k in (1, 3):
        r = realism(real, fake, k=k)
        assert np.allclose(r.numpy(), realism_by_hand(real, fake, k), rtol=1e-5)
        assert np.allclose(realism(real, fake, k, knn_radii(real, k)).numpy(), r.numpy())  # the balls, shared
    precision, _ = precision_recall(real, fake)  # R >= 1: inside a kept ball, so inside the union
    assert (realism(real, fake).numpy() >= 1).mean() <= precision
    with pytest.raises(ValueError):
        realism(real[:3], fake)


def seed_classifier(cache, ref, size, channels, names, data=None, steps=40):
    """A classifier in fid.py's cache where it looks for one (features.classifier_path), so that the Classifier
    extractor loads it instead of training its own for a minute: trained for a few steps on `data`, or untrained."""
    from checkpoint import save_atomic
    from data import to_model
    from features import SmallCNN, classifier_path
    torch.manual_seed(0)
    net = SmallCNN(channels, len(names))
    if data is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # conftest puts it back; two threads beside other work are slower here
        opt, gen = torch.optim.Adam(net.parameters(), lr=5e-3), torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(0, len(data), (32,), generator=gen)
            loss = F.cross_entropy(net(to_model(data.images[idx]))[1], data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.set_num_threads(threads)
    os.makedirs(cache, exist_ok=True)
    save_atomic({"state": net.eval().state_dict(), "class_names": names, "accuracy": None, "in_ch": channels,
                 "dataset": ref.split(":")[0], "size": size}, classifier_path(ref, size, channels, str(cache)))


def test_realism_ranks_held_out_digits_above_noise_and_blur(tmp_path):
    """Real MNIST digits the reference does not hold score above Gaussian noise and above blurred copies of
    themselves, in the classifier extractor's features (the Inception network takes ~0.3 s an image on 2 CPU cores)."""
    if not os.path.isdir(os.path.join(SHARED_DATA, "MNIST")):
        pytest.skip("MNIST is not in ../shared/data")
    from torchvision.transforms.functional import gaussian_blur
    from features import Classifier, load_ref_data, ref_features
    train, test = (load_ref_data("mnist", s, SHARED_DATA, 28) for s in ("train", "test"))
    seed_classifier(tmp_path, "mnist:test", 28, 1, train.class_names, train)
    ext = Classifier("mnist:test", SHARED_DATA, 28, 1, str(tmp_path))
    feats_ref, _, n_ref, _ = ref_features(ext, "mnist:test", SHARED_DATA, 28, 500, str(tmp_path), progress=False)
    held = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[n_ref:n_ref + 64]]
    noise = (128 + 64 * torch.randn(held.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255).byte()
    blurred = gaussian_blur(held.float(), 9, 2.0).round().byte()
    r = {name: realism(feats_ref, ext(x, False)[0]).numpy() for name, x in
         (("held", held), ("noise", noise), ("blurred", blurred))}
    above = lambda a, b: (r[a][:, None] > r[b][None]).mean()  # noqa: E731  (the share of pairs in that order)
    assert np.median(r["held"]) > 2 * np.median(r["blurred"]) and above("held", "blurred") > 0.8, r
    assert r["held"].min() > r["noise"].max(), r


# ---- fid.py keeps the scores, plots.py draws the sheets -----------------------------------------

MAPS = ["mostly land", "mostly water"]


@pytest.mark.slow
def test_fid_writes_scores_and_goodbad_draws_sheets(cond_run, zoom_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as helpers.run does: two threads beside other work crawl here
    torch.set_num_threads(1)  # (fid.py leaves the count alone under OMP_NUM_THREADS; conftest puts it back)
    seed_classifier(tmp_path / "cache", "maps:test", 16, 3, MAPS)
    common = ["--ref", "maps:test", "--n-ref", "16", "--extractor", "classifier", "--metrics", "fid,pr",
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    out = tmp_path / "cond"
    run_here("fid.py", "--ckpt", str(cond_run[0] / "ckpt.pt"), "--n", "12", "--steps", "2", "--out", str(out), *common)
    (samples,) = out.glob("samples_*.npz")
    scores = out / samples.name.replace("samples_", "scores_")
    z = np.load(scores)
    assert list(z["index"]) == list(range(12)) and int(z["n"]) == 12 and str(z["ref"]) == "maps:test"
    assert z["realism"].shape == (12,) and np.all(z["realism"] > 0) and str(z["realism_extractor"]) == "classifier"
    assert np.array_equal(z["realism"], z["realism_classifier"]) and int(z["n_ref"]) == 16 and int(z["k"]) == 3
    assert np.all((z["confidence"] >= 0.5) & (z["confidence"] <= 1)) and set(z["class"]) <= {0, 1}
    assert list(z["label"]) == [0, 1] * 6 and list(z["label_names"]) == MAPS == list(z["class_names"])  # asked for
    assert z["probs"].shape == (12, 2) and np.allclose(z["label_prob"], z["probs"][np.arange(12), z["label"]])
    assert not list(out.glob("*.part*"))
    import json
    card = json.loads(open(out / "scores.jsonl").readline())
    assert card["per_sample"] == str(scores) and "gen_labels" not in card
    for by in ("realism", "confidence", "label_prob"):
        png = tmp_path / f"cond_{by}.png"
        code, log = run_here("plots.py", "goodbad", "--samples", str(samples), "--by", by, "--k", "4", "--out", str(png))
        assert png.stat().st_size > 5000 and "wrote" in log
    from goodbad import read_scores, sheet_rows
    sets = [(str(samples), *read_scores(str(samples)))]
    k, rows, key = sheet_rows(sets, "realism", 4)
    assert key == "label" and [r[0] for r in rows] == MAPS  # one row per class asked for
    for _, best, worst, _ in rows:
        assert len(best) == 4 and np.all(np.diff(z["realism"][best]) <= 0) and np.all(np.diff(z["realism"][worst]) >= 0)
    assert set(rows[0][1]) <= set(range(0, 12, 2))
    k, rows, key = sheet_rows(sets, "confidence", 8, per_class=False)
    assert key is None and [len(r[1]) for r in rows] == [8] and z["confidence"][rows[0][1][0]] == z["confidence"].max()
    # a zoom checkpoint: one scores file per --start, and one sheet over the starts (a row each)
    zout = tmp_path / "zoom"
    run_here("fid.py", "--ckpt", str(zoom_run[0] / "ckpt.pt"), "--n", "8", "--start", "bank,hist", "--out", str(zout),
             *common)
    starts = sorted(zout.glob("samples_*.npz"))
    assert [p.name for p in starts] == ["samples_naive_bank.npz", "samples_naive_hist.npz"]
    for p in starts:
        assert np.load(zout / p.name.replace("samples_", "scores_"))["realism"].shape == (8,)
    png = tmp_path / "zoom.png"
    run_here("plots.py", "goodbad", "--samples", *map(str, starts), "--no-per-class", "--k", "3", "--out", str(png))
    assert png.stat().st_size > 5000
    # fid.py --samples writes the scores beside the file it read (a copy elsewhere: beside the copy)
    import shutil
    copy = tmp_path / "elsewhere" / "mine.npz"
    copy.parent.mkdir()
    shutil.copy(samples, copy)
    run_here("fid.py", "--samples", str(copy), *common)
    assert np.allclose(np.load(tmp_path / "elsewhere" / "scores_mine.npz")["realism"], z["realism"], rtol=1e-5)

    # bad input: one line, exit 2, nothing written
    bad = tmp_path / "bad.png"
    for args in (["--samples", str(samples), "--k", "13"],  # k larger than N
                 ["--samples", str(tmp_path / "elsewhere" / "none.npz")],
                 ["--samples", str(samples), "--by", "sharpness"],
                 ["--samples", str(starts[0]), "--by", "confidence", "--scores", str(scores)],  # 8 samples, 12 scores
                 ["--samples", str(samples), "--scores", str(scores), str(scores)]):
        one_line_error(*run_here("plots.py", "goodbad", *args, "--out", str(bad), ok=False))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(samples, lone / samples.name)  # a samples file without its scores file
    code, log = run_here("plots.py", "goodbad", "--samples", str(lone / samples.name), "--out", str(bad), ok=False)
    one_line_error(code, log)
    assert "no scores file" in log and "fid.py" in log
    other = np.load(samples)["images"].copy()
    other[0] ^= 1  # as many images, other pixels
    np.savez(lone / samples.name, images=other)
    shutil.copy(scores, lone / scores.name)
    code, log = run_here("plots.py", "goodbad", "--samples", str(lone / samples.name), "--out", str(bad), ok=False)
    one_line_error(code, log)
    assert "other images" in log
    (lone / "junk.npz").write_bytes(b"not a zip")
    one_line_error(*run_here("plots.py", "goodbad", "--samples", str(samples), "--scores", str(lone / "junk.npz"),
                             "--out", str(bad), ok=False))
    assert not bad.exists()
    one_line_error(*run_here("fid.py", "--samples", str(samples), "--out", str(tmp_path / "noref"), ok=False))  # no --ref
    assert not (tmp_path / "noref").exists()


def test_scores_path_sits_beside_the_samples(tmp_path):
    from goodbad import scores_path
    assert scores_path("run/samples_ddim50.npz") == os.path.join("run", "scores_ddim50.npz")
    assert scores_path("run/samples.npz") == os.path.join("run", "scores.npz")
    assert scores_path("run/mine.npz", "out") == os.path.join("out", "scores_mine.npz")
    assert scores_path(str(tmp_path)) == os.path.join(str(tmp_path), "scores.npz")
    assert scores_path(str(tmp_path), "out") == os.path.join("out", f"scores_{tmp_path.name}.npz")
