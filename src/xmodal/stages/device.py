"""Where and in what precision a run computes: the device (`run.device`), bf16 autocast where the
CPU or GPU runs it natively (`run.precision=auto`), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch



def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`; a GPU that is not there is a
    `UserError` (CUDA_VISIBLE_DEVICES renumbers the GPUs this process sees from 0)."""
    from ..errors import UserError
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"run.device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"run.device is '{name}' but no CUDA device is available; set "
                            f"run.device to cpu or auto (--device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"run.device is '{name}' but this process sees {count} GPU(s) "
                            f"(cuda:0 to cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    elif device.type != "cpu":
        raise UserError(f"run.device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return device


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
