"""What the training loop trains: an objective ties the kernel's loss and samplers to the command line.
trainer.py runs any object with the `Objective` interface: DDPM, ColdZoom, and Consistency (a DDPM
checkpoint distilled into a few-step student)."""
from typing import Protocol

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from cli import NONNEG, POSITIVE, POSITIVE_INT, UserError
from data import to_model
from generate import DEFAULT_SAMPLER, DEFAULT_STEPS, data_gaussian, generate_ddpm, generate_zoom, schedule_of
from gaussian import eigenbasis, fit_gaussian
from losses import consistency_level, diffusion_loss, pseudo_huber, restoration_loss
from machine import fp32_only_cpu
from recipes import data_defaults, sampling_defaults
from samplers import SAMPLERS, make_denoiser, sample_dpmpp_2m, timesteps_for
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


def draw_batch(x0, y, gen, part, lo, hi, label_drop, null):
    """A noise level in [lo, hi) and Gaussian noise per image, and the label drop, all drawn from gen for the
    whole global batch (so K ranks draw what one process would); this rank's `part`: (t, x0, noise, y)."""
    b = x0.shape[0]
    t = torch.randint(lo, hi, (b,), generator=gen, device=gen.device)
    noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    if y is not None:
        y = drop_labels(y, b, gen, label_drop, null)[part]
    return t[part].to(x0.device), x0[part], noise[part], y


class DDPM(Objective):
    kind = run_name = "ddpm"
    frozen_args = ("schedule", "T", "pred", "min_snr", "min_snr_plus_one", "min_snr_floor", "learn_sigma",
                   "schedule_shift", "train_snr_min")
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
                            "at low SNR, and clipping it makes saturated colour clouds; --data coffee: eps, whose "
                            "noisiest levels the data's Gaussian samples; gauss: x̂0 is the data's Gaussian's denoiser "
                            "plus the network's correction, with ε's loss, which learns faster in the first ~10 minutes)")
        g.add_argument("--min-snr", type=NONNEG, default=5.0,
                       help="min-SNR-γ loss weighting (0: off; default 5, 0 for --data mnist and coffee)")
        g.add_argument("--min-snr-plus-one", action="store_true",
                       help="with --min-snr: cap 1 + SNR (v's own weight) instead of SNR, so the noisiest levels keep "
                            "their weight")
        g.add_argument("--min-snr-floor", type=NONNEG, default=0.0,
                       help="with --min-snr: weigh every level's x0 error at least this much (only levels with SNR "
                            "below it change; those min(SNR, γ) leaves all but untrained decide the overall colour)")
        g.add_argument("--train-snr-min", type=NONNEG, default=0.0,
                       help="draw training levels only where SNR >= this (0: all); the levels below are the ones "
                            "sampling's --gauss-snr gives to the data's Gaussian, so no step is spent on them")
        g.add_argument("--learn-sigma", action="store_true", help="learned variance + hybrid loss (improved DDPM)")
        g.add_argument("--grid-sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS),
                       help="sampler for the progress grids (stochastic samplers look cleaner on short runs)")
        g.add_argument("--grid-steps", type=POSITIVE_INT, default=DEFAULT_STEPS)

    def setup(self, args, data):
        self.args = args
        self.sched = Schedule.make(args.schedule, args.T, args.schedule_shift)
        # SNR falls with t, so the levels with SNR >= --train-snr-min are t < t_end
        self.t_end = int((self.sched.snr() >= args.train_snr_min).sum())
        if self.t_end == 0:
            raise UserError(f"--train-snr-min {args.train_snr_min:g} leaves no level to train (the schedule's highest "
                            f"SNR is {self.sched.snr()[0].item():.3g}); lower it, or 0 to train every level")
        self.num_classes = data.num_classes if args.cond else 0
        # the data as a Gaussian (one per class for a conditional model; a mixture where the data's sampling defaults
        # take one), for sampling's --gauss-snr (gaussian.py)
        mix = sampling_defaults(args.data, self.num_classes > 0).get("gauss_mix", 0)
        self.gauss = fit_gaussian(data.images, data.labels, self.num_classes, components=mix)
        if args.pred == "gauss":  # the network's skip: the pooled Gaussian (schedules.py, gauss_skip)
            self.sched.prior = eigenbasis(self.gauss)
        return dict(learn_sigma=args.learn_sigma)

    def loss(self, model, x0, y, gen, part):
        args, sched = self.args, self.sched
        t, x0, noise, y = draw_batch(x0, y, gen, part, 0, self.t_end, args.label_drop, self.num_classes)
        xt = sched.q_sample(x0, t, noise)
        out = model(xt, t, y).float()
        loss = diffusion_loss(sched, out, x0, xt, noise, t, args.pred, args.min_snr, args.learn_sigma,
                              args.min_snr_plus_one, args.min_snr_floor)
        return loss, t.float() / sched.T

    def sample(self, model, n, labels, device, seed=0):
        own = sampling_defaults(self.args.data, self.num_classes > 0)  # the grids sample as sample.py will
        return generate_ddpm(model, self.sched, self.args.pred, n, device, self.args.grid_sampler,
                             self.args.grid_steps, labels=labels, seed=seed, gauss=self.gauss,
                             gauss_snr=own.get("gauss_snr", 0.0), clip=own.get("clip", True))

    def state(self):
        return {"gauss": self.gauss}

    def load_state(self, state):
        if "gauss" in state:
            self.gauss = state["gauss"]
            if self.args.pred == "gauss":
                self.sched.prior = eigenbasis(self.gauss)
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


