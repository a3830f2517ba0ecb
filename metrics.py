"""Distances between two sets of image features (rows), and class-histogram statistics.

Pure functions of arrays; the feature extractors live in features.py, the CLI in fid.py.
"""
import numpy as np
import torch


def mean_cov(feats):
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Heusel et al. 2017).

    Tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD matrix, so two
    symmetric eigendecompositions replace scipy's sqrtm: faster, and no complex round-off to discard."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def kid(f1, f2, subset=1000, n_subsets=100, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3. Returns (mean, spread). With more than `subset` images in a set: the mean
    and std over random subsets of that size (the usual form). With fewer: the MMD^2 of the whole sets,
    and as spread its standard error, estimated from random half-size subsets (std / sqrt 2: the
    estimator's variance falls as 1/m)."""
    f1, f2 = (torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in (f1, f2))
    d = f1.shape[1]
    if min(len(f1), len(f2)) < 4:
        raise ValueError("KID needs at least 4 samples in each set")

    def mmd2(x, y):
        m, n = len(x), len(y)
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        return ((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
                - 2 * kxy.mean()).item()

    gen = torch.Generator().manual_seed(seed)
    whole = min(len(f1), len(f2)) <= subset
    m = min(len(f1), len(f2)) // 2 if whole else subset
    vals = [mmd2(f1[torch.randperm(len(f1), generator=gen)[:m]], f2[torch.randperm(len(f2), generator=gen)[:m]])
            for _ in range(n_subsets)]
    if whole:
        return mmd2(f1, f2), float(np.std(vals)) / 2 ** 0.5
    return float(np.mean(vals)), float(np.std(vals))


def _kth_radius(f, k, chunk=2048):
    """Distance from each row to its k-th nearest other row (its k-NN ball)."""
    out = []
    for i in range(0, len(f), chunk):
        out.append(torch.cdist(f[i:i + chunk], f).topk(k + 1, largest=False).values[:, -1])  # +1: itself at 0
    return torch.cat(out)


PR_K = 3  # the k of precision/recall's k-NN balls, and of the realism score on them (the paper's)


def knn_radii(real, k=PR_K):
    """Each real feature row's k-NN radius (_kth_radius) as float32: the balls of precision_recall and realism."""
    return _kth_radius(torch.as_tensor(np.asarray(real), dtype=torch.float32), k)


def _inside_any(query, centres, radii, chunk=2048):
    hits = []
    for i in range(0, len(query), chunk):
        hits.append((torch.cdist(query[i:i + chunk], centres) <= radii[None]).any(1))
    return torch.cat(hits).float().mean().item()


def precision_recall(real, fake, k=PR_K, real_radii=None):
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the
    union of the reals' k-NN balls; recall = share of reals inside the fakes' balls. real_radii: the reals'
    _kth_radius(real, k), where already computed (realism uses the same balls)."""
    real, fake = (torch.as_tensor(np.asarray(f), dtype=torch.float32) for f in (real, fake))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall needs more than k={k} samples in each set")
    precision = _inside_any(fake, real, _kth_radius(real, k) if real_radii is None else real_radii)
    recall = _inside_any(real, fake, _kth_radius(fake, k))
    return precision, recall


def realism(real, fake, k=PR_K, real_radii=None, chunk=2048):
    """Each fake's realism score (Kynkaanniemi et al. 2019, sec. 5): R(phi_g) = max_i r_i / ||phi_g - phi_r,i||,
    where r_i = ||phi_r,i - NN_k(phi_r,i)|| is real i's k-NN radius, the ball precision/recall use (same
    features, same k, same _kth_radius). As in the paper, only the half of the reals with the smallest radii
    enter the max (radii above their median are dropped, as the authors' code does with clamp_to_percentile=50):
    an outlier's large ball would otherwise make any nearby sample look real. R >= 1 iff the sample lies inside
    at least one kept ball; R = 2: within half its radius of some kept real; R = 0.5: at least two of its
    radii from every kept real. A distance of 0 (the sample is a kept real) is clamped to 1e-8. Returns a
    float32 tensor of len(fake); real_radii: _kth_radius(real, k), where already computed."""
    real, fake = (torch.as_tensor(np.asarray(f), dtype=torch.float32) for f in (real, fake))
    if len(real) <= k:
        raise ValueError(f"the realism score needs more than k={k} real samples")
    radii = _kth_radius(real, k) if real_radii is None else torch.as_tensor(real_radii, dtype=torch.float32)
    kept = radii <= torch.quantile(radii.double(), 0.5).float()  # the paper's pruning: the smaller half
    centres, r = real[kept], radii[kept]
    out = [(r[None] / torch.cdist(fake[i:i + chunk], centres).clamp_min(1e-8)).max(1).values
           for i in range(0, len(fake), chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def class_stats(logits, confident=0.9):
    """Class histogram of the argmax, its entropy / log K (1 = uniform), the share of samples whose top
    softmax probability is >= `confident`, each sample's top probability and class (top_prob, top_class), and
    the Inception-Score formula on these logits, exp E_x KL(p(y|x) || p(y)) (between 1 and K; K = confident and
    uniform)."""
    p = torch.as_tensor(np.asarray(logits), dtype=torch.float64).softmax(1)
    kl = (p * (p.clamp_min(1e-300).log() - p.mean(0, keepdim=True).log())).sum(1)
    top, pred = p.max(1)
    k = p.shape[1]
    hist = torch.bincount(pred, minlength=k).double() / len(p)
    nz = hist[hist > 0]
    entropy = float(-(nz * nz.log()).sum() / np.log(k))
    return dict(histogram=[round(float(h), 4) for h in hist], entropy_ratio=entropy,
                confident_share=float((top >= confident).double().mean()), score_is=float(kl.mean().exp()),
                top_prob=top.float(), top_class=pred)


def channel_stats(u8):
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    x = torch.as_tensor(u8).double() / 255
    return x.mean(dim=(0, 2, 3)).tolist(), x.transpose(0, 1).flatten(1).std(dim=1).tolist()


COLOUR_GAP_NOTE = "no colour gap: a reference channel has zero mean or spread, so a relative difference is undefined"


def colour_gap(fake_u8, real_u8):
    """How far the samples' colours are from the data's: the largest relative difference of a channel's
    mean or std, max_c max(|m_f − m_r| / m_r, |s_f − s_r| / s_r). 0.05 = every channel within 5 %. None where a
    reference channel's mean or std is 0 and the samples' is not (COLOUR_GAP_NOTE); 0 where both are. Grey
    images beside colour ones count as three equal channels, as the Inception network sees them."""
    fake_u8, real_u8 = torch.as_tensor(fake_u8), torch.as_tensor(real_u8)
    c = max(fake_u8.shape[1], real_u8.shape[1])
    fake_u8, real_u8 = (x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x for x in (fake_u8, real_u8))
    (mf, sf), (mr, sr) = channel_stats(fake_u8), channel_stats(real_u8)
    gaps = [abs(a - b) / b if b > 0 else (0.0 if a == b else None)
            for pair in zip(mf, mr, sf, sr) for a, b in (pair[:2], pair[2:])]
    return None if None in gaps else float(max(gaps))


# The fewest images each set needs: a covariance (FID); the unbiased MMD² of two half-size subsets (KID); more
# than k = 3 neighbours (precision/recall); a nearest and a second-nearest image (copies).
MIN_IMAGES = {"fid": 2, "kid": 4, "pr": 4, "copies": 2}


def min_images(metrics):
    """(the fewest images the samples and the reference each need for `metrics`, the reason in words)."""
    need = max(MIN_IMAGES[m] for m in metrics)
    return need, (f"--metrics {','.join(sorted(metrics))} need at least {need} images in each set (FID 2, KID 4, "
                  f"precision/recall 4; --metrics fid scores 2)")


def nearest_distance(query_u8, bank_u8, chunk=256):
    """Each query image's RMS pixel distances (on the [0, 1] scale) to its nearest and second-nearest
    images in the bank (N x 2), and the nearest one's index."""
    flat = lambda u8: torch.as_tensor(u8).flatten(1).float() / 255  # noqa: E731
    q, bank = flat(query_u8), flat(bank_u8)
    dist, idx = [], []
    for i in range(0, len(q), chunk):
        d, j = torch.cdist(q[i:i + chunk], bank).topk(min(2, len(bank)), dim=1, largest=False)
        dist.append(d), idx.append(j[:, 0])
    return torch.cat(dist) / q.shape[1] ** 0.5, torch.cat(idx)


def copy_stats(fake_u8, heldout_u8, train_u8, quantile=0.01, d_real=None):
    """Memorisation check on the scale set by held-out real images, which are no copies. A copy lies much
    nearer to one training image than to any other: copy_share = share of samples whose nearest / second-
    nearest distance ratio is below all but `quantile` of the held-out images' ratios (about `quantile`
    for a model that does not copy; near 1 for one that returns training images). The ratio, not the
    distance alone, so that simple images (a thin 1 lies near many training 1s) do not count as copies.
    Returns (stats, each sample's distance ratio, its nearest training image's index). d_real: the held-out
    images' nearest_distance to the training images, where already known."""
    d_fake, idx = nearest_distance(fake_u8, train_u8)
    if d_real is None:
        d_real, _ = nearest_distance(heldout_u8, train_u8)
    # + a quarter grey level: two equal training images make a ratio of 1, the round-off of cdist aside
    ratio = lambda d: (d[:, 0] + 1e-3) / (d[:, -1] + 1e-3)  # noqa: E731
    threshold = torch.quantile(ratio(d_real), quantile).item()
    return dict(nn_median=d_fake[:, 0].median().item(), nn_median_heldout=d_real[:, 0].median().item(),
                copy_share=(ratio(d_fake) < threshold).float().mean().item(), copy_threshold=threshold,
                heldout_in_train=(d_real[:, 0] < 1e-3).float().mean().item()), ratio(d_fake), idx
