"""What the training loop trains: an objective ties the kernel's loss and samplers to the command line.
trainer.py runs any object with the `Objective` interface; DDPM and ColdZoom are the two there are."""
from typing import Protocol

import torch

from cli import NONNEG, POSITIVE, POSITIVE_INT, UserError
from data import to_model
from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, generate_ddpm, generate_zoom
from losses import diffusion_loss, restoration_loss
from samplers import SAMPLERS
from schedules import PREDICTIONS, Schedule, zoom_degrade
from zoom import STARTS, final_windows, start_stats


class Objective(Protocol):
    kind: str  # the checkpoint's kind, 'ddpm' or 'zoom': what sample.py and fid.py dispatch on
    run_name: str  # the run folder's prefix: runs/<run_name>_<data><size>
    description: str  # the script's --help text
    frozen_args: tuple  # its flags that a resumed run takes from the checkpoint

    def add_args(self, parser) -> None:
        """Its own flags and defaults."""

    def setup(self, args, data) -> dict:
        """Check its flags against the data, prepare; return the UNet options it needs."""

    def loss(self, model, x0, y, gen, part) -> tuple:
        """Per-sample losses of this rank's `part` of the global batch, and each sample's noise level in
        [0, 1) (for the per-quartile log). Every random draw comes from `gen`, for the whole global batch."""

    def sample(self, model, n, labels, device, seed) -> torch.Tensor:
        """n images in [-1, 1] for the progress grids."""

    def state(self) -> dict:
        """What a checkpoint needs besides the network to sample (zoom: start states, T, mode)."""

    def load_state(self, state) -> None: ...


def drop_labels(y, b, gen, p, null):
    """Classifier-free guidance's label dropout: each of the b labels becomes the null class with
    probability p (Ho & Salimans 2022), drawn from gen for the whole global batch."""
    drop = torch.rand(b, generator=gen, device=gen.device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)


class DDPM:
    kind = run_name = "ddpm"
    frozen_args = ("schedule", "T", "pred", "min_snr", "min_snr_plus_one", "learn_sigma", "schedule_shift")
    description = """Train a DDPM (Ho et al. 2020) with the options of improved DDPM and later work.

    python train_ddpm.py                                   # main job: maps 64x64, CPU preset, 15 min
    python train_ddpm.py --data coffee --size 64 --device cuda:0
    torchrun --nproc_per_node=2 train_ddpm.py --steps 1000  # DistributedDataParallel

Loss: MSE on the prediction target (eps, x0 or v), optionally min-SNR-γ weighted (Hang et al.
2023); with --learn-sigma the hybrid loss L_simple + λ L_vlb of Nichol & Dhariwal (λ = 0.001,
the mean stopped in L_vlb). See losses.py.
"""

    def add_args(self, p):
        g = p.add_argument_group("diffusion")
        g.add_argument("--schedule", default="cosine", choices=["linear", "cosine", "sigmoid"])
        g.add_argument("--T", type=POSITIVE_INT, default=1000, help="diffusion steps")
        g.add_argument("--schedule-shift", type=POSITIVE, default=1.0,
                       help="divide every SNR by this squared (simple diffusion's shift; size/32 keeps a 32 px "
                            "schedule's noise per structure at larger sizes)")
        g.add_argument("--pred", default="v", choices=PREDICTIONS,
                       help="what the network predicts (default v: an ε-network's x0 = (x_t − σ ε)/α blows up "
                            "at low SNR, and clipping it makes saturated colour clouds)")
        g.add_argument("--min-snr", type=NONNEG, default=5.0, help="min-SNR-γ loss weighting (0: off; default 5)")
        g.add_argument("--min-snr-plus-one", action="store_true",
                       help="with --min-snr: cap 1 + SNR (v's own weight) instead of SNR, so the noisiest levels keep "
                            "their weight")
        g.add_argument("--learn-sigma", action="store_true", help="learned variance + hybrid loss (improved DDPM)")
        g.add_argument("--grid-sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS),
                       help="sampler for the progress grids (stochastic samplers look cleaner on short runs)")
        g.add_argument("--grid-steps", type=POSITIVE_INT, default=DEFAULT_STEPS)

    def setup(self, args, data):
        self.args = args
        self.sched = Schedule.make(args.schedule, args.T, args.schedule_shift)
        self.num_classes = data.num_classes if args.cond else 0
        return dict(learn_sigma=args.learn_sigma)

    def loss(self, model, x0, y, gen, part):
        args, sched, b = self.args, self.sched, x0.shape[0]
        t = torch.randint(0, sched.T, (b,), generator=gen, device=gen.device)
        noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
        if y is not None:
            y = drop_labels(y, b, gen, args.label_drop, self.num_classes)[part]
        t, x0, noise = t[part].to(x0.device), x0[part], noise[part]
        xt = sched.q_sample(x0, t, noise)
        out = model(xt, t, y).float()
        loss = diffusion_loss(sched, out, x0, xt, noise, t, args.pred, args.min_snr, args.learn_sigma,
                              args.min_snr_plus_one)
        return loss, t.float() / sched.T

    def sample(self, model, n, labels, device, seed=0):
        return generate_ddpm(model, self.sched, self.args.pred, n, device, self.args.grid_sampler,
                             self.args.grid_steps, labels=labels, seed=seed)

    def state(self):
        return {}

    def load_state(self, state):
        pass


