"""Datasets. Every loader returns an ImageData: all images decoded once into a uint8 tensor
(N, C, H, W) at the requested size, plus labels, so a training step does no file I/O.
Values reach the model in [-1, 1] through to_model() and come back through to_uint8(): the one
place where that range is decided.

    python data.py --data maps --stats          # counts, class balance, mean/std, grids
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cli import NONNEG_INT, POSITIVE_INT, Parser, UserError

DEFAULT_SIZE = {"maps": 64, "coffee": 64, "mnist": 28, "cifar10": 32, "flowers102": 64, "folder": 32}
DATASETS = tuple(DEFAULT_SIZE)


class DataError(UserError):
    """Bad or missing data; the message says what and how to fix it (scripts print it, exit 2)."""


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


AUGMENTS = ("none", "flip", "flip_rot90", "crop_flip")


def random_resized_crop(x, u, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop, per sample and in one grid_sample call: a crop of a random share `scale`
    of the area with a log-uniform aspect `ratio`, anywhere inside the image, resized bilinearly back to full
    size. u: (B, 4) uniform draws. A side longer than the image is clipped to it (torchvision retries instead)."""
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # shares of the width, height
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2], theta[:, 1, 2] = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)  # the crop's centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x, kind, gen):
    """Random flips (and 90° rotations for overhead imagery; random resized crops for photos, seed 003's choice
    against memorising a few hundred photos) on a batch, per sample, with gen."""
    if kind == "none":
        return x
    b = x.shape[0]
    r = torch.rand(b, 3 if kind != "crop_flip" else 5, generator=gen, device=gen.device).to(x.device)
    if kind == "crop_flip":
        x = random_resized_crop(x, r[:, 1:].to(x.dtype))
    x = torch.where((r[:, 0] < 0.5)[:, None, None, None], x.flip(-1), x)
    if kind == "flip_rot90":
        x = torch.where((r[:, 1] < 0.5)[:, None, None, None], x.flip(-2), x)
        x = torch.where((r[:, 2] < 0.5)[:, None, None, None], x.transpose(-1, -2), x)  # with flips: all 8 symmetries
    return x


# ---- maps: the embedded default ---------------------------------------------------------------

MAP_CLASSES = ["mostly land", "mostly water"]


def _fractal(b, n, octaves, persistence, gen, base=2):
    """Value-noise fBm: bicubic-upsampled random grids, coarse to fine, summed. (b, 1, n, n) in [0, 1]."""
    total = torch.zeros(b, 1, n, n)
    amp = 1.0
    for k in range(octaves):
        g = base * 2 ** k + 1
        grid = torch.rand(b, 1, g, g, generator=gen)
        total += amp * F.interpolate(grid, size=(n, n), mode="bicubic", align_corners=True)
        amp *= persistence
    lo = total.amin(dim=(2, 3), keepdim=True)
    hi = total.amax(dim=(2, 3), keepdim=True)
    return (total - lo) / (hi - lo + 1e-8)


def _blend(a, b, w):
    return a + (b - a) * w


def _color(rgb):
    return torch.tensor(rgb).view(1, 3, 1, 1)


