"""What this machine runs fast, decided in one place. Every script asks here for its precision, thread
count and DDP backend, and says the choice once at start (`describe`).

CPU: bf16 autocast only where the CPU has bf16 instructions (AVX512-bf16 or AMX) *and* torch and oneDNN
are allowed to use them; elsewhere bf16 is emulated, several times slower than fp32. torch's own view
of the CPU (`get_cpu_capability`) honours ATEN_CPU_CAPABILITY, and oneDNN honours ONEDNN_MAX_CPU_ISA, so
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` makes a bf16 machine behave, and decide, like an
AVX2-only one. CUDA: bf16 where the GPU has it natively, else fp16 with a GradScaler.
"""
import contextlib
import datetime
import os
import shlex
import subprocess
import sys

import torch

from cli import UserError



def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "?", ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return model, text


def cpu_bf16():
    """(True, 'AMX' | 'AVX512-bf16') where bf16 runs natively, else (False, why not)."""
    cap = torch.backends.cpu.get_cpu_capability()  # 'AVX2', 'AVX512', ...: what torch dispatches to
    if "AVX512" not in cap and "AMX" not in cap:
        return False, f"torch runs {cap} kernels, bf16 would be emulated"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and not any(k in isa for k in ("BF16", "AMX", "FP16", "AVX10")):
        return False, f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN off the bf16 instructions"
    try:
        amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # older torch: read the flags ourselves
        flags = _cpu_flags()[1]
        amx, avx512_bf16 = "amx_bf16" in flags, "avx512_bf16" in flags
    if amx or avx512_bf16:
        return True, "AMX" if amx else "AVX512-bf16"
    return False, "the CPU has no bf16 instructions"


def cuda_bf16(device):
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch has no emulation flag
        return torch.cuda.get_device_capability(device)[0] >= 8


def fp32_only_cpu(device):
    """True when `device` (a name like 'cpu' or 'cuda:0') is a CPU that runs fp32 only at full speed."""
    return str(device).split(":")[0] == "cpu" and not cpu_bf16()[0]


def native_precisions(device):
    """The precisions this device runs at full speed, fastest first."""
    if device.type == "cuda":
        return ["bf16", "fp16", "fp32"] if cuda_bf16(device) else ["fp16", "fp32"]
    return ["bf16", "fp32"] if cpu_bf16()[0] else ["fp32"]


def resolve_precision(precision, device):
    """'auto' -> the machine's fastest; an explicit choice is checked (fp16 needs CUDA)."""
    if precision == "auto":
        return native_precisions(device)[0]
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA (fp16 on CPU is slow and unscaled); use bf16 or fp32")
    return precision


def machine_name(device):
    """What the numbers were measured on: the GPU's name, or the CPU model, threads and bf16 support."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    fast, why = cpu_bf16()
    model, flags = _cpu_flags()
    name = f"{model}, {torch.get_num_threads()} threads, {why if fast else 'no fast bf16 (' + why + ')'}"
    if not fast and ("avx512_bf16" in flags or "amx_bf16" in flags):  # a bf16 CPU held back by the environment
        name += ", on a bf16 CPU held to it by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA"
    return name


def describe(device, precision):
    """The one line every script prints at start."""
    native = native_precisions(device)
    note = "" if precision in native else f" (not native here: {', '.join(native)} would be faster)"
    return f"machine: {machine_name(device)}; {device}, {precision}{note}"


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(world_size=1):
    """One process per core group: 2 ranks x 2 threads on 2 cores halves the speed. OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, cores() // world_size))


def setup_device(device):
    """Settings that make a device fast and change no result beyond rounding."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls/convs on tensor cores
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once


def memory_format(choice, device):
    """channels_last ('auto': on CUDA; not on a CPU, where GroupNorm in bf16 channels_last is slower) or not."""
    on = choice == "on" or (choice == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


def ddp_backend(device):
    """gloo on CPU; on CUDA nccl for device tensors with gloo beside it for any CPU-side collective."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def provenance(device):
    """Where a result came from, for its score card: machine, date, code version, and the command line."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + ("+changes" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"machine": machine_name(device), "date": datetime.date.today().isoformat(), "commit": commit,
            "command": shlex.join(["python", os.path.basename(sys.argv[0]), *sys.argv[1:]])}
