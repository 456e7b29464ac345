"""Peak memory of a run's work on its device: `PeakMemory` around the stages that allocate.

On CUDA it is the allocator's own figure (`torch.cuda.max_memory_allocated`, reset on entry).
On CPU there is no allocator statistic; on Linux the kernel keeps the process's peak resident
memory (`VmHWM` in /proc/self/status), which writing 5 to /proc/self/clear_refs resets to the
current size. The CPU figure is that peak's growth during the work plus the bytes of the model's
tensors (built before it): an upper estimate of what the same tensors need on a GPU, since the
C allocator keeps some freed memory and libraries loaded on first use add to it. Elsewhere
(no /proc) the result is None. Both measures cost nothing, so every run takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

CUDA_HOW = "cuda: torch.cuda.max_memory_allocated"
CPU_HOW = ("cpu: growth of the process's peak resident memory (Linux VmHWM) + the model's "
           "tensors; an upper estimate")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_freed() -> None:
    """Collect garbage and hand the C heap's free pages back to the kernel (glibc's
    malloc_trim), so that memory a previous run freed does not hide this run's growth."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    _release_freed()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def tensor_bytes(model: Optional[torch.nn.Module]) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    if model is None:
        return 0
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class PeakMemory:
    """`with PeakMemory(device, model) as peak: ...`, then `peak.result()`: {"bytes": int,
    "how": str}, or None when this platform cannot tell."""

    def __init__(self, device: torch.device, model: Optional[torch.nn.Module] = None):
        self.device, self.model = device, model
        self._start: Optional[int] = None
        self._bytes: Optional[int] = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            rss = _status_kib("VmRSS")
            self._start = rss if rss is not None and _reset_hwm() else None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        peak = _status_kib("VmHWM")
        if self._start is not None and peak is not None:
            self._bytes = max(0, peak - self._start) * 1024 + tensor_bytes(self.model)

    def result(self) -> Optional[dict]:
        if self._bytes is None:
            return None
        return {"bytes": self._bytes, "how": CUDA_HOW if self.device.type == "cuda" else CPU_HOW}
