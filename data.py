"""Datasets. Every loader returns an ImageData: all images decoded once into a uint8 tensor
(N, C, H, W) at the requested size, plus labels, so a training step does no file I/O.
Values reach the model in [-1, 1] through to_model() and come back through to_uint8(): the one
place where that range is decided. The maps tiles come from terrain.py, the augmentations from augment.py,
the file decoding from imagefiles.py.

    python data.py --data maps --stats          # counts, class balance, mean/std, grids
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import os
import zipfile
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from augment import AUGMENTS, DRAWS, augment_batch
from cli import NONNEG_INT, POSITIVE_INT, Parser
from imagefiles import DataError, IMAGE_EXTS, decode_files, download_zip, resize_uint8
from terrain import MAP_CLASSES, terrain_tiles

DEFAULT_SIZE = {"maps": 64, "coffee": 64, "mnist": 28, "cifar10": 32, "flowers102": 64, "folder": 32}
DATASETS = tuple(DEFAULT_SIZE)


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), all zero when unlabelled
    class_names: list = field(default_factory=list)  # empty: unconditional data
    augment: str = "none"  # one of AUGMENTS, decided per dataset (never flip digits); --augment overrides
    name: str = ""

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def channels(self):
        return self.images.shape[1]

    @property
    def size(self):
        return self.images.shape[-1]

    def __len__(self):
        return len(self.images)


def to_model(x_uint8):
    return x_uint8.float().div(127.5).sub(1)


def to_uint8(x):
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


# ---- maps: the embedded default ---------------------------------------------------------------

def make_maps(n_images, size=64, seed=0, batch=256):
    """The terrain tiles of terrain.py (label 1 = mostly water) as an ImageData; a different seed gives
    different tiles."""
    images, labels = terrain_tiles(n_images, size, seed, batch)
    return ImageData(images, labels, list(MAP_CLASSES), "flip_rot90", "maps")


# ---- real datasets -----------------------------------------------------------------------------

COFFEE_URL = "http://www.patreo.dcc.ufmg.br/wp-content/uploads/2017/11/brazilian_coffee_dataset.zip"


def _coffee_dir(root):
    for cand in (os.path.join(root, "brazilian_coffee_scenes"), root):
        if os.path.isfile(os.path.join(cand, "fold1.txt")):
            return cand
    return None


COFFEE_TEST_FOLD = 5  # the held-out test split: never a default training fold


def load_coffee(root, size, folds=None, download=False, split="train"):
    """Brazilian Coffee Scenes (Penatti et al. 2015) in its official layout: foldN.txt lists
    '<coffee|noncoffee>.<city>.T..B..L..R..'; the image is foldN/<line minus label>.jpg. Label 1 = coffee.
    Splits by fold: train = `folds`, by default every fold there but 5; test = fold 5; all = every fold there."""
    base = _coffee_dir(root)
    if base is None and download:
        download_zip(COFFEE_URL, root, "Brazilian Coffee Scenes", f"{root}/brazilian_coffee_scenes/fold1.txt")
        base = _coffee_dir(root)
    if base is None:
        raise DataError(f"Brazilian Coffee Scenes not found under '{root}': expected "
                        f"{root}/brazilian_coffee_scenes/fold1..5.txt and fold1..5/*.jpg; unzip "
                        f"brazilian_coffee_dataset.zip ({COFFEE_URL}) there, or add --download when online")
    there = [f for f in range(1, 6) if os.path.isfile(os.path.join(base, f"fold{f}.txt"))]
    if split != "train":  # --folds picks training folds; the held-out split stays fold 5
        folds = [COFFEE_TEST_FOLD] if split == "test" else there
    folds = folds or [f for f in there if f != COFFEE_TEST_FOLD]  # fold 1 is always there (_coffee_dir)
    paths, labels, fold_of = [], [], []
    for f in folds:
        list_file = os.path.join(base, f"fold{f}.txt")
        if not os.path.isfile(list_file):
            raise DataError(f"--folds: {list_file} does not exist (folds are 1..5)")
        with open(list_file, newline=None) as fh:  # universal newlines: CRLF and LF alike
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                label, _, rest = line.partition(".")
                if label not in ("coffee", "noncoffee") or not rest:
                    raise DataError(f"{list_file}: unexpected line '{line[:60]}' (want <coffee|noncoffee>.<name>)")
                paths.append(os.path.join(base, f"fold{f}", rest + ".jpg"))
                labels.append(1 if label == "coffee" else 0)
                fold_of.append(f)
    images, keep = decode_files(paths, size, "RGB", "coffee tiles")
    data = ImageData(images, torch.tensor(labels)[keep], ["noncoffee", "coffee"], "flip_rot90", "coffee")
    data.folds = torch.tensor(fold_of)[keep]
    return data


def _torchvision(cls_name, root, download, **kw):
    import torchvision.datasets as D
    layouts = {"MNIST": f"{root}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
               "CIFAR10": f"{root}/cifar-10-batches-py/data_batch_1..5 and test_batch",
               "Flowers102": f"{root}/flowers-102/jpg/*.jpg, imagelabels.mat and setid.mat"}
    try:
        return getattr(D, cls_name)(root, download=download, **kw)
    except Exception as e:  # RuntimeError 'Dataset not found', URLError offline, corrupt archives
        how = "add --download when online, or put the files there" if not download else "put the files there by hand"
        raise DataError(f"{cls_name} could not be loaded from '{root}' ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                        f"expected {layouts[cls_name]}; {how}")


def load_mnist(root, size, split, download):
    ds = _torchvision("MNIST", root, download, train=split == "train")
    return ImageData(resize_uint8(ds.data[:, None], size), ds.targets.clone(), [str(i) for i in range(10)], "none", "mnist")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def check_cifar10_npz(root, split):
    """The CIFAR-10 subset data.load_cifar10 reads where root holds no pickle batches (root itself when it ends in
    .npz, else root/cifar10_subset.npz), refused in one line when it is not in that layout."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    path = root if root.endswith(".npz") else os.path.join(root, "cifar10_subset.npz")
    if not os.path.isfile(path) or any(os.path.isfile(os.path.join(root, "cifar-10-batches-py", n)) for n in names):
        return
    want = "expected cifar10_subset.npz's layout: x uint8 N x H x W x 3, y N labels, is_test N flags"
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # an .npz is a zip of .npy arrays
            raise DataError(f"cifar10 at {path}: not an .npz archive; {want}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y", "is_test") if k not in z.files]
            if missing:
                raise DataError(f"cifar10 at {path}: no {', '.join(missing)} array (it holds {', '.join(z.files)}); {want}")
            x, y, is_test = z["x"], z["y"], z["is_test"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cifar10 at {path}: not a readable .npz ({type(e).__name__}); {want}")
    if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or y.shape != (len(x),) or is_test.shape != (len(x),)
            or not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"cifar10 at {path}: x {x.dtype} {x.shape}, y {y.dtype} {y.shape}, is_test {is_test.shape}; {want}")


