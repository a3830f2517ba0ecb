"""Cold Zoom Diffusion's start states (after Bansal et al. 2022, "Cold Diffusion", with a zoom-in
degradation).

D(x, s) (schedules.zoom_degrade) zooms into the centre until an f × f window fills the image at
s = T = N − f. Sampling (samplers.sample_cold) starts from a final state x_T, which D(x0, T) would
be for some data x0; four ways to draw one, from the training set's final f × f windows:
  hist    iid pixels from their per-channel histogram
  single  one colour, their mean
  bank    a stored window (with labels: of the class asked for)
  gmm     a full-covariance Gaussian mixture fitted to them (EM)
`start_stats` computes what these need once, at training time; it is stored in the checkpoint.
"""
import torch
import torch.nn.functional as F

STARTS = ("hist", "single", "bank", "gmm")


def final_windows(x, final_size):
    """The f × f central windows that D(x, T) enlarges (the same trimming rule as D)."""
    n = x.shape[-1]
    lo = (n - final_size + 1) // 2
    return x[..., lo:lo + final_size, lo:lo + final_size]


def enlarge(windows, n, mode):
    """f × f windows -> D's final state at n × n (the resize D uses)."""
    kw = dict(mode=mode) if mode == "nearest" else dict(mode=mode, align_corners=False)
    return F.interpolate(windows, size=(n, n), **kw)


def fit_gmm(x, k=10, iters=50, seed=0):
    """A k-component full-covariance Gaussian mixture fitted by EM to the rows of x (M, D)."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    m, d = x.shape
    k = min(k, m)
    means = x[torch.randperm(m, generator=g)[:k]].clone()
    cov = torch.cov(x.T).reshape(d, d) + 1e-3 * torch.eye(d, dtype=x.dtype)
    covs, weights = cov.expand(k, d, d).clone(), torch.full((k,), 1.0 / k, dtype=x.dtype)
    for _ in range(iters):
        logp = torch.distributions.MultivariateNormal(means, covs).log_prob(x[:, None]) + weights.log()
        resp = (logp - logp.logsumexp(1, keepdim=True)).exp()  # E step: responsibilities (M, k)
        nk = resp.sum(0) + 1e-9  # M step
        weights = nk / m
        means = (resp.T @ x) / nk[:, None]
        diff = x[:, None] - means[None]
        covs = torch.einsum("mk,mki,mkj->kij", resp, diff, diff) / nk[:, None, None] + 1e-4 * torch.eye(d, dtype=x.dtype)
    return {"weights": weights.float(), "means": means.float(), "chol": torch.linalg.cholesky(covs).float()}


def start_stats(windows, bank_size=4096, seed=0, labels=None):
    """What the start states need, from the training set's final windows (M, C, f, f) in [-1, 1] and,
    for a class-conditional model, their labels."""
    c, f = windows.shape[1], windows.shape[-1]
    u8 = ((windows + 1) * 127.5).round().long().clamp(0, 255)
    hist = torch.stack([torch.bincount(u8[:, i].flatten(), minlength=256) for i in range(c)]).float()
    pick = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))[:bank_size]
    stats = {"hist": hist / hist.sum(1, keepdim=True), "mean": windows.mean(dim=(0, 2, 3)),
             "bank": windows[pick].half(), "gmm": fit_gmm(windows[pick[:2000]].flatten(1), seed=seed),
             "final_size": f}
    if labels is not None:
        stats["bank_labels"] = labels[pick].clone()
    return stats


def start_windows(stats, kind, n, c, seed=0, first_index=0, labels=None):
    """n final windows (n, c, f, f); window i depends only on (seed, first_index + i)."""
    f = stats["final_size"]
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + first_index + i) for i in range(n)]
    if kind == "hist":
        pixels = [torch.stack([torch.multinomial(stats["hist"][ch], f * f, replacement=True, generator=g)
                               for ch in range(c)]) for g in gens]
        return torch.stack(pixels).view(n, c, f, f).float() / 127.5 - 1
    if kind == "single":
        return stats["mean"].view(1, c, 1, 1).expand(n, c, f, f).float()
    if kind == "bank":
        bank, pools = stats["bank"].float(), [torch.arange(len(stats["bank"]))] * n
        if labels is not None and "bank_labels" in stats:  # a conditional model starts from its class's windows
            by_class = {int(k): (stats["bank_labels"] == k).nonzero()[:, 0] for k in labels.unique()}
            pools = [by_class[int(k)] if len(by_class[int(k)]) else pools[0] for k in labels.cpu()]
        return torch.stack([bank[p[torch.randint(len(p), (1,), generator=g)[0]]] for p, g in zip(pools, gens)])
    if kind == "gmm":
        gm = stats["gmm"]
        comp = torch.stack([torch.multinomial(gm["weights"], 1, generator=g)[0] for g in gens])
        z = torch.stack([torch.randn(gm["means"].shape[1], generator=g) for g in gens])
        return (gm["means"][comp] + (gm["chol"][comp] @ z[:, :, None])[:, :, 0]).view(n, c, f, f).clamp(-1, 1)
    raise ValueError(f"unknown start state '{kind}'; choose one of {', '.join(STARTS)}")


def start_states(stats, kind, n, c, size, mode, seed=0, first_index=0, labels=None):
    """n final states x_T (n, c, size, size): start windows enlarged as D(x, T) would."""
    return enlarge(start_windows(stats, kind, n, c, seed, first_index, labels), size, mode)
