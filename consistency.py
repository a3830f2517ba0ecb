"""Distillation of a DDPM checkpoint into a few-step student, the objective behind distill.py.

The student starts as the teacher (its EMA weights, same network and schedule) and learns from the teacher's
probability-flow ODE trajectories, solved from pure noise by DPM-Solver++(2M) in --ode-steps, at the levels it
will sample at (the `trailing` spacing of --sample-steps), and only there:
- --target ode: from each point, where its trajectory ends (direct distillation, Luhman & Luhman 2021), sampled
  with consistency steps (samplers.sample_consistency, Song et al. 2023);
- --target trajectory: from each level, the x̂0 whose DDIM step lands on the trajectory at the next lower level
  (the end from the lowest), as progressive distillation's targets (Salimans & Ho 2022) but for all levels in one
  stage, sampled with deterministic DDIM on those levels.
The distance is pseudo-Huber (Song & Dhariwal 2023).
"""
import torch

from checkpoint import data_gaussian, load_checkpoint, model_from_checkpoint, schedule_of
from cli import POSITIVE, POSITIVE_INT, UserError
from generate import DEFAULT_STEPS, generate_ddpm
from losses import pseudo_huber
from objectives import Objective, drop_labels
from recipes import sampling_defaults
from samplers import make_denoiser, sample_dpmpp_2m, timesteps_for

TARGETS = ("ode", "trajectory")