class ColdZoom:
    kind = "zoom"
    frozen_args = ("final_size", "loss")

    def __init__(self, mode):
        self.mode, self.run_name = mode, f"zoom_{mode}"
        self.description = f"""Train Cold Zoom Diffusion with {mode} interpolation (Bansal et al. 2022, "Cold
Diffusion", with a zoom-in degradation).

    python train_zoom_{mode}.py --data mnist --data-root DIR --minutes 20
    python sample.py --ckpt runs/zoom_{mode}_mnist28/ckpt.pt --start bank --sampler naive

D(x, s) zooms into the centre until a --final-size window fills the image at s = T = size - final
size; the restorer R(D(x0, s), s) learns x0. Sampling walks s = T..1 from a start state (zoom.py).
"""

    def add_args(self, p):
        g = p.add_argument_group("cold zoom")
        g.add_argument("--final-size", type=POSITIVE_INT, default=4, help="side of the final window (T = size - final size)")
        g.add_argument("--loss", default="mse", choices=["mse", "l1"])
        g.add_argument("--grid-start", default="bank", choices=STARTS, help="start state for the progress grids")
        p.set_defaults(data="mnist")

    def setup(self, args, data):
        if not 1 <= args.final_size < data.size:
            raise UserError(f"--final-size {args.final_size} must be between 1 and the image size - 1 ({data.size - 1})")
        self.args, self.T = args, data.size - args.final_size
        self.num_classes = data.num_classes if args.cond else 0
        if not hasattr(self, "stats"):  # a resumed run keeps the start states it was trained with
            self.stats = start_stats(to_model(final_windows(data.images, args.final_size)), seed=args.seed,
                                     labels=data.labels if args.cond else None)
        args.mode = self.mode
        return {}

    def loss(self, model, x0, y, gen, part):
        b = x0.shape[0]
        s = torch.randint(1, self.T + 1, (b,), generator=gen, device=gen.device)
        if y is not None:
            y = drop_labels(y, b, gen, self.args.label_drop, self.num_classes)[part]
        s, x0 = s[part].to(x0.device), x0[part]
        pred = model(zoom_degrade(x0, s, self.mode), s, y).float()
        return restoration_loss(pred, x0, self.args.loss), (s.float() - 1) / self.T

    def sample(self, model, n, labels, device, seed=0):
        return generate_zoom(model, self.stats, self.T, self.mode, n, device, self.args.grid_start, labels=labels,
                             seed=seed)

    def state(self):
        return {"stats": self.stats, "T": self.T, "mode": self.mode}

    def load_state(self, state):
        self.stats = state["stats"]
