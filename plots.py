"""Figures (matplotlib), each from files the other scripts write.

    python plots.py schedules --out schedules.png                 # beta, abar, log SNR of the three schedules
    python plots.py forward --data mnist --data-root ../shared/data --out forward.png   # q(x_t|x_0) and zoom D(x, s)
    python plots.py loss runs/a runs/b --out loss.png             # training (and held-out) loss curves
    python plots.py scores runs/a/scores.jsonl --x nfe --out fid_vs_nfe.png   # or --x step: FID vs training
    python plots.py levels runs/a/levels.jsonl --out levels.png   # x̂0 error per noise level (levels.py)
    python plots.py pixels --ckpt runs/zoom_nearest_mnist28/ckpt.pt --out pixels.png  # final-state pixel histogram
    python plots.py goodbad --samples RUN/samples_LABEL.npz --by realism --k 32 --out sheet.png  # best/worst samples
    python plots.py results results/*.jsonl --out RESULTS.md     # RESULTS.md and results/ALL.md, from score cards

Reverse progressions (x_t and the predicted x0 along sampling) come from `sample.py --progression`;
the most and least confident samples from `fid.py --extractor classifier`.
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import csv
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli import NONNEG_INT, POSITIVE_INT, Parser, UserError, check_card, read_cards, run_cli  # noqa: E402


def plot_schedules(args):
    from schedules import Schedule
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for kind in ("linear", "cosine", "sigmoid"):
        s = Schedule.make(kind, args.T)
        t = np.arange(args.T)
        ax[0].plot(t, s.betas.numpy(), label=kind)
        ax[1].plot(t, s.abar.numpy(), label=kind)
        ax[2].plot(t, np.log(s.snr().numpy()), label=kind)
    for a, title in zip(ax, ("β_t", "ᾱ_t", "log SNR_t = log ᾱ/(1-ᾱ)")):
        a.set_title(title)
        a.set_xlabel("t")
        a.legend()
    ax[0].set_yscale("log")
    return fig


def _images_of(args, n):
    from data import load_data, to_model
    data = load_data(args.data, args.data_root, args.size, split="train")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:n]
    return to_model(data.images[idx])


def plot_forward(args):
    """Rows: one image under q(x_t | x_0) for the linear and cosine schedules, and under the zoom
    operator D(x, s) with nearest and bilinear resizing."""
    from schedules import Schedule, zoom_degrade
    x0 = _images_of(args, 1)
    cols = args.cols
    rows = []
    gen = torch.Generator().manual_seed(args.seed)
    eps = torch.randn(x0.shape, generator=gen)
    for kind in ("linear", "cosine"):
        s = Schedule.make(kind, 1000)
        ts = np.linspace(0, 999, cols).round().astype(int)
        rows.append((f"DDPM {kind}", [s.q_sample(x0, torch.tensor([t]), eps)[0] for t in ts], [f"t={t}" for t in ts]))
    n = x0.shape[-1]
    if args.final_size >= n:
        raise UserError(f"--final-size {args.final_size}: the zoom ends below the images' {n} px; give 1 to {n - 1}")
    T = n - args.final_size
    ss = np.linspace(0, T, cols).round().astype(int)
    for mode in ("nearest", "bilinear"):
        rows.append((f"zoom {mode}", [zoom_degrade(x0, torch.tensor([s]), mode)[0] for s in ss], [f"s={s}" for s in ss]))
    fig, ax = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.45 * len(rows)))
    for r, (name, imgs, titles) in enumerate(rows):
        for c, (img, title) in enumerate(zip(imgs, titles)):
            a = ax[r, c]
            a.imshow((img.clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(title, fontsize=7)
            if c == 0:
                a.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def _read_csv(path, columns):
    """The columns asked of a training run's CSV, each a list of numbers; one line naming the file and the line of
    a row that is not (and for a file that is empty, not text or without the column)."""
    values, k = {c: [] for c in columns}, 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or columns)]
            if missing:
                raise UserError(f"{path}: no '{missing[0]}' column (it has {', '.join(reader.fieldnames)}); "
                                f"pass training run folders")
            for row in reader:
                k = reader.line_num
                for c in columns:
                    try:
                        values[c].append(float(row[c]))
                    except (TypeError, ValueError):
                        raise UserError(f"{path}:{k}: its '{c}' is {'missing' if row[c] is None else repr(row[c])}, "
                                        f"not a number; was the file edited or cut short?")
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}:{k + 1} is not CSV text ({str(e)[:60]}); pass training run folders")
    if not values[columns[0]]:
        raise UserError(f"{path} has no rows yet; plot the run once it has logged")
    return values


def plot_loss(args):
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        log = os.path.join(run, "log.csv")
        if not os.path.isfile(log):
            raise UserError(f"'{run}' has no log.csv; pass training run folders")
        rows = _read_csv(log, ("step", "loss"))
        line, = ax.plot(rows["step"], rows["loss"], label=f"{os.path.basename(run.rstrip('/'))} train")
        held = os.path.join(run, "heldout.csv")
        if os.path.isfile(held):
            h = _read_csv(held, ("step", "heldout_loss"))
            ax.plot(h["step"], h["heldout_loss"], "o--", color=line.get_color(),
                    label=f"{os.path.basename(run.rstrip('/'))} held-out (EMA)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def plot_scores(args):
    """FID (or another metric) from scores.jsonl cards against NFE, training step or training minutes, one
    line per run / extractor / sampler / reference: runs side by side."""
    cards, x = [], {"minutes": "train_minutes"}.get(args.x, args.x)
    for path in args.files:
        for where, c in read_cards(path, "fid.py writes scores.jsonl into the run folder"):
            check_card(where, c, maybe_numbers=(x, args.metric, "cfg", "gauss_snr"), texts=("source", "extractor"))
            cards.append(c)
    return scores_figure(cards, args.x, args.metric, ", ".join(args.files))


def scores_figure(cards, x="nfe", metric="fd", where="the cards"):
    """The figure of plot_scores from card dicts (fid.py draws its --sweep-steps this way)."""
    x = {"minutes": "train_minutes"}.get(x, x)
    series = {}
    for c in cards:
        if c.get(metric) is None or c.get(x) is None:
            continue
        run = os.path.basename(os.path.dirname(c.get("source", ""))) if c.get("kind") else ""
        # one line per way of sampling too: the same checkpoints sampled two ways are two curves, not a zigzag
        how = (f" cfg {c['cfg']:g}" if c.get("cfg") is not None else "") + (
            f" gauss<{c['gauss_snr']:g}" if c.get("gauss_snr") else "") + (f" mix{c['gauss_mix']}" if c.get("gauss_mix") else "")
        key = f"{run} {c.get('extractor', '?')} {c.get('sampler', '')}{how} vs {c.get('ref', '?')} (N={c.get('n', '?')})"
        series.setdefault(key.strip(), []).append((c[x], c[metric]))
    if not series:
        raise UserError(f"no cards with both '{metric}' and '{x}' in {where}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key)
    ax.set_xlabel({"nfe": "network evaluations (NFE)", "step": "training step",
                   "train_minutes": "training minutes"}.get(x, x))
    extractors = {c.get("extractor") for c in cards if metric in c}
    ax.set_ylabel({"fd": "Fréchet distance" + (" (FID)" if extractors == {"inception"} else
                                                " (classifier features)" if extractors == {"classifier"} else "")
                   }.get(metric, metric))
    if x == "nfe":
        ax.set_xscale("log")
    ax.legend(fontsize=7)
    return fig


def levels_figure(cards):
    """From levels.py's cards: x̂0 error against SNR (left; the data's Gaussians dashed, once per distinct curve)
    and each network's error over its data's single Gaussian's (right; below 1 the network knows more than the
    data's colours and spectrum)."""
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    drawn = set()
    for c in cards:
        label = f"{c['source']} (step {c.get('step')})"
        ax.plot(c["snr"], c["mse"]["network"], marker="o", label=label)
        rel.plot(c["snr"], np.array(c["mse"]["network"]) / np.array(c["mse"]["gaussian"]), marker="o", label=label)
        for name, e in c["mse"].items():
            if name != "network" and (name, tuple(e)) not in drawn:
                drawn.add((name, tuple(e)))
                ax.plot(c["snr"], e, linestyle="--", color="grey" if name == "gaussian" else "black", label=f"data's {name}")
    rel.axhline(1, color="grey", linestyle="--")
    for a in (ax, rel):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("SNR α²/σ²")
    ax.set_ylabel("x̂0 mean squared error per pixel ([-1, 1])")
    rel.set_ylabel("network's error / the data's Gaussian's")
    rel.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    rel.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.legend(fontsize=7)
    return fig