def make_maps(n_images, size=64, seed=0, batch=256):
    """Procedural Earth-like terrain tiles seen from above: fractal elevation and moisture ->
    deep/shallow water, beach, dry land, grass, forest, rock, snow, lit by a hillshade.
    Label 1 = mostly water. The sea level is the q-quantile of the elevation with q ~ U(0.05, 0.95),
    so the water share is q and the two classes are balanced. Deterministic in (seed, index)."""
    images, labels = [], []
    gen = torch.Generator().manual_seed(seed)
    octaves = max(3, size.bit_length() - 1)
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        elev = _fractal(b, size, octaves, 0.5, gen)
        moist = _fractal(b, size, octaves - 2, 0.45, gen)
        q = 0.05 + 0.9 * torch.rand(b, generator=gen)
        ranked = elev.flatten(1).sort(dim=1).values
        sea = ranked.gather(1, (q * (size * size - 1)).long()[:, None]).view(b, 1, 1, 1)
        depth = ((sea - elev) / sea.clamp(min=1e-3)).clamp(0, 1)
        h = ((elev - sea) / (1 - sea).clamp(min=1e-3)).clamp(0, 1)  # height above the sea, 0..1
        snowline = 0.75 + 0.2 * torch.rand(b, 1, 1, 1, generator=gen)
        soft = lambda v, at, width: torch.sigmoid((v - at) / width)

        water = _blend(_color([0.22, 0.47, 0.66]), _color([0.05, 0.14, 0.34]), depth.sqrt())
        lowland = _blend(_color([0.78, 0.72, 0.48]), _color([0.42, 0.62, 0.28]), soft(moist, 0.35, 0.05))
        lowland = _blend(lowland, _color([0.13, 0.36, 0.17]), soft(moist, 0.6, 0.05))  # forest where wet
        land = _blend(lowland, _color([0.45, 0.41, 0.36]), soft(h, snowline - 0.25, 0.04))  # rock
        land = _blend(land, _color([0.95, 0.95, 0.97]), soft(h, snowline, 0.02))  # snow
        land = _blend(_color([0.86, 0.8, 0.6]), land, soft(h, 0.025, 0.008))  # beach at the waterline
        # Hillshade: light from the north-west on the elevation gradient (land only).
        gy, gx = torch.gradient(elev[:, 0], dim=(1, 2))
        shade = (1 + 6.0 * (gy + gx) * size / 64).clamp(0.6, 1.3)[:, None]
        land = land * shade
        is_land = soft(elev, sea, 0.004)
        img = _blend(water, land, is_land)
        img = img + 0.02 * torch.randn(img.shape, generator=gen)  # sensor grain
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append((q > 0.5).long())
    return ImageData(torch.cat(images), torch.cat(labels), list(MAP_CLASSES), "flip_rot90", "maps")


# ---- real datasets -----------------------------------------------------------------------------

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COFFEE_URL = "http://www.patreo.dcc.ufmg.br/wp-content/uploads/2017/11/brazilian_coffee_dataset.zip"


def as_viewed(img, mode):
    """A PIL image as a photo viewer shows it, in `mode`: EXIF orientation applied, 16-bit scaled (not
    clipped) to 8-bit, transparency (RGBA, LA, palette) composited on white; CMYK and the rest by PIL."""
    from PIL import Image, ImageOps
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit greyscale ("I;16*"; "I" when Pillow widens it to 32-bit)
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert(mode)


def decode_image(path, size, mode="RGB"):
    """One file -> uint8 (C, size, size) as a viewer shows it (as_viewed): shorter side resized to size
    (antialiased), centre crop."""
    from PIL import Image
    import torchvision.transforms.functional as TF
    with Image.open(path) as img:
        img.draft(mode, (2 * size, 2 * size))  # JPEG: decode at a reduced scale when it is much larger
        img = as_viewed(img, mode)
        img = TF.center_crop(TF.resize(img, size, antialias=True), size)
        return TF.pil_to_tensor(img)


def decode_files(paths, size, mode="RGB", what="images"):
    """Decode a list of files once; unreadable ones are reported together and skipped."""
    from tqdm import tqdm
    images, keep, bad = [], [], []
    for i, path in enumerate(tqdm(paths, desc=f"decoding {what}", unit="img", disable=len(paths) < 2000)):
        try:
            images.append(decode_image(path, size, mode))
            keep.append(i)
        except Exception as e:  # PIL raises many kinds for a corrupt file
            bad.append(f"{path} ({type(e).__name__})")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s): " + "; ".join(bad[:10])
              + (" ..." if len(bad) > 10 else ""), file=sys.stderr)
    if not images:
        raise DataError(f"none of the {len(paths)} {what} could be read (e.g. {bad[0] if bad else '?'})")
    return torch.stack(images), keep


