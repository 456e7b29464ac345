"""Where and in what precision a run computes: the device (`run.device`), bf16 autocast where the
CPU or GPU runs it natively (`run.precision=auto`), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ..errors import UserError
        raise UserError("run.device is 'cuda' but no CUDA device is available; set run.device "
                        "to cpu or auto (--device cpu)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` -> bf16 on a CUDA device that supports it or a CPU with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if resolve_precision(device, precision) == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
