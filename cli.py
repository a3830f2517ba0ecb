"""Command-line plumbing shared by every script: user errors (one line, exit code 2), device and
precision choice, thread settings."""
import contextlib
import os
import sys

import torch


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def run_cli(main):
    """Run main(); user errors print one line and exit 2 instead of a traceback."""
    from data import DataError
    try:
        main()
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_run_args(p, out_help="output folder"):
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu" if not torch.cuda.is_available() else "cuda:0", help="cpu or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX/AVX512-bf16, else fp32")
    return p


def resolve_device(name):
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device '{name}' is not a device; use cpu or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda:N are supported")
    return dev


def cpu_has_fast_bf16():
    """AMX or AVX512-bf16 makes bf16 matmuls/convs several times faster than fp32 on CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def machine_name(device):
    """What the numbers were measured on: the GPU's name, or the CPU model and its bf16 support."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
        bf16 = "AMX" if "amx_bf16" in text else "AVX512-bf16" if "avx512_bf16" in text else "no fast bf16"
    except OSError:
        model, bf16 = "?", "?"
    return f"{model}, {os.cpu_count()} threads, {bf16}"


def resolve_precision(precision, device):
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA (fp16 on CPU is slow and unscaled); use bf16 or fp32")
    return precision


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def set_threads(world_size=1):
    # One process per core group; oversubscribing 2 cores with 2 ranks x 2 threads halves speed.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