def load_cifar10(root, size, split, download):
    """The python-pickle batches of CIFAR-10, read natively (any subset of the batch files that
    exists); torchvision only downloads them."""
    import pickle
    base = os.path.join(root, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    subset = root if root.endswith(".npz") else os.path.join(root, "cifar10_subset.npz")
    if os.path.isfile(subset) and not any(os.path.isfile(os.path.join(base, n)) for n in names):
        # A subset saved as npz: x uint8 N x 32 x 32 x 3, y, is_test.
        check_cifar10_npz(root, split)
        z = np.load(subset)
        keep = z["is_test"].astype(bool) == (split == "test")
        x = torch.from_numpy(np.ascontiguousarray(z["x"][keep].transpose(0, 3, 1, 2)))
        return ImageData(resize_uint8(x, size), torch.from_numpy(z["y"][keep]).long(), list(CIFAR10_CLASSES), "flip",
                         "cifar10")
    if not any(os.path.isfile(os.path.join(base, n)) for n in names):
        _torchvision("CIFAR10", root, download, train=split == "train")  # downloads, or says where files go
    xs, ys = [], []
    for n in names:
        path = os.path.join(base, n)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch["labels"]))
    x = torch.from_numpy(np.concatenate(xs))
    return ImageData(resize_uint8(x, size), torch.from_numpy(np.concatenate(ys)).long(), list(CIFAR10_CLASSES),
                     "flip", "cifar10")


def load_flowers102(root, size, split, download):
    ds = _torchvision("Flowers102", root, download, split={"train": "train", "val": "val", "test": "test"}.get(split, split))
    images, keep = decode_files([str(p) for p in ds._image_files], size, "RGB", "Flowers102 images")
    labels = torch.tensor(ds._labels)[keep]
    return ImageData(images, labels, [str(i) for i in range(102)], "flip", "flowers102")


def load_folder(root, size):
    """Any folder of images, searched recursively; non-image files ignored. Labels: the first-level
    subfolder when there are several (e.g. class folders), else unlabelled."""
    if not os.path.isdir(root):
        raise DataError(f"--data folder: '{root}' is not a folder; pass --data-root DIR with your images (any nesting)")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise DataError(f"--data folder: no image files ({', '.join(IMAGE_EXTS)}) under '{root}'")
    images, keep = decode_files(paths, size, "RGB", f"images in {root}")
    groups = [os.path.relpath(paths[i], root).split(os.sep)[0] if os.sep in os.path.relpath(paths[i], root) else ""
              for i in keep]
    names = sorted(set(groups))
    if len(names) > 1 and "" not in names:
        index = {n: i for i, n in enumerate(names)}
        return ImageData(images, torch.tensor([index[g] for g in groups]), names, "flip", "folder")
    return ImageData(images, torch.zeros(len(images), dtype=torch.long), [], "flip", "folder")


