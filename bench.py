"""Speed benchmark: one markdown table, each row measured in its own process (so peak memory is per row).

    python bench.py                      # presets x native precisions, sampler timings, anchors if installed
    python bench.py --quick              # fewer rows, under a minute
    python bench.py --precisions fp32,bf16   # also time precisions the machine only emulates
    python bench.py --compile            # add torch.compile rows (slow to compile on CPU)
    python bench.py --device cuda:0      # the same table on a GPU
    python bench.py --cards results/speed.jsonl   # also as cards for the results page (plots.py results)
    pip install diffusers denoising-diffusion-pytorch   # adds the anchor rows, timed the same way

Precisions: by default the ones the machine runs natively (machine.py: bf16 only on CPUs with AMX or
AVX512-bf16 and on GPUs); the others are listed as skipped with the reason.
Training rows: images/s of one optimiser step (eps-prediction MSE, AdamW, batch 32), median over
timed steps after warm-up; achieved TFLOP/s = torch's FLOP counter for that step x steps/s, next
to the matmul peaks measured at the start of the same run. Sampling rows: the median time of one
network evaluation per image on a batch of 64 (sample.py's), times 1,000 x NFE; then
the default sampler and the 4-step samplers of distill.py's students timed end to end on 1,000
images (20 with --quick), each against the time of its network calls alone.
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cli import POSITIVE, POSITIVE_INT, PRECISIONS, Parser, UserError, ensure_writable, resolve_device, run_cli
from machine import autocast, describe, native_precisions, provenance, set_threads, setup_device
from generate import sample_batch


def timer(device):
    """perf_counter that waits for the GPU's queue first, so a time is the work's, not the launch's."""
    def now():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def matmul_peak(dtype, device, n=2048, reps=10):
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    now = timer(device)
    a @ b
    times = []
    for _ in range(reps):
        t0 = now()
        a @ b
        times.append(now() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def build(row):
    """The network of a row and a forward function f(x, t) -> prediction with the input's shape."""
    kind, c, size = row["model"], row["channels"], row["size"]
    if kind == "diffusers-ddpm-cifar10":
        from diffusers import UNet2DModel
        net = UNet2DModel(sample_size=size, in_channels=c, out_channels=c, block_out_channels=(128, 256, 256, 256),
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2)
        return net, lambda x, t: net(x, t).sample
    if kind == "lucidrains-unet64":
        from denoising_diffusion_pytorch import Unet
        net = Unet(dim=64, dim_mults=(1, 2, 4, 8), channels=c)
        return net, lambda x, t: net(x, t)
    from nn_unet import build_unet
    net = build_unet(kind, c, size)
    return net, lambda x, t: net(x, t)


def run_row(row):
    torch.manual_seed(0)
    device = torch.device(row["device"])
    setup_device(device)
    now = timer(device)
    net, f = build(row)
    mem = torch.channels_last if row["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=mem)
    ctx = lambda: autocast(device, row["precision"])
    if row["compile"]:
        f = torch.compile(f)
    b, c, s = row["batch"], row["channels"], row["size"]
    x = torch.randn(b, c, s, s, device=device).contiguous(memory_format=mem)
    t = torch.randint(0, 1000, (b,), device=device)
    out = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    if row["task"] == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=row["precision"] == "fp16")

        def step():
            with ctx():
                loss = F.mse_loss(f(x, t).float(), x)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        from torch.utils.flop_counter import FlopCounterMode
        for _ in range(2):
            step()  # warm-up (and compilation)
        if not row["compile"]:
            with FlopCounterMode(display=False) as fc:
                step()
            out["gflop_per_img"] = fc.get_total_flops() / b / 1e9
        times = []
        t_end = now() + row["seconds"]
        while now() < t_end or len(times) < 3:
            t0 = now()
            step()
            times.append(now() - t0)
        out["img_s"] = b / statistics.median(times)
        if "gflop_per_img" in out:
            out["tflops"] = out["gflop_per_img"] * out["img_s"] / 1e3
    else:
        net.eval()
        with torch.no_grad(), ctx():
            f(x, t)
            times = []
            for _ in range(3):
                t0 = now()
                f(x, t)
                times.append(now() - t0)
        per_nfe = statistics.median(times) / b
        out["s_per_1000"] = {str(n): per_nfe * 1000 * n for n in row["nfes"]}
        if row.get("e2e_n"):  # samplers end to end, their noise draws and bookkeeping included
            from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, generate_ddpm
            from schedules import Schedule
            out["e2e"] = []
            # the default, then how distill.py's students sample (--target ode: consistency; trajectory: ddim)
            for sampler, steps, spacing in ((DEFAULT_SAMPLER, DEFAULT_STEPS, None), ("consistency", 4, None),
                                            ("ddim", 4, "trailing")):
                t0 = now()
                generate_ddpm(net, Schedule.make("cosine", 1000), "eps", row["e2e_n"], device, sampler, steps,
                              batch=row["batch"], precision=row["precision"], spacing=spacing)
                out["e2e"].append(dict(sampler=sampler + (f" {spacing}" if spacing else ""), steps=steps,
                                       n=row["e2e_n"], seconds=now() - t0, nfe_seconds=per_nfe * row["e2e_n"] * steps))
    out["peak_mem_MB"] = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


OURS = [("tiny", 1, 28), ("small", 3, 32), ("small", 3, 64), ("medium", 3, 32), ("base", 3, 32)]  # model, channels, size
QUICK = [("tiny", 1, 28), ("small", 3, 32)]
ANCHORS = {"lucidrains-unet64": "denoising_diffusion_pytorch", "diffusers-ddpm-cifar10": "diffusers"}  # their packages


def names(flag, text, known, note=""):
    """A comma-separated list flag's names, each one of known and given once; else one line listing the known ones."""
    given = text.split(",")
    bad = [q for q in given if q not in known]
    if bad:
        raise UserError(f"{flag} {text}: {', '.join(repr(q) if q else 'an empty name' for q in bad)} "
                        f"{'is' if len(bad) == 1 else 'are'} not one of {', '.join(known)}{note}")
    twice = sorted({q for q in given if given.count(q) > 1})
    if twice:
        raise UserError(f"{flag} {text} names {', '.join(twice)} twice; give each once")
    return given


def _measure(row):
    """One row timed in a fresh process (nothing left over from the rows before it)."""
    package = ANCHORS.get(row["model"])
    if package and importlib.util.find_spec(package) is None:
        return {"skipped": f"not installed ({package})"}
    r = subprocess.run([sys.executable, __file__, "--row", json.dumps(row)], capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"skipped": f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:80]}"}


