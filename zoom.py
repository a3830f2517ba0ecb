"""Cold Zoom Diffusion (after Bansal et al., "Cold Diffusion", with the zoom-in degradation of
seed 001): the objective behind train_zoom_nearest.py / train_zoom_bilinear.py, and its samplers.

Degradation D(x, s) (schedules.zoom_degrade) zooms into the centre until an f x f window fills the
image at s = T = N - f. The restorer R(x_s, s) predicts x0. Sampling starts from a final state x_T
and walks s = T..1 with
    naive:    x_{s-1} = D(x0_hat, s-1)
    improved: x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s-1)     (Bansal et al. Alg. 2)
Start states: `hist` iid pixels from the histogram of the training set's final f x f windows (the
seed's method), `single` one colour (the mean), `bank` real final windows, `gmm` a Gaussian mixture
fitted to them. All four are computed at training time and stored in the checkpoint.
"""

import torch
import torch.nn.functional as F

from cli import POSITIVE_INT, UserError
from data import to_model
from schedules import zoom_degrade

STARTS = ("hist", "single", "bank", "gmm")
# naive is the default: the improved update carries the residual x_s - D(x0_hat, s) forward, but for a
# zoom that residual sits at the scale of step s while D(x0_hat, s-1) is one zoom step wider, so a
# restorer's errors pile up as speckle and samples drift to one digit (MNIST, 20-min run: class-histogram
# entropy 0.27 log 10 improved vs 0.84 naive from the same bank start; README, Cold Zoom).
ZOOM_SAMPLERS = ("naive", "improved")


def final_windows(x, final_size):
    """The f x f central windows that D(x, T) enlarges (same trimming rule as D)."""
    n = x.shape[-1]
    lo = (n - final_size + 1) // 2
    return x[..., lo:lo + final_size, lo:lo + final_size]


def enlarge(w, n, mode):
    """An f x f window -> D's final state at n x n (the same resize D uses)."""
    kw = dict(mode=mode) if mode == "nearest" else dict(mode=mode, align_corners=False)
    return F.interpolate(w, size=(n, n), **kw)