def resize_uint8(x, size):
    """(N, C, H, W) uint8 -> size x size, antialiased, only when needed."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def _coffee_dir(root):
    for cand in (os.path.join(root, "brazilian_coffee_scenes"), root):
        if os.path.isfile(os.path.join(cand, "fold1.txt")):
            return cand
    return None


def download_coffee(root):
    import urllib.request
    import zipfile
    os.makedirs(root, exist_ok=True)
    zpath = os.path.join(root, "brazilian_coffee_dataset.zip")
    try:
        print(f"downloading {COFFEE_URL} ...")
        with urllib.request.urlopen(COFFEE_URL, timeout=30) as r, open(zpath + ".part", "wb") as f:
            f.write(r.read())
        os.replace(zpath + ".part", zpath)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(root)
    except Exception as e:
        raise DataError(f"could not download Brazilian Coffee Scenes from {COFFEE_URL} ({type(e).__name__}); "
                        f"download it by hand and unzip into {root}/ so that {root}/brazilian_coffee_scenes/fold1.txt exists")


def load_coffee(root, size, folds=None, download=False):
    """Brazilian Coffee Scenes (Penatti et al. 2015) in its official layout: foldN.txt lists
    '<coffee|noncoffee>.<city>.T..B..L..R..'; the image is foldN/<line minus label>.jpg. Label 1 = coffee."""
    base = _coffee_dir(root)
    if base is None and download:
        download_coffee(root)
        base = _coffee_dir(root)
    if base is None:
        raise DataError(f"Brazilian Coffee Scenes not found under '{root}': expected "
                        f"{root}/brazilian_coffee_scenes/fold1..5.txt and fold1..5/*.jpg; unzip "
                        f"brazilian_coffee_dataset.zip ({COFFEE_URL}) there, or add --download when online")
    folds = folds or [f for f in range(1, 6) if os.path.isfile(os.path.join(base, f"fold{f}.txt"))]
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


def load_cifar10(root, size, split, download):
    """The python-pickle batches of CIFAR-10, read natively (any subset of the batch files that
    exists); torchvision only downloads them."""
    import pickle
    import numpy as np
    base = os.path.join(root, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    subset = root if root.endswith(".npz") else os.path.join(root, "cifar10_subset.npz")
    if os.path.isfile(subset) and not any(os.path.isfile(os.path.join(base, n)) for n in names):
        # A subset saved as npz: x uint8 N x 32 x 32 x 3, y, is_test.
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
    splits = {"flowers102": ("train", "val", "test"), "coffee": ("train",), "folder": ("train",)}.get(name, ("train", "test"))
    if split not in splits:
        hint = {"coffee": "; coffee splits by fold: --folds 5", "folder": "; a folder is one set"}.get(name, "")
        raise DataError(f"split '{split}' of {name}: use {' or '.join(splits)}{hint}")
    if name == "maps":
        # Train and test tiles come from disjoint seeds.
        return make_maps(n_maps if split == "train" else max(1, n_maps // 5), size, seed=seed + (0 if split == "train" else 10**6))
    if name == "coffee":
        return load_coffee(root, size, folds, download)
    if name == "mnist":
        return load_mnist(root, size, split, download)
    if name == "cifar10":
        return load_cifar10(root, size, split, download)
    if name == "flowers102":
        return load_flowers102(root, size, split, download)
    return load_folder(root, size)


def add_data_args(p):
    p.add_argument("--data", default="maps", help=f"dataset: {', '.join(DATASETS)} (default maps, generated offline)")
    p.add_argument("--data-root", default="data", help="where real datasets live / download to (default ./data)")
    p.add_argument("--size", type=POSITIVE_INT, default=None, help="image size (default: the dataset's own, e.g. 28 for mnist)")
    p.add_argument("--folds", default=None, help="coffee only: comma-separated folds, e.g. 1,2,3 (default all)")
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
    return load_data(args.data, args.data_root, args.size, split=split, folds=folds, download=args.download,
                     n_maps=args.n_maps)


def main():
    p = add_data_args(Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--stats", action="store_true", help="print statistics and write grids")
    p.add_argument("--split", default="train")
    p.add_argument("--out", default=None, help="folder for the grids (default runs/data_<name>)")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--augment", choices=AUGMENTS, default=None, help="show this augmentation (default: the dataset's own)")
    args = p.parse_args()
    try:
        data = data_from_args(args, args.split)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from torchvision.utils import save_image
    out = args.out or os.path.join("runs", f"data_{args.data}")
    os.makedirs(out, exist_ok=True)
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
    aug = augment_batch(x[idx[:8]].repeat_interleave(8, 0) * 2 - 1, args.augment or data.augment, gen)
    save_image(aug * 0.5 + 0.5, os.path.join(out, "grid_augmented.png"), nrow=8, padding=1)
    print(f"wrote {out}/grid_original.png and {out}/grid_augmented.png (each row: one image, 8 augmentations)")


if __name__ == "__main__":
    main()
