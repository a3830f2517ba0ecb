"""Defaults that follow the data and the machine: `--data NAME` sets these flags wherever the command line
does not. Each entry is what measured best for that dataset in short CPU runs (docs/defaults.md links the
runs); every other flag keeps the default that `-h` shows."""

DATA_DEFAULTS = {
    "ddpm": {
        # Labelled digits: class-conditional, sampled over the ten classes in turn (an unconditional short run draws
        # many shapes that are no digit). Unweighted loss: the low-noise levels that min-SNR-5 all but skips are where
        # the black background is cleaned. The lr decays to 0 over the last 30 % of the budget, which already
        # averages the weights, so the EMA stays short (3 % of the images seen).
        "mnist": dict(cond=True, min_snr=0.0, cooldown=0.3, ema_rampup=0.03),
        # Coffee tiles: an ε-network with the plain loss, the lr decay and the short EMA. v guards the noisiest
        # levels, where an ε-network's x̂0 turns to colour clouds, but the data's Gaussian samples those levels
        # (SAMPLING_DEFAULTS), and below them ε learns the fields faster.
        "coffee": dict(pred="eps", min_snr=0.0, cooldown=0.3, ema_rampup=0.03),
    },
}

# On a CPU without fast bf16 (fp32 kernels, e.g. AVX2 only) a training minute buys several times fewer steps, and
# there a cheaper network that takes more steps in the budget wins on MNIST: one res block per level.
FP32_CPU_DEFAULTS = {
    "ddpm": {
        "mnist": dict(blocks=1),
    },
}

# Sampling a DDPM checkpoint, by the data it was trained on. gauss_snr: levels with SNR below it take the
# closed-form x̂0 of the data as a stationary Gaussian (gaussian.py) instead of the network (a class-conditional
# model's from its label's own Gaussian): short runs leave those levels almost untrained, and there the network
# washes out the colours. On MNIST only for a conditional model (gauss_cond_only): one Gaussian for all ten digits
# is no digit. gauss_mix: coffee's tiles come in colour families, and one Gaussian fills in the hues between them,
# so a mixture of 8, one per k-means cluster of the tiles' mean colours, takes its place. clip=False leaves each
# step's x̂0 unclipped: clipping drops the outward half of the network's error wherever the data sit at the range's
# edge, and turns MNIST's black background grey. docs/defaults.md holds the comparisons behind each entry.
SAMPLING_DEFAULTS = {
    "coffee": dict(gauss_snr=0.05, gauss_mix=8),
    "cifar10": dict(gauss_snr=0.1),
    "maps": dict(gauss_snr=0.1),
    "mnist": dict(gauss_snr=0.1, gauss_cond_only=True, clip=False),
}


def sampling_defaults(data, cond=False):
    """The sampling flags' defaults for a checkpoint trained on `data` (cond: a class-conditional one)."""
    out = dict(SAMPLING_DEFAULTS.get(data, {}))
    if out.pop("gauss_cond_only", False) and not cond:
        out.pop("gauss_snr")
    return out


def data_defaults(kind, data, fp32_cpu=False):
    """The flag defaults for training a `kind` model ('ddpm' or 'zoom') on `data`; fp32_cpu: training runs on
    a CPU without fast bf16."""
    out = dict(DATA_DEFAULTS.get(kind, {}).get(data, {}))
    if fp32_cpu:
        out.update(FP32_CPU_DEFAULTS.get(kind, {}).get(data, {}))
    return out
