"""The results page (RESULTS.md, printed by `python plots.py results FILE...`): every score card of fid.py, bench.py
and levels.py as a table row, grouped by reference set and image size, with what made it."""
import json
import os

from cli import UserError, check_card, read_cards
from features import ref_is_training_set


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
            f"{c.get('ref')} (" + (f"{c['n_ref']:,}" if c.get("n_ref") is not None else "?") + ")" + (", the training set" if scored_on_training(c) else ""),
            c.get("machine", "?"), c.get("date", c.get("time", "?")[:10]),
            c.get("commit", "?"), cmds + f"`{c.get('command', '?')}`"]


def scored_on_training(c):
    """Whether a card's reference holds images its model trained on: said by the card, or read from its training
    args or command (a coffee run that recorded no folds trained on all five, fold 5 included)."""
    if "ref_is_training_set" in c:
        return c["ref_is_training_set"]
    train = c.get("train") or {}
    if train.get("args") and c.get("ref"):
        try:
            return ref_is_training_set(c["ref"], train["args"])
        except Exception:  # a reference this version no longer parses: not judged
            return False
    command = train.get("command", "")
    return bool(command) and c.get("data") == "coffee" and "--folds" not in command and c.get("ref") == "coffee:test"


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


def check_levels_card(where, c):
    """Refuse a levels.py card (where: 'file:line') without SNRs and the network's and the Gaussian's error at each."""
    snr, mse = c.get("snr"), c.get("mse")
    if not isinstance(snr, list) or not snr or not all(isinstance(v, (int, float)) for v in snr):
        raise UserError(f"{where}: a levels card needs 'snr', a list of numbers, as levels.py writes; it holds "
                        f"{json.dumps(snr)[:40]}")
    if (not isinstance(mse, dict) or not {"network", "gaussian"} <= set(mse)
            or not all(isinstance(e, list) and len(e) == len(snr) and all(isinstance(v, (int, float)) for v in e)
                       for e in mse.values())):
        raise UserError(f"{where}: a levels card needs 'mse', the network's and the gaussian's error at each of its "
                        f"{len(snr)} SNRs, as levels.py writes; it holds {json.dumps(mse)[:60]}")


# what a score card's row reads: numbers (formatted as such), and the strings it sorts and splits by
SCORE_NUMBERS = ("fd", "kid", "kid_std", "precision", "recall", "entropy_ratio", "confident_share", "colour_gap",
                 "copy_share", "nn_median", "nn_median_heldout", "cfg", "gauss_snr", "init_snr", "train_minutes",
                 "gen_seconds", "n_ref", "step", "size", "nfe")


def _row(cells_of, c, where, what):
    """A table row from a card; a card the row cannot be read from is one line naming its file and line."""
    try:
        cells = cells_of(c)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UserError(f"{where}: {what} ({type(e).__name__}: {str(e)[:60]}); rerun the script that wrote it")
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in cells) + " |"


def results_page(files):
    """RESULTS.md: every score card as a row, grouped by reference set and image size, with what made it."""
    groups, speed, levels, where = {}, [], [], {}
    for path in files:
        for at, c in read_cards(path, "fid.py writes scores.jsonl (into the run folder or --out)"):
            where[id(c)] = at
            if c.get("type") == "levels":
                check_levels_card(at, c)
            elif c.get("type") != "speed":
                check_card(at, c, numbers=("n",), maybe_numbers=SCORE_NUMBERS,
                           texts=("source", "extractor", "ref", "time", "date"))
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
        for c in sorted(cards, key=lambda c: (c.get("extractor", ""), c.get("n", 0), c.get("fd") or 0)):
            latest = (c.get("step") or 0) == last_step.get(c.get("source"), c.get("step") or 0)
            out.append(_row(lambda c: _cell(c, latest), c, where[id(c)], "a score card lacks what fid.py writes"))
        out.append("")
    if speed:
        out += ["## Speed", "", "`bench.py --cards` rows: a training step's images/s (batch 32, median after warm-up) "
                "and sampling time for 1,000 images, from the time of one network call and end to end.", "",
                "| measured | result | peak MB | machine | date | commit | command |", "|---|---|---|---|---|---|---|"]
        for c in speed:
            out.append(_row(_speed_cell, c, where[id(c)], "a speed card lacks what bench.py --cards writes"))
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