def plot_levels(args):
    from results_page import check_levels_card
    cards = []
    for path in args.files:
        for where, c in read_cards(path, "levels.py writes levels.jsonl (into the run folder or --out)"):
            if c.get("type") == "levels":
                check_levels_card(where, c)
                cards.append(c)
    if not cards:
        raise UserError(f"no levels.py cards in {', '.join(args.files)}")
    return levels_figure(cards)


def plot_goodbad(args):
    from goodbad import goodbad_figure, read_scores
    if args.scores and len(args.scores) != len(args.samples):
        raise UserError(f"--scores: give one scores file per --samples file ({len(args.samples)}), or none")
    sets = [(s, *read_scores(s, (args.scores or [None] * len(args.samples))[i])) for i, s in enumerate(args.samples)]
    return goodbad_figure(sets, args.by, args.k, args.per_class)


def plot_pixels(args):
    """The histogram of final-state pixels stored in a zoom checkpoint."""
    from checkpoint import load_checkpoint
    ck = load_checkpoint(args.ckpt, kind="zoom")
    stats = ck["objective"]["stats"]
    hist = stats["hist"].float()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in range(hist.shape[0]):
        ax.bar(np.arange(hist.shape[-1]), hist[c].numpy(), width=1, alpha=0.6, label=f"channel {c}")
    ax.set_xlabel(f"pixel value (0-255) of the final {ck['args']['final_size']}x{ck['args']['final_size']} states")
    ax.set_ylabel("share of pixels")
    ax.set_yscale("log")
    ax.legend()
    return fig


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    s = sub.add_parser("schedules")
    s.add_argument("--T", type=POSITIVE_INT, default=1000)
    s = sub.add_parser("forward")
    s.add_argument("--data", default="mnist")
    s.add_argument("--data-root", default="data")
    s.add_argument("--size", type=POSITIVE_INT, default=None)
    s.add_argument("--cols", type=POSITIVE_INT, default=8)
    s.add_argument("--final-size", type=POSITIVE_INT, default=4)
    s = sub.add_parser("loss")
    s.add_argument("runs", nargs="+")
    s = sub.add_parser("scores")
    s.add_argument("files", nargs="+")
    s.add_argument("--x", default="nfe", help="nfe, step or minutes")
    s.add_argument("--metric", default="fd")
    s = sub.add_parser("levels")
    s.add_argument("files", nargs="+", help="levels.py's levels.jsonl files")
    s = sub.add_parser("pixels")
    s.add_argument("--ckpt", required=True)
    s = sub.add_parser("goodbad", help="the best and the worst samples by a per-sample score (fid.py's scores files)")
    s.add_argument("--samples", nargs="+", required=True, help="samples file(s) fid.py scored (samples_LABEL.npz; "
                   "several, e.g. one per zoom --start: rows per file)")
    s.add_argument("--scores", nargs="+", default=None, help="their scores files (default: scores_LABEL.npz beside each)")
    s.add_argument("--by", default="realism", help="realism (Inception's where it ran), realism_inception, "
                   "realism_classifier, confidence or label_prob (the probability of the class asked for)")
    s.add_argument("--k", type=POSITIVE_INT, default=None, help="tiles per side: 32 in rows of 8, or 8 per row when rows "
                   "are per class or per file")
    s.add_argument("--per-class", action=argparse.BooleanOptionalAction, default=None,
                   help="one row per class: the label a conditional model was asked for, else the classifier's "
                        "(default: whenever the scores know classes)")
    for s in sub.choices.values():
        s.add_argument("--out", required=True, help="the figure file (.png, .pdf, .svg)")
        s.add_argument("--seed", type=NONNEG_INT, default=0)
    s = sub.add_parser("results", help="the results pages (markdown) made from score cards")
    s.add_argument("files", nargs="+", help="score cards: fid.py's scores.jsonl, levels.py's levels.jsonl, bench.py --cards")
    s.add_argument("--out", default=None, help="write the short page (the best run of each method and budget per "
                   "dataset) to this file and every card's row to results/ALL.md beside it; without it, every card's "
                   "row is printed")
    args = p.parse_args()
    run_cli(lambda: _main(args))


