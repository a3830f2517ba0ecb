"""Defaults that follow the data and the machine: `--data NAME` sets these flags wherever the command line
does not. Each entry is what measured best for that dataset in short CPU runs (RESULTS.md holds the runs);
every other flag keeps the default that `-h` shows."""

DATA_DEFAULTS = {
    "ddpm": {
        # Labelled digits: class-conditional, sampled over the ten classes in turn. A 20-minute
        # unconditional model still draws many shapes that are no digit. Unweighted v-loss (min-SNR off): the
        # low-noise levels that min-SNR-5 all but skips are where the black background is cleaned, and the grey
        # speckle they left cost Inception FID 50.6 against 21.4 (N 2,000 vs mnist:test, 20 minutes, AVX2 CPU;
        # RESULTS.md). On coffee it lost (FID 300 against 211, N 476 vs coffee:test, 30 minutes, same CPU): its
        # textures need the middle levels.
        # The lr decays to 0 over the last 30 % of the budget, and then a short EMA (half-life 3 % of the images
        # seen): the decay already averages, and the EMA's usual tenth mixed in older, worse weights (its raw
        # weights scored better). At equal steps (1,902): Inception FID 15.1 against 17.8 at a constant lr with
        # the usual EMA, KID x1e3 7.1 ± 0.6 against 9.8 ± 0.7 (N 2,000, AVX2 CPU; RESULTS.md).
        "mnist": dict(cond=True, min_snr=0.0, cooldown=0.3, ema_rampup=0.03),
        # Coffee tiles: an ε-network with the plain loss, the lr decay and the short EMA. v guards the noisiest levels,
        # where an ε-network's x̂0 turns to colour clouds, but the data's Gaussian samples those levels
        # (SAMPLING_DEFAULTS), and below them ε learns the fields faster: Inception FID 135.3 after 30 minutes
        # (4,207 steps; 168.0 at 10 minutes), against 150.5 for ε without the decay and the Gaussian; at 10 minutes
        # ε 171.6 against 272.9 for v (N 476 vs coffee:test, bf16 CPU; RESULTS.md). With AVX2 kernels in fp32: 142.3
        # after 30 minutes (2,864 steps), and 193.2 at 1,024 steps where v with min-SNR-5 scored 210.6 at 1,176.
        # The preset's lr 1e-3 beat 2e-3 after 30 minutes on a faster bf16 host (122.3 at 8,452 steps against 124.7).
        "coffee": dict(pred="eps", min_snr=0.0, cooldown=0.3, ema_rampup=0.03),
    },
}

# On a CPU without fast bf16 (fp32 kernels, e.g. AVX2 only) a training minute buys about 3.5 times fewer
# steps than with AVX512-bf16, and there a cheaper network that takes more steps in the budget wins: on
# MNIST one res block per level (747 steps against 520 in 10 minutes) beat the preset's two at 5 and 10
# minutes, and beat a narrower ch 24 at 20 (RESULTS.md, the mnist rows of the AVX2 CPU).
FP32_CPU_DEFAULTS = {
    "ddpm": {
        "mnist": dict(blocks=1),
    },
}


# Sampling a DDPM checkpoint, by the data it was trained on: levels with SNR below gauss_snr take the closed-form
# x̂0 of the data as a stationary Gaussian (gaussian.py) instead of the network, a class-conditional model's from
# its label's own Gaussian. Short runs leave those levels almost untrained, and there the network washed out
# coffee's colours (colour gap 31 % against 11 % with it, at the same FID and half the network calls); on CIFAR-10
# it halved the colour gap at equal FID, and on maps it lowered FID a little. On MNIST only for a conditional model
# ("gauss_cond_only"): with the label's Gaussian its digits scored the same classifier FD in half the network calls
# and more were confident (0.89 against 0.85), while an unconditional model lost (FD 11.3 against 10.1): one
# Gaussian for all ten digits is no digit (RESULTS.md: "Gaussian below SNR 0.1"). Coffee's ε-network takes one more
# level, from SNR 0.05: Inception FID 117.2 against 122.3 with the Gaussian up to 0.1 and 117.5 up to 0.01, colour gap
# 5.5 %, 5.9 % and 8.4 % (N 476 vs coffee:test, 30 minutes, bf16 CPU; RESULTS.md); with AVX2 kernels in fp32, 139.3
# against 145.3 with the Gaussian up to 0.1. Coffee's tiles come in colour families (their mean colours cluster from
# dark red to pale cyan), and one Gaussian fills the hues between them. A mixture of 8, one per k-means cluster of the
# tiles' mean colours (gauss_mix), narrowed the colour gap on every coffee model tried, FID and KID within noise: 4.7 %
# against 6.8 % after 20 minutes and 6.8 % against 7.9 % after 30 (bf16 CPU), 6.9 % against 8.6 % after 30 with AVX2
# kernels in fp32, 9.3 % against 11.0 % after 90 (bf16 CPU); N 476 vs coffee:test, RESULTS.md. 4 and 16 scored as 8.
# clip=False leaves each step's x̂0 unclipped: clipping drops the outward half of the network's error wherever the
# data sit at the range's edge, and MNIST's black background turned grey (exact-zero pixels 32 % of the image
# against 51 % unclipped and 82 % in the data; Inception FID 21.4 against 20.1, N 2,000 vs mnist:test, AVX2 CPU).
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