def rows_for(args, precisions):
    """The rows to time: our presets (and the anchors) in each precision asked for, then the sampling row."""
    rows = []
    ours = OURS
    modes = [(p, False, False) for p in precisions]
    if not args.quick:
        modes += [(p, True, False) for p in precisions if p != "fp32"]  # channels_last pays with autocast only
    if args.compile:
        modes.append((precisions[0], False, True))
    if args.quick:
        ours = QUICK
    for model, c, s in ours:
        for prec, cl, comp in modes:
            rows.append(dict(model=model, channels=c, size=s, precision=prec, channels_last=cl, compile=comp,
                             task="train"))
    keep = set(args.models.split(",")) if args.models else None
    for model in ANCHORS:
        if args.quick and (keep is None or model not in keep):
            continue  # a quick table has our presets only, unless an anchor is named in --models
        for prec in precisions:
            rows.append(dict(model=model, channels=3, size=32, precision=prec, channels_last=False, compile=False,
                             task="train"))
    rows = [r for r in rows if keep is None or r["model"] in keep]
    # Sampling speed of the 32x32x3 default preset (or the first preset left by --models), in the machine's
    # own precision: what sample.py would use.
    left = [o for o in ours if keep is None or o[0] in keep]
    model, c, s = ("small", 3, 32) if ("small", 3, 32) in left else (left[0] if left else (None, 0, 0))
    if model:
        rows.append(dict(model=model, channels=c, size=s, precision=precisions[0], channels_last=False,
                         compile=False, task="sample", nfes=[4, 10, 15, 50, 100, 1000],
                         batch=sample_batch(args.device, args.sample_batch), e2e_n=20 if args.quick else 1000))
    for r in rows:
        r.setdefault("batch", 32)
        r["seconds"], r["device"] = args.seconds, args.device
    return rows


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two presets, native precisions, 2 s a row, no anchors")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seconds", type=POSITIVE, default=None, help="timed seconds per training row (default 8, quick 2)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated precisions to time (default: the ones this machine runs natively)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--models", default=None, help="comma-separated subset of rows by model, e.g. small,lucidrains-unet64")
    p.add_argument("--sample-batch", type=POSITIVE_INT, default=None,
                   help="batch for the sampling row (default: sample.py's for the device)")
    p.add_argument("--cards", default=None, metavar="FILE",
                   help="also append each measured row as a speed card (one JSON line) to FILE, for plots.py results")
    p.add_argument("--report", action="store_true",
                   help="the device report instead of the table: train_ddpm.py's own step at the default and the best "
                        "batch, TFLOP/s against the matmul peak, host reads per step, eager against compiled, 1,000 "
                        "samples, one DDP process (bench_report.py); with --quick, tiny settings")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = p.parse_args()
    if args.row:
        try:
            print(json.dumps(run_row(json.loads(args.row))))
        except ImportError as e:
            print(json.dumps({"skipped": f"not installed ({e.name})"}))
        return
    run_cli(lambda: bench(args))