def fit_gmm(x, k=10, iters=50, seed=0):
    """A full-covariance Gaussian mixture fitted by EM to rows of x (M, D). Returns weights, means, chol."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    m, d = x.shape
    k = min(k, m)
    means = x[torch.randperm(m, generator=g)[:k]].clone()
    cov = torch.cov(x.T).reshape(d, d) + 1e-3 * torch.eye(d, dtype=x.dtype)
    covs, w = cov.expand(k, d, d).clone(), torch.full((k,), 1.0 / k, dtype=x.dtype)
    for _ in range(iters):
        logp = torch.distributions.MultivariateNormal(means, covs).log_prob(x[:, None]) + w.log()
        r = (logp - logp.logsumexp(1, keepdim=True)).exp()  # (M, k) responsibilities
        nk = r.sum(0) + 1e-9
        w = nk / m
        means = (r.T @ x) / nk[:, None]
        diff = x[:, None] - means[None]
        covs = torch.einsum("mk,mki,mkj->kij", r, diff, diff) / nk[:, None, None] + 1e-4 * torch.eye(d, dtype=x.dtype)
    return {"weights": w.float(), "means": means.float(), "chol": torch.linalg.cholesky(covs).float()}


def start_stats(images, final_size, bank_size=4096, seed=0, labels=None):
    """Everything the start states need, from the training images (uint8) and, if any, their labels."""
    win = to_model(final_windows(images, final_size))  # (M, C, f, f) in [-1, 1]
    c = win.shape[1]
    u8 = ((win + 1) * 127.5).round().long().clamp(0, 255)
    hist = torch.stack([torch.bincount(u8[:, i].flatten(), minlength=256) for i in range(c)]).float()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(win), generator=g)[:bank_size]
    gmm = fit_gmm(win[pick[:2000]].flatten(1), seed=seed)
    stats = {"hist": hist / hist.sum(1, keepdim=True), "mean": win.mean(dim=(0, 2, 3)),
             "bank": win[pick].half(), "gmm": gmm, "final_size": final_size}
    if labels is not None:  # a class-conditional restorer starts from windows of the class it is asked for
        stats["bank_labels"] = labels[pick].clone()
    return stats


def start_states(stats, kind, n, c, size, mode, seed=0, first_index=0, labels=None):
    """n final states x_T (n, c, size, size); image i depends only on (seed, first_index + i).
    With labels (and a bank that has them), `bank` draws image i from the windows of class labels[i]."""
    f = stats["final_size"]
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + first_index + i) for i in range(n)]
    if kind == "hist":  # iid pixels, per channel, from the final-window histogram
        w = torch.stack([torch.stack([torch.multinomial(stats["hist"][ch], f * f, replacement=True, generator=g)
                                      for ch in range(c)]) for g in gens]).view(n, c, f, f).float() / 127.5 - 1
    elif kind == "single":
        w = stats["mean"].view(1, c, 1, 1).expand(n, c, f, f).float()
    elif kind == "bank":
        bank, pools = stats["bank"].float(), [torch.arange(len(stats["bank"]))] * n
        if labels is not None and "bank_labels" in stats:
            by_class = {int(k): (stats["bank_labels"] == k).nonzero()[:, 0] for k in labels.unique()}
            pools = [by_class[int(k)] if len(by_class[int(k)]) else pools[0] for k in labels.cpu()]
        w = torch.stack([bank[p[torch.randint(len(p), (1,), generator=g)[0]]] for p, g in zip(pools, gens)])
    elif kind == "gmm":
        gm = stats["gmm"]
        comp = torch.stack([torch.multinomial(gm["weights"], 1, generator=g)[0] for g in gens])
        z = torch.stack([torch.randn(gm["means"].shape[1], generator=g) for g in gens])
        w = (gm["means"][comp] + (gm["chol"][comp] @ z[:, :, None])[:, :, 0]).view(n, c, f, f).clamp(-1, 1)
    else:
        raise UserError(f"unknown start state '{kind}'; choose one of {', '.join(STARTS)}")
    return enlarge(w, size, mode)


def sample_zoom(restore, x, T, mode, sampler="naive", noise_std=0.0, noise=None, callback=None):
    """Walk s = T..1 from the final state x; restore(x_s, s) predicts x0."""
    for s in range(T, 0, -1):
        x0 = restore(x, s)
        if sampler == "improved":
            x = x - zoom_degrade(x0, s, mode) + zoom_degrade(x0, s - 1, mode)
        elif sampler == "naive":
            x = zoom_degrade(x0, s - 1, mode)
        else:
            raise UserError(f"unknown zoom sampler '{sampler}'; choose naive or improved")
        if noise_std > 0 and s > 1:  # optional noise keeps deterministic sampling from collapsing
            x = x + noise_std * (s - 1) / T * noise()
        if callback:
            callback(s - 1, x, x0)
    return x


def make_restorer(model, labels=None):
    def restore(x, s):
        return model(x, torch.full((x.shape[0],), s, device=x.device), labels).float().clamp(-1, 1)
    return restore


@torch.no_grad()
def generate_zoom(model, stats, T, mode, n, device, start="bank", sampler="naive", noise_std=0.0, labels=None,
                  seed=0, batch=None, first_index=0, progress=False, snapshots=None, precision="fp32"):
    from tqdm import tqdm
    from machine import autocast
    from sample import SAMPLE_BATCH, PerImageNoise
    batch = batch or SAMPLE_BATCH
    model.eval()
    c, size = model.in_ch, model.size
    out = []
    bar = tqdm(total=n, disable=not progress, unit="img", desc=f"zoom {sampler} from {start}")
    for b0 in range(0, n, batch):
        m = min(batch, n - b0)
        lab = None if labels is None else labels[b0:b0 + m].to(device)
        x = start_states(stats, start, m, c, size, mode, seed, first_index + b0, lab).to(device)
        noise = PerImageNoise(seed + 7, range(first_index + b0, first_index + b0 + m), (c, size, size), device)
        cb = None
        if snapshots is not None and b0 == 0:
            snapshots.append((T, x.float().cpu(), x.float().cpu()))
            cb = lambda i, xs, x0: snapshots.append((i, xs.float().cpu(), x0.float().cpu()))
        with autocast(torch.device(device), precision):
            x = sample_zoom(make_restorer(model, lab), x, T, mode, sampler, noise_std, noise, cb)
        out.append(x.float().clamp(-1, 1).cpu())
        bar.update(m)
    bar.close()
    return torch.cat(out)


class ColdZoom:
    kind = "zoom"
    default_preset = "small"
    frozen_args = ("final_size", "loss")

    def __init__(self, mode):
        self.mode, self.run_name = mode, f"zoom_{mode}"
        self.description = f"Train Cold Zoom Diffusion with {mode} interpolation.\n\n" + __doc__

    def add_args(self, p):
        g = p.add_argument_group("cold zoom")
        g.add_argument("--final-size", type=POSITIVE_INT, default=4, help="side of the final window (T = size - final size)")
        g.add_argument("--loss", default="mse", choices=["mse", "l1"])
        g.add_argument("--grid-start", default="bank", choices=STARTS, help="start state for the progress grids")
        p.set_defaults(data="mnist", warmup=100)

    def setup(self, args, data):
        if not 1 <= args.final_size < data.size:
            raise UserError(f"--final-size {args.final_size} must be between 1 and the image size - 1 ({data.size - 1})")
        self.args, self.T = args, data.size - args.final_size
        self.num_classes = data.num_classes if args.cond else 0
        if not hasattr(self, "stats"):
            self.stats = start_stats(data.images, args.final_size, seed=args.seed,
                                     labels=data.labels if args.cond else None)
        args.mode = self.mode

    def model_kwargs(self, args):
        return {}

    def loss(self, model, x0, y, gen, part):
        b = x0.shape[0]
        s = torch.randint(1, self.T + 1, (b,), generator=gen, device=gen.device)
        if y is not None:
            drop = torch.rand(b, generator=gen, device=gen.device).to(y.device) < self.args.label_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)[part]
        s, x0 = s[part].to(x0.device), x0[part]
        pred = model(zoom_degrade(x0, s, self.mode), s, y).float()
        err = (pred - x0).abs() if self.args.loss == "l1" else (pred - x0).pow(2)
        return err.mean(dim=(1, 2, 3)), (s.float() - 1) / self.T

    @torch.no_grad()
    def sample(self, model, n, labels, device, seed=0):
        return generate_zoom(model, self.stats, self.T, self.mode, n, device, self.args.grid_start, labels=labels, seed=seed)

    def state(self):
        return {"stats": self.stats, "T": self.T, "mode": self.mode}

    def load_state(self, state):
        self.stats = state["stats"]
