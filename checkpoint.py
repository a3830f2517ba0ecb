"""Checkpoints: written atomically (temp file, fsync, rename: the previous one stays until the new
one is complete) and read with weights_only=True, so a file carrying pickled code is refused
without running it."""
import os
import pickle

import torch

from cli import UserError
from nn_unet import unet_from_config


def save_atomic(obj, path):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path, kind=None):
    """Load and check a checkpoint of this project; kind ('ddpm' or 'zoom') must match if given."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist; pass the ckpt.pt of a training run")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint '{path}' was refused: it holds objects other than tensors and plain data "
                        f"(possibly code): {str(e).splitlines()[0][:120]}")
    except Exception as e:  # truncated, not a zip, not a torch file
        raise UserError(f"'{path}' is not a readable checkpoint ({type(e).__name__}); was it truncated? "
                        f"use an intact ckpt.pt")
    if not isinstance(ck, dict) or "model_config" not in ck or "kind" not in ck:
        raise UserError(f"'{path}' is not a checkpoint of this project (no model_config/kind)")
    if kind is not None and ck["kind"] != kind:
        raise UserError(f"'{path}' is a {ck['kind']} checkpoint, not {kind}; use the matching sampler/script")
    return ck


def model_from_checkpoint(ck, ema=True, device="cpu"):
    """The network with EMA weights (default) or raw weights, in eval mode."""
    model = unet_from_config(ck["model_config"])
    state = ck["model"]
    if ema and ck.get("ema"):
        state = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    model.load_state_dict(state)
    return model.to(device).eval()
