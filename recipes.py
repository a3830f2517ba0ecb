"""Defaults that follow the data and the machine: `--data NAME` sets these flags wherever the command line
does not. Each entry is what measured best for that dataset in short CPU runs (RESULTS.md holds the runs);
every other flag keeps the default that `-h` shows."""

DATA_DEFAULTS = {
    "ddpm": {
        # Labelled digits: class-conditional, sampled over the ten classes in turn. A 20-minute
        # unconditional model still draws many shapes that are no digit.
        "mnist": dict(cond=True),
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


def data_defaults(kind, data, fp32_cpu=False):
    """The flag defaults for training a `kind` model ('ddpm' or 'zoom') on `data`; fp32_cpu: training runs on
    a CPU without fast bf16."""
    out = dict(DATA_DEFAULTS.get(kind, {}).get(data, {}))
    if fp32_cpu:
        out.update(FP32_CPU_DEFAULTS.get(kind, {}).get(data, {}))
    return out
