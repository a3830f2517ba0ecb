"""What fid.py does with a set of images once it has them: the scores against reference features (and each
sample's own, which goodbad.py keeps beside the samples), the memorisation check against the training images,
the grids of the most and least confident samples, the samples kept for re-scoring, and the score card's
one-line and table forms."""
import functools
import os

import numpy as np
import torch
from torchvision.utils import save_image

from cli import UserError
from features import load_ref_data, parse_ref
from metrics import (PR_K, class_stats, copy_stats, frechet_distance, kid, knn_radii, mean_cov, nearest_distance,
                     precision_recall, realism)


def score(images, feats_ref, logits_ref, extractor, metrics, progress=True):
    """(the set's scores for the card, each sample's scores): realism_NAME (metrics.realism in this extractor's
    features, against the reference's precision/recall balls; left out when the reference has no more than PR_K
    images) and, where the extractor has logits, confidence (top softmax probability), class (its argmax) and probs
    (every class's probability)."""
    feats, logits = extractor(images, progress)
    out, per = {}, {}
    if "fid" in metrics:
        out["fd"] = frechet_distance(*mean_cov(feats), *mean_cov(feats_ref))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(feats, feats_ref)
    radii = knn_radii(feats_ref) if len(feats_ref) > PR_K else None  # one k-NN pass for both
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(feats_ref, feats, PR_K, radii)
    if radii is not None:
        per[f"realism_{extractor.name}"] = realism(feats_ref, feats, PR_K, radii).numpy()
    if logits is not None:
        stats = class_stats(logits)
        out.update({k: v for k, v in stats.items() if k not in ("top_prob", "top_class")})
        per.update(confidence=stats["top_prob"].numpy(), probs=torch.as_tensor(logits).float().softmax(1).numpy(),
                   **{"class": stats["top_class"].numpy()})
        if getattr(extractor, "class_names", None):
            per["class_names"] = np.asarray(extractor.class_names, dtype=str)
    else:  # said plainly in every card rather than left out silently
        out["score_is"] = "n/a: these weights end at pool3 (no class logits); the classifier extractor gives IS"
    return out, per


@functools.lru_cache(maxsize=2)
def _train_images(train_ref, root, size):
    return load_ref_data(*parse_ref(train_ref), root, size).images


def copies_reference(heldout, train_ref, root):
    """The held-out images' distances to their nearest training images (for copies), checked before any
    sampling: --train-ref must hold images of the held-out ones' shape, and not the held-out images themselves."""
    train = _train_images(train_ref, root, heldout.shape[-1])
    if train.shape[1:] != heldout.shape[1:]:
        raise UserError(f"--train-ref {train_ref} has {tuple(train.shape[1:])} images, --ref {tuple(heldout.shape[1:])}")
    d_real, _ = nearest_distance(heldout, train)
    if (d_real[:, 0] < 1e-3).float().mean().item() > 0.01:
        raise UserError(f"--metrics copies: some --ref images are also in --train-ref {train_ref}; "
                        f"give a held-out split as --ref")
    return d_real


def copies(images, heldout, train_ref, root, out, label, k=32, d_real=None):
    """The memorisation check's card fields, and copies_LABEL.png: the k samples most like copies (lowest
    nearest / second-nearest distance ratio; rows of 8), each row followed by their nearest training images.
    d_real: copies_reference's distances, where already computed."""
    train = _train_images(train_ref, root, images.shape[-1])
    if train.shape[1:] != images.shape[1:]:
        raise UserError(f"--train-ref {train_ref} has {tuple(train.shape[1:])} images, the samples {tuple(images.shape[1:])}")
    stats, ratio, idx = copy_stats(images, heldout, train, d_real=d_real)
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
    """The k most and k least confident samples (plots.py goodbad draws them with their scores and classes)."""
    order = torch.argsort(top_prob, descending=True)
    paths = []
    for name, idx in (("most", order[:k]), ("least", order.flip(0)[:k])):
        path = os.path.join(out, f"confident_{label}_{name}.png")
        save_image(images[idx].float() / 255, path, nrow=8, padding=1)
        paths.append(path)
    return paths


def keep_samples(images, out, label):
    """out/samples_LABEL.npz in sample.py's layout (N×H×W×C uint8), written whole or not at all."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"samples_{label}.npz")
    np.savez_compressed(path + ".part.npz", images=images.permute(0, 2, 3, 1).numpy())
    os.replace(path + ".part.npz", path)
    return path


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
