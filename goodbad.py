"""Each sample's own scores, kept beside the samples, and sheets of the best and the worst of them.

fid.py writes scores_LABEL.npz beside the samples_LABEL.npz it keeps (for --samples S: scores_NAME.npz beside
NAME.npz, scores.npz in a folder of images), and plots.py draws the sheets from the pair:

    python plots.py goodbad --samples RUN/samples_LABEL.npz --by realism --k 32 --out sheet.png
    python plots.py goodbad --samples RUN/samples_naive_bank.npz RUN/samples_naive_hist.npz --by realism --out z.png

A scores file holds, one entry per sample in the samples' order: index; realism_inception and/or
realism_classifier (metrics.realism in that extractor's features: the realism score of Kynkaanniemi et al. 2019,
against the reference's precision/recall k-NN balls, the half with the smallest radii); realism (the Inception
one where it ran, else the classifier's; realism_extractor says which); confidence and class (the classifier
extractor's top softmax probability and its argmax; class_names) and probs (N x K, every class's probability);
label (the class a conditional checkpoint was asked for; label_names) and label_prob (the classifier's probability
of that class: low for a sample drawn confidently as another class, which confidence ranks high). And n,
samples_sha256 (of the uint8 N x C x H x W images: a sheet refuses scores of other samples), ref, n_ref, k.
Your own analysis reads the same numbers:
    z = np.load("RUN/scores_LABEL.npz"); worst = z["index"][np.argsort(z["realism"])[:32]]
"""
import hashlib
import os
import zipfile

import numpy as np
import torch

from cli import UserError
from imagefiles import read_samples

SCORE_NAMES = ("realism", "realism_inception", "realism_classifier", "confidence", "label_prob")


def scores_path(samples, out=None):
    """Where the scores of `samples` live: in `out` (default: beside them) scores_X.npz for samples_X.npz,
    scores.npz for samples.npz, scores_NAME.npz for NAME.npz; a folder of images: FOLDER/scores.npz (with another
    --out: scores_FOLDER.npz there)."""
    if os.path.isdir(samples):
        inside = out is None or os.path.abspath(out) == os.path.abspath(samples)
        return os.path.join(out or samples, "scores.npz" if inside else f"scores_{os.path.basename(os.path.normpath(samples))}.npz")
    stem = os.path.splitext(os.path.basename(samples))[0]
    name = "scores" + stem[len("samples"):] if stem.startswith("samples") else f"scores_{stem}"
    return os.path.join(out or os.path.dirname(samples) or ".", name + ".npz")


def images_sha256(images):
    """The sha256 of uint8 N x C x H x W images, as read_samples returns them: what ties a scores file to them."""
    return hashlib.sha256(np.ascontiguousarray(torch.as_tensor(images).numpy()).tobytes()).hexdigest()


def keep_scores(path, images, per, gen_labels=None, **meta):
    """Write path (a scores file, see the module's docstring) whole or not at all. per: scoring.score's per-sample
    arrays of every extractor so far; gen_labels: (labels, class names) of a conditional checkpoint's samples;
    meta: scalars and names (ref, n_ref, k, class_names)."""
    arrays = {name: np.asarray(v) for name, v in per.items()}
    realisms = sorted((name for name in arrays if name.startswith("realism_")), key=lambda n: n != "realism_inception")
    if realisms:
        arrays["realism"], meta["realism_extractor"] = arrays[realisms[0]], realisms[0][len("realism_"):]
    if gen_labels is not None and gen_labels[0] is not None:
        arrays["label"], arrays["label_names"] = np.asarray(gen_labels[0]), np.asarray(gen_labels[1] or [], dtype=str)
        if "probs" in arrays and arrays["label"].max() < arrays["probs"].shape[1]:  # the classifier knows those classes
            arrays["label_prob"] = arrays["probs"][np.arange(len(images)), arrays["label"]]
    meta = {name: np.asarray(v) for name, v in meta.items() if v is not None}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path + ".part.npz", index=np.arange(len(images)), n=len(images), samples_sha256=images_sha256(images),
             **arrays, **meta)
    os.replace(path + ".part.npz", path)
    return path


def read_scores(samples, path=None):
    """(images, {array name: array}) of a samples file and its scores file (default: scores_path(samples)), refused
    in one line when the scores file is missing, unreadable or was written for other samples."""
    images = read_samples(samples)
    path = path or scores_path(samples)
    if not os.path.isfile(path):
        raise UserError(f"no scores file {path} beside {samples}: fid.py writes it (python fid.py --samples {samples} "
                        f"--ref SPLIT; fid.py --ckpt writes one beside each samples file it keeps), or give --scores FILE")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {name: z[name] for name in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable scores file ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})")
    if not {"index", "n", "samples_sha256"} <= set(d):
        raise UserError(f"{path} is not a scores file of fid.py (it holds {', '.join(d) or 'nothing'})")
    if int(d["n"]) != len(images) or len(d["index"]) != len(images):
        raise UserError(f"{path} scores {int(d['n'])} samples, {samples} holds {len(images)}: they do not belong "
                        f"together; score these samples again with fid.py --samples")
    if str(d["samples_sha256"]) != images_sha256(images):
        raise UserError(f"{path} was written for other images than {samples} (as many, other pixels); score these "
                        f"samples again with fid.py --samples")
    return images, d


