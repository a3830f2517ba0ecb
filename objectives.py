"""What the training loop trains: an objective ties the kernel's loss and samplers to the command line.
trainer.py runs any object with the `Objective` interface: DDPM and ColdZoom here, and Consistency (a DDPM
checkpoint distilled into a few-step student, consistency.py)."""
from typing import Protocol

import torch

from cli import NONNEG, POSITIVE_INT, UserError
from data import to_model
from generate import generate_ddpm, generate_zoom
from gaussian import fit_gaussian
from losses import diffusion_loss, restoration_loss
from machine import fp32_only_cpu
from recipes import data_defaults, sampling_defaults
from schedules import PREDICTIONS, Schedule, zoom_degrade
from zoom import STARTS, final_windows, start_stats


class Objective(Protocol):
    kind: str  # the checkpoint's kind, 'ddpm' or 'zoom': what sample.py and fid.py dispatch on
    run_name: str  # the run folder's prefix: runs/<run_name>_<data><size>
    description: str  # the script's --help text
    frozen_args: tuple  # its flags that a resumed run takes from the checkpoint
    progress: float = 0.0  # the share of the training budget done, set by the loop after each step

    def defaults(self, known) -> dict:
        """Flag defaults that follow other flags (`known`: a first parse of the command line): the data's
        entry in recipes.py, for the machine that --device names."""
        return data_defaults(self.kind, known.data, fp32_cpu=fp32_only_cpu(known.device))

    def init_model(self, model) -> None:
        """Sees the network once built and on its device, before a new run starts or a checkpoint is resumed
        into it: a new run's initial weights may be set here (a student starts as its teacher)."""

    def add_args(self, parser) -> None:
        """Its own flags and defaults."""

    def setup(self, args, data) -> dict:
        """Check its flags against the data, prepare; return the UNet options it needs."""

    def loss(self, model, x0, y, draws) -> tuple:
        """Per-sample losses of this rank's samples x0 (labels y or None), and each sample's noise level in
        [0, 1) (for the per-quartile log). Every random draw comes from `draws` (train_state.StepDraws)."""

    def sample(self, model, n, labels, device, seed) -> torch.Tensor:
        """n images in [-1, 1] for the progress grids."""

    def state(self) -> dict:
        """What a checkpoint needs besides the network to sample (zoom: start states, T, mode)."""

    def load_state(self, state) -> None: ...


def drop_labels(y, draws, p, null):
    """Classifier-free guidance's label dropout: each label becomes the null class with probability p
    (Ho & Salimans 2022). None stays None."""
    if y is None:
        return None
    return torch.where(draws.uniform().to(y.device) < p, torch.full_like(y, null), y)


def draw_batch(x0, y, draws, lo, hi, label_drop, null):
    """A noise level in [lo, hi) and Gaussian noise per image, and the label drop: (t, noise, y)."""
    t = draws.integers(lo, hi).to(x0.device)
    noise = draws.normal(x0.shape).to(x0.device)
    return t, noise, drop_labels(y, draws, label_drop, null)


class DDPM(Objective):
    kind = run_name = "ddpm"
    frozen_args = ("schedule", "T", "pred", "min_snr", "learn_sigma")
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
        g.add_argument("--pred", default="v", choices=PREDICTIONS,
                       help="what the network predicts (default v: an ε-network's x0 = (x_t − σ ε)/α blows up at low "
                            "SNR, where clipping it makes saturated colour clouds; eps for --data coffee, whose "
                            "noisiest levels the data's Gaussian samples: recipes.py)")
        g.add_argument("--min-snr", type=NONNEG, default=5.0,
                       help="min-SNR-γ loss weighting (0: off; default 5, 0 for --data mnist and coffee)")
        g.add_argument("--learn-sigma", action="store_true", help="learned variance + hybrid loss (improved DDPM)")

    def setup(self, args, data):
        self.args = args
        self.sched = Schedule.make(args.schedule, args.T)
        self.num_classes = data.num_classes if args.cond else 0
        # the data as a Gaussian (one per class for a conditional model; a mixture where the data's sampling defaults
        # take one), for sampling's --gauss-snr (gaussian.py)
        mix = sampling_defaults(args.data, self.num_classes > 0).get("gauss_mix", 0)
        self.gauss = fit_gaussian(data.images, data.labels, self.num_classes, components=mix)
        return dict(learn_sigma=args.learn_sigma)

    def loss(self, model, x0, y, draws):
        args, sched = self.args, self.sched
        t, noise, y = draw_batch(x0, y, draws, 0, sched.T, args.label_drop, self.num_classes)
        xt = sched.q_sample(x0, t, noise)
        out = model(xt, t, y).float()
        loss = diffusion_loss(sched, out, x0, xt, noise, t, args.pred, args.min_snr, args.learn_sigma)
        return loss, t.float() / sched.T

    def sample(self, model, n, labels, device, seed=0):
        own = sampling_defaults(self.args.data, self.num_classes > 0)  # the grids sample as sample.py will
        return generate_ddpm(model, self.sched, self.args.pred, n, device, labels=labels, seed=seed, gauss=self.gauss,
                             gauss_snr=own.get("gauss_snr", 0.0), clip=own.get("clip", True))

    def state(self):
        return {"gauss": self.gauss}

    def load_state(self, state):
        if "gauss" in state:
            self.gauss = state["gauss"]
        if state.get("method") == "consistency":
            raise UserError("this checkpoint is a few-step student made by distill.py; continue it with "
                            "distill.py --resume")


class ColdZoom(Objective):
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

    def loss(self, model, x0, y, draws):
        s = draws.integers(1, self.T + 1).to(x0.device)
        y = drop_labels(y, draws, self.args.label_drop, self.num_classes)
        pred = model(zoom_degrade(x0, s, self.mode), s, y).float()
        return restoration_loss(pred, x0, self.args.loss), (s.float() - 1) / self.T

    def sample(self, model, n, labels, device, seed=0):
        return generate_zoom(model, self.stats, self.T, self.mode, n, device, self.args.grid_start, labels=labels,
                             seed=seed)

    def state(self):
        return {"stats": self.stats, "T": self.T, "mode": self.mode}

    def load_state(self, state):
        self.stats = state["stats"]
