"""fid.py and levels.py refuse bad input in one line (exit 2) and write nothing when they do: every checkpoint,
sampling job, sample file and reference is checked before any work. Tiny runs, --n 4."""
import os

import numpy as np
import pytest
import torch

from helpers import SHARED_DATA, TINY, inception_or_skip, one_line_error, run, run_here


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A 1-channel DDPM (mnist 16 px, 1 step): a checkpoint of another channel count than maps'."""
    if not os.path.isdir(os.path.join(SHARED_DATA, "MNIST")):
        pytest.skip("no MNIST under shared/data")
    out = tmp_path_factory.mktemp("grey") / "run"
    run("train_ddpm.py", *TINY, "--data", "mnist", "--data-root", SHARED_DATA, "--size", "16", "--steps", "1",
        "--sample-every", "0", "--out", str(out))
    return out


def refused(out, *args):
    """One line, exit 2, and not even the output folder written."""
    code, log = run_here(*args, ok=False)
    one_line_error(code, log)
    assert not os.path.exists(out), (args, sorted(os.listdir(out)))
    return log.strip().splitlines()[-1]


def _without_gaussian(ck_path, tmp_path):
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    ck["objective"] = {}
    ck.pop("data_fingerprint", None)
    path = tmp_path / "nogauss" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(ck, path)
    return str(path)


# ---- 1. levels.py: every checkpoint checked before the first card ------------------------------------------

