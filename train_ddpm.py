"""Train a DDPM (Ho et al. 2020) with the options of improved DDPM and later work.

    python train_ddpm.py                                   # main job: maps 64x64, CPU preset, 15 min
    python train_ddpm.py --data coffee --size 64 --device cuda:0
    torchrun --nproc_per_node=2 train_ddpm.py --steps 1000  # DistributedDataParallel

Loss: MSE on the prediction target (eps, x0 or v), optionally min-SNR-γ weighted (Hang et al.
2023); with --learn-sigma the hybrid loss L_simple + λ L_vlb of Nichol & Dhariwal (λ = 0.001,
applied as T/1000 times the per-step KL in bits, with the mean stopped from the VLB term).
"""
import math

import torch

from cli import NONNEG, POSITIVE_INT, UserError
from sample import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, generate_ddpm
from schedules import Schedule
from trainer import train


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp())


def discretized_gaussian_nll(x, mean, logvar):
    """-log p(x) for 8-bit data in [-1, 1] under a Gaussian discretised into 256 bins."""
    inv_std = (-0.5 * logvar).exp()
    cdf = lambda v: 0.5 * (1 + torch.erf(v / math.sqrt(2)))
    upper = cdf(inv_std * (x - mean + 1 / 255))
    lower = cdf(inv_std * (x - mean - 1 / 255))
    p = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1 - lower, upper - lower))
    return -p.clamp(min=1e-12).log()


class DDPM:
    kind = "ddpm"
    default_preset = "small"
    description = __doc__
    frozen_args = ("schedule", "T", "pred", "min_snr", "learn_sigma")

    def add_args(self, p):
        g = p.add_argument_group("diffusion")
        g.add_argument("--schedule", default="cosine", choices=["linear", "cosine", "sigmoid"])
        g.add_argument("--T", type=POSITIVE_INT, default=1000, help="diffusion steps")
        g.add_argument("--pred", default="eps", choices=["eps", "x0", "v"], help="what the network predicts")
        g.add_argument("--min-snr", type=NONNEG, default=0.0, help="min-SNR-γ loss weighting (0: off; 5 is usual)")
        g.add_argument("--learn-sigma", action="store_true", help="learned variance + hybrid loss (improved DDPM)")
        g.add_argument("--grid-sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                       help="sampler for the progress grids (stochastic samplers look cleaner on short runs)")
        g.add_argument("--grid-steps", type=POSITIVE_INT, default=DEFAULT_STEPS)

    def setup(self, args, data):
        if args.grid_steps < 1:
            raise UserError(f"--grid-steps {args.grid_steps}: give a positive number of sampling steps")
        self.args = args
        self.sched = Schedule.make(args.schedule, args.T)
        self.num_classes = data.num_classes if args.cond else 0

    def model_kwargs(self, args):
        return dict(learn_sigma=args.learn_sigma)

    def loss(self, model, x0, y, gen, part):
        """Per-sample losses of this rank's part of the global batch, and t/T for the log."""
        a, s = self.args, self.sched
        b = x0.shape[0]
        t = torch.randint(0, s.T, (b,), generator=gen, device=gen.device)
        noise = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
        if y is not None:  # label drop teaches the null class, the unconditional half of CFG
            drop = torch.rand(b, generator=gen, device=gen.device).to(y.device) < a.label_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)[part]
        t, x0, noise = t[part].to(x0.device), x0[part], noise[part]
        xt = s.q_sample(x0, t, noise)
        out = model(xt, t, y).float()
        c = x0.shape[1]
        target = s.target(a.pred, x0, noise, t)
        mse = (out[:, :c] - target).pow(2).mean(dim=(1, 2, 3))
        if a.min_snr > 0:
            snr = s.snr(t).to(x0.device).float()
            w = snr.clamp(max=a.min_snr)
            mse = mse * {"eps": w / snr, "x0": w, "v": w / (snr + 1)}[a.pred]
        loss = mse
        if a.learn_sigma:
            # VLB term with the mean stopped: it trains only the variance (Nichol & Dhariwal, sec. 3.1).
            x0_hat, _ = s.x0_eps(a.pred, out[:, :c].detach(), xt, t)
            mean, _ = s.posterior(x0_hat, xt, t)
            logvar = s.model_logvar(out[:, c:], t, xt)
            true_mean, true_logvar = s.posterior(x0, xt, t)
            kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2)
            nll = discretized_gaussian_nll(x0, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2)
            loss = loss + torch.where(t == 0, nll, kl) * (s.T / 1000.0)
        return loss, t.float() / s.T

    @torch.no_grad()
    def sample(self, model, n, labels, device, seed=0):
        return generate_ddpm(model, self.sched, self.args.pred, n, device, self.args.grid_sampler,
                             self.args.grid_steps, labels=labels, cfg=None, seed=seed)

    def state(self):
        return {}

    def load_state(self, state):
        pass


if __name__ == "__main__":
    train(DDPM())
