"""The local study runner: `run_study` records a `Plan` in the study's store and works
through it.

Done runs are skipped, interrupted ones (status running, owner process gone) are resumed
(`fit` continues from `resume.pt`), failed ones are retried once per invocation. Runs go
in-process (`--workers 1`) or in N spawned processes, each with cores // N torch threads; only
the main process writes to the store. With `--ray ADDRESS` the runs go to a Ray cluster
instead (`cluster.RayPool`); the driver still alone writes the store and schedules the runs.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..runs.folder import Summary
from .execute import WorkerPool, available_cores, execute
from .liveness import process_token
from .plan import Plan, PlannedRun, expand
from .sequential import next_round, sequential_of
from .spec import load_spec
from .store import DB_NAME, Store, is_store


@dataclass
class Outcome:
    total: int
    done: int
    failed: list      # [(PlannedRun, error)]
    skipped: int      # already done before this invocation
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and self.done == self.total


class _Console:
    """The overall progress bar (tty) or one line per finished run (logs, CI)."""

    def __init__(self, total: int, initial: int, name: str, quiet: bool):
        self.quiet = quiet
        self.total, self.count = total, initial
        self.t0, self.first = time.time(), initial
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=f"study {name}", unit="run",
                            file=sys.stderr, dynamic_ncols=True, position=0,
                            smoothing=0.0)

    def line(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def advance(self, msg: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.line(msg)
            return
        done_here = self.count - self.first
        left = self.total - self.count
        eta = (time.time() - self.t0) / done_here * left if done_here else float("nan")
        self.line(f"[{self.count}/{self.total}] {msg}" +
                  (f"; ETA {fmt_seconds(eta)}" if left and math.isfinite(eta) else ""))

    def running(self, names: list[str], started: Optional[str] = None) -> None:
        """Show the runs in flight (several workers): in the bar's postfix on a terminal, else
        one `start` line per run, so something moves before the first run finishes."""
        if self.quiet:
            return
        if self.bar is None:
            if started is not None:
                print(f"start {started}", file=sys.stderr, flush=True)
            return
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        self.bar.set_postfix_str(f"running: {names[0]}{more}" if names else "", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def study_folder(out: str | Path) -> Path:
    """The study folder `--out` names, checked before anything is written: not empty, no file
    on its path, and a `study.db` in it, if any, is a file."""
    if not str(out).strip():
        raise UserError("--out is empty (an unset shell variable?); name the study folder, e.g. "
                        "--out runs/demo")
    path = Path(out).expanduser().resolve()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out '{path}': '{parent}' exists and is not a folder; pick "
                                f"another --out")
            break
    db = path / DB_NAME
    if db.exists() and not db.is_file():
        raise UserError(f"'{db}' is not a file; it is where xmodal keeps the study's results: "
                        f"move it away or pick another --out")
    return path


def prepare_dir(out: Path, fresh: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder")
    if fresh and out.exists():
        db = out / DB_NAME
        if db.exists() and not is_store(db):
            raise UserError(f"--fresh would delete '{out}', but its {DB_NAME} is not a readable "
                            f"xmodal study database; delete the folder yourself or pick another "
                            f"--out")
        if not db.exists() and any(out.iterdir()):
            raise UserError(f"--fresh would delete '{out}', which is not a study folder "
                            f"(no {DB_NAME}); delete it yourself or pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_study(spec: str | Path | dict, out: str | Path, *, tasks: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, overrides: Optional[list[str]] = None,
              workers: Optional[int] = None, fresh: bool = False, quiet: bool = False,
              progress: bool = True, ray: Optional[str] = None,
              ray_cpus: Optional[float] = None, ray_gpus: Optional[float] = None,
              smoke: bool = False) -> Outcome:
    """Run (or resume) a study into folder `out`. Returns an `Outcome`; never raises for
    failed runs (they are stored as failed). `workers` None: the spec's `workers` (else 1).

    `ray`: run on a Ray cluster instead (`cluster.RayPool`; address auto, HOST:PORT,
    ray://HOST:PORT or local), `ray_cpus` / `ray_gpus` (default 1 / 0) per run; `workers` is
    then the number of runs in flight (None: as many as the cluster holds at once).

    `smoke`: run `smoke.smoke_plan(plan)` instead (every distinct configuration, one seed, a
    few optimizer steps; no sequential seeding) into a folder that holds only smoke runs."""
    out = study_folder(out)
    if ray is not None:
        return _run_study_ray(spec, out, tasks, seeds, overrides, workers, fresh, quiet,
                              progress, ray, ray_cpus, ray_gpus, smoke)
    if ray_cpus is not None or ray_gpus is not None:
        raise UserError("--ray-cpus and --ray-gpus need --ray ADDRESS")
    spec = load_spec(spec)
    workers = spec.get("workers", 1) if workers is None else workers
    if workers < 1:
        raise UserError("--workers must be >= 1")
    plan = _plan(spec, out, tasks, seeds, overrides, smoke)  # before touching the folder
    prepare_dir(out, fresh)
    store = _open_store(out, smoke)
    try:
        return _run_rounds(plan, store, out, tasks, overrides, quiet, seeds is None and not smoke,
                           lambda p: _run_plan(p, store, out, workers, quiet, progress))
    finally:
        store.close()


def _plan(spec: dict, out: Path, tasks, seeds, overrides, smoke: bool) -> Plan:
    plan = expand(spec, out, tasks, seeds, overrides)
    if not smoke:
        return plan
    from .smoke import smoke_plan
    return smoke_plan(plan)


def _open_store(out: Path, smoke: bool) -> Store:
    """The study's store, refused when it holds the other kind (smoke vs real) of runs."""
    from .smoke import check_folder_kind
    store = Store(out, create=True)
    try:
        check_folder_kind(store.studies(), smoke, out)
    except UserError:
        store.close()
        raise
    return store


def _run_rounds(plan: Plan, store: Store, out: Path, tasks, overrides, quiet: bool,
                sequential: bool, run_plan) -> Outcome:
    """`run_plan(plan)`, then the rounds of sequential seeding the spec asks for (if any, and
    unless `--seeds` chose the seeds): more seeds for the settings of comparisons still
    inconclusive (`study.sequential`)."""
    outcome = run_plan(plan)
    seq = sequential_of(plan.spec) if sequential else None
    if seq is None:
        return outcome
    from .report.render import decide
    n_round = 0
    while outcome.ok:
        extra = next_round(plan.spec, out, decide(out), store.runs(), seq, tasks, overrides)
        if extra is None:
            break
        n_round += 1
        if not quiet:
            print(f"sequential seeding, round {n_round}: {len(extra.runs)} more run(s) for "
                  f"comparisons still inconclusive", file=sys.stderr, flush=True)
        more = run_plan(extra)    # a round holds only runs not done yet: totals add up
        outcome = Outcome(outcome.total + more.total, outcome.done + more.done,
                          outcome.failed + more.failed, outcome.skipped + more.skipped,
                          outcome.seconds + more.seconds)
    return outcome


def _run_study_ray(spec, out, tasks, seeds, overrides, workers, fresh, quiet, progress,
                   address, cpus, gpus, smoke: bool = False) -> Outcome:
    """`run_study` on a Ray cluster. The spec's `workers` key (a local process count) is not
    used; the driver (this process) alone writes the store, as with local workers."""
    from . import cluster
    cluster.import_ray()                               # the missing-extra error comes first
    if workers is not None and workers < 1:
        raise UserError("--workers must be >= 1")
    spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    plan = _plan(spec, out, tasks, seeds, overrides, smoke)  # before connecting or touching it
    pool = cluster.RayPool(address, 1.0 if cpus is None else cpus,
                           0.0 if gpus is None else gpus, quiet=quiet)
    try:
        workers = pool.slots() if workers is None else workers
        prepare_dir(out, fresh)
        warnings = pool.check_folder(out)
        store = _open_store(out, smoke)
        try:
            notes = [pool.describe()] + warnings
            return _run_rounds(plan, store, out, tasks, overrides, quiet,
                               seeds is None and not smoke,
                               lambda p: _run_plan(p, store, out, workers, quiet, progress,
                                                   runner=pool, notes=notes))
        finally:
            store.close()
    finally:
        pool.close()


def _run_plan(plan: Plan, store: Store, out: Path, workers: int, quiet: bool,
              progress: bool, runner=None, notes: Optional[list[str]] = None) -> Outcome:
    started = time.time()
    _register(plan, store, out)
    reclaimed = store.reclaim_stale()
    statuses = store.statuses()
    already = sum(statuses.get(r.id) == "done" for r in plan.runs)
    console = _Console(len(plan.runs), already, plan.name, quiet)
    workers = min(workers, max(1, len(plan.runs) - already))
    console.line(f"study '{plan.name}': {len(plan.runs)} runs in {out} ({already} done, "
                 f"{len(plan.runs) - already} to run" +
                 (f", {len(reclaimed)} interrupted run(s) resumed" if reclaimed else "") +
                 (f"; {workers} worker(s))" if runner is None else
                  f"; {workers} run(s) at a time)"))
    for note in (notes or []) + plan.notes:
        console.line(f"note: {note}")
    owned = runner is None     # a runner handed in (Ray) is closed by whoever made it
    if owned:   # smoke runs: a fresh process each, so that each peak memory is its own
        fresh = bool(plan.spec.get("smoke"))
        runner = _InProcess(progress and not quiet) if workers == 1 and not fresh else \
            WorkerPool(workers, max(1, available_cores() // workers), one_run_each=fresh)
    loop = _Loop(plan, store, out, workers, runner, console, close_runner=owned)
    loop.run()
    final = store.statuses()
    done = sum(final.get(r.id) == "done" for r in plan.runs)
    return Outcome(len(plan.runs), done, loop.failed, already, time.time() - started)


def _register(plan: Plan, store: Store, out: Path) -> None:
    from .consistency import check_unchanged
    check_unchanged(plan, store.members(), {r["id"]: r["config"] for r in store.runs()}, out)
    store.register({"name": plan.name, "description": plan.description,
                    "experiment": plan.experiment, "spec": plan.spec},
                   [{"id": r.id, "task": r.task, "seed": r.seed, "config": r.config.to_dict(),
                     "axes": r.axes, "run_dir": os.path.relpath(r.run_dir, out),
                     "members": r.members} for r in plan.runs])


class _Loop:
    """Claims the plan's runs one by one, hands them to the runner (in-process, a pool or Ray),
    and records each result in the store as it arrives. Runs of one alignment group wait until
    the first of them has filled the shared embedder cache."""

    def __init__(self, plan: Plan, store: Store, out: Path, workers: int, runner, console,
                 close_runner: bool = True):
        self.plan, self.store, self.out, self.workers = plan, store, out, workers
        self.close_runner = close_runner
        self.runner, self.console = runner, console
        self.by_id = {r.id: r for r in plan.runs}
        self.token = process_token()
        self.failed: list = []
        self.attempted: set = set()
        self.in_flight: dict[str, PlannedRun] = {}
        self.groups_done: set = set()

    def run(self) -> None:
        previous = {}
        if sys.platform != "win32":
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while self._step():
                pass
        except KeyboardInterrupt:
            for run_id in list(self.in_flight):
                self.store.release(run_id)
            self.runner.terminate()
            self.console.close()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.close_runner:
            self.runner.close()
        self.console.close()

    def _step(self) -> bool:
        """Start what can start, collect what finished; False when nothing is left to do."""
        self._fill()
        if self.in_flight:
            for run_id, result in self.runner.wait():
                self._finish(run_id, result)
            return True
        # nothing to start here: wait for runs another process holds, if any
        self.store.reclaim_stale()
        current = self.store.statuses()
        others = [r for r in self.plan.runs if current.get(r.id) == "running"]
        if any(current.get(r.id) == "pending" and r.id not in self.attempted
               for r in self.plan.runs):
            return True
        if not others:
            return False
        self.console.line(f"waiting for {len(others)} run(s) held by another process ...")
        time.sleep(5.0)
        return True

    def _fill(self) -> None:
        while len(self.in_flight) < self.workers:
            run = self._next_run()
            if run is None:
                return
            self.in_flight[run.id] = run
            self.runner.submit(run.id, self._job(run))
            if self.workers > 1:
                self.console.running([r.describe() for r in self.in_flight.values()],
                                     run.describe())

    def _job(self, run: PlannedRun) -> dict:
        return {"id": run.id, "config": run.config, "run_dir": str(run.run_dir),
                "log": str(self.out / "logs" / f"{run.id}.log"), "describe": run.describe(),
                "progress": self.runner.progress}

    def _next_run(self) -> Optional[PlannedRun]:
        busy_groups = {r.align_group() for r in self.in_flight.values()} - {None}
        current = self.store.statuses()
        for run in self.plan.runs:
            if run.id in self.attempted or current.get(run.id) not in ("pending", "failed"):
                continue
            group = run.align_group()
            if group in busy_groups and group not in self.groups_done:
                continue  # let the first run of this alignment fill the cache
            if self.store.claim(run.id, self.token):
                self.attempted.add(run.id)
                return run
        return None

    def _finish(self, run_id: str, result: dict) -> None:
        run = self.by_id[run_id]
        self.in_flight.pop(run_id, None)
        result["run_dir"] = os.path.relpath(run.run_dir, self.out)
        self.store.record(run_id, result)
        if result["status"] == "done":
            if run.align_group():
                self.groups_done.add(run.align_group())
            s = Summary.from_dict(result["summary"])
            msg = (f"done {run.describe()}: test {s.metric} {_fmt(s.test_metric_best)} "
                   f"({result['seconds']:.0f}s)")
        else:
            self.failed.append((run, result.get("error")))
            msg = f"FAILED {run.describe()}: {result.get('error')}"
        self.console.advance(msg)
        if self.workers > 1:
            self.console.running([r.describe() for r in self.in_flight.values()])


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class _InProcess:
    def __init__(self, progress: bool):
        self.progress = progress
        self.queue: list = []

    def submit(self, run_id: str, job: dict) -> None:
        self.queue.append((run_id, job))

    def wait(self):
        run_id, job = self.queue.pop(0)
        yield run_id, execute(job)

    def terminate(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        pass
