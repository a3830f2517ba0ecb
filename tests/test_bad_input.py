"""Bad input: one line naming the thing and the fix, exit code 2, nothing lost or half-written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import HERE, TINY, one_line_error, run, run_here


# ---- bad input --------------------------------------------------------------------------------

def test_bad_input_one_line_exit_2(tmp_path):
    one_line_error(*run_here("train_ddpm.py", "--data", "nope", "--steps", "1", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--minutes", "1", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--device", "cuda:7", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--resume", "--out", str(tmp_path / "none"), ok=False))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    one_line_error(*run_here("sample.py", "--ckpt", str(junk), ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(tmp_path / "missing.pt"), ok=False))


def test_diverging_loss_stops_with_one_line(tmp_path):
    code, out = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "30", "--optimizer", "sgd", "--lr", "1e6",
                         "--grad-clip", "0", "--out", str(tmp_path / "nan"), ok=False)
    one_line_error(code, out)
    assert "training diverged" in out and "at or before step" in out


BAD_NUMBERS = [  # (script, flags, what the one line must say)
    ("train_ddpm.py", ["--batch", "0"], "argument --batch: 0 is out of range: give an integer >= 1"),
    ("train_ddpm.py", ["--batch", "-2"], "argument --batch"),
    ("train_ddpm.py", ["--minutes", "0"], "argument --minutes: 0 is out of range: give a number > 0"),
    ("train_ddpm.py", ["--minutes", "inf"], "argument --minutes"),
    ("train_ddpm.py", ["--steps", "0"], "argument --steps"),
    ("train_ddpm.py", ["--steps", "-5"], "argument --steps"),
    ("train_ddpm.py", ["--epochs", "0"], "argument --epochs"),
    ("train_ddpm.py", ["--lr", "0"], "argument --lr: 0 is out of range: give a number > 0"),
    ("train_ddpm.py", ["--lr", "-1"], "argument --lr"),
    ("train_ddpm.py", ["--lr", "fast"], "argument --lr: 'fast' is not a number > 0"),
    ("train_ddpm.py", ["--T", "0"], "argument --T"),
    ("train_ddpm.py", ["--ch", "0"], "argument --ch"),
    ("train_ddpm.py", ["--mults", "1,0,2"], "argument --mults: 0 is out of range: give an integer >= 1"),
    ("train_ddpm.py", ["--mults", "1,x"], "argument --mults: 'x' is not an integer >= 1"),
    ("train_ddpm.py", ["--ema-rampup", "1"], "argument --ema-rampup: 1 is out of range: give a number >= 0 and < 1"),
    ("train_ddpm.py", ["--label-drop", "1.5"], "argument --label-drop"),
    ("train_ddpm.py", ["--warmup", "-1"], "argument --warmup"),
    ("train_ddpm.py", ["--grad-clip", "-1"], "argument --grad-clip"),
    ("train_ddpm.py", ["--log-every", "0"], "argument --log-every"),
    ("train_ddpm.py", ["--n", "0"], "argument --n"),
    ("train_ddpm.py", ["--seed", "-1"], "argument --seed"),
    ("train_ddpm.py", ["--min-snr", "-5"], "argument --min-snr"),
    ("train_ddpm.py", ["--keep-at-minutes", "5,x"], "argument --keep-at-minutes"),
    ("train_ddpm.py", ["--keep-at-minutes", "0"], "argument --keep-at-minutes"),
    ("train_zoom_nearest.py", ["--final-size", "0"], "argument --final-size"),
    ("sample.py", ["--ckpt", "x.pt", "--batch", "0"], "argument --batch"),
    ("sample.py", ["--ckpt", "x.pt", "--steps", "0"], "argument --steps"),
    ("sample.py", ["--ckpt", "x.pt", "--n", "-1"], "argument --n"),
    ("sample.py", ["--ckpt", "x.pt", "--eta", "-1"], "argument --eta"),
    ("sample.py", ["--ckpt", "x.pt", "--noise", "nan"], "argument --noise"),
    ("sample.py", ["--ckpt", "x.pt", "--cfg", "inf"], "argument --cfg"),
    ("fid.py", ["--floor", "mnist:test", "--batch", "0"], "argument --batch"),
    ("fid.py", ["--floor", "mnist:test", "--n-ref", "abc"], "argument --n-ref: 'abc' is not an integer >= 1"),
    ("data.py", ["--size", "0"], "argument --size"),
    ("data.py", ["--n-maps", "0"], "argument --n-maps"),
    ("bench.py", ["--seconds", "0"], "argument --seconds"),
    ("sample.py", ["--ckpt", "x.pt", "--nope"], "unrecognized arguments: --nope"),
]


@pytest.mark.parametrize("script,flags,says", BAD_NUMBERS, ids=[f"{r[0]} {' '.join(r[1])}" for r in BAD_NUMBERS])
def test_bad_number_is_one_line_exit_2_nothing_written(tmp_path, script, flags, says):
    """Every number a user types is checked where it is parsed: one line naming the flag and the range."""
    code, out = run_here(script, *flags, "--out", str(tmp_path / "out"), ok=False)
    one_line_error(code, out)
    assert [line for line in out.splitlines() if line.strip()] == [line for line in out.splitlines() if says in line]
    assert not (tmp_path / "out").exists()


def test_run_folder_is_claimed_atomically(tmp_path):
    """Two runs with the same --out never share a folder, and a folder left by a failed start is not reused."""
    import argparse
    from runs import claim_run_dir
    args = argparse.Namespace(out=str(tmp_path / "run"), data="maps", size=16)
    first, second = claim_run_dir("ddpm", args), claim_run_dir("ddpm", args)
    assert (first, second) == (str(tmp_path / "run"), str(tmp_path / "run_2"))
    (tmp_path / "file").write_text("")
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--out", str(tmp_path / "file" / "x"),
                             ok=False))


def test_flags_that_do_not_apply_and_unwritable_outputs_are_refused_before_work(tmp_path):
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--sample-every", "0", "--out", str(out))
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--cfg", "3", "--n", "2", ok=False)
    one_line_error(code, log)
    assert "--cfg needs a class-conditional checkpoint" in log
    for flags, says in ((["--eta", "0.5"], "--eta is DDIM's"), (["--start", "hist"], "--start and --noise are Cold Zoom"),
                        (["--noise", "0.1"], "--start and --noise are Cold Zoom")):
        code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", *flags, ok=False)
        one_line_error(code, log)
        assert says in log, log
    code, log = run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--start", "hist", "--ref", "maps:test",
                         ok=False)
    one_line_error(code, log)
    assert "--start is a Cold Zoom option" in log
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "1", "--sample-every", "0",
             "--out", str(zoom))
    for script, extra in (("sample.py", []), ("fid.py", ["--ref", "maps:test"])):
        code, log = run_here(script, "--ckpt", str(zoom / "ckpt.pt"), "--n", "2", "--steps", "5", *extra, ok=False)
        one_line_error(code, log)
        assert "are DDPM options" in log, log
    code, log = run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--n", "2", "--no-clip", ok=False)
    one_line_error(code, log)
    assert "--(no-)clip and --init are DDPM options" in log, log
    (tmp_path / "file").write_text("")
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--out", str(tmp_path / "file" / "s"),
                         ok=False)
    one_line_error(code, log)
    assert "cannot write there" in log and "images in" not in log  # refused before sampling


def test_fid_refuses_samples_in_the_wrong_layout_before_a_network_loads(tmp_path):
    rng = np.random.default_rng(0)
    bad = {"rgba": rng.integers(0, 256, (4, 8, 8, 4), dtype=np.uint8),
           "five": rng.integers(0, 256, (4, 8, 8, 5), dtype=np.uint8),
           "chw": rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8),
           "one_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
           "floats": rng.random((4, 8, 8, 3)),
           "objects": np.array([None, 1], dtype=object)}
    for name, arr in bad.items():
        np.savez(tmp_path / f"{name}.npz", images=arr)
    (tmp_path / "text.npz").write_text("not an archive")
    for name in [*bad, "text"]:
        code, log = run_here("fid.py", "--samples", str(tmp_path / f"{name}.npz"), "--ref", "mnist:test",
                             "--data-root", str(tmp_path), ok=False)
        one_line_error(code, log)
        assert "N x H x W x C" in log and "inception features" not in log, (name, log)


def test_unknown_split_and_bad_folds_are_one_line(tmp_path):
    code, log = run_here("data.py", "--data", "maps", "--n-maps", "8", "--size", "8", "--split", "validation",
                         "--out", str(tmp_path / "d"), ok=False)
    one_line_error(code, log)
    assert "split 'validation' of maps: use train or test" in log and not (tmp_path / "d").exists()
    one_line_error(*run_here("data.py", "--data", "coffee", "--split", "validation", ok=False))
    for folds in ("abc", "1,1"):
        code, log = run_here("train_ddpm.py", "--data", "coffee", "--data-root", str(tmp_path), "--folds", folds,
                             "--steps", "1", ok=False)
        one_line_error(code, log)
        assert "--folds" in log, log
    one_line_error(*run_here("train_ddpm.py", "--data", "coffee", "--data-root", str(tmp_path), "--folds", "abc",
                             "--steps", "1", ok=False))


def test_folder_images_decode_as_a_viewer_shows_them(tmp_path):
    """16-bit greys scale (not clip), transparency lands on white, palette/CMYK/LA decode, EXIF orientation applies."""
    from PIL import Image
    from imagefiles import decode_image
    grey16 = np.full((16, 16), 32896, dtype=np.uint16)  # 128 * 257: mid-grey
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (16, 16), (0, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = Image.new("RGB", (16, 16), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 8))  # red on top
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert abs(int(decode_image(tmp_path / "g16.png", 16, "L").float().mean()) - 128) <= 1
    assert decode_image(tmp_path / "clear.png", 16).min() == 255  # fully transparent -> white
    assert decode_image(tmp_path / "la.png", 16, "L").min() == 255
    assert decode_image(tmp_path / "pal.png", 16)[:, 0, 0].tolist() == [0, 255, 0]  # index 1, opaque
    r, g, b = decode_image(tmp_path / "cmyk.jpg", 16).float().mean(dim=(1, 2)).tolist()
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    x = decode_image(tmp_path / "rot.jpg", 16).float()
    assert x[2, :6].mean() > 200 and x[0, -6:].mean() > 200  # blue now on top, red below


def test_resume_refuses_any_typed_contradiction_and_follows_moved_data(tmp_path):
    """A flag typed on --resume that contradicts the run is refused even when it equals the default; the
    dataset may move (its content is its identity), but other data is refused."""
    from PIL import Image
    src = tmp_path / "photos"
    src.mkdir()
    for k in range(20):
        Image.new("RGB", (16, 16), (12 * k, 255 - 12 * k, 90)).save(src / f"{k:02d}.png")
    out = tmp_path / "run"
    common = [*TINY, "--data", "folder", "--size", "16", "--sample-every", "0"]
    run_here("train_ddpm.py", *common, "--data-root", str(src), "--steps", "2", "--augment", "crop_flip", "--out", str(out))
    assert json.loads((out / "config.json").read_text())["augment"] == "crop_flip"
    for flag in (("--preset", "small"), ("--augment", "flip")):
        code, log = run_here("train_ddpm.py", *common, "--steps", "4", "--resume", "--out", str(out), *flag, ok=False)
        one_line_error(code, log)
        assert f"{' '.join(flag)} contradicts the checkpoint" in log
    moved = tmp_path / "moved"
    src.rename(moved)
    code, log = run_here("train_ddpm.py", *common, "--data-root", str(moved), "--steps", "4", "--resume", "--out", str(out))
    assert "stopped (steps) at step 4" in log
    other = tmp_path / "other"
    other.mkdir()
    for k in range(20):
        Image.new("RGB", (16, 16), (5 * k, 9, 200)).save(other / f"{k:02d}.png")
    code, log = run_here("train_ddpm.py", *common, "--data-root", str(other), "--steps", "6", "--resume", "--out",
                         str(out), ok=False)
    one_line_error(code, log)
    assert "is not the data this run trained on" in log


def test_more_bad_input_one_line_exit_2(tmp_path):
    """The rest of the reliability list: sizes, folders, a zoom checkpoint given to a DDPM sampler."""
    for size in ("0", "5000"):
        one_line_error(*run_here("train_ddpm.py", *TINY, "--size", size, "--steps", "1", "--out", str(tmp_path / "s"),
                                 ok=False))
    one_line_error(*run_here("train_ddpm.py", "--data", "folder", "--data-root", str(tmp_path / "nowhere"), "--steps", "1",
                             ok=False))
    bad = tmp_path / "all_corrupt"
    bad.mkdir()
    for k in range(3):
        (bad / f"{k}.jpg").write_bytes(b"\xff\xd8\xff broken")
    one_line_error(*run_here("train_ddpm.py", "--data", "folder", "--data-root", str(bad), "--steps", "1", ok=False))
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "1", "--out", str(zoom))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--sampler", "ddim", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--cfg", "3", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--spacing", "karras", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--spacing", "quadratic", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(zoom / "ckpt.pt"), "--sweep-steps", "10,x", "--ref", "maps:test",
                             ok=False))
    for removed in (["--grid-steps", "5"], ["--schedule-shift", "2"], ["--pred", "gauss"], ["--train-snr-min", "0.1"]):
        one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", *removed,
                                 "--out", str(tmp_path / "g"), ok=False))
    assert not (tmp_path / "g").exists()


def test_divergence_never_overwrites_a_good_checkpoint(tmp_path):
    """A checkpoint after every step while SGD blows up: the message names the last checkpoint,
    and that checkpoint holds finite weights."""
    from checkpoint import load_checkpoint
    out = tmp_path / "nan"
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "200", "--optimizer", "sgd", "--lr", "3",
                         "--grad-clip", "0", "--ckpt-every", "0", "--sample-every", "0", "--out", str(out), ok=False)
    one_line_error(code, log)
    assert "training diverged" in log and f"the last good checkpoint is {out / 'ckpt.pt'}" in log, log[-1500:]
    ck = load_checkpoint(str(out / "ckpt.pt"))
    assert ck["step"] >= 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_training_writes_nothing_outside_its_run_folder(tmp_path):
    """Run from an empty working directory: every new file lands in --out."""
    work, out = tmp_path / "cwd", tmp_path / "cwd" / "myrun"
    work.mkdir()
    subprocess.run([sys.executable, os.path.join(HERE, "train_ddpm.py"), *TINY, "--size", "16", "--steps", "2",
                    "--out", str(out)], cwd=work, check=True, capture_output=True, timeout=300)
    stray = [p for p in work.rglob("*") if out not in p.parents and p != out]
    assert stray == [] and (out / "ckpt.pt").exists(), stray


class Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "ddpm", "model_config": {}, "payload": Evil()}, evil)
    code, log = run("sample.py", "--ckpt", str(evil), "--out", str(tmp_path / "o"), ok=False)
    one_line_error(code, log)
    assert "refused" in log and not os.path.exists(os.path.join(HERE, "EVIL_RAN"))