class Consistency(Objective):
    kind = "ddpm"  # a student is sampled like any DDPM checkpoint, with its own default sampler and steps
    run_name = "consistency"
    frozen_args = ("teacher", "target", "halvings", "huber_c", "sample_steps", "ode_steps")
    # What a student takes from its teacher unless typed: the data, the network, the batch.
    TEACHER_FLAGS = ("data", "data_root", "size", "folds", "n_maps", "preset", "ch", "blocks", "patch_from", "patch", "cond",
                     "label_drop", "batch")
    description = """Distil a DDPM checkpoint of this project into a few-step consistency model.

    python distill.py --teacher runs/ddpm_mnist28/ckpt.pt --minutes 20
    python sample.py --ckpt runs/consistency_mnist28/ckpt.pt           # 4 network calls per image
    python fid.py --ckpt TEACHER.pt STUDENT.pt --samplers consistency --sweep-steps 1,2,4

The student starts as the teacher (its EMA weights, same network and schedule) and learns a consistency
function f(x_t, t) = x̂0 that agrees along each trajectory: f at level t is pulled (pseudo-Huber distance)
toward its own stop-gradient output at an earlier level r of the same trajectory (Song et al. 2023). With
--target data (consistency training, as ECT tunes a diffusion model, Geng et al. 2024) x_r is
the same data and noise at level r; with --target teacher (consistency distillation) x_r is the
teacher's DDIM step, the probability-flow ODE, from x_t. The gap t − r is t/2 (losses.consistency_level); --halvings H
halves it H − 1 times over the budget, as ECT anneals it, which needs far more steps than a CPU budget
holds: the chain of small gaps loses its anchor at t = 0, and a gap of t/2 pulls f toward an average, blurred
image. With --target ode (the default) the target is no earlier output of the student but where the teacher's
whole ODE trajectory through x_t ends (DPM-Solver++(2M), --ode-steps), as in direct distillation (Luhman &
Luhman 2021): exact where the gaps are an estimate, and each trajectory from pure noise gives one training
point at each level the student samples at, and only there (other step counts meet untrained levels).
Sampling: samplers.sample_consistency. With --target trajectory the student learns the trajectory itself rather
than its end: from each of its levels, the x̂0 whose DDIM step lands on the teacher's trajectory at its next
lower level (the end from the lowest), as progressive distillation's targets (Salimans & Ho 2022) but for all
levels in one stage; it samples with deterministic DDIM on those levels (spacing trailing), each step a short jump.
"""

    def add_args(self, p):
        g = p.add_argument_group("consistency distillation")
        g.add_argument("--teacher", default=None,
                       help="the DDPM checkpoint to distil; its data, network and batch are the student's defaults")
        g.add_argument("--target", default="ode", choices=["ode", "trajectory", "data", "teacher"],
                       help="what f(x_t, t) is pulled toward. ode (default): the end of the teacher's whole ODE "
                            "trajectory through x_t, solved from pure noise in --ode-steps, the student trained at its "
                            "--sample-steps levels (4-step FID 115.9 against 176.1 for data on CIFAR-10, N 1,000 vs "
                            "cifar10:test, bf16 CPU; RESULTS.md); trajectory: from each level, the x̂0 whose "
                            "DDIM step lands on that trajectory at the next level, sampled with DDIM on the levels "
                            "(CIFAR-10 4-step FID 105.2 against 111.7 for ode, same N and reference, another bf16 CPU; on MNIST "
                            "it lost, classifier FD 1.58 against 0.38); "
                            "or its own output at an earlier point of the trajectory, reached by the data's own noise "
                            "(data: consistency training, no teacher calls) or by the teacher's DDIM step (teacher: "
                            "consistency distillation)")
        g.add_argument("--ode-steps", type=POSITIVE_INT, default=DEFAULT_STEPS,
                       help=f"--target ode: the teacher's DPM-Solver++(2M) steps from pure noise to the data, plus "
                            f"the student's levels (default {DEFAULT_STEPS}, the teacher's own sampling budget)")
        g.add_argument("--halvings", type=POSITIVE_INT, default=1,
                       help="the level gap t − r goes t/2, t/4, ... t/2^halvings over the budget (default 1: t/2 "
                            "throughout; ECT's shrinking gaps drifted to noisy scribbles within 20 CPU-minutes, RESULTS.md)")
        g.add_argument("--huber-c", type=POSITIVE, default=None,
                       help="pseudo-Huber c (default 0.00054 √(channels·size²), as in improved consistency training)")
        g.add_argument("--sample-steps", type=POSITIVE_INT, default=4,
                       help="network calls per image the student samples with by default: progress grids, sample.py, "
                            "fid.py (default 4)")
        p.set_defaults(warmup=0)  # the weights are trained already; Adam's first steps are small anyway

    def defaults(self, known):
        if known.teacher is None:  # on --resume the checkpoint holds them
            return {}
        a = load_checkpoint(known.teacher, kind="ddpm")["args"]
        # lr: a fifth of the teacher's (ECT tunes at a tenth of pre-training's, for far longer than a CPU budget).
        return {**{k: a[k] for k in self.TEACHER_FLAGS if k in a}, "lr": a["lr"] / 5}

    def setup(self, args, data):
        if args.teacher is None:
            raise UserError(f"{args.out} was not made by distill.py (its checkpoint names no teacher); continue it with "
                            f"the script that trained it" if args.resume else
                            "--teacher is needed: the ckpt.pt of a DDPM run to distil (train_ddpm.py makes one)")
        ck = load_checkpoint(args.teacher, kind="ddpm")
        a = ck["args"]
        for k in ("data", "size", "cond"):
            if getattr(args, k) != a[k]:
                raise UserError(f"--{k} {getattr(args, k)} differs from the teacher's ({a[k]}): a student learns its "
                                f"teacher's data; drop the flag")
        for k, default in (("schedule", "linear"), ("T", 1000), ("pred", "eps"), ("schedule_shift", 1.0)):
            setattr(args, k, a.get(k, default))  # the student's checkpoint samples with the teacher's schedule
        self.args, self.sched, self.pred = args, schedule_of(ck), args.pred
        self.teacher_gauss = (ck.get("objective") or {}).get("gauss")  # a student samples with its teacher's Gaussian
        self.num_classes = data.num_classes if args.cond else 0
        self.c = args.huber_c or 0.00054 * (data.channels * data.size ** 2) ** 0.5
        self.teacher = model_from_checkpoint(ck, ema=True)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        if args.target in ("ode", "trajectory"):
            # The trajectories follow the teacher's sampling defaults (its data's Gaussian at the top levels, clipping)
            # on the solver's levels plus the student's, so that every point the student learns at lies on them.
            own = sampling_defaults(a["data"], bool(a.get("cond")))
            self.gauss_snr, self.clip = own.get("gauss_snr", 0.0), own.get("clip", True)
            self.gauss = data_gaussian(ck, own.get("gauss_mix", 0)) if self.gauss_snr else None
            self.levels = timesteps_for(self.sched, args.sample_steps, "trailing")
            self.ode_ts = torch.cat([timesteps_for(self.sched, args.ode_steps, "karras"), self.levels]).unique()
        return dict(learn_sigma=a.get("learn_sigma", False))

    def init_model(self, model):
        try:
            model.load_state_dict(self.teacher.state_dict())
        except RuntimeError:
            raise UserError(f"the network flags (--preset, --ch) differ from the teacher's {self.args.teacher}; "
                            f"drop them: a student has its teacher's network")
        self.teacher = self.teacher.to(next(model.parameters()).device) if self.args.target != "data" else None

    def x0(self, model, x, t, y):
        """The consistency function f(x, t): the network's output read as x̂0, unclipped."""
        return self.sched.x0_eps(self.pred, model(x, t, y).float()[:, :x.shape[1]], x, t)[0]

    def halvings_now(self):
        """The curriculum: 1 halving (gap t/2) in the first 1/halvings of the budget, up to --halvings in the last."""
        return 1 + min(int(self.progress * self.args.halvings), self.args.halvings - 1)

    @torch.no_grad()
    def ode_pairs(self, z, y):
        """(x, t, target): the points at the student's levels of the teacher's probability-flow ODE trajectories
        from pure noise z (DPM-Solver++(2M), deterministic), all levels of a trajectory in one batch, and each
        point's target: --target ode, its trajectory's end, where the consistency function of every point on it
        must land; --target trajectory, the x̂0 of a DDIM step onto the trajectory's next level."""
        states = {len(self.ode_ts) - 1: z}

        def keep(i, x, x0):  # after step i, x sits at level ode_ts[i - 1]
            if i > 0:
                states[i - 1] = x
        denoise = make_denoiser(self.teacher, self.sched, self.pred, y, None, self.num_classes, self.clip, self.gauss,
                                self.gauss_snr)
        end = sample_dpmpp_2m(denoise, self.sched, z, self.ode_ts, callback=keep)
        at = [int((self.ode_ts == lv).nonzero()) for lv in self.levels]
        t = torch.cat([torch.full((len(z),), int(lv), device=z.device) for lv in self.levels])
        xs = [states[i].float() for i in at]
        if self.args.target == "ode":
            return torch.cat(xs), t, end.float().repeat(len(at), 1, 1, 1)
        # trajectory: the x̂0 whose DDIM step from level t lands on the trajectory's point at the next lower level
        # (the end below the lowest): x_p = α_p x̂0 + σ_p (x_t − α_t x̂0)/σ_t, solved for x̂0.
        abar = self.sched.abar[self.levels].tolist()
        alpha, sigma = [a ** 0.5 for a in abar], [(1 - a) ** 0.5 for a in abar]
        targets = [end.float()]
        for k in range(1, len(at)):
            ratio = sigma[k - 1] / sigma[k]
            targets.append((xs[k - 1] - ratio * xs[k]) / (alpha[k - 1] - ratio * alpha[k]))
        return torch.cat(xs), t, torch.cat(targets)

    def loss(self, model, x0, y, gen, part):
        args, sched = self.args, self.sched
        if args.target in ("ode", "trajectory"):  # len(levels) points per trajectory: b / len(levels) in a batch of b
            b, k = x0.shape[0], len(self.levels)
            z = torch.randn((b,) + x0.shape[1:], generator=gen, device=gen.device).to(x0.device)[part]
            if y is not None:
                y = drop_labels(y, b, gen, args.label_drop, self.num_classes)[part]
            m = -(-len(z) // k)
            xt, t, end = self.ode_pairs(z[:m], None if y is None else y[:m])
            yt = None if y is None else y[:m].repeat(k)
            n = len(z)  # the batch's size, as in the other targets
            return pseudo_huber(self.x0(model, xt[:n], t[:n], None if yt is None else yt[:n]), end[:n], self.c), \
                t[:n].float() / sched.T
        t, x0, noise, y = draw_batch(x0, y, gen, part, 1, sched.T, args.label_drop, self.num_classes)
        r = consistency_level(t, self.halvings_now())
        xt = sched.q_sample(x0, t, noise)
        with torch.no_grad():
            if self.teacher is not None:  # the teacher's DDIM step t -> r: x_r = √ᾱ_r x̂0 + √(1 − ᾱ_r) ε̂
                x0_hat, eps_hat = sched.x0_eps(self.pred, self.teacher(xt, t, y).float()[:, :x0.shape[1]], xt, t,
                                               clip=True)
                xr = sched.q_sample(x0_hat, r, eps_hat)
            else:
                xr = sched.q_sample(x0, r, noise)
            target = self.x0(model, xr, r, y)
        return pseudo_huber(self.x0(model, xt, t, y), target, self.c), t.float() / sched.T

    def sampling(self):
        """How the student samples: a trajectory student takes deterministic DDIM steps on its levels, unclipped
        (its targets are the DDIM x̂0 that lands on the teacher's trajectory, not images); others consistency steps."""
        if self.args.target == "trajectory":
            return dict(sampler="ddim", steps=self.args.sample_steps, spacing="trailing", clip=False)
        return dict(sampler="consistency", steps=self.args.sample_steps)

    def sample(self, model, n, labels, device, seed=0):
        return generate_ddpm(model, self.sched, self.pred, n, device, labels=labels, seed=seed, **self.sampling())

    def state(self):
        gauss = {} if self.teacher_gauss is None else {"gauss": self.teacher_gauss}
        return {"method": "consistency", **self.sampling(), "teacher": self.args.teacher, "target": self.args.target,
                **gauss}

    def load_state(self, state):
        if state.get("method") != "consistency":
            raise UserError("this checkpoint was not made by distill.py; continue it with the script that trained it")