# ---- loading by name --------------------------------------------------------------------------

MAX_SIZE = 512


def load_data(name, root=None, size=None, split="train", folds=None, download=False, n_maps=10000, seed=0):
    """Load a dataset by name as an ImageData at `size` (the dataset's default size when None)."""
    if name not in DEFAULT_SIZE:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    size = DEFAULT_SIZE[name] if size is None else size
    if not 4 <= size <= MAX_SIZE:
        # Above MAX_SIZE the presets' attention and memory stop making sense on a laptop.
        raise DataError(f"--size {size} is outside what the UNet presets take; use 4 to {MAX_SIZE}")
    root = root or "data"
    splits = {"flowers102": ("train", "val", "test"), "coffee": ("train", "test", "all"),
              "folder": ("train",)}.get(name, ("train", "test"))
    if split not in splits:
        hint = {"coffee": f"; train is folds 1-4 (or --folds), test fold {COFFEE_TEST_FOLD}",
                "folder": "; a folder is one set"}.get(name, "")
        raise DataError(f"split '{split}' of {name}: use {' or '.join(splits)}{hint}")
    if name == "maps":
        # Train and test tiles come from two generator seeds a million apart: they share no tile.
        return make_maps(n_maps if split == "train" else max(1, n_maps // 5), size, seed=seed + (0 if split == "train" else 10**6))
    if name == "coffee":
        return load_coffee(root, size, folds, download, split)
    if name == "mnist":
        return load_mnist(root, size, split, download)
    if name == "cifar10":
        return load_cifar10(root, size, split, download)
    if name == "flowers102":
        return load_flowers102(root, size, split, download)
    return load_folder(root, size)


def add_data_args(p):
    p.add_argument("--data", default="maps", help=f"dataset: {', '.join(DATASETS)} (default %(default)s; maps is generated offline)")
    p.add_argument("--data-root", default="data", help="where real datasets live / download to (default ./data)")
    p.add_argument("--size", type=POSITIVE_INT, default=None, help="image size (default: the dataset's own, e.g. 28 for mnist)")
    p.add_argument("--folds", default=None, help="coffee only: comma-separated training folds, e.g. 1,2,3 "
                   "(default 1,2,3,4: fold 5 is held out as the test split)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing (needs internet)")
    p.add_argument("--n-maps", type=POSITIVE_INT, default=10000, help="maps only: number of generated training tiles")
    return p


def data_from_args(args, split="train"):
    folds = None
    if getattr(args, "folds", None):
        try:
            folds = [int(f) for f in args.folds.split(",")]
        except ValueError:
            raise DataError(f"--folds '{args.folds}': give comma-separated fold numbers 1-5, e.g. 1,2,3")
        if len(set(folds)) < len(folds):
            raise DataError(f"--folds '{args.folds}' names a fold twice; give each once, e.g. 1,2,3,4")
    return load_data(args.data, args.data_root, args.size, split=split, folds=folds, download=args.download,
                     n_maps=args.n_maps)


def main():
    p = add_data_args(Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--stats", action="store_true", help="print statistics and write grids")
    p.add_argument("--split", default="train", help="train, test or (coffee) all; flowers102 also val")
    p.add_argument("--out", default=None, help="folder for the grids (default runs/data_<name>)")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--augment", choices=AUGMENTS, default=None, help="show this augmentation (default: the dataset's own)")
    args = p.parse_args()
    from cli import UserError, ensure_writable
    try:
        if args.folds and args.split != "train":
            raise DataError(f"--folds picks coffee's training folds; --split {args.split} is fixed (test: fold 5)")
        data = data_from_args(args, args.split)
        out = ensure_writable(args.out or os.path.join("runs", f"data_{args.data}"), "--out")
    except UserError as e:  # DataError included
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from torchvision.utils import save_image
    x = data.images.float() / 255
    print(f"{args.data} ({args.split}): {len(data)} images, {data.channels}x{data.size}x{data.size}")
    if data.num_classes:
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        for i, (name, c) in enumerate(zip(data.class_names, counts.tolist())):
            print(f"  class {i} {name!r}: {c} ({100 * c / len(data):.1f}%)")
    print("  per-channel mean:", [round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()])
    print("  per-channel std: ", [round(v, 4) for v in x.std(dim=(0, 2, 3)).tolist()])
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=gen)[:64]
    save_image(x[idx], os.path.join(out, "grid_original.png"), nrow=8, padding=1)
    kind = args.augment or data.augment
    aug = augment_batch(x[idx[:8]].repeat_interleave(8, 0) * 2 - 1, kind, torch.rand(64, DRAWS[kind], generator=gen))
    save_image(aug * 0.5 + 0.5, os.path.join(out, "grid_augmented.png"), nrow=8, padding=1)
    print(f"wrote {out}/grid_original.png and {out}/grid_augmented.png (each row: one image, 8 augmentations)")


if __name__ == "__main__":
    main()
