"""A training run's life outside the math: its folder (config, log, grids, atomic checkpoints), resuming
with the settings it started with, stopping on a budget or Ctrl-C, and worker failures under torchrun."""
import csv
import fcntl
import io
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from torchvision.utils import make_grid, save_image

from checkpoint import load_checkpoint, removed_settings, save_atomic
from cli import UserError
from data import DataError, data_from_args, to_model
from machine import autocast
from train_state import StepDraws

# Flags that define the model and the data: on --resume they come from the checkpoint.
# The data's path is not among them: a moved dataset resumes, checked by its content (data_fingerprint).
FROZEN_ON_RESUME = ("data", "size", "folds", "preset", "ch", "blocks", "mults", "patch", "cond", "batch", "lr", "optimizer",
                    "weight_decay", "warmup", "cooldown", "grad_clip", "ema_halflife_kimg", "ema_rampup", "seed",
                    "label_drop", "n_maps", "augment")


def typed_flags(parser, argv, args):
    """The dests of the flags typed on the command line, a value equal to the default included: parsed
    again with every default replaced by a marker."""
    marker = object()
    defaults = {d: parser.get_default(d) for d in vars(args)}
    parser.set_defaults(**{d: marker for d in defaults})
    try:
        again = parser.parse_args(argv)
    finally:
        parser.set_defaults(**defaults)
    return {d for d, v in vars(again).items() if v is not marker}


