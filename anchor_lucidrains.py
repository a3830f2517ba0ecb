"""The quality anchor: lucidrains' denoising-diffusion-pytorch trained the way its README shows, on our
data and for the same wall-clock budget, then sampled to a samples.npz that fid.py scores like ours.

    pip install denoising-diffusion-pytorch        # optional: only this script needs it
    python anchor_lucidrains.py --data mnist --data-root ../shared/data --minutes 20 --n 2000
    python fid.py --samples runs/anchor_lucidrains_mnist28/samples.npz --ref mnist:test --data-root ../shared/data \
        --extractor inception,classifier

Its recipe, as in its README and Trainer: Unet(dim=32, dim_mults=(1, 2, 4)) (--dim-mults 1,2,4,8 for
64 px), GaussianDiffusion with T=1000 and DDIM sampling (--steps, 50), Adam lr 8e-5 betas (0.9, 0.99),
batch 32, grad-norm clip 1, EMA 0.995 every 10 steps (ema-pytorch), fp32. Both weights are sampled: the
EMA's to samples.npz and the raw ones to samples_raw.npz (an EMA whose horizon is ~2,000 steps averages
most of a short run). anchor.json says what trained them; fid.py puts it on the samples' score cards. Data come from our loaders
(decoded once, our per-dataset flips: none for digits), so the comparison is about the model and recipe, not the I/O.
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
import argparse
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from cli import NONNEG_INT, POSITIVE, POSITIVE_INT, Parser, UserError, run_cli
from machine import provenance, set_threads
from augment import DRAWS, augment_batch
from data import add_data_args, data_from_args, to_uint8


def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--minutes", type=POSITIVE, default=20.0, help="training wall-clock budget")
    p.add_argument("--dim", type=POSITIVE_INT, default=32)
    p.add_argument("--dim-mults", default="1,2,4")
    p.add_argument("--lr", type=POSITIVE, default=8e-5)
    p.add_argument("--batch", type=POSITIVE_INT, default=32)
    p.add_argument("--steps", type=POSITIVE_INT, default=50, help="DDIM sampling steps")
    p.add_argument("--n", type=POSITIVE_INT, default=2000, help="images to sample")
    p.add_argument("--weights", default="ema,raw", help="which weights to sample: ema, raw or ema,raw")
    p.add_argument("--out", default=None, help="default runs/anchor_lucidrains_<data><size>")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    args = p.parse_args()
    if not args.weights or set(args.weights.split(",")) - {"ema", "raw"}:
        p.error(f"--weights {args.weights}: use ema, raw or ema,raw")
    run_cli(lambda: _main(args))


def _main(args):
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA
    except ImportError:
        raise UserError("this anchor needs lucidrains' package: pip install denoising-diffusion-pytorch")
    set_threads()
    data = data_from_args(args, "train")
    out = args.out or os.path.join("runs", f"anchor_lucidrains_{args.data}{data.size}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)
    net = Unet(dim=args.dim, dim_mults=tuple(int(m) for m in args.dim_mults.split(",")), channels=data.channels)
    diffusion = GaussianDiffusion(net, image_size=data.size, timesteps=1000, sampling_timesteps=args.steps)
    opt = torch.optim.Adam(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    gen = torch.Generator().manual_seed(args.seed)
    step, t0 = 0, time.time()
    bar = tqdm(desc="lucidrains GaussianDiffusion", unit="step")
    while time.time() - t0 < 60 * args.minutes:
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        u = torch.rand(len(idx), DRAWS[data.augment], generator=gen)
        x = augment_batch(data.images[idx].float() / 255, data.augment, u)  # our per-dataset flips (none for digits)
        loss = diffusion(x)  # it maps [0, 1] to [-1, 1] itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        ema.update()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{step * args.batch / (time.time() - t0):.0f}")
    bar.close()
    train_s = time.time() - t0
    print(f"trained {step} steps ({step * args.batch} images) in {train_s:.0f} s: "
          f"{step * args.batch / train_s:.1f} img/s")
    record = dict(provenance(torch.device("cpu")), args=vars(args), step=step, train_seconds=round(train_s, 1),
                  img_per_s=round(step * args.batch / train_s, 2), sampled={})
    _write_json(record, os.path.join(out, "anchor.json"))
    for which in args.weights.split(","):
        model = (ema.ema_model if which == "ema" else diffusion).eval()
        t0, images = time.time(), []
        with torch.no_grad():
            for i in tqdm(range(0, args.n, 250), desc=f"sampling {which} weights (DDIM {args.steps})", unit="batch"):
                images.append(model.sample(batch_size=min(250, args.n - i)) * 2 - 1)  # [0, 1] -> our [-1, 1]
        u8 = to_uint8(torch.cat(images))
        path = os.path.join(out, "samples.npz" if which == "ema" else "samples_raw.npz")
        np.savez_compressed(path, images=u8.permute(0, 2, 3, 1).numpy())
        record["sampled"][os.path.basename(path)] = dict(weights=which, sampler="ddim", steps=args.steps,
                                                         seconds=round(time.time() - t0, 1))
        _write_json(record, os.path.join(out, "anchor.json"))  # fid.py puts the sampling on the card
        print(f"{args.n} images ({which} weights) in {time.time() - t0:.0f} s -> {path} (score with fid.py --samples)")


def _write_json(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
