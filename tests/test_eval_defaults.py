"""Evaluation defaults that cannot leak: for every --data name, the images a run trains on by default and the
images fid.py scores it against by default share none (a folder has no held-out split: there the reference is
the training folder, and the card says so); fid.py and levels.py read the data where the checkpoint was trained."""
import argparse
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

from helpers import inception_or_skip, run_here
from test_data import write_coffee_fixture, write_mnist_fixture


def _coffee(root, monkeypatch):
    write_coffee_fixture(root, ((1, 2), (2, 2), (3, 2), (4, 2), (5, 3)))


def _mnist(root, monkeypatch):
    write_mnist_fixture(root, seed=1)


def _cifar10(root, monkeypatch):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name, n in (("data_batch_1", 6), ("test_batch", 4)):
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}, f)


def _flowers102(root, monkeypatch):
    """torchvision's layout: flowers-102/jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat (the md5 check of the
    two .mat files, which a fixture cannot pass, is skipped)."""
    import torchvision.datasets as D
    from PIL import Image
    from scipy.io import savemat
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(1, 10):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(base / "jpg" / f"image_{i:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([1, 2, 3] * 3)})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4, 5]), "tstid": np.array([6, 7, 8, 9])})
    monkeypatch.setattr(D.Flowers102, "_check_integrity", lambda self: True)


def _folder(root, monkeypatch):
    from PIL import Image
    rng = np.random.default_rng(4)
    root.mkdir(exist_ok=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")


FIXTURES = {"maps": None, "coffee": _coffee, "mnist": _mnist, "cifar10": _cifar10, "flowers102": _flowers102,
            "folder": _folder}


def _hashes(data):
    return {hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in data.images}


def test_every_dataset_is_covered():
    from data import DATASETS
    assert set(FIXTURES) == set(DATASETS)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_default_training_and_reference_share_no_image(name, tmp_path, monkeypatch):
    """The training split a run takes with no --folds or --split, and the reference fid.py picks for its
    checkpoint with no --ref, compared image by image."""
    from data import add_data_args, data_from_args
    from features import default_ref, load_ref_data, parse_ref, ref_is_training_set
    root = tmp_path / "data"
    if FIXTURES[name]:
        FIXTURES[name](root, monkeypatch)
    flags = ["--data", name, "--data-root", str(root)] + (["--size", "16", "--n-maps", "2000"] if name == "maps" else [])
    args = add_data_args(argparse.ArgumentParser()).parse_args(flags)
    train = data_from_args(args)
    trained_with = vars(args)  # what a checkpoint stores as its args; a coffee run records the folds it read
    if name == "coffee":
        trained_with["folds"] = ",".join(str(f) for f in train.folds.unique().tolist())
    ref = default_ref(trained_with)
    ref_images = load_ref_data(*parse_ref(ref), str(root), train.size)
    seen, scored = _hashes(train), _hashes(ref_images)
    assert len(seen) == len(train) > 0 and len(scored) > 0
    if name == "folder":  # no held-out split: the training folder itself, said on the card
        assert ref == f"folder:{root}" and seen == scored and ref_is_training_set(ref, trained_with)
        return
    assert ref == f"{name}:test" and not seen & scored, ref
    assert not ref_is_training_set(ref, trained_with)
    assert seen & _hashes(load_ref_data(name, "train", str(root), train.size))  # the comparison does see a leak
    if name == "coffee":  # folds 1-4 train, fold 5 is the test split, together every tile
        assert set(train.folds.tolist()) == {1, 2, 3, 4} and len(train) + len(ref_images) == 11
        assert ref_is_training_set("coffee:test", dict(trained_with, folds="1,2,3,4,5"))
        assert ref_is_training_set("coffee:test", dict(trained_with, folds=None))  # unrecorded: every fold


def _coffee_checkpoint(ddpm_run, tmp_path):
    """A fresh one-step coffee run at the defaults (tiny network) on a coffee fixture under tmp_path/coffee_data."""
    root = tmp_path / "coffee_data"
    write_coffee_fixture(root, ((1, 2), (2, 2), (3, 2), (4, 2), (5, 3)))
    run_here("train_ddpm.py", "--data", "coffee", "--data-root", str(root), "--preset", "tiny", "--size", "16",
             "--batch", "4", "--steps", "1", "--sample-every", "0", "--n", "2", "--device", "cpu",
             "--out", str(tmp_path / "run"))
    path = tmp_path / "run" / "ckpt.pt"
    assert torch.load(path, weights_only=True)["args"]["folds"] == "1,2,3,4"  # recorded: what it trained on
    return str(path), root


def test_fid_and_levels_find_the_checkpoints_data_and_score_against_coffee_test(ddpm_run, tmp_path, monkeypatch):
    """No --ref and no --data-root: fid.py reads coffee's fold 5 from where the run read its data, and the card
    names coffee:test and says it is no training image; levels.py finds the data there too. --data-root wins."""
    import fid
    ckpt, root = _coffee_checkpoint(ddpm_run, tmp_path)
    monkeypatch.chdir(tmp_path)  # ./data holds nothing here
    a = argparse.Namespace(ckpt=[ckpt], data_root=None, ref=None)
    assert fid.resolve_ref_and_root(a) == "coffee:test" and a.data_root == str(root)
    a = argparse.Namespace(ckpt=[ckpt], data_root="elsewhere", ref="mnist:test")
    assert fid.resolve_ref_and_root(a) == "mnist:test" and a.data_root == "elsewhere"
    a = argparse.Namespace(ckpt=None, data_root=None, ref="mnist:test")
    assert fid.resolve_ref_and_root(a) == "mnist:test" and a.data_root == "data"
    run_here("levels.py", "--ckpt", ckpt, "--n", "3", "--snrs", "1", "--batch", "4", "--device", "cpu",
             "--out", str(tmp_path / "levels"))
    card = json.loads(open(tmp_path / "levels" / "levels.jsonl").read())
    assert card["ref"] == "coffee:test" and card["n"] == 3
    inception_or_skip()
    out = tmp_path / "fid"
    run_here("fid.py", "--ckpt", ckpt, "--n", "4", "--n-ref", "3", "--metrics", "fid", "--steps", "2",
             "--gauss-snr", "0", "--device", "cpu", "--out", str(out))
    card = json.loads(open(out / "scores.jsonl").read())
    assert card["ref"] == "coffee:test" and card["n_ref"] == 3 and card["ref_is_training_set"] is False, card
