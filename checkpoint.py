"""Checkpoints: written atomically (temp file, fsync, rename: the previous one stays until the new
one is complete) and read with weights_only=True, so a file carrying pickled code is refused
without running it."""
import inspect
import os
import pickle
import sys
import zipfile

import torch

from cli import UserError
from nn_unet import UNet, unet_from_config
from schedules import Schedule


def save_atomic(obj, path):
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, Ctrl-C: the partial file goes, the previous checkpoint stays
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
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
    if not zipfile.is_zipfile(path):  # torch.save's format is a zip archive; a text or truncated file is not
        raise UserError(f"'{path}' is not a checkpoint (not a torch.save file, or truncated); use an intact ckpt.pt")
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
    missing = [k for k, t in (("model", dict), ("args", dict), ("model_config", dict)) if not isinstance(ck.get(k), t)]
    unknown = set(ck["model_config"]) - set(inspect.signature(UNet).parameters) if "model_config" not in missing else ()
    if missing or unknown or ck["kind"] not in ("ddpm", "zoom") or "data" not in ck.get("args", {}):
        what = (f"no {', '.join(missing)}" if missing else f"unknown network settings {sorted(unknown)}" if unknown
                else f"unknown kind '{ck['kind']}'" if ck["kind"] not in ("ddpm", "zoom") else "no data in its args")
        raise UserError(f"'{path}' is a damaged or hand-made checkpoint ({what}); use the ckpt.pt a training run wrote")
    _check_weights(ck, path)
    if ck["kind"] == "zoom" and not {"stats", "T", "mode"} <= set(ck.get("objective") or {}):
        raise UserError(f"'{path}' is a zoom checkpoint without its start states; use the ckpt.pt a training run wrote")
    if kind is not None and ck["kind"] != kind:
        raise UserError(f"'{path}' is a {ck['kind']} checkpoint, not {kind}; use the matching sampler/script")
    return ck


def _check_weights(ck, path):
    """The stored weights (and their EMA) have the names and shapes the network settings build: checked on the meta
    device, so nothing is allocated."""
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in unet_from_config(ck["model_config"]).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"'{path}': its network settings do not build a network ({str(e).splitlines()[0][:100]})")
    ema = {k[len("module."):]: v for k, v in (ck.get("ema") or {}).items() if k.startswith("module.")}
    for what, state in (("weights", ck["model"]), ("EMA weights", ema or None)):
        if state is not None and {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} != want:
            raise UserError(f"'{path}': its {what} do not fit its network settings; use the ckpt.pt a training run wrote")


def model_from_checkpoint(ck, ema=True, device="cpu"):
    """The network with EMA weights (default) or raw weights, in eval mode, of a checkpoint load_checkpoint read
    (which checked that the weights fit the network settings)."""
    model = unet_from_config(ck["model_config"])
    state = ck["model"]
    if ema and ck.get("ema"):
        state = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    model.load_state_dict(state)
    return model.to(device).eval()


# Settings of experiments that were not kept, with the value that means "not used". A checkpoint that used one
# still samples where the setting only shaped training; what it changes at sampling is refused in one line.
REMOVED = {"schedule_shift": 1.0, "min_snr_plus_one": False, "min_snr_floor": 0.0, "train_snr_min": 0.0, "halvings": 1}


def removed_settings(args):
    """The flags of a checkpoint's args that this version no longer has, as '--flag value' strings."""
    used = [f"--{k.replace('_', '-')} {args[k]}" for k, off in REMOVED.items() if args.get(k, off) != off]
    if args.get("pred") == "gauss":
        used.append("--pred gauss")
    if args.get("target") in ("data", "teacher"):
        used.append(f"--target {args['target']}")
    return used


def schedule_of(ck):
    """The noise schedule a DDPM checkpoint trained with."""
    a = ck["args"]
    changed = [f for f in removed_settings(a) if f.startswith(("--schedule-shift", "--pred"))]
    if changed:
        raise UserError(f"this checkpoint was trained with {', '.join(changed)}, an option this version no longer "
                        f"has; sample it with the version that trained it (git log), or train a new model")
    return Schedule.make(a.get("schedule", "linear"), a.get("T", 1000))


def data_gaussian(ck, mix=False):
    """The checkpoint's training data as the Gaussian that training stored (gaussian.py); with mix, the mixture of
    Gaussians stored beside it, where training fitted one (the data's sampling defaults ask for it)."""
    stored = (ck.get("objective") or {}).get("gauss")
    if stored is None:
        raise UserError("this checkpoint stores no Gaussian of its data, which --gauss-snr needs; sample it with "
                        "--gauss-snr 0 (the network at every level)")
    if mix and "mix_weight" in stored:
        return stored
    if mix:
        print("warning: this checkpoint stores no mixture of Gaussians; sampling with its single Gaussian",
              file=sys.stderr)
    return {k: v for k, v in stored.items() if not k.startswith("mix_")}
