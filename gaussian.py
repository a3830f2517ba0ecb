"""The training images as one Gaussian, and the exact denoiser x̂0 = E[x0 | x_t] under it.

At high noise a trained network's x̂0 is close to this linear estimate (Wang & Vastola 2024, "The unreasonable
effectiveness of Gaussian score approximation for diffusion models and its applications"), and those levels are
where a short run learns least: min-SNR weighting gives them almost no weight, yet they decide an image's overall
colour and contrast. The sampler can use the closed form there instead of the network (`--gauss-snr`); their
"analytical teleportation" skips the same levels by solving the Gaussian's ODE in one jump, with a full covariance.

The model: a per-pixel mean and a stationary covariance, diagonal in the 2-D Fourier basis with a C×C colour
covariance per frequency (the power spectrum). That is H·W·C² numbers, small enough for a checkpoint, and it
holds what the top levels need: each image's overall colour (frequency 0) and its contrast at every scale.
"""
import torch


@torch.no_grad()
def fit_gaussian(images, labels=None, num_classes=0, components=0, chunk=1024):
    """{'mean': C×H×W, 'spectrum': H×W×C×C×2 (real, imaginary)} of uint8 N×C×H×W images in model space [-1, 1].
    With labels and num_classes > 0 also one Gaussian per class, stacked ('class_mean': K×C×H×W,
    'class_spectrum': K×H×W×C×C×2), for a class-conditional model: its label decides the top levels too.
    components > 1 adds a mixture ('mix_mean', 'mix_spectrum', 'mix_weight'): one Gaussian per k-means cluster
    of the images' mean colours, so data whose images come in a few colour families (red fields, cyan soil) are
    not drawn in the hues between them."""
    out = _fit(images, chunk)
    if labels is not None and num_classes > 0:
        per = [_fit(images[labels == k], chunk) if (labels == k).any() else out for k in range(num_classes)]
        out["class_mean"] = torch.stack([p["mean"] for p in per])
        out["class_spectrum"] = torch.stack([p["spectrum"] for p in per])
    if min(components, len(images)) > 1:
        cluster = _colour_clusters(images, min(components, len(images)))
        found = cluster.unique()  # the clusters that kept images (all of them but in degenerate data)
        per = [_fit(images[cluster == k], chunk) for k in found]
        out["mix_mean"] = torch.stack([p["mean"] for p in per])
        out["mix_spectrum"] = torch.stack([p["spectrum"] for p in per])
        out["mix_weight"] = torch.bincount(cluster)[found].float() / len(images)
    return out


def _colour_clusters(images, k, iters=30):
    """Cluster index per image: k-means (Lloyd, deterministic start: k images spread along the brightness order)
    of each image's mean colour."""
    f = images.float().mean((2, 3))
    centres = f[f.sum(1).argsort()[torch.linspace(0, len(f) - 1, k).long()]]
    for _ in range(iters):
        cluster = torch.cdist(f, centres).argmin(1)
        for j in range(k):
            if (cluster == j).any():
                centres[j] = f[cluster == j].mean(0)
    return cluster


def _fit(images, chunk):
    n, c, h, w = images.shape
    to_model = lambda u8: u8.float() / 127.5 - 1  # noqa: E731  (a chunk at a time: no float copy of the whole set)
    mean = sum(to_model(images[i:i + chunk]).sum(0) for i in range(0, n, chunk)) / n
    s = torch.zeros(h, w, c, c, dtype=torch.complex64)
    for i in range(0, n, chunk):
        f = torch.fft.fft2(to_model(images[i:i + chunk]) - mean, norm="ortho")  # white noise of variance v stays v
        s += torch.einsum("nchw,ndhw->hwcd", f, f.conj())
    return {"mean": mean, "spectrum": torch.view_as_real(s / n).contiguous()}


def gaussian_x0(stats, xt, alpha, sigma, labels=None):
    """E[x0 | x_t] for x_t = α x0 + σ ε and x0 ~ N(mean, Σ): mean + α Σ (α² Σ + σ² I)⁻¹ (x_t − α mean),
    each frequency on its own. With labels (and the per-class Gaussians) each image takes its class's."""
    if labels is None and "mix_mean" in stats:
        return _mixture_x0(stats, xt, alpha, sigma)
    if labels is None or "class_mean" not in stats:
        return _x0(stats["mean"], stats["spectrum"], xt, alpha, sigma)
    out = torch.empty(xt.shape, device=xt.device)
    for k in labels.unique().tolist():
        i = labels == k
        if k < len(stats["class_mean"]):
            out[i] = _x0(stats["class_mean"][k], stats["class_spectrum"][k], xt[i], alpha, sigma)
        else:  # the null label: unconditional
            out[i] = _x0(stats["mean"], stats["spectrum"], xt[i], alpha, sigma)
    return out


def _x0(mean, spectrum, xt, alpha, sigma, log_density=False):
    """E[x0 | x_t] under one Gaussian; with log_density also log p(x_t) up to a constant shared by all Gaussians
    (the circulant covariance: ½ Σ_f of the quadratic form and log-determinant, f over all frequencies)."""
    mean = mean.to(xt.device)
    s = torch.view_as_complex(spectrum.to(xt.device).float())
    c = s.shape[-1]
    cov = alpha ** 2 * s + sigma ** 2 * torch.eye(c, device=xt.device)  # of x_t, per frequency: H×W×C×C
    f = torch.fft.fft2(xt.float() - alpha * mean, norm="ortho")
    white = torch.linalg.solve(cov, f.permute(2, 3, 1, 0))  # H×W×C×B: cov⁻¹ (x_t − α mean)
    x0 = mean + torch.fft.ifft2(alpha * torch.einsum("hwcd,hwdb->bchw", s, white), norm="ortho").real
    if not log_density:
        return x0
    quad = (f.permute(2, 3, 1, 0).conj() * white).real.sum((0, 1, 2))
    return x0, -0.5 * (quad + torch.linalg.slogdet(cov).logabsdet.sum())


def _mixture_x0(stats, xt, alpha, sigma):
    """E[x0 | x_t] = Σ_k p(k | x_t) E[x0 | x_t, k] under the mixture, p(k | x_t) ∝ w_k p(x_t | k)."""
    x0s, logp = zip(*(_x0(m, s, xt, alpha, sigma, log_density=True)
                      for m, s in zip(stats["mix_mean"], stats["mix_spectrum"])))
    logp = torch.stack(logp, 1) + stats["mix_weight"].to(xt.device).clamp(min=1e-12).log()
    r = logp.softmax(1)  # B×K
    return torch.einsum("bk,kbchw->bchw", r, torch.stack(x0s))

