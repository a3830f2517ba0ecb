"""Figures (matplotlib), each from files the other scripts write.

    python plots.py schedules --out schedules.png                 # beta, abar, log SNR of the three schedules
    python plots.py forward --data mnist --data-root ../shared/data --out forward.png   # q(x_t|x_0) and zoom D(x, s)
    python plots.py loss runs/a runs/b --out loss.png             # training (and held-out) loss curves
    python plots.py scores runs/a/scores.jsonl --x nfe --out fid_vs_nfe.png   # or --x step: FID vs training
    python plots.py levels runs/a/levels.jsonl --out levels.png   # x̂0 error per noise level (levels.py)
    python plots.py pixels --ckpt runs/zoom_nearest_mnist28/ckpt.pt --out pixels.png  # final-state pixel histogram
    python plots.py results results/*.jsonl > RESULTS.md          # the results page, from score cards

Reverse progressions (x_t and the predicted x0 along sampling) come from `sample.py --progression`;
the most and least confident samples from `fid.py --extractor classifier`.
"""
import argparse
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli import NONNEG_INT, POSITIVE_INT, Parser, UserError, run_cli  # noqa: E402


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


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def plot_loss(args):
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        log = os.path.join(run, "log.csv")
        if not os.path.isfile(log):
            raise UserError(f"'{run}' has no log.csv; pass training run folders")
        rows = _read_csv(log)
        step = [int(r["step"]) for r in rows]
        line, = ax.plot(step, [float(r["loss"]) for r in rows], label=f"{os.path.basename(run.rstrip('/'))} train")
        held = os.path.join(run, "heldout.csv")
        if os.path.isfile(held):
            h = _read_csv(held)
            ax.plot([int(r["step"]) for r in h], [float(r["heldout_loss"]) for r in h], "o--", color=line.get_color(),
                    label=f"{os.path.basename(run.rstrip('/'))} held-out (EMA)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def plot_scores(args):
    """FID (or another metric) from scores.jsonl cards against NFE, training step or training minutes, one
    line per run / extractor / sampler / reference: runs side by side."""
    cards = []
    for path in args.files:
        if not os.path.isfile(path):
            raise UserError(f"'{path}' does not exist; fid.py writes scores.jsonl into the run folder")
        cards += [json.loads(line) for line in open(path)]
    return scores_figure(cards, args.x, args.metric, ", ".join(args.files))


def scores_figure(cards, x="nfe", metric="fd", where="the cards"):
    """The figure of plot_scores from card dicts (fid.py draws its --sweep-steps this way)."""
    x = {"minutes": "train_minutes"}.get(x, x)
    series = {}
    for c in cards:
        if metric not in c or c.get(x) is None:
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
    cards = []
    for path in args.files:
        if not os.path.isfile(path):
            raise UserError(f"'{path}' does not exist; levels.py writes levels.jsonl (into the run folder or --out)")
        cards += [c for c in map(json.loads, open(path)) if c.get("type") == "levels"]
    if not cards:
        raise UserError(f"no levels.py cards in {', '.join(args.files)}")
    return levels_figure(cards)


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


def _cell(c, latest=True):
    """One results row from a score card; latest: the card scored its checkpoint file as it is now (a run's
    picture is drawn from the file, so a card of the same file before a resume gets none)."""
    what = c.get("source", "?")
    # a picture of the run (of this checkpoint, if it is not the run's last), when one was kept; named by
    # the run's path under runs/ (runs/distill_cifar/ct/ckpt_5min.pt -> distill_cifar_ct_ckpt_5min.jpg,
    # runs/anchor/samples_raw.npz -> anchor_samples_raw.jpg)
    parts = os.path.normpath(os.path.splitext(what)[0]).split(os.sep)
    parts = parts[parts.index("runs") + 1:] if "runs" in parts else parts[-2:]
    # sampled with guidance or the Gaussian's levels: the picture of that sampling (..._cfg3.jpg, ..._gauss0.1_mix8.jpg)
    variant = ((f"_cfg{c['cfg']:g}" if c.get("cfg") is not None else "")
               + (f"_gauss{c['gauss_snr']:g}" if c.get("gauss_snr") else "") + (f"_mix{c['gauss_mix']}" if c.get("gauss_mix") else "")
               + ("_noclip" if c.get("clip") is False else "") + (f"_init{c['init_snr']:g}" if c.get("init") else ""))
    grid = os.path.join("results", "grids", "_".join(parts[:-1] if parts[-1] == "ckpt" else parts) + variant + ".jpg")
    picture = f" [samples]({grid})" if latest and os.path.isfile(grid) else ""
    if c.get("kind"):
        minutes = f", {c['train_minutes']:.0f} min" if c.get("train_minutes") else ""
        run = os.path.basename(os.path.dirname(what))
        what = f"{c['kind']} on {c.get('data', '?')}, step {c.get('step')}{minutes} ({run})" + picture
    elif c.get("step"):  # samples from elsewhere whose training is on record (anchor_lucidrains.py)
        what += f", step {c['step']}" + (f", {c['train_minutes']:.0f} min" if c.get("train_minutes") else "") + picture
    how = (f"{c.get('sampler')} · {c.get('steps') or c.get('start', '')} · NFE {c.get('nfe')}"
           + (f" · cfg {c['cfg']:g}" if c.get("cfg") is not None else "")
           + (f" · Gaussian below SNR {c['gauss_snr']:g}" if c.get("gauss_snr") else "")
           + (f" (a mixture of {c['gauss_mix']})" if c.get("gauss_mix") else "")
           + (f" ({c['gauss_note']})" if c.get("gauss_note") else "")  # how older code chose a class's Gaussian
           + (" · x̂0 unclipped" if c.get("clip") is False else "")
           + (f" · from {c['init']} at SNR {c['init_snr']:g}" if c.get("init") else "")
           + ("" if c.get("ema", True) else " · raw")
           + (f" · {c['gen_seconds']:.0f} s" if c.get("gen_seconds") else "") if c.get("nfe") else "–")
    kid = f"{1e3 * c['kid']:.2f}" + (f" ± {1e3 * c['kid_std']:.2f}" if c.get("kid_std") is not None else "") if "kid" in c else "–"
    pr = f"{c['precision']:.3f} / {c['recall']:.3f}" if "precision" in c else "–"
    cls = (f"{c['entropy_ratio']:.3f} / {c['confident_share']:.3f}" if "entropy_ratio" in c else "–")
    colour = f"{100 * c['colour_gap']:.1f} %" if "colour_gap" in c else "–"
    copies = (f"{c['copy_share']:.3f} ({c['nn_median']:.3f} / {c['nn_median_heldout']:.3f})"
              if c.get("copy_rule") else "–")  # cards without a rule: an earlier test, not comparable
    train = c.get("train") or {}
    cmds = f"`{train['command']}` ({train.get('machine', '?')}, {train.get('commit', '?')}); " if train.get("command") else ""
    return [what, how, c.get("extractor", "?"), f"{c['fd']:.2f}" if "fd" in c else "–", kid, pr, cls, colour, copies, f"{c.get('n'):,}",
            f"{c.get('ref')} ({c.get('n_ref', '?'):,})", c.get("machine", "?"), c.get("date", c.get("time", "?")[:10]),
            c.get("commit", "?"), cmds + f"`{c.get('command', '?')}`"]


def _speed_cell(c):
    """One Speed row from a bench.py card."""
    what = (f"{c['task']}: {c['model']} {c['channels']}x{c['size']}, {c['precision']}, batch {c['batch']}"
            + (", channels_last" if c.get("channels_last") else "") + (", compiled" if c.get("compile") else ""))
    if c["task"] == "sample":
        per = ", ".join(f"{n} NFE {s:.1f} s" for n, s in c["s_per_1000"].items())
        e2e = "; ".join(f"{e['sampler']} {e['steps']} steps end to end {e['seconds']:.1f} s for {e['n']:,} "
                        f"({e['seconds'] / e['nfe_seconds']:.2f}× its NFE)" for e in c.get("e2e", []))
        result = f"1,000 images: {per}" + (f"; {e2e}" if e2e else "")
    else:
        tf = f", {c['tflops']:.3f} TFLOP/s of a {c['matmul_peak_tflops']:.2f} matmul peak" if c.get("tflops") else ""
        result = f"{c['img_s']:.1f} img/s{tf}"
    return [what, result, f"{c['peak_mem_MB']:.0f}", c.get("machine", "?"), c.get("date", "?"), c.get("commit", "?"),
            f"`{c.get('command', '?')}`"]


def results_page(files):
    """RESULTS.md: every score card as a row, grouped by reference set and image size, with what made it."""
    groups, speed, levels = {}, [], []
    for path in files:
        if not os.path.isfile(path):
            raise UserError(f"'{path}' does not exist; fid.py writes scores.jsonl (into the run folder or --out)")
        for k, line in enumerate(open(path), 1):
            try:
                c = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{k} is not a score card (one JSON object per line, as fid.py writes)")
            if c.get("type") == "speed":
                speed.append(c)
            elif c.get("type") == "levels":
                levels.append(c)
            else:
                groups.setdefault((c.get("ref", "?"), c.get("size") or 0), []).append(c)  # a reference is read at the size
    if not groups and not speed and not levels:
        raise UserError(f"no score cards in {', '.join(files)}")
    head = ["scored", "sampler · steps · NFE", "features", "FD ↓", "KID ×1e3", "precision / recall",
            "entropy / confident", "colour gap", "copies (NN distance / held-out's)", "N", "reference (N)", "machine", "date", "commit", "commands (training; scoring)"]
    out = ["# Results", "", "Generated by `python plots.py results " + " ".join(files) + "` from `fid.py`'s score cards; "
           "edit the cards' runs, not this page. FD is the Fréchet distance in the features named (Inception: FID). "
           "Compare rows only at equal N against the same reference: FD shrinks as N grows; KID does not carry that bias. "
           "`real ...` rows are the floor (real images against the reference). The seconds after the sampler are the time "
           "that sampling the N images took on the row's machine. Colour gap: the largest relative "
           "difference of a channel's mean or std between the images and the reference. Copies: the share of images "
           "whose nearest / second-nearest training-image distance ratio (RMS pixels) is below that of 99 % of held-out "
           "real images (≈ 0.01 when nothing is copied), then the median nearest distances of the images and of the "
           "held-out images. Look at the samples too: "
           "a lower FD is not always the better picture.", ""]
    last_step = {}  # each checkpoint file's newest scored step: older cards of it came before a resume
    for c in (c for cards in groups.values() for c in cards if c.get("kind")):
        last_step[c.get("source")] = max(last_step.get(c.get("source"), -1), c.get("step") or 0)
    for (ref, size), cards in sorted(groups.items()):
        out += [f"## against {ref}" + (f", {size} px" if size else ""), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in sorted(cards, key=lambda c: (c.get("extractor", ""), c.get("n", 0), c.get("fd", 0))):
            cells = _cell(c, latest=(c.get("step") or 0) == last_step.get(c.get("source"), c.get("step") or 0))
            out.append("| " + " | ".join(str(v).replace("|", "\\|") for v in cells) + " |")
        out.append("")
    if speed:
        out += ["## Speed", "", "`bench.py --cards` rows: a training step's images/s (batch 32, median after warm-up) "
                "and sampling time for 1,000 images, from the time of one network call and end to end.", "",
                "| measured | result | peak MB | machine | date | commit | command |", "|---|---|---|---|---|---|---|"]
        for c in speed:
            try:
                cells = _speed_cell(c)
            except (KeyError, TypeError, AttributeError):
                raise UserError(f"a speed card lacks what bench.py --cards writes ({json.dumps(c)[:80]}…); rerun bench.py")
            out.append("| " + " | ".join(str(v).replace("|", "\\|") for v in cells) + " |")
        out.append("")
    if levels:
        out += ["## Denoising error per noise level", "", "`levels.py` rows: the mean squared x̂0 error per pixel ([-1, 1] "
                "units, unclipped) of the network on N held-out images noised to each SNR, then that of the data's "
                "Gaussian (and of a mixture of Gaussians, where the card holds one): the exact denoisers that know only "
                "the training data's colours and spectrum.", "",
                "| checkpoint | SNR: network / Gaussian (/ mixture) | N | reference | machine | date | commit | command |",
                "|---|---|---|---|---|---|---|---|"]
        for c in levels:
            names = list(c["mse"])
            per = " · ".join(f"{snr:.3g}: " + " / ".join(f"{c['mse'][n][k]:.3g}" for n in names)
                             for k, snr in enumerate(c["snr"]))
            what = f"{c.get('source')}, step {c.get('step')}" + ("" if c.get("ema", True) else " (raw)")
            out.append("| " + " | ".join(str(v).replace("|", "\\|") for v in [
                what, per, c.get("n"), c.get("ref"), c.get("machine", "?"), c.get("date", "?"), c.get("commit", "?"),
                f"`{c.get('command', '?')}`"]) + " |")
        out.append("")
    return "\n".join(out)


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
    for s in sub.choices.values():
        s.add_argument("--out", required=True, help="the figure file (.png, .pdf, .svg)")
        s.add_argument("--seed", type=NONNEG_INT, default=0)
    s = sub.add_parser("results", help="print the results page (markdown) made from score cards")
    s.add_argument("files", nargs="+", help="score cards: fid.py's scores.jsonl, levels.py's levels.jsonl, bench.py --cards")
    args = p.parse_args()
    run_cli(lambda: _main(args))


def _main(args):
    from data import DataError
    if args.figure == "results":
        print(results_page(args.files))
        return
    try:
        fig = globals()[f"plot_{args.figure}"](args)
    except DataError as e:
        raise UserError(str(e))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
