"""The results pages from the score cards of fid.py, bench.py and levels.py (`python plots.py results FILE... --out
RESULTS.md`): RESULTS.md, the best card of each method and training budget per dataset (leaderboard_page), and beside it
results/ALL.md, every card as a row with what made it (results_page; printed without --out)."""
import glob
import json
import os
import re
from collections import Counter

from cli import UserError, check_card, read_cards
from features import ref_is_training_set


def _cell(c, latest=True):
    """One results row from a score card; latest: the card scored its checkpoint file as it is now (a run's
    picture is drawn from the file, so a card of the same file before a resume gets none)."""
    what = c.get("source", "?")
    grid = picture_of(c, latest)
    picture = f" [samples]({grid})" if grid else ""
    if c.get("kind"):
        minutes = f", {c['train_minutes']:.0f} min" if c.get("train_minutes") else ""
        run = os.path.basename(os.path.dirname(what))
        what = f"{c['kind']} on {c.get('data', '?')}, step {c.get('step')}{minutes} ({run})" + picture
    elif c.get("step"):  # samples from elsewhere whose training is on record (anchor_lucidrains.py)
        what += f", step {c['step']}" + (f", {c['train_minutes']:.0f} min" if c.get("train_minutes") else "") + picture
    how, kid = sampling_of(c), kid_of(c)
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


def sampling_of(c):
    """How a card's images were sampled: sampler · steps · NFE, guidance, the Gaussian's levels, start, weights, time."""
    return (f"{c.get('sampler')} · {c.get('steps') or c.get('start', '')} · NFE {c.get('nfe')}"
            + (f" · cfg {c['cfg']:g}" if c.get("cfg") is not None else "")
            + (f" · Gaussian below SNR {c['gauss_snr']:g}" if c.get("gauss_snr") else "")
            + (f" (a mixture of {c['gauss_mix']})" if c.get("gauss_mix") else "")
            + (f" ({c['gauss_note']})" if c.get("gauss_note") else "")  # how older code chose a class's Gaussian
            + (" · x̂0 unclipped" if c.get("clip") is False else "")
            + (f" · from {c['init']} at SNR {c['init_snr']:g}" if c.get("init") else "")
            + ("" if c.get("ema", True) else " · raw")
            + (f" · {c['gen_seconds']:.0f} s" if c.get("gen_seconds") else "") if c.get("nfe") else "–")


def kid_of(c):
    return f"{1e3 * c['kid']:.2f}" + (f" ± {1e3 * c['kid_std']:.2f}" if c.get("kid_std") is not None else "") if "kid" in c else "–"


def picture_of(c, latest=True):
    """results/grids/RUN.jpg, a kept picture of a card's run (runs/distill/ct/ckpt_5min.pt -> distill_ct_ckpt_5min.jpg,
    runs/anchor/samples_raw.npz -> anchor_samples_raw.jpg), else None; latest: as for _cell."""
    # sampled with guidance or the Gaussian's levels: the picture of that sampling (..._cfg3.jpg, ..._gauss0.1_mix8.jpg)
    variant = ((f"_cfg{c['cfg']:g}" if c.get("cfg") is not None else "")
               + (f"_gauss{c['gauss_snr']:g}" if c.get("gauss_snr") else "") + (f"_mix{c['gauss_mix']}" if c.get("gauss_mix") else "")
               + ("_noclip" if c.get("clip") is False else "") + (f"_init{c['init_snr']:g}" if c.get("init") else ""))
    grid = os.path.join("results", "grids", run_name(c).replace("/", "_") + variant + ".jpg")
    return grid if latest and os.path.isfile(grid) else None


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


def read_score_cards(files):
    """The checked cards of files as [(file, 'file:line', card)], and whether a card scored its checkpoint as it is now."""
    found, last = [], {}
    for path in files:
        for at, c in read_cards(path, "fid.py writes scores.jsonl (into the run folder or --out)"):
            if c.get("type") == "levels":
                check_levels_card(at, c)
            elif c.get("type") != "speed":
                check_card(at, c, numbers=("n",), maybe_numbers=SCORE_NUMBERS, texts=("source", "extractor", "ref", "time", "date"))
                if c.get("kind"):
                    last[c.get("source")] = max(last.get(c.get("source"), -1), c.get("step") or 0)
            found.append((path, at, c))
    return found, lambda c: (c.get("step") or 0) == last.get(c.get("source"), c.get("step") or 0)