def data_fingerprint(data):
    """The data's identity: its decoded images and labels, wherever they were read from."""
    h = hashlib.sha256(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_to_resume(objective, args, typed):
    """The checkpoint of --resume, with the run's frozen settings copied into args. A typed flag that
    contradicts one is refused."""
    if args.out is None and args.ckpt is None:
        raise UserError("--resume needs --out RUN_DIR (or --ckpt RUN_DIR/ckpt.pt) of the run to continue")
    path = args.ckpt or os.path.join(args.out, "ckpt.pt")
    ck = load_checkpoint(path, kind=objective.kind)
    mode, saved_mode = getattr(objective, "mode", None), (ck.get("objective") or {}).get("mode")
    if mode and saved_mode and mode != saved_mode:
        raise UserError(f"{path} is a {saved_mode} zoom run; continue it with train_zoom_{saved_mode}.py --resume")
    removed = removed_settings(ck["args"])
    if removed:
        raise UserError(f"{path} was trained with {', '.join(removed)}, an option this version no longer has: it "
                        f"cannot be resumed (it still samples unless the option changed its schedule); start a new run")
    if ck["args"].get("data") == "coffee" and ck["args"].get("folds") is None:
        ck["args"]["folds"] = "1,2,3,4,5"  # a run that did not record its folds trained on every fold
    for k in FROZEN_ON_RESUME + tuple(objective.frozen_args):
        given, saved = getattr(args, k), ck["args"].get(k, getattr(args, k))
        if k in typed and given != saved:
            raise UserError(f"--{k.replace('_', '-')} {given} contradicts the checkpoint being resumed "
                            f"({saved}); drop the flag (a resumed run keeps its settings) or start a new run")
        setattr(args, k, saved)
    if "data_root" not in typed:
        args.data_root = ck["args"]["data_root"]
    args.out = os.path.dirname(os.path.abspath(path))
    return ck


def lock_run_dir(out):
    """An exclusive lock on OUT/.lock, held until release_run_dir (or the process's death: the OS drops it): a run
    folder has one writer. A second training, resume or distillation into it is refused, naming the holder."""
    fd = os.open(os.path.join(out, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{out} is in use by {holder}; wait for it to end, or give another --out")
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} ({os.path.basename(sys.argv[0])})".encode())
    return fd


def release_run_dir(fd):
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


def disk_note(path):
    """'N MB free' on the disk that holds path, for messages about failed writes."""
    try:
        return f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:,.0f} MB free there"
    except OSError:
        return "its free space unknown"


def claim_run_dir(run_name, args):
    """The run folder, claimed atomically: the first of base, base_2, ... where this process creates
    config.json itself (O_EXCL), so two runs started at once never share one, and a folder left by
    another run, finished or failed, is never appended to."""
    base = args.out or os.path.join("runs", f"{run_name}_{args.data}{args.size}")
    out, k = base, 2
    while True:
        try:
            os.makedirs(out, exist_ok=True)
            os.close(os.open(os.path.join(out, "config.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return out
        except FileExistsError:
            out, k = f"{base}_{k}", k + 1
        except OSError as e:
            raise UserError(f"cannot write the run folder {out} ({e.strerror}); pick another --out")


def heldout_images(args):
    """Up to 512 images of the test split (model scale) when the dataset has one, else None."""
    if args.data not in ("mnist", "cifar10", "maps", "flowers102", "coffee") or "5" in str(args.folds or "").split(","):
        return None  # a folder is one set, and coffee's test fold is held out only when it was not trained on
    try:
        test = data_from_args(args, "test")
    except DataError:
        return None
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:512]
    return to_model(test.images[idx])


class RunFolder:
    """What rank 0 writes: config.json, log.csv, ckpt.pt (atomic: the previous one stays until the new one
    is complete), sample grids beside real images, and heldout.csv (the EMA model's loss on test images)."""

    COLUMNS = ["step", "epoch", "loss", "lr", "img_per_s", "loss_q1", "loss_q2", "loss_q3", "loss_q4", "elapsed_s",
               "ema_decay"]

    def __init__(self, out, args, data, config):
        self.out, self.args, self.data = out, args, data
        self.ckpt = os.path.join(out, "ckpt.pt")
        self.heldout = heldout_images(args)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        self.log_path = os.path.join(out, "log.csv")
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self.log_fd).st_size == 0:
            self._append(self.COLUMNS)

    def last_good(self):
        return f"the last good checkpoint is {self.ckpt}" if os.path.exists(self.ckpt) else "no checkpoint was written yet"

    def write_row(self, **values):
        self._append([values[c] for c in self.COLUMNS])

    def _append(self, row):
        """One CSV row, written whole or not at all (a failed write is cut back off)."""
        line = io.StringIO()
        csv.writer(line).writerow(row)
        data, end = line.getvalue().encode(), os.lseek(self.log_fd, 0, os.SEEK_END)
        try:
            if os.write(self.log_fd, data) != len(data):
                raise OSError(28, "No space left on device")
        except OSError as e:
            os.ftruncate(self.log_fd, end)
            raise self.write_failed(self.log_path, e)

    def write_failed(self, path, e):
        """The one-line error for a failed write: the path, the reason, the free space, what is safe, how to go on."""
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:80]
        return UserError(f"cannot write {path} ({reason}; {disk_note(path)}); {self.last_good()}; free space, then "
                         f"continue with: --resume --out {self.out}")

    def save(self, checkpoint, model):
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never overwrite a good one with NaNs
            raise UserError(f"the weights are no longer finite at step {checkpoint['step']}: training diverged "
                            f"(lower --lr, or another --optimizer); {self.last_good()}")
        try:
            save_atomic(checkpoint, self.ckpt)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            raise self.write_failed(self.ckpt, e)

    def keep_copy(self, name):
        """A second name for the checkpoint just written (a hard link: free, and atomic)."""
        dst = os.path.join(self.out, name)
        if os.path.exists(dst):
            os.remove(dst)
        try:
            os.link(self.ckpt, dst)
        except OSError:  # file systems without hard links
            shutil.copyfile(self.ckpt, dst + ".tmp")
            os.replace(dst + ".tmp", dst)

    def write_grid(self, tag, objective, model, device):
        """samples_<tag>.png: n generated images above n real ones."""
        n, data = self.args.n, self.data
        labels = (torch.arange(n) % data.num_classes) if self.args.cond else None
        fake = objective.sample(model, n, labels, device, seed=self.args.seed).float().cpu()
        real = to_model(data.images[torch.randperm(len(data), generator=torch.Generator().manual_seed(self.args.seed))[:n]])
        path = os.path.join(self.out, f"samples_{tag}.png")
        # about square, and the real images start on a row of their own (black tiles fill the generated ones' last)
        nrow = math.ceil((2 * n) ** 0.5)
        fill = torch.full((-n % nrow, *fake.shape[1:]), -1.0)
        save_image(make_grid(torch.cat([fake, fill, real]).clamp(-1, 1) * 0.5 + 0.5, nrow=nrow), path)
        return path

    @torch.no_grad()
    def log_heldout(self, objective, model, device, precision, step, epoch):
        """The loss on up to 512 test images with fixed noise (its own generator: training's draws are
        untouched): over-fitting shows here."""
        if self.heldout is None:
            return
        g, noise_g = torch.Generator(device=device).manual_seed(12345), torch.Generator(device=device)
        total = 0.0
        with autocast(device, precision):
            for i in range(0, len(self.heldout), 128):
                x0 = self.heldout[i:i + 128].to(device)
                draws = StepDraws(g, noise_g, 12345, i, len(x0))  # keyed by the chunk: the same noise at every log
                total += objective.loss(model, x0, None, draws)[0].float().sum().item()
        path = os.path.join(self.out, "heldout.csv")
        new = not os.path.exists(path)
        with open(path, "a") as f:
            f.write(("step,epoch,heldout_loss\n" if new else "") + f"{step},{epoch},{total / len(self.heldout):.5f}\n")

    def close(self):
        os.close(self.log_fd)


class LossMeter:
    """Loss sums and counts per noise-level quartile since the last read, and whether any loss was not
    finite, kept on the device: a host read per step would stall a GPU."""

    def __init__(self, device):
        self.acc = torch.zeros(2, 4, dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, losses, level):
        self.nonfinite |= ~torch.isfinite(losses.mean())
        q = (level * 4).long().clamp(0, 3)
        self.acc[0].index_add_(0, q, losses.double())
        self.acc[1].index_add_(0, q, torch.ones_like(q, dtype=torch.float64))

    def read(self):
        """(mean loss, mean loss per quartile) since the last read; resets."""
        per_quartile = (self.acc[0] / self.acc[1].clamp(min=1)).tolist()
        mean = (self.acc[0].sum() / self.acc[1].sum()).item()
        self.acc.zero_()
        return mean, per_quartile


class Interrupt:
    """First Ctrl-C (or SIGTERM outside torchrun): finish the step, save, exit 130 (143), so `train && sample`
    does not go on as if training had finished. Second: exit at once. `restore()` puts the previous
    handlers back."""

    def __init__(self, world):
        self.requested, self.code = False, 0
        self.previous = {signal.SIGINT: signal.signal(signal.SIGINT, self.handler)}
        if world == 1:  # under torchrun, SIGTERM means another worker failed (run_under_torchrun)
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self.handler)

    def handler(self, signum, _frame):
        if self.requested:
            print("\nsecond signal: exiting without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.requested, self.code = True, 128 + signum
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{name}: saving a checkpoint after this step ({name} again to quit at once)", file=sys.stderr)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Stopper:
    """Decides after each step whether to stop: the step budget, the wall clock, Ctrl-C, a non-finite loss;
    and tracks `progress`, the share of the budget done (steps or this session's minutes, whichever is
    further). Under DDP the ranks agree in one all_reduce at log steps (and the last step) only, on rank 0's
    clock, progress and Ctrl-C and on any rank's non-finite loss: a collective per step would stall GPUs."""

    def __init__(self, total_steps, minutes, interrupt, world, device):
        self.total_steps, self.interrupt, self.world, self.device = total_steps, interrupt, world, device
        self.start, self.seconds = time.time(), 60 * minutes if minutes else None
        self.progress = 0.0

    def check(self, step, nonfinite, log_step):
        """(reason to stop or None, whether the loss went non-finite)."""
        now = time.time() - self.start
        progress = max(step / self.total_steps if self.total_steps else 0.0, now / self.seconds if self.seconds else 0.0)
        stop = [self.total_steps is not None and step >= self.total_steps,  # the same on every rank
                self.seconds is not None and now >= self.seconds,
                bool(self.interrupt and self.interrupt.requested)]
        if self.world > 1:
            if log_step or stop[0]:
                stop[1:], bad, self.progress = self._agree(stop[1:], nonfinite, progress)
            else:
                stop[1:], bad = [False, False], False
        else:
            bad, self.progress = (log_step or any(stop)) and bool(nonfinite), min(1.0, progress)
        return (["steps", "time", "interrupt"][stop.index(True)] if any(stop) else None), bad

    def _agree(self, rank0_flags, nonfinite, progress):
        mine = [float(f) for f in rank0_flags + [progress]] if dist.get_rank() == 0 else [0.0] * (len(rank0_flags) + 1)
        flags = torch.cat([torch.tensor(mine, device=self.device), nonfinite.float()[None]])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        *out, progress, bad = flags.tolist()
        return [v > 0 for v in out], bad > 0, min(1.0, progress)


def run_under_torchrun(train_fn, args):
    """Under torchrun a dead worker reaches the others as torchrun's SIGTERM or as a failed collective:
    say which, in one line with the backend's own message, the last checkpoint and how to resume. Any
    other error is a bug and keeps its traceback."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world == 1:
        return train_fn()

    def where():
        ck = os.path.join(args.out, "ckpt.pt") if args.out else None
        return (f"last checkpoint: {ck}; resume with torchrun ... --resume --out {args.out}"
                if ck and os.path.exists(ck) else "no checkpoint was written yet")

    def on_term(*_):
        print(f"error: rank {rank}: stopped by torchrun (another worker failed); {where()}", file=sys.stderr)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return train_fn()
    except RuntimeError as e:
        # gloo and nccl report a peer's death from inside DDP's backward as a plain RuntimeError.
        if not (isinstance(e, dist.DistError) or any(k in str(e) for k in ("gloo", "NCCL", "nccl", "Connection"))):
            raise  # not about the other workers: a bug, keep its traceback
        raise UserError(f"rank {rank}: a collective failed: {str(e).strip().splitlines()[0][:300]}; {where()}")
