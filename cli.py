"""Command-line plumbing shared by every script: user errors (one line, exit code 2), the common run
flags, the device. What the machine runs fast (precision, threads) is machine.py's."""
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
                   help="auto: the machine's fastest (bf16 on CPUs with AMX/AVX512-bf16 and GPUs with bf16, fp16 "
                        "on older GPUs, else fp32)")
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
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