def results_page(files, command=None):
    """Every score card as a row, grouped by reference set and image size, with what made it (results/ALL.md);
    command: how the page was made, for its header (default: printing it from files)."""
    (found, is_latest), groups = read_score_cards(files), {}
    where = {id(c): at for _, at, c in found}
    speed, levels = ([c for _, _, c in found if c.get("type") == t] for t in ("speed", "levels"))
    for c in (c for _, _, c in found if c.get("type") not in ("speed", "levels")):
        groups.setdefault((c.get("ref", "?"), c.get("size") or 0), []).append(c)  # a reference is read at the size
    if not groups and not speed and not levels:
        raise UserError(f"no score cards in {', '.join(files)}")
    head = ["scored", "sampler · steps · NFE", "features", "FD ↓", "KID ×1e3", "precision / recall",
            "entropy / confident", "colour gap", "copies (NN distance / held-out's)", "N", "reference (N)", "machine", "date", "commit", "commands (training; scoring)"]
    command = command or f"python plots.py results {' '.join(files)}"
    out = ["# Results", "", f"Generated by `{command}` from `fid.py`'s score cards; edit the cards' runs, not this page. "
           "FD is the Fréchet distance in the features named (Inception: FID). Compare rows only at equal N against the same "
           "reference: FD shrinks as N grows; KID does not carry that bias. `real ...` rows are the floor (real images "
           "against the reference). The seconds after the sampler are the time that sampling the N images took on the "
           "row's machine. Colour gap: the largest relative difference of a channel's mean or std between the images and the "
           "reference. Copies: the share of images whose nearest / second-nearest training-image distance ratio (RMS pixels) "
           "is below that of 99 % of held-out real images (≈ 0.01 when nothing is copied), then the median nearest distances "
           "of the images and of the held-out images. Look at the samples too: a lower FD is not always the better picture.",
           ""]
    for (ref, size), cards in sorted(groups.items()):
        out += [f"## against {ref}" + (f", {size} px" if size else ""), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in sorted(cards, key=lambda c: (c.get("extractor", ""), c.get("n", 0), c.get("fd") or 0)):
            out.append(_row(lambda c: _cell(c, is_latest(c)), c, where[id(c)], "a score card lacks what fid.py writes"))
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


# RESULTS.md: per dataset, size and feature space, the best card of each method and training budget
HEAD = """Per dataset, size and feature space, the best score of each method at each training budget, ranked by KID ×1e3 \
± its spread; FD is the Fréchet distance in the section's features (Inception: FID). [{all}]({all}) holds every card's \
row with its commands, and the speed and per-noise-level tables. Both pages are made by `{command}` from the cards of \
fid.py, levels.py and bench.py; edit the cards, not the pages (a test fails when they are stale).

- Like with like: a section holds the cards at the N and reference most of its cards share (in its heading); the others, \
and models scored on their own training images, are in the full page only. The floor: real training images, same N.
- Method: ours (`train_ddpm.py`), a seed project's recipe (linear β, ε), the lucidrains anchor, Cold Zoom, a `distill.py` \
student by its `--target`; SDEdit starts from real images. A row is the best card of its method and budget over runs \
and samplers; at most 10 rows, each method's best first. Training: minutes (from the checkpoint's name or the card) \
or steps; a student's add to its teacher's. Picture: of the row's sampling, else of its checkpoint sampled otherwise.
"""


def run_name(c):
    """A card's run: its source under runs/ without ckpt.pt or the extension (runs/c90/ckpt_60min.pt -> c90/ckpt_60min)."""
    parts = os.path.normpath(os.path.splitext(c.get("source", "?"))[0]).split(os.sep)
    parts = parts[parts.index("runs") + 1:] if "runs" in parts else parts[-2:]
    return "/".join(parts[:-1] if parts[-1] == "ckpt" and len(parts) > 1 else parts)


def method_of(c):
    """What made a card's images (ours, a seed's recipe, the anchor, Cold Zoom, a student), and if it started from data."""
    train, cmd = c.get("train") or {}, (c.get("train") or {}).get("command") or ""
    target = (train.get("args") or {}).get("target") or next(iter(re.findall(r"--target (\w+)", cmd)), None)
    if "anchor_lucidrains.py" in cmd:
        what = "lucidrains anchor"
    elif c.get("kind") == "zoom":
        what = "Cold Zoom, " + ("bilinear" if "bilinear" in cmd else "nearest")
    elif c.get("kind") == "consistency":
        what = f"student, --target {target}" if target else "student (its --target not on the card)"
    elif c.get("kind") == "ddpm":
        what = "seed recipe (linear β, ε)" if re.search(r"--schedule linear\b", cmd) and re.search(r"--pred eps\b", cmd) else "ours"
    else:
        what = run_name(c)
    return what + (f", from {c['init']} (SDEdit)" if c.get("init") else "")


def budget_of(c):
    """('min', M) from a checkpoint's name (ckpt_<M>min.pt), its minutes or --minutes; ('steps', S) for --steps alone."""
    kept = re.search(r"ckpt_(\d+(?:\.\d+)?)min\.pt$", c.get("source", ""))
    cmd = (c.get("train") or {}).get("command") or ""
    steps = None if "anchor_lucidrains" in cmd else re.search(r"--steps (\d+)", cmd)  # the anchor's --steps samples
    minutes = re.search(r"--minutes (\d+(?:\.\d+)?)", cmd)
    if kept or (steps and not minutes):
        return ("min", float(kept.group(1))) if kept else ("steps", int(steps.group(1)))
    if c.get("train_minutes") is not None:
        return ("min", float(int(c["train_minutes"] + 0.5)))
    return ("min", float(minutes.group(1))) if minutes else ("step", int(c.get("step") or 0))


def machine_kind(machine):
    """A machine in a few words: 'EPYC (2 threads), AVX512-bf16', 'EPYC (2 threads), AVX2 fp32', 'H200'."""
    head, _, rest = (machine or "?").partition(",")
    name = re.sub(r"^\s*(AMD|Intel|NVIDIA)\s+", "", re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", "", head)).strip()
    isa = ("AVX2 fp32" + (", forced on a bf16 CPU" if "held to it" in rest else "") if "no fast bf16" in rest
           else "AVX512-bf16" if "AVX512-bf16" in rest else "AMX" if "AMX" in rest else "")
    threads = re.search(r"(\d+) threads", rest)
    return name + (f" ({threads.group(1)} threads)" if threads else "") + (f", {isa}" if isa else "")


def _pick(best, k=10):
    """At most k of the best cards per (method, budget): each method's best first, then the best of the rest; by KID."""
    ranked = sorted(best.items(), key=lambda kv: (kv[1]["kid"], kv[1].get("fd") or 0))
    chosen = [kv for i, kv in enumerate(ranked) if kv[0][0] not in {m for (m, _), _ in ranked[:i]}][:k]
    chosen += [kv for kv in ranked if kv not in chosen][:k - len(chosen)]
    return sorted(chosen, key=lambda kv: (kv[1]["kid"], kv[1].get("fd") or 0))


def _training(c, budget, teachers):
    """A row's training: its budget, the steps it made, and a student's teacher's minutes."""
    text = ({"min": "{:g} min", "steps": "{:,} steps"}.get(budget[0], "step {:,}").format(budget[1])
            + (f" ({c['step']:,} steps)" if budget[0] == "min" and c.get("step") else ""))
    teacher = re.findall(r"--teacher (\S+)", (c.get("train") or {}).get("command") or "")
    teacher = teachers.get(teacher[0]) if teacher and c.get("kind") == "consistency" else None
    return text + (f" + teacher's {budget_of(teacher)[1]:g} min" if teacher and budget_of(teacher)[0] == "min" else "")


def _section(key, section, ctx):
    """A leaderboard's lines: its heading, what it holds, the floor and the best rows."""
    (data, size, extractor), link, file_of = key, ctx["link"], ctx["file_of"]
    runs = [c for c in section if not str(c.get("source")).startswith("real ") and not scored_on_training(c)]  # no floor
    if not runs:
        return []
    counts = Counter((c["n"], c.get("ref", "?"), c.get("n_ref")) for c in runs)
    n, ref, n_ref = max(counts, key=lambda k: (counts[k], k[0], str(k[2])))
    same = [c for c in section if (c["n"], c.get("ref", "?"), c.get("n_ref")) == (n, ref, n_ref)]
    best, compared = {}, [c for c in runs if (c["n"], c.get("ref", "?"), c.get("n_ref")) == (n, ref, n_ref)]
    for c in compared:
        key = (method_of(c), budget_of(c))
        if key not in best or (c["kid"], c.get("fd") or 0) < (best[key]["kid"], best[key].get("fd") or 0):
            best[key] = c
    rows, pairs = _pick(best), f"{len(best)} (method, budget) pair" + "s" * (len(best) > 1)
    out = [f"## {data.split(':', 1)[1] + ' (folder)' if data.startswith('folder:') else data}, {size} px: {extractor} features, N {n:,} against {ref}"
           + (f" ({n_ref:,})" if n_ref not in (None, n) else ""), "",
           f"The best of {len(compared)} cards in {pairs}" + (f", {len(rows)} shown" if len(rows) < len(best) else "")
           + (f"; {len(runs) - len(compared)} more at another N" if len(runs) > len(compared) else "")
           + f": every card is in [the full page]({ctx['all']}).", "",
           "| method | training | KID ×1e3 | FD | sampling | run (card file) | machine | picture |", "|---" * 8 + "|"]
    floors = sorted((c for c in same if str(c.get("source")).startswith("real ")), key=lambda c: not os.path.basename(file_of[id(c)]).startswith("floor"))
    for c, (method, budget) in [(f, (f"floor: {f['source']}", None)) for f in floors[:1]] + [(c, k) for k, c in rows]:
        grid, other = picture_of(c, ctx["is_latest"](c)), ctx["pictures"].get((c.get("source"), c.get("step")))
        out.append("| " + " | ".join(str(v).replace("|", "\\|") for v in [
            method, _training(c, budget, ctx["teachers"]) if budget else "–", kid_of(c),
            f"{c['fd']:.2f}" if "fd" in c else "–", sampling_of(c), f"[{run_name(c) if budget else 'card'}]({link(file_of[id(c)])})",
            machine_kind((c.get("train") or {}).get("machine") or c.get("machine")),
            f"[samples]({link(grid)})" if grid else f"[other sampling]({link(other)})" if other and budget else "–"]) + " |")
    return out + [""]


def leaderboard_page(files, base, all_page, command):
    """RESULTS.md, the leaderboards; its links relative to the folder base (all_page's too)."""
    found, is_latest = read_score_cards(files)
    cards = [c for _, _, c in found if c.get("type") not in ("speed", "levels")]
    ctx = dict(file_of={id(c): path for path, _, c in found}, all=all_page, is_latest=is_latest,
               link=lambda p: os.path.relpath(p, base).replace(os.sep, "/"),
               teachers={c.get("source"): c for c in cards if c.get("kind") == "ddpm"}, pictures={})
    for c in cards:  # a checkpoint's picture from any of its cards, for a card whose own sampling has none
        ctx["pictures"][c.get("source"), c.get("step")] = ctx["pictures"].get((c.get("source"), c.get("step"))) or picture_of(c, is_latest(c))
    sections = {}
    for c in (c for c in cards if "kid" in c):
        kind, _, rest = c.get("ref", "?").partition(":")  # the dataset: a reference without its split
        sections.setdefault((f"{kind}:{os.path.dirname(rest)}" if kind == "folder" else kind, c.get("size") or 0, c.get("extractor", "?")), []).append(c)
    out = ["# Results", "", HEAD.format(all=all_page, command=command)]
    order = sorted(sections, key=lambda k: (k[0], k[1], -len(sections[k]), k[2]))  # per dataset, its most scored features first
    return "\n".join(out + [line for key in order for line in _section(key, sections[key], ctx)])


def write_pages(files, out):
    """RESULTS.md to out and every card's row to results/ALL.md beside it, both made before either is written."""
    files, base = sorted(set(files)), os.path.dirname(out) or "."
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a folder; give the page's file, e.g. {os.path.join(out, 'RESULTS.md')}")
    all_path = os.path.join(os.path.dirname(out), "results", "ALL.md")
    every = glob.glob(os.path.join(glob.escape(os.path.dirname(files[0])), "*.jsonl"))  # FOLDER/*.jsonl when all of it
    spec = os.path.join(os.path.dirname(files[0]), "*.jsonl") if len(files) > 1 and files == sorted(every) else " ".join(files)
    command = f"python plots.py results {spec} --out {os.path.relpath(out)}"
    full = re.sub(r"\]\(([^)\s:]+)\)", lambda m: f"]({os.path.relpath(m.group(1), os.path.dirname(all_path))})",
                  results_page(files, command=command))  # its links, from the folder it is written to
    pages = [(out, leaderboard_page(files, base, os.path.relpath(all_path, base), command)), (all_path, full)]
    for path, text in pages:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            raise UserError(f"cannot write {path} ({e.strerror})")
    return [p for p, _ in pages]
