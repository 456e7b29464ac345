"""One study run, executed: `execute(job)` calls `fit` and turns any failure into a stored
result (its one-line error, the epochs recorded before it failed); `worker_init` prepares a
spawned worker process; `available_cores` counts the cores this process may use. Used by the
local runner (`runner.py`) and, inside Ray workers, by the Ray executor (`cluster.py`).
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

from ..errors import one_line

ERROR_LIMIT = 300   # characters of a failed run's one-line error (store, status, report)


def execute(job: dict) -> dict:
    """Run one configuration (in this process or a worker). Never raises for a failed run."""
    started = time.time()
    log_path = Path(job["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        def log(msg: str) -> None:
            fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            fh.flush()
        log(f"start {job['id']} ({job['describe']}) pid {os.getpid()}")
        try:
            from ..runs.fit import fit
            res = fit(job["config"], progress=job["progress"], log=log,
                      run_dir=Path(job["run_dir"]))
            from ..runs.folder import Summary
            out = {"status": res.status, "summary": res.summary, "history": res.history,
                   "error": Summary.from_dict(res.summary).error}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed run must not stop the study
            tb = traceback.format_exc()
            log(tb)
            out = {"status": "failed", "summary": {}, "history": _history(job["run_dir"]),
                   "error": one_line(exc, ERROR_LIMIT), "traceback": tb}
        out["seconds"] = time.time() - started
        why = f" ({out['error']})" if out.get("error") else ""
        log(f"end {job['id']}: {out['status']}{why}")
    return out


def _history(run_dir: str) -> list[dict]:
    """The epochs a failed run recorded before it failed ([] when none or unreadable)."""
    try:
        from ..runs.folder import RunFolder
        return RunFolder(run_dir).read_history()
    except Exception:  # noqa: BLE001 - the failure itself is what gets reported
        return []


def worker_init(threads: int) -> None:
    """Spawned worker: its own torch thread count; dies with its parent; ignores Ctrl-C
    (the parent handles it and terminates the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux
        pass
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    torch.set_num_threads(threads)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