def check_out(path):
    """--out, before any work: a figure type matplotlib writes (by the extension) in a place that can be written (its
    missing folders are made when the figure is saved)."""
    kinds = FigureCanvasBase.get_supported_filetypes()
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; give a figure file, e.g. {os.path.join(path, 'figure.png')}")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in kinds:
        others = ", .".join(sorted(set(kinds) - {"png", "pdf", "svg"}))
        raise UserError(f"--out {path}: {f'.{ext} is not a figure type' if ext else 'no extension'}; end the name "
                        f"in .png, .pdf or .svg (or .{others})")
    up = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(up):  # the nearest folder that is there: the missing ones are made in it
        up = os.path.dirname(up)
    if (not os.path.isdir(up) or not os.access(up, os.W_OK | os.X_OK)
            or (os.path.exists(path) and not os.access(path, os.W_OK))):
        why = f"{up} is a file, not a folder" if not os.path.isdir(up) else "not writable"
        raise UserError(f"--out {path}: cannot write there ({why}); pick another place")


def _main(args):
    from data import DataError
    if args.figure == "results":
        from results_page import results_page, write_pages
        if args.out:
            for path in write_pages(args.files, args.out):
                print(f"wrote {path}")
        else:
            print(results_page(args.files))
        return
    check_out(args.out)
    try:
        fig = globals()[f"plot_{args.figure}"](args)
    except DataError as e:
        raise UserError(str(e))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=120, bbox_inches="tight")
    except (OSError, RuntimeError) as e:  # a full disk; .pgf without its LaTeX
        raise UserError(f"--out {args.out}: cannot write the figure ({getattr(e, 'strerror', None) or str(e)[:80]})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
