"""Speed benchmark: one markdown table, each row measured in its own process (so peak memory is per row).

    python bench.py                      # presets x precisions, sampler timings, anchors if installed
    python bench.py --quick              # fewer rows (CI-sized)
    python bench.py --compile            # add torch.compile rows (slow to compile on CPU)
    pip install diffusers denoising-diffusion-pytorch   # adds the anchor rows, timed the same way

Training rows: images/s of one optimiser step (eps-prediction MSE, AdamW, batch 32), median over
timed steps after warm-up; achieved TFLOP/s = torch's FLOP counter for that step x steps/s, next
to the matmul peaks measured at the start of the same run. Sampling rows: the median time of one
network evaluation on a batch of 250 images, times NFE x 4 = the time to sample 1,000 images; then
the default sampler timed end to end on 1,000 images (20 with --quick).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cli import machine_name


def matmul_peak(dtype, n=2048, reps=10):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
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
    net = build_unet(kind, c, size, verbose=False)
    return net, lambda x, t: net(x, t)


def run_row(row):
    torch.manual_seed(0)
    net, f = build(row)
    mem = torch.channels_last if row["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=mem)
    dtype = torch.bfloat16 if row["precision"] == "bf16" else None
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))
    if row["compile"]:
        f = torch.compile(f)
    b, c, s = row["batch"], row["channels"], row["size"]
    x = torch.randn(b, c, s, s).contiguous(memory_format=mem)
    t = torch.randint(0, 1000, (b,))
    out = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    if row["task"] == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step():
            with ctx():
                loss = F.mse_loss(f(x, t).float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        from torch.utils.flop_counter import FlopCounterMode
        for _ in range(2):
            step()  # warm-up (and compilation)
        if not row["compile"]:
            with FlopCounterMode(display=False) as fc:
                step()
            out["gflop_per_img"] = fc.get_total_flops() / b / 1e9
        times = []
        t_end = time.perf_counter() + row["seconds"]
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out["img_s"] = b / statistics.median(times)
        if "gflop_per_img" in out:
            out["tflops"] = out["gflop_per_img"] * out["img_s"] / 1e3
    else:
        net.eval()
        with torch.no_grad(), ctx():
            f(x, t)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                f(x, t)
                times.append(time.perf_counter() - t0)
        per_nfe = statistics.median(times) / b
        out["s_per_1000"] = {str(n): per_nfe * 1000 * n for n in row["nfes"]}
        if row.get("e2e_n"):  # the default sampler end to end, its noise draws and bookkeeping included
            from sample import DEFAULT_SAMPLER, DEFAULT_STEPS, generate_ddpm
            from schedules import Schedule
            t0 = time.perf_counter()
            generate_ddpm(net, Schedule.make("cosine", 1000), "eps", row["e2e_n"], "cpu", precision=row["precision"])
            out["e2e"] = dict(sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS, n=row["e2e_n"],
                              seconds=time.perf_counter() - t0)
    out["peak_mem_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def rows_for(args):
    rows = []
    ours = [("tiny", 1, 28), ("small", 3, 32), ("small", 3, 64), ("medium", 3, 32), ("base", 3, 32)]
    if args.quick:
        ours = [("tiny", 1, 28), ("small", 3, 32)]
    modes = [("fp32", False, False), ("bf16", False, False), ("bf16", True, False)]
    if args.compile:
        modes.append(("bf16", False, True))
    for model, c, s in ours:
        for prec, cl, comp in modes:
            rows.append(dict(model=model, channels=c, size=s, precision=prec, channels_last=cl, compile=comp,
                             task="train"))
    for model in ("lucidrains-unet64", "diffusers-ddpm-cifar10"):
        for prec in ("fp32", "bf16"):
            rows.append(dict(model=model, channels=3, size=32, precision=prec, channels_last=False, compile=False,
                             task="train"))
    keep = set(args.models.split(",")) if args.models else None
    rows = [r for r in rows if keep is None or r["model"] in keep]
    # Sampling speed of the 32x32x3 default preset (or the first preset left by --models).
    left = [o for o in ours if keep is None or o[0] in keep]
    model, c, s = ("small", 3, 32) if ("small", 3, 32) in left else (left[0] if left else (None, 0, 0))
    if model:
        rows.append(dict(model=model, channels=c, size=s, precision="bf16", channels_last=False, compile=False,
                         task="sample", nfes=[10, 20, 50, 100, 1000], batch=args.sample_batch,
                         e2e_n=20 if args.quick else 1000))
    for r in rows:
        r.setdefault("batch", 32)
        r["seconds"] = args.seconds
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per training row")
    p.add_argument("--models", default=None, help="comma-separated subset of rows by model, e.g. small,lucidrains-unet64")
    p.add_argument("--sample-batch", type=int, default=250, help="batch for the sampling-speed row")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = p.parse_args()
    if args.row:
        try:
            print(json.dumps(run_row(json.loads(args.row))))
        except ImportError as e:
            print(json.dumps({"skipped": f"not installed ({e.name})"}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peaks on this machine ({machine_name(torch.device('cpu'))}; torch {torch.__version__}): "
          f"fp32 {fp32:.2f} TFLOP/s, bf16 {bf16:.2f} TFLOP/s\n")
    print("| model | input | precision | channels_last | compile | params M | GFLOP/img (train step) | img/s | "
          "TFLOP/s | % of bf16 peak | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sample_rows = []
    for row in rows_for(args):
        r = subprocess.run([sys.executable, __file__, "--row", json.dumps(row)], capture_output=True, text=True)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            res = {"skipped": f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:80]}"}
        name = f"{row['model']} | {row['channels']}x{row['size']} | {row['precision']} | {row['channels_last']} | {row['compile']}"
        if "skipped" in res:
            print(f"| {name} | {res['skipped']} |||||")
        elif row["task"] == "sample":
            sample_rows.append((row, res))
        else:
            tf = res.get("tflops")
            print(f"| {name} | {res['params_M']:.1f} | {res.get('gflop_per_img', float('nan')):.2f} | {res['img_s']:.1f} | "
                  f"{'' if tf is None else f'{tf:.3f}'} | {'' if tf is None else f'{100 * tf / bf16:.1f}'} | "
                  f"{res['peak_mem_MB']:.0f} |")
        sys.stdout.flush()
    for row, res in sample_rows:
        print(f"\nSampling 1,000 {row['channels']}x{row['size']} images with the `{row['model']}` preset, "
              f"{row['precision']} (measured per-NFE time on a batch of {row['batch']}):\n")
        print("| NFE (= steps for ddim/ancestral; dpmpp2m the same) | seconds for 1,000 images |")
        print("|---|---|")
        for nfe, sec in res["s_per_1000"].items():
            print(f"| {nfe} | {sec:.0f} |")
        e = res["e2e"]
        print(f"\nThe default sampler end to end (`{e['sampler']}`, {e['steps']} steps, as `python sample.py` runs it, "
              f"batch 256): {e['seconds']:.1f} s for {e['n']:,} images.")


if __name__ == "__main__":
    main()