def set_name(samples):
    """samples_naive_bank.npz -> naive_bank: the row name of one --samples file among several."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(samples)))[0]
    return stem[len("samples_"):] if stem.startswith("samples_") else stem


def sheet_rows(sets, by, k=None, per_class=None):
    """The rows of a good/bad sheet: (k, [(row name, best indices, worst indices, set number)], what the rows are
    per: 'label', 'class' or None). sets: [(name,
    images, scores)]. Rows: one per class (the generating label where kept, else the classifier's class) when
    per_class (default: whenever the scores know classes), and one per set; a lone row is cut into rows of 8."""
    if by not in SCORE_NAMES:
        raise UserError(f"--by {by}: choose from {', '.join(SCORE_NAMES)}")
    for name, images, d in sets:
        if by not in d:
            have = [s for s in SCORE_NAMES if s in d]
            why = {"confidence": " (fid.py ran without --extractor classifier)", "label_prob": " (it needs the "
                   "classifier extractor and a class-conditional checkpoint)"}.get(by, "")
            raise UserError(f"--by {by}: the scores of {name} have none{why}; they hold {', '.join(have) or 'no scores'}")
    classes = all("label" in d or "class" in d for _, _, d in sets)
    per_class = classes if per_class is None else per_class
    if per_class and not classes:
        raise UserError("--per-class: the scores know no classes (an unconditional model scored without the "
                        "classifier extractor); leave it out")
    k = k or (8 if per_class or len(sets) > 1 else 32)
    rows, key = [], None
    for s, (name, images, d) in enumerate(sets):
        if k > len(images):
            raise UserError(f"--k {k}: {name} holds only {len(images)} samples")
        values = d[by].astype(np.float64)
        groups = [("", np.arange(len(images)))]
        if per_class:
            key, names = ("label", "label_names") if "label" in d else ("class", "class_names")
            cls, names = d[key], list(d.get(names, []))
            groups = [(names[c] if c < len(names) else str(c), np.flatnonzero(cls == c)) for c in np.unique(cls)]
        for group, idx in groups:
            order = idx[np.argsort(-values[idx], kind="stable")]
            label = " ".join(filter(None, [set_name(name) if len(sets) > 1 else "", group]))
            rows.append((label, order[:k], order[::-1][:k], s))
    if len(rows) == 1:  # a single group: rows of 8
        label, best, worst, s = rows[0]
        rows = [(label if i == 0 else "", best[i:i + 8], worst[i:i + 8], s) for i in range(0, k, 8)]
    return k, rows, key


def _tile_text(d, by, i, key):
    """A tile's caption: its score, and the classifier's class where that tells something: rows not per class, or
    a class other than the one the model was asked for (key: what the rows are per)."""
    v = float(d[by][i])
    text = f"{v:.2f}" if by.startswith("realism") else f"{v:.3f}"
    if "class" in d and (key is None or key == "label" and "label" in d and int(d["label"][i]) != int(d["class"][i])):
        names, c = list(d.get("class_names", [])), int(d["class"][i])
        name = names[c] if c < len(names) else str(c)
        text += f" ({name if len(name) <= 6 else name.split()[-1][:6]})"  # 'mostly water': water
    return text


def goodbad_figure(sets, by="realism", k=None, per_class=None):
    """Two labelled grids in one figure: the k samples scoring highest by `by` (left) and the k lowest (right),
    each tile's score under it; rows per class and per set as sheet_rows says. sets: [(name, images, scores)]."""
    from matplotlib.figure import Figure
    k, rows, key = sheet_rows(sets, by, k, per_class)
    s = max(images.shape[-1] for _, images, _ in sets)
    pad, band = max(1, s // 16), max(8, int(0.4 * s))
    cols = max(len(best) for _, best, _, _ in rows)
    height, width = len(rows) * (s + band), cols * (s + pad)
    inch = 0.72 / s  # a tile is about 0.7 inch wide, whatever its pixels
    fig = Figure(figsize=(2 * width * inch + 2.2, height * inch + 1.2), layout="constrained")
    axes = fig.subplots(1, 2)
    d0 = sets[0][2]
    if by in ("confidence", "label_prob"):
        about = ("the classifier's top-class probability" if by == "confidence" else
                 "the classifier's probability of the class the model was asked for")
    else:
        ext = str(d0.get("realism_extractor", "")) if by == "realism" else by[len("realism_"):]
        about = (f"realism score in {ext} features against {d0['ref']} ({int(d0['n_ref'])} images; ≥ 1: inside one of "
                 f"their kept {int(d0['k'])}-NN balls)")
    for ax, side, title in ((axes[0], 1, f"best {k} by {by}"), (axes[1], 2, f"worst {k} by {by}")):
        canvas = np.full((height, width, 3), 255, np.uint8)
        for r, row in enumerate(rows):
            label, idx, (_, images, d) = row[0], row[side], sets[row[3]]
            y = r * (s + band)
            for c, i in enumerate(idx):
                x, img = c * (s + pad), images[i].permute(1, 2, 0).numpy()
                canvas[y:y + img.shape[0], x:x + img.shape[1]] = img if img.shape[-1] == 3 else img.repeat(3, -1)
                ax.text(x + s / 2, y + s + band / 2, _tile_text(d, by, i, key), ha="center", va="center",
                        fontsize=6.5)
            if label:
                ax.text(-2 * pad, y + s / 2, label, ha="right", va="center", fontsize=8)
        ax.imshow(canvas, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
    names = ", ".join(os.path.basename(n) for n, _, _ in sets)
    fig.suptitle(f"{names}: {about}", fontsize=9)
    return fig