def bench(args):
    device = resolve_device(args.device)
    args.device = str(device)
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 8.0
    native = native_precisions(device)
    precisions = native if args.precisions is None else names(
        "--precisions", args.precisions, [q for q in PRECISIONS if q != "fp16" or device.type == "cuda"],
        f" on {device} (native: {', '.join(native)}{'; fp16 needs CUDA' if device.type != 'cuda' else ''})")
    if args.models is not None:  # checked here: rows_for would leave an unknown name out silently
        names("--models", args.models, [*dict.fromkeys(m for m, _, _ in (QUICK if args.quick else OURS)), *ANCHORS],
              " (--quick times the tiny and small presets)" if args.quick else "")
    if args.cards:
        if os.path.isdir(args.cards):
            raise UserError(f"--cards {args.cards} is a folder; give a file, e.g. "
                            f"{os.path.join(args.cards, 'speed.jsonl')}")
        ensure_writable(os.path.dirname(os.path.abspath(args.cards)), "--cards")
    set_threads()
    setup_device(device)
    print(describe(device, precisions[0]) + f"; torch {torch.__version__}")
    if args.report:
        return device_report(args, device)
    where = dict(provenance(device), torch=torch.__version__)
    peaks = {q: matmul_peak({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[q], device,
                            n=1024 if args.quick else 2048) for q in precisions}
    print("matmul peaks: " + ", ".join(f"{q} {v:.2f} TFLOP/s" for q, v in peaks.items()))
    skipped = [q for q in PRECISIONS if q not in precisions and (q != "fp16" or device.type == "cuda")]
    for q in skipped:
        why = "not native on this machine (emulated, several times slower)" if q not in native else "not asked for"
        print(f"skipped: {q} rows, {why}; time them with --precisions {','.join(precisions + [q])}")
    top = max(peaks.values())
    print()
    print("| model | input | precision | channels_last | compile | params M | GFLOP/img (train step) | img/s | "
          "TFLOP/s | % of matmul peak | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sample_rows = []
    for row in rows_for(args, precisions):
        res = _measure(row)
        if args.cards and "skipped" not in res:
            with open(args.cards, "a") as f:
                f.write(json.dumps(dict(type="speed", **row, **res, matmul_peak_tflops=peaks[row["precision"]], **where)) + "\n")
        name = f"{row['model']} | {row['channels']}x{row['size']} | {row['precision']} | {row['channels_last']} | {row['compile']}"
        if "skipped" in res:
            print(f"| {name} | {res['skipped']} |||||")
        elif row["task"] == "sample":
            sample_rows.append((row, res))
        else:
            tf = res.get("tflops")
            print(f"| {name} | {res['params_M']:.1f} | {res.get('gflop_per_img', float('nan')):.2f} | {res['img_s']:.1f} | "
                  f"{'' if tf is None else f'{tf:.3f}'} | {'' if tf is None else f'{100 * tf / top:.1f}'} | "
                  f"{res['peak_mem_MB']:.0f} |")
        sys.stdout.flush()
    for row, res in sample_rows:
        print(f"\nSampling 1,000 {row['channels']}x{row['size']} images with the `{row['model']}` preset, "
              f"{row['precision']} (measured per-NFE time on a batch of {row['batch']}):\n")
        print("| NFE (= steps for ddim/ancestral/dpmpp2m) | seconds for 1,000 images |")
        print("|---|---|")
        for nfe, sec in res["s_per_1000"].items():
            print(f"| {nfe} | {sec:.1f} |")
        print(f"\nEnd to end, batch {row['batch']} (the default sampler as `python sample.py` runs it; consistency "
              f"and ddim trailing as they sample distill.py's students):\n")
        print("| sampler | steps = NFE | seconds | images | / the time of its NFE alone |")
        print("|---|---|---|---|---|")
        for e in res["e2e"]:
            ratio = e["seconds"] / e["nfe_seconds"]
            print(f"| {e['sampler']} | {e['steps']} | {e['seconds']:.1f} | {e['n']:,} | {ratio:.2f} |")


def device_report(args, device):
    """`--report`: bench_report's rows as a table, and its card appended to --cards."""
    from bench_report import report
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    rows, card = report(device, args.quick, seconds, 8 if args.quick else 1000, timer, matmul_peak)
    print("\n| measured | value |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    if args.cards:
        with open(args.cards, "a") as f:
            f.write(json.dumps(dict(type="report", **card, **provenance(device), torch=torch.__version__)) + "\n")


if __name__ == "__main__":
    main()
