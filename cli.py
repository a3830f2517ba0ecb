"""Command-line plumbing shared by every script: user errors (one line, exit code 2), the common run
flags, the device. What the machine runs fast (precision, threads) is machine.py's."""
import argparse
import json
import math
import os
import signal
import sys
import tempfile

import torch

PRECISIONS = ("fp32", "bf16", "fp16")  # --precision's choices besides auto; machine.py decides which is fast


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: 'error: argument --batch: ...', exit code 2."""

    def error(self, message):
        print(f"error: {message} (python {self.prog} -h lists the flags)", file=sys.stderr)
        sys.exit(2)


def number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: kind(text), finite and inside [lo, hi] (open at either end where asked); the error
    names the allowed range."""
    want = "an integer" if kind is int else "a number"
    if lo is not None:
        want += f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        want += f"{' and' if lo is not None else ''} {'<' if hi_open else '<='} {hi}"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {want}")
        if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
                or (hi is not None and (v >= hi if hi_open else v > hi))):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {want}")
        return v
    parse.__name__ = want  # argparse names the type by it in its own messages
    return parse


def number_list(item, ordered=False):
    """An argparse type: comma-separated values of the type `item`, sorted (ordered: as given), e.g. '5,10,20'."""
    def parse(text):
        values = [item(v) for v in text.split(",")]
        return values if ordered else sorted(values)
    parse.__name__ = f"a comma-separated list of {item.__name__}s"
    return parse


POSITIVE_INT, NONNEG_INT = number(int, 1), number(int, 0)
POSITIVE, NONNEG, FRACTION = number(float, 0, lo_open=True), number(float, 0), number(float, 0, 1, hi_open=True)
FINITE = number(float)


def run_cli(main):
    """Run main(); user errors print one line and exit 2 instead of a traceback."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is KeyboardInterrupt (ctrl_c.py)
    try:
        main()
    except UserError as e:  # data.DataError included
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves first): no traceback
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def add_run_args(p, out_help="output folder"):
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--device", default="cpu" if not torch.cuda.is_available() else "cuda:0", help="cpu or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
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


def ensure_writable(folder, flag):
    """Create folder and prove a file can be written there, before any work that would be lost."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write there ({e.strerror}); pick another folder")
    return folder


_JSON_TYPES = {list: "an array", str: "a string", type(None): "null", bool: "true/false", int: "a number",
               float: "a number"}


def read_cards(path, hint):
    """The cards of a JSON-lines file (fid.py's scores.jsonl, levels.py's levels.jsonl, bench.py --cards) as
    ('path:line', card) pairs, blank lines skipped. A missing, empty or unreadable file, or a line that is not one JSON
    object, is a UserError naming the file and the line; hint: which script writes such files."""
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a folder, not a card file; {hint}")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' does not exist; {hint}")
    cards = []
    try:
        with open(path, "rb") as f:
            for k, raw in enumerate(f, 1):
                try:
                    card = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise UserError(f"{path}:{k} is not text: a card file holds one JSON object per line; {hint}")
                except json.JSONDecodeError as e:
                    if not raw.strip():
                        continue
                    raise UserError(f"{path}:{k} is not JSON ({e.msg}): a card file holds one JSON object per line; "
                                    f"{hint}")
                if not isinstance(card, dict):
                    raise UserError(f"{path}:{k} is {_JSON_TYPES.get(type(card), 'not an object')}, not a card "
                                    f"(one JSON object per line); {hint}")
                cards.append((f"{path}:{k}", card))
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})")
    if not cards:
        raise UserError(f"'{path}' is empty: no cards in it; {hint}")
    return cards


def check_card(where, card, numbers=(), maybe_numbers=(), texts=()):
    """Refuse a card (where: 'file:line') that lacks one of numbers or holds other than a number there, or holds
    other than null or a number in one of maybe_numbers, or other than a string in one of texts."""
    for key in numbers:
        if key not in card:
            raise UserError(f"{where}: the card has no '{key}'; it needs a number there")
    for key, v in card.items():
        if key in texts and not isinstance(v, str):
            raise UserError(f"{where}: '{key}' is {json.dumps(v)[:40]}, not a string")
        if ((key in numbers or key in maybe_numbers and v is not None)
                and (isinstance(v, bool) or not isinstance(v, (int, float)))):
            raise UserError(f"{where}: '{key}' is {json.dumps(v)[:40]}, not a number")
