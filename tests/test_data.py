"""Every loader against fixtures in the real on-disk formats, and the real data when ../shared is there."""
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import SHARED_DATA, one_line_error, run, run_here


# ---- data -------------------------------------------------------------------------------------

def test_maps_deterministic_balanced_and_in_range():
    from data import make_maps, load_data
    a, b = make_maps(64, 32, seed=5), make_maps(64, 32, seed=5)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8 and a.images.shape == (64, 3, 32, 32)
    big = load_data("maps", size=16, n_maps=2000)
    share = big.labels.float().mean().item()
    assert 0.45 < share < 0.55 and big.num_classes == 2
    # land tiles are mostly green/brown, water tiles mostly blue
    x = big.images.float()
    blue = (x[:, 2] > x[:, 0] + 20).float().mean(dim=(1, 2))
    assert blue[big.labels == 1].mean() > 0.5 > blue[big.labels == 0].mean()


def test_data_stats_cli(tmp_path):
    code, log = run("data.py", "--data", "maps", "--n-maps", "200", "--size", "32", "--stats", "--augment", "crop_flip",
                    "--out", str(tmp_path))
    assert "class 1 'mostly water'" in log and (tmp_path / "grid_original.png").exists()



def test_random_resized_crop_is_torchs_crop_then_resize():
    """A crop of a quarter of the area is torch's own slice of the image, resized back with F.interpolate (inside
    the crop's one-pixel rim, where grid_sample reads the pixels beyond the crop instead of repeating its edge);
    the whole area is the image itself; each sample's augmentation depends only on its own numbers."""
    import torch.nn.functional as F
    from augment import DRAWS, augment_batch, random_resized_crop
    x = torch.rand(2, 3, 32, 32)
    u = lambda *v: torch.tensor([list(v)] * 2)  # noqa: E731
    assert torch.allclose(random_resized_crop(x, u(1.0, 0.5, 0.3, 0.9), scale=(1, 1), ratio=(1, 1)), x, atol=1e-6)
    for (cx, cy), (r0, c0) in (((0.5, 0.5), (8, 8)), ((0.0, 0.0), (0, 0)), ((1.0, 0.0), (0, 16))):
        y = random_resized_crop(x, u(0.0, 0.5, cx, cy), scale=(0.25, 1), ratio=(1, 1))
        ref = F.interpolate(x[..., r0:r0 + 16, c0:c0 + 16], size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    wide = random_resized_crop(x, u(0.0, 1.0, 0.5, 0.5), scale=(0.25, 1), ratio=(1, 4))  # 4:1 -> clipped to full width
    ref = F.interpolate(x[..., 12:20, :], size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(wide[..., 2:-2, :], ref[..., 2:-2, :], atol=1e-5)  # 4x taller: a two-pixel rim
    for kind in ("flip", "flip_rot90", "crop_flip"):  # per sample: a DDP rank augments its own samples alone
        v = torch.rand(2, DRAWS[kind], generator=torch.Generator().manual_seed(3))
        a = augment_batch(x, kind, v)
        assert not torch.equal(a, x) and torch.allclose(augment_batch(x[1:], kind, v[1:]), a[1:], atol=1e-6)

def write_coffee_fixture(root, folds=((1, 4), (2, 2))):
    """The official layout: foldN.txt (CRLF here) + foldN/ JPEGs, a blank line, a stray Thumbs.db.
    folds: (fold, number of tiles) pairs."""
    from PIL import Image
    base = root / "brazilian_coffee_scenes"
    rng = np.random.default_rng(0)
    for f, n in folds:
        (base / f"fold{f}").mkdir(parents=True)
        lines = []
        for i in range(n):
            label = "coffee" if i % 2 == 0 else "noncoffee"
            name = f"city{f}.T{i}.B{i + 64}.L0.R64"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / f"fold{f}" / f"{name}.jpg")
            lines.append(f"{label}.{name}")
        (base / f"fold{f}.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    (base / "fold1" / "Thumbs.db").write_bytes(b"\x00junk")
    return base


def test_coffee_fixture_folds_labels_shapes(tmp_path):
    from data import load_data, to_model
    write_coffee_fixture(tmp_path)
    d = load_data("coffee", str(tmp_path))
    assert len(d) == 6 and d.images.shape == (6, 3, 64, 64) and d.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert d.class_names == ["noncoffee", "coffee"] and d.augment == "flip_rot90"
    x = to_model(d.images)
    assert x.min() >= -1 and x.max() <= 1
    assert len(load_data("coffee", str(tmp_path), folds=[2])) == 2
    assert load_data("coffee", str(tmp_path / "brazilian_coffee_scenes"), size=32).images.shape == (6, 3, 32, 32)


def test_coffee_splits_hold_out_fold_5(tmp_path):
    """train: every fold there but 5 (or --folds); test: fold 5 whatever --folds says; all: every fold there."""
    from data import DataError, load_data
    write_coffee_fixture(tmp_path, ((1, 2), (3, 2), (5, 3)))
    train, test, every = (load_data("coffee", str(tmp_path), split=s) for s in ("train", "test", "all"))
    assert train.folds.tolist() == [1, 1, 3, 3] and test.folds.tolist() == [5, 5, 5] and len(every) == 7
    assert load_data("coffee", str(tmp_path), split="test", folds=[1]).folds.tolist() == [5, 5, 5]
    assert load_data("coffee", str(tmp_path), folds=[3, 5]).folds.tolist() == [3, 3, 5, 5, 5]  # asked for: given
    code, log = run_here("data.py", "--data", "coffee", "--data-root", str(tmp_path), "--folds", "1", "--split", "test",
                         "--out", str(tmp_path / "d"), ok=False)
    one_line_error(code, log)
    no_test = tmp_path / "no5"
    write_coffee_fixture(no_test)
    with pytest.raises(DataError, match="fold5.txt does not exist"):
        load_data("coffee", str(no_test), split="test")


def test_coffee_missing_and_offline_download_errors(tmp_path):
    from data import DataError, load_data
    with pytest.raises(DataError, match="fold1..5.txt"):
        load_data("coffee", str(tmp_path))
    write_coffee_fixture(tmp_path)
    with pytest.raises(DataError, match="fold7.txt does not exist"):
        load_data("coffee", str(tmp_path), folds=[7])


def write_idx(path, arr):
    import struct
    code = {1: 0x801, 3: 0x803}[arr.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes())


def write_mnist_fixture(root, seed=0):
    """MNIST's raw IDX files under root/MNIST/raw: 12 training and 5 test digits of random pixels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_idx_fixture(tmp_path):
    from data import load_data
    write_mnist_fixture(tmp_path)
    d = load_data("mnist", str(tmp_path))
    assert d.images.shape == (12, 1, 28, 28) and d.labels.tolist()[:3] == [0, 1, 2] and d.augment == "none"
    assert len(load_data("mnist", str(tmp_path), split="test")) == 5
    assert load_data("mnist", str(tmp_path), size=32).images.shape == (12, 1, 32, 32)


def test_cifar10_pickle_fixture(tmp_path):
    from data import load_data
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({"data": img, "labels": [3, 1, 4], "batch_label": "fixture"}, f)
    d = load_data("cifar10", str(tmp_path))
    assert d.images.shape == (3, 3, 32, 32) and d.labels.tolist() == [3, 1, 4] and d.class_names[3] == "cat"
    assert torch.equal(d.images[0, 0].flatten(), torch.from_numpy(img[0, :1024]))  # channel-major rows


def test_folder_nested_corrupt_and_text(tmp_path, capsys):
    from PIL import Image
    from data import DataError, load_data
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    Image.new("RGB", (80, 50), (255, 0, 0)).save(tmp_path / "top.jpg")
    Image.new("L", (40, 40), 128).save(tmp_path / "a" / "grey.png")
    Image.new("RGB", (30, 60), (0, 0, 255)).save(tmp_path / "a" / "deeper" / "tall.jpg")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    d = load_data("folder", str(tmp_path), size=16)
    assert d.images.shape == (3, 3, 16, 16) and d.num_classes == 0
    assert "broken.jpg" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_data("folder", str(empty))
    (empty / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_data("folder", str(empty))


def test_offline_torchvision_dataset_error_is_one_line(tmp_path):
    code, out = run_here("train_ddpm.py", "--data", "mnist", "--data-root", str(tmp_path), "--steps", "1", ok=False)
    one_line_error(code, out)
    assert "MNIST/raw" in out


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data absent")
def test_real_data_counts():
    from data import load_data
    coffee = load_data("coffee", SHARED_DATA, split="all")
    assert len(coffee) == 2876 and coffee.labels.bincount().tolist() == [1438, 1438]
    assert [int((coffee.folds == f).sum()) for f in range(1, 6)] == [600, 600, 600, 600, 476]
    train, test = load_data("coffee", SHARED_DATA), load_data("coffee", SHARED_DATA, split="test")
    assert set(train.folds.tolist()) == {1, 2, 3, 4} and len(train) == 2400 and set(test.folds.tolist()) == {5}
    assert coffee.images.shape[1:] == (3, 64, 64)
    mnist, mnist_test = load_data("mnist", SHARED_DATA), load_data("mnist", SHARED_DATA, split="test")
    assert mnist.images.shape == (60000, 1, 28, 28) and len(mnist_test) == 10000
    flowers = load_data("folder", os.path.join(SHARED_DATA, "flowers102_subset"), size=32)
    assert len(flowers) == 301


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data absent")
@pytest.mark.slow
def test_train_starts_on_real_coffee_and_mnist(tmp_path):
    for name, shape in (("coffee", "3x64x64"), ("mnist", "1x28x28")):
        code, log = run("train_ddpm.py", "--data", name, "--data-root", SHARED_DATA, "--preset", "tiny", "--steps", "2",
                        "--batch", "8", "--n", "2", "--out", str(tmp_path / name))
        assert f"images {shape}" in log