def test_levels_checks_every_checkpoint_before_writing_a_card(ddpm_run, zoom_run, grey_run, tmp_path):
    good = str(ddpm_run[0] / "ckpt.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(good, "rb").read()[:4000])
    out = tmp_path / "out"
    flags = ["--ref", "maps:test", "--n", "4", "--snrs", "1", "--out", str(out)]
    for bad in (str(grey_run / "ckpt.pt"),  # another channel count than --ref
                _without_gaussian(good, tmp_path),  # no Gaussian of its data to compare with
                str(zoom_run[0] / "ckpt.pt"), str(tmp_path / "missing.pt"), str(trunc)):
        refused(out, "levels.py", "--ckpt", good, bad, *flags)


def test_levels_careless_input(ddpm_run, grey_run, tmp_path):
    good, out = str(ddpm_run[0] / "ckpt.pt"), tmp_path / "out"
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for flags in (["--ref", "nope:test"], ["--ref", f"folder:{tmp_path / 'nowhere'}"],
                  ["--ref", f"folder:{tmp_path / 'empty'}"], ["--ref", "maps:val"],
                  ["--ref", "mnist:test", "--data-root", SHARED_DATA],  # 1 channel for a 3-channel model
                  ["--snrs", "0,1"], ["--snrs", "-1"], ["--snrs", "1,,2"], ["--snrs", "1e9"], ["--n", "0"]):
        refused(out, "levels.py", "--ckpt", good, "--n", "4", "--snrs", "1", "--ref", "maps:test", *flags,
                "--out", str(out))
    refused(out, "levels.py", "--ckpt", str(grey_run / "ckpt.pt"), "--ref", "maps:test", "--n", "4", "--snrs", "1",
            "--out", str(out))
    one_line_error(*run_here("levels.py", "--ckpt", good, "--ref", "maps:test", "--n", "4", "--snrs", "1",
                             "--out", str(tmp_path / "file" / "out"), ok=False))


# ---- 2. fid.py --ckpt: every job resolved before the first is sampled --------------------------------------

def test_fid_resolves_every_job_before_sampling(ddpm_run, zoom_run, tmp_path):
    good, zoom = str(ddpm_run[0] / "ckpt.pt"), str(zoom_run[0] / "ckpt.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(good, "rb").read()[:4000])
    out = tmp_path / "out"
    base = ["--ref", "maps:test", "--n", "4", "--n-ref", "4", "--out", str(out)]
    cases = [
        ["--ckpt", good, str(tmp_path / "missing.pt"), "--steps", "1"],
        ["--ckpt", good, str(trunc), "--steps", "1"],
        ["--ckpt", good, zoom, "--steps", "1"],  # --steps is not a zoom option
        ["--ckpt", zoom, good, "--start", "hist"],  # --start is not a DDPM option
        ["--ckpt", good, "--steps", "1", "--samplers", "ddim,bogus"],
        ["--ckpt", good, "--sweep-steps", "1,x"],
        ["--ckpt", good, "--sweep-steps", "1,0"],
        ["--ckpt", good, "--steps", "1", "--spacing", "bogus"],
        ["--ckpt", good, "--steps", "1", "--init", "maps:train", "--init-snr", "1e-9,1"],  # 1: no level that clean
        ["--ckpt", good, "--steps", "1", "--init", "maps:train", "--init-snr", "1e-9,-1"],
        ["--ckpt", good, "--steps", "1", "--init", "maps:train"],
        ["--ckpt", zoom, "--init", "maps:train", "--init-snr", "1"],  # --init is a DDPM option
        ["--ckpt", good, "--steps", "1", "--samplers", "ddim,ddim"],  # both would be samples_ddim1.npz
    ]
    for flags in cases:
        refused(out, "fid.py", *flags, *base)


# ---- 3. fid.py --samples and references: bad files -----------------------------------------------------------

def _png(path, value=0, size=16):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_fid_bad_samples_are_one_line(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    np.savez(s / "float.npz", images=np.random.rand(4, 16, 16, 3).astype(np.float32))
    np.savez(s / "two_arrays.npz", labels=np.arange(4), pixels=np.zeros((4, 16, 16, 3), np.uint8))
    np.savez(s / "chw.npz", images=np.zeros((4, 3, 16, 16), np.uint8))
    np.savez(s / "none.npz")
    np.savez(s / "zero.npz", images=np.zeros((0, 16, 16, 3), np.uint8))
    np.savez(s / "one.npz", images=np.zeros((1, 16, 16, 3), np.uint8))
    np.savez(s / "three.npz", images=np.zeros((3, 16, 16, 3), np.uint8))  # KID and P/R need 4
    np.save(s / "plain.npy", np.zeros((4, 16, 16, 3), np.uint8))
    os.replace(s / "plain.npy", s / "npy.npz")  # an .npy named .npz
    (s / "text.npz").write_text("hello\n")
    (s / "empty_file.npz").write_bytes(b"")
    _png(tmp_path / "one" / "a.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("not a png")
    (tmp_path / "nonimg").mkdir()
    (tmp_path / "nonimg" / "a.txt").write_text("x")
    out = tmp_path / "out"
    for src in ["float.npz", "two_arrays.npz", "chw.npz", "none.npz", "zero.npz", "one.npz", "three.npz", "npy.npz",
                "text.npz", "empty_file.npz", "../one", "../bad", "../nonimg", "../nowhere", "../nowhere.npz"]:
        last = refused(out, "fid.py", "--samples", str(s / src), "--ref", "maps:test", "--n-ref", "4", "--out", str(out))
        if src in ("one.npz", "three.npz", "../one"):
            assert "at least 4" in last, last


def test_fid_cifar_npz_reference_without_its_arrays(tmp_path):
    np.savez(tmp_path / "samples.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "no_is_test.npz", x=np.zeros((8, 32, 32, 3), np.uint8), y=np.zeros(8, np.int64))
    np.savez(tmp_path / "float_x.npz", x=np.zeros((8, 32, 32, 3), np.float32), y=np.zeros(8, np.int64),
             is_test=np.ones(8, bool))
    (tmp_path / "text.npz").write_text("hello\n")
    out = tmp_path / "out"
    for root in ("no_is_test.npz", "float_x.npz", "text.npz"):
        last = refused(out, "fid.py", "--samples", str(tmp_path / "samples.npz"), "--ref", "cifar10:test",
                       "--data-root", str(tmp_path / root), "--n-ref", "4", "--out", str(out))
        assert root in last, last


def test_colour_gap_of_a_flat_reference_is_defined():
    from metrics import colour_gap
    black = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    assert colour_gap(black, black) is None or colour_gap(black, black) == 0
    assert colour_gap(black + 128, black) is None  # a relative gap to a channel with no spread is undefined
    colour = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert colour_gap(colour, colour) == 0
    grey = colour[:, :1]
    assert colour_gap(grey, grey.expand(-1, 3, -1, -1)) == 0 == colour_gap(grey.expand(-1, 3, -1, -1), grey)


def test_fid_against_a_flat_reference_notes_the_colour_gap(tmp_path):
    inception_or_skip()
    for i in range(4):
        _png(tmp_path / "black" / f"{i}.png")
    np.savez(tmp_path / "samples.npz", images=np.random.randint(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    code, log = run_here("fid.py", "--samples", str(tmp_path / "samples.npz"), "--ref", f"folder:{tmp_path / 'black'}",
                         "--out", str(tmp_path / "out"), "--metrics", "fid,kid")
    import json
    card = json.loads((tmp_path / "out" / "scores.jsonl").read_text().splitlines()[-1])
    assert "colour_gap" not in card and "colour_gap_note" in card


# ---- 4. fid.py: careless input --------------------------------------------------------------------------------

def test_fid_careless_input(ddpm_run, grey_run, tmp_path):
    good = str(ddpm_run[0] / "ckpt.pt")
    out = tmp_path / "out"
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for i in range(2):
        _png(tmp_path / "two" / f"{i}.png", 40 * i)
    base = ["--ckpt", good, "--steps", "1", "--n", "4", "--n-ref", "4"]
    cases = [
        ["--ref", "nope:test"], ["--ref", f"folder:{tmp_path / 'nowhere'}"], ["--ref", f"folder:{tmp_path / 'empty'}"],
        ["--ref", "maps:val"],
        ["--ref", f"folder:{tmp_path / 'two'}"],  # 2 reference images: KID and precision/recall need 4
        ["--ref", "maps:test", "--n", "1"], ["--ref", "maps:test", "--n", "3"],  # KID needs 4
        ["--ref", "maps:test", "--extractor", "bogus"], ["--ref", "maps:test", "--metrics", "bogus"],
        ["--ref", "maps:test", "--metrics", ""],
        ["--ref", "maps:test", "--inception", str(tmp_path / "missing.pt")],
        ["--ref", "maps:test", "--metrics", "fid,copies", "--train-ref", "nope:train"],
        ["--ref", f"folder:{tmp_path / 'two'}", "--metrics", "fid", "--extractor", "classifier"],  # no classes
        # grey reference for colour samples: Inception repeats grey to 3 channels, a classifier cannot
        ["--ref", "mnist:test", "--data-root", SHARED_DATA, "--extractor", "classifier", "--metrics", "fid"],
        ["--ref", "maps:test", "--cache-dir", str(tmp_path / "file" / "cache")],
        ["--ref", "maps:test", "--cfg", "2"],
    ]
    for flags in cases:
        refused(out, "fid.py", *base, *flags, "--out", str(out))
    refused(out, "fid.py", "--ckpt", str(grey_run / "ckpt.pt"), "--steps", "1", "--n", "4", "--n-ref", "4",
            "--ref", "maps:test", "--extractor", "classifier", "--metrics", "fid", "--out", str(out))
    refused(out, "fid.py", "--floor", "maps:train", "--ref", "maps:test", "--n", "3", "--n-ref", "4", "--out", str(out))
    refused(out, "fid.py", "--floor", "noise", "--out", str(out))  # no --ref
    one_line_error(*run_here("fid.py", *base, "--ref", "maps:test", "--out", str(tmp_path / "file" / "out"), ok=False))


def test_fid_checkpoint_given_as_a_bare_file_name(ddpm_run, tmp_path, monkeypatch):
    """fid.py --ckpt ckpt.pt from inside the run folder keeps its samples and card there."""
    inception_or_skip()
    import shutil
    shutil.copy(ddpm_run[0] / "ckpt.pt", tmp_path / "ckpt.pt")
    monkeypatch.chdir(tmp_path)
    run_here("fid.py", "--ckpt", "ckpt.pt", "--steps", "1", "--n", "4", "--n-ref", "4", "--ref", "maps:test",
             "--metrics", "fid", "--cache-dir", str(tmp_path / "cache"))
    assert (tmp_path / "scores.jsonl").is_file() and (tmp_path / "samples_dpmpp2m_sde1.npz").is_file()


def test_checkpoints_of_two_runs_with_one_folder_name_keep_apart():
    """Two checkpoints in folders of one name (teacher/run, student/run) used to write one samples_run_*.npz over
    the other; their labels now take folders from above until they differ."""
    from sweeps import checkpoint_names
    assert checkpoint_names(["runs/a/ckpt.pt", "runs/a/ckpt_10min.pt"]) == ["a", "a_ckpt_10min"]
    assert checkpoint_names(["t/run/ckpt.pt", "s/run/ckpt.pt"]) == ["t_run", "s_run"]
