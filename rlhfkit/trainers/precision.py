"""Which autocast precision a run gets: `--mixed-precision auto|no|bf16|fp16`.

bf16 pays only where the hardware multiplies in bf16: CUDA GPUs, and CPUs with avx512_bf16 or
AMX (about 4x fp32 matmuls). On other CPUs torch emulates bf16 far slower than fp32, so `auto`
picks fp32 there. Master weights and losses stay fp32 in every case (accelerate's autocast).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.errors import ConfigError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (Linux /proc/cpuinfo flags; False elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(setting: str, cuda: bool | None = None, native_cpu_bf16: bool | None = None) -> str:
    """The precision accelerate gets ("no", "bf16" or "fp16") for a `mixed_precision` setting."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if (cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16) else "no"
    if setting == "fp16" and not cuda:
        raise ConfigError("setting 'mixed_precision': fp16 needs a GPU; use bf16, auto or no on a CPU")
    return setting
