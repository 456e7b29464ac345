"""One study run, executed: `execute(job)` calls `fit` and turns any failure into a stored
result (its one-line error, the epochs recorded before it failed); `WorkerPool` runs jobs in
worker processes; `worker_init` prepares a
spawned worker process; `available_cores` counts the cores this process may use. Used by the
local runner (`runner.py`) and, inside Ray workers, by the Ray executor (`cluster.py`).
"""

from __future__ import annotations

import os
import signal
import sys
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


class WorkerPool:
    """N spawned worker processes (concurrent.futures; `one_run_each`: a new process per run).
    A worker that dies breaks the pool: the runs in flight at that moment are stored as failed
    (retried on the next invocation) and a new pool takes the remaining runs."""

    def __init__(self, workers: int, threads: int, one_run_each: bool = False):
        self.workers, self.threads = workers, threads
        self.one_run_each = one_run_each   # a new process for every run
        self.progress = False
        self.futures: dict = {}
        self.pool = self._new()

    def _new(self):
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context(),
                                   initializer=worker_init, initargs=(self.threads,),
                                   max_tasks_per_child=1 if self.one_run_each else None)

    def _context(self):
        """spawn; for a process per run on Linux, forkserver with xmodal's imports preloaded
        (a run then starts in well under a second instead of re-importing torch)."""
        import multiprocessing
        if not (self.one_run_each and sys.platform.startswith("linux")):
            return multiprocessing.get_context("spawn")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["xmodal.runs.fit", "xmodal.study.execute"])
        return ctx

    def submit(self, run_id: str, job: dict) -> None:
        from concurrent.futures.process import BrokenProcessPool
        try:
            self.futures[self.pool.submit(execute, job)] = run_id
        except BrokenProcessPool:
            self.pool = self._new()
            self.futures[self.pool.submit(execute, job)] = run_id

    def wait(self):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as fwait
        done, _ = fwait(list(self.futures), return_when=FIRST_COMPLETED)
        broken = False
        for fut in done:
            run_id = self.futures.pop(fut)
            try:
                yield run_id, fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker process died
                broken = True
                yield run_id, {"status": "failed", "summary": {}, "history": [], "seconds": 0.0,
                               "error": f"a worker process died while this run was in flight "
                                        f"({type(exc).__name__}: {exc})"}
        if broken:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new()

    def terminate(self) -> None:
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
