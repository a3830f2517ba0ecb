"""Defaults that follow the data: `--data NAME` sets these flags wherever the command line does not. Each
entry is what measured best for that dataset in short CPU runs (RESULTS.md holds the runs); every other
flag keeps the default that `-h` shows."""

DATA_DEFAULTS = {
    "ddpm": {
        # Labelled digits: class-conditional, sampled over the ten classes in turn. A 20-minute
        # unconditional model still draws many shapes that are no digit.
        "mnist": dict(cond=True),
    },
}


def data_defaults(kind, data):
    """The flag defaults for training a `kind` model ('ddpm' or 'zoom') on `data`."""
    return dict(DATA_DEFAULTS.get(kind, {}).get(data, {}))