class Consistency(Objective):
    kind = "ddpm"  # a student is sampled like any DDPM checkpoint, with its own default sampler and steps
    run_name = "consistency"
    student = True  # its data and network flags are the teacher's (train_args.base_parser)
    frozen_args = ("teacher", "target", "huber_c", "sample_steps", "ode_steps")
    # What a student takes from its teacher: the data, the network, the batch (distill.py has no flags for them).
    TEACHER_FLAGS = ("data", "size", "folds", "n_maps", "augment", "preset", "ch", "blocks", "mults", "patch", "cond",
                     "label_drop", "batch")
    description = """Distil a DDPM checkpoint of this project into a few-step student.

    python distill.py --teacher runs/ddpm_mnist28/ckpt.pt --minutes 20
    python sample.py --ckpt runs/consistency_mnist28/ckpt.pt           # 4 network calls per image
    python fid.py --ckpt TEACHER.pt STUDENT.pt --samplers consistency --sweep-steps 1,2,4

The teacher fixes the data, the network, the schedule, the prediction and the batch; the flags below are the
student's. It learns from the teacher's ODE trajectories at the --sample-steps levels it samples at (consistency.py).
"""

    def add_args(self, p):
        g = p.add_argument_group("distillation")
        g.add_argument("--teacher", default=None, help="the DDPM checkpoint to distil (train_ddpm.py makes one)")
        g.add_argument("--target", default="ode", choices=TARGETS,
                       help="what the student learns from each point of a teacher trajectory: ode (default), where "
                            "the trajectory ends, sampled with consistency steps; trajectory, the x̂0 whose DDIM step "
                            "lands on the trajectory's next level, sampled with DDIM on those levels")
        g.add_argument("--ode-steps", type=POSITIVE_INT, default=DEFAULT_STEPS,
                       help=f"the teacher's DPM-Solver++(2M) steps from pure noise to the data, plus the student's "
                            f"levels (default {DEFAULT_STEPS}, the teacher's own sampling budget)")
        g.add_argument("--huber-c", type=POSITIVE, default=None,
                       help="pseudo-Huber c (default 0.00054 √(channels·size²), as in improved consistency training)")
        g.add_argument("--sample-steps", type=POSITIVE_INT, default=4,
                       help="network calls per image the student is trained for and samples with by default: progress "
                            "grids, sample.py, fid.py (default 4)")
        p.set_defaults(warmup=0)  # the weights are trained already; Adam's first steps are small anyway
        for action in p._actions:  # the shared flags whose defaults a student takes elsewhere
            action.help = {"lr": "learning rate (default: a fifth of the teacher's)",
                           "cooldown": "decay the lr linearly to 0 over this last share of the budget (default 0)",
                           "ema_rampup": "the EMA half-life is at most this share of the images seen (default 0.1)"
                           }.get(action.dest, action.help)

    def defaults(self, known):
        if known.teacher is None:  # on --resume the checkpoint holds them
            return {}
        a = load_checkpoint(known.teacher, kind="ddpm")["args"]
        # lr: a fifth of the teacher's (ECT tunes at a tenth of pre-training's, for far longer than a CPU budget).
        return {**{k: a[k] for k in self.TEACHER_FLAGS if k in a}, "data_root": a["data_root"], "lr": a["lr"] / 5}

    def setup(self, args, data):
        if args.teacher is None:
            raise UserError(f"{args.out} was not made by distill.py (its checkpoint names no teacher); continue it with "
                            f"the script that trained it" if args.resume else
                            "--teacher is needed: the ckpt.pt of a DDPM run to distil (train_ddpm.py makes one)")
        ck = load_checkpoint(args.teacher, kind="ddpm")
        a = ck["args"]
        if (ck.get("objective") or {}).get("method") == "consistency":
            raise UserError(f"{args.teacher} is itself a distilled student; distil its teacher "
                            f"({ck['objective'].get('teacher')}) instead")
        for k, default in (("schedule", "linear"), ("T", 1000), ("pred", "eps")):
            setattr(args, k, a.get(k, default))  # the student's checkpoint samples with the teacher's schedule
        self.args, self.sched, self.pred = args, schedule_of(ck), args.pred
        self.teacher_gauss = (ck.get("objective") or {}).get("gauss")  # a student samples with its teacher's Gaussian
        self.num_classes = data.num_classes if args.cond else 0
        self.c = args.huber_c or 0.00054 * (data.channels * data.size ** 2) ** 0.5
        self.teacher = model_from_checkpoint(ck, ema=True)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        # The trajectories follow the teacher's sampling defaults (its data's Gaussian at the top levels, clipping)
        # on the solver's levels plus the student's, so that every point the student learns at lies on them.
        own = sampling_defaults(a["data"], bool(a.get("cond")))
        self.gauss_snr, self.clip = own.get("gauss_snr", 0.0), own.get("clip", True)
        self.gauss = data_gaussian(ck, own.get("gauss_mix", 0) > 1) if self.gauss_snr else None
        self.levels = timesteps_for(self.sched, args.sample_steps, "trailing")
        self.ode_ts = torch.cat([timesteps_for(self.sched, args.ode_steps, "karras"), self.levels]).unique()
        return dict(learn_sigma=a.get("learn_sigma", False))

    def init_model(self, model):
        try:
            model.load_state_dict(self.teacher.state_dict())
        except RuntimeError:
            raise UserError(f"the network differs from the teacher's {self.args.teacher}: a student has its "
                            f"teacher's network")
        self.teacher = self.teacher.to(next(model.parameters()).device)

    def x0(self, model, x, t, y):
        """The student's output read as x̂0, unclipped."""
        return self.sched.x0_eps(self.pred, model(x, t, y).float()[:, :x.shape[1]], x, t)[0]

    @torch.no_grad()
    def ode_pairs(self, z, y):
        """(x, t, target): the points at the student's levels of the teacher's probability-flow ODE trajectories
        from pure noise z (DPM-Solver++(2M), deterministic), all levels of a trajectory in one batch, and each
        point's target: --target ode, its trajectory's end, where the consistency function of every point on it
        must land; --target trajectory, the x̂0 of a DDIM step onto the trajectory's next lower level."""
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
        # trajectory: x_p = α_p x̂0 + σ_p (x_t − α_t x̂0)/σ_t at the next lower level p, solved for x̂0.
        abar = self.sched.abar[self.levels].tolist()
        alpha, sigma = [a ** 0.5 for a in abar], [(1 - a) ** 0.5 for a in abar]
        targets = [end.float()]
        for k in range(1, len(at)):
            ratio = sigma[k - 1] / sigma[k]
            targets.append((xs[k - 1] - ratio * xs[k]) / (alpha[k - 1] - ratio * alpha[k]))
        return torch.cat(xs), t, torch.cat(targets)

    def loss(self, model, x0, y, draws):
        """len(levels) points per trajectory: a batch of b trains on b / len(levels) trajectories."""
        k, n = len(self.levels), len(x0)  # this rank's batch
        m = -(-n // k)  # trajectories: its first m samples' (under DDP each rank its own)
        z = draws.normal((m,) + x0.shape[1:], range(draws.b)[draws.part][:m]).to(x0.device)
        y = drop_labels(y, draws, self.args.label_drop, self.num_classes)
        xt, t, target = self.ode_pairs(z, None if y is None else y[:m])
        yt = None if y is None else y[:m].repeat(k)[:n]
        return pseudo_huber(self.x0(model, xt[:n], t[:n], yt), target[:n], self.c), t[:n].float() / self.sched.T

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
