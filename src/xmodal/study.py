"""Studies: a grid of runs from one YAML spec, run resumably into a study folder.

A study spec (see docs/studies.md) names a `base` config, `tasks`, `seeds`, and either one
experiment (`experiment`, `variants`, `axes`) or several `parts`, each its own experiment.
`expand` turns it into runs: tasks x variants x axes-grid x seeds, each a resolved `Config`
whose id is `config_hash(config)`. Identical configurations (e.g. ORCA's default setting, which
is RQ1's "text" proxy and RQ3's "all / trained embedder") are run once and belong to several
experiments.

`run_study` records the plan in the study's SQLite store (`store.py`) and works through it:
done runs are skipped, interrupted ones (status running, owner process gone) are resumed
(`fit` continues from `resume.pt`), failed ones are retried once per invocation. Runs go
in-process (`--workers 1`) or in N spawned processes, each with cores // N torch threads; only
the main process writes to the store. With `--ray ADDRESS` the runs go to a Ray cluster
instead (`cluster.RayPool`); the driver still alone writes the store and schedules the runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from .config import (Config, config_hash, flatten, from_dict, parse_override, parse_yaml,
                     read_text_file, set_dotted)
from .errors import UserError
from .store import DB_NAME, Store, is_store, process_token

EXPERIMENTS = ("proxy", "align-epochs", "freezing", "pretraining", "custom")
SPEC_KEYS = {"name", "description", "experiment", "base", "tasks", "seeds", "axes", "variants",
             "parts", "set", "notes", "workers"}
PART_KEYS = {"name", "experiment", "description", "tasks", "seeds", "axes", "variants", "set"}
VARIANT_KEYS = {"label", "set", "tags", "if_body"}
TASK_KEYS = {"name", "set", "tags"}
# Config keys the runner owns: a spec may not set them (they would only move files around).
RUNNER_KEYS = ("run.out", "run.name", "align.cache_dir")


# ----------------------------------------------------------------------------- spec loading

def builtin_dir():
    return resources.files("xmodal") / "studies"


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path | dict) -> dict:
    """A study spec from a built-in name, a YAML path, or a dict (validated)."""
    if isinstance(name_or_path, dict):
        spec = copy.deepcopy(name_or_path)
        origin = "<dict>"
    else:
        text, origin = _spec_text(str(name_or_path))
        spec = parse_yaml(text, f"study spec '{origin}'") or {}
    if not isinstance(spec, dict):
        raise UserError(f"study spec '{origin}' must hold a mapping at the top level")
    validate_spec(spec, origin)
    return spec


def _spec_text(arg: str) -> tuple[str, str]:
    path = Path(arg).expanduser()
    if path.is_file():
        return read_text_file(path, "study spec"), str(path)
    names = builtin_names()
    if arg in names:
        return (builtin_dir() / f"{arg}.yaml").read_text(), f"built-in '{arg}'"
    if arg.endswith((".yaml", ".yml")) or "/" in arg:
        raise UserError(f"study spec file '{arg}' does not exist")
    import difflib
    close = difflib.get_close_matches(arg, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown study '{arg}': {hint}built-in studies are {', '.join(names)} "
                    f"(or pass a YAML file)")


def validate_spec(spec: dict, origin: str = "spec") -> None:
    def fail(msg: str):
        raise UserError(f"study spec {origin}: {msg}")

    _check_keys(spec, SPEC_KEYS, "top level", fail)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        fail("needs a 'name' (string)")
    if "parts" in spec:
        if any(k in spec for k in ("experiment", "variants", "axes")):
            fail("give either 'parts' or 'experiment'/'variants'/'axes', not both")
        parts = spec["parts"]
        if not isinstance(parts, list) or not parts:
            fail("'parts' must be a non-empty list")
        names = [p.get("name") if isinstance(p, dict) else None for p in parts]
        if len(set(names)) != len(names) or None in names:
            fail("every part needs a distinct 'name'")
        for part in parts:
            _check_keys(part, PART_KEYS, f"part '{part['name']}'", fail)
            _validate_part(part, f"part '{part['name']}'", fail)
    else:
        _validate_part(spec, "top level", fail)
    if not isinstance(spec.get("base", {}), dict):
        fail("'base' must be a mapping (a config tree)")
    _check_tasks(spec.get("tasks"), "top level", fail, required="parts" not in spec or any(
        "tasks" not in p for p in spec["parts"]))
    _check_seeds(spec.get("seeds"), "top level", fail)
    workers = spec.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        fail("'workers' (the default for --workers) must be an integer >= 1")


def _validate_part(part: dict, where: str, fail) -> None:
    exp = part.get("experiment", "custom")
    if exp not in EXPERIMENTS:
        fail(f"{where}: experiment must be one of {', '.join(EXPERIMENTS)}; got {exp!r}")
    axes = part.get("axes", {}) or {}
    if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
        fail(f"{where}: 'axes' must map config keys to non-empty lists of values")
    variants = part.get("variants", []) or []
    if not isinstance(variants, list):
        fail(f"{where}: 'variants' must be a list of {{label, set}} mappings")
    labels = []
    for v in variants:
        if not isinstance(v, dict) or "label" not in v:
            fail(f"{where}: every variant needs a 'label' (got {v!r})")
        _check_keys(v, VARIANT_KEYS, f"{where}, variant '{v['label']}'", fail)
        if not isinstance(v.get("set", {}) or {}, dict):
            fail(f"{where}, variant '{v['label']}': 'set' must be a mapping of config keys")
        if v.get("if_body") not in (None, "text", "vision"):
            fail(f"{where}, variant '{v['label']}': if_body must be text or vision")
        labels.append(str(v["label"]))
    if len(set(labels)) != len(labels):
        fail(f"{where}: variant labels must be distinct")
    if "set" in part and not isinstance(part["set"], dict):
        fail(f"{where}: 'set' must be a mapping of config keys")
    if "tasks" in part:
        _check_tasks(part["tasks"], where, fail, required=True)
    _check_seeds(part.get("seeds"), where, fail)


def _check_keys(obj, allowed: set, where: str, fail) -> None:
    if not isinstance(obj, dict):
        fail(f"{where} must be a mapping")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        import difflib
        hints = [f"'{k}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(
            k, sorted(allowed), n=1)) else "") for k in unknown]
        fail(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")


def _check_tasks(tasks, where: str, fail, required: bool) -> None:
    if tasks is None:
        if required:
            fail(f"{where}: needs 'tasks' (a list of task names or {{name, set}} mappings)")
        return
    if not isinstance(tasks, list) or not tasks:
        fail(f"{where}: 'tasks' must be a non-empty list")
    for t in tasks:
        if isinstance(t, str):
            continue
        if not isinstance(t, dict) or "name" not in t:
            fail(f"{where}: a task entry must be a name or a mapping with 'name' (got {t!r})")
        _check_keys(t, TASK_KEYS, f"{where}, task '{t['name']}'", fail)


def _check_seeds(seeds, where: str, fail) -> None:
    if seeds is None:
        return
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        fail(f"{where}: 'seeds' must be a non-empty list of integers")


# ----------------------------------------------------------------------------- expansion

@dataclass
class PlannedRun:
    id: str
    config: Config
    task: str
    seed: int
    axes: dict
    run_dir: Path
    members: list = field(default_factory=list)   # [(part, experiment, labels)]

    def align_group(self) -> Optional[str]:
        """Runs with the same key share one trained embedder (align.cache_dir)."""
        cfg = self.config
        if cfg.align.proxy == "none" or cfg.align.epochs == 0:
            return None
        try:
            from .align import alignment_key
            return alignment_key(cfg)
        except Exception:  # noqa: BLE001 - an approximation is enough for scheduling
            flat = flatten(cfg.to_dict())
            keep = {k: v for k, v in flat.items()
                    if k.split(".")[0] in ("task", "body", "embedder", "align")
                    and k not in ("align.from_epoch", "align.cache_dir")}
            keep["run.seed"], keep["train.lr"] = cfg.run.seed, cfg.train.lr
            return json.dumps(keep, sort_keys=True, default=str)

    def describe(self) -> str:
        labels = [m[2].get("label") for m in self.members if m[2].get("label")]
        parts = sorted({m[0] for m in self.members})
        what = ", ".join(dict.fromkeys(labels)) or "-"
        return f"{self.task} [{'/'.join(parts)}: {what}] seed {self.seed}"


@dataclass
class Plan:
    name: str
    description: str
    experiment: str
    spec: dict
    runs: list
    notes: list

    def parts(self) -> list[str]:
        return list(dict.fromkeys(m[0] for r in self.runs for m in r.members))


def _parts(spec: dict) -> list[dict]:
    if "parts" in spec:
        return spec["parts"]
    return [{k: spec[k] for k in ("experiment", "variants", "axes") if k in spec}
            | {"name": spec.get("experiment", "custom")}]


def _task_entries(entries: list, pick: Optional[list[str]]) -> list[dict]:
    norm = [{"name": e} if isinstance(e, str) else dict(e) for e in entries]
    if pick is None:
        return norm
    by_name = {e["name"]: e for e in norm}
    return [by_name.get(name, {"name": name}) for name in pick]


def _apply(tree: dict, mapping: Optional[dict], prefix: str = "") -> None:
    """Apply {dotted or nested key: value} to a config tree."""
    for key, value in (mapping or {}).items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and not full.endswith("options"):
            _apply(tree, value, f"{full}.")
        else:
            if full in RUNNER_KEYS:
                raise UserError(f"config key '{full}' is set by the study runner; "
                                f"use --out DIR to choose where runs go")
            set_dotted(tree, full, copy.deepcopy(value))


def _flat_set(mapping: Optional[dict], prefix: str = "") -> dict:
    out = {}
    for key, value in (mapping or {}).items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and not full.endswith("options"):
            out.update(_flat_set(value, f"{full}."))
        else:
            out[full] = value
    return out


_FAMILY_CACHE: dict[str, str] = {}


def body_family(name: str) -> str:
    """'text' or 'vision' for a body name, without loading weights."""
    if name in _FAMILY_CACHE:
        return _FAMILY_CACHE[name]
    family = None
    try:
        from . import bodies
        if name in bodies.RANDOM_CONFIGS:
            mt = bodies.RANDOM_CONFIGS[name]["model_type"]
        elif name == "minilm":
            mt = "bert"
        else:
            from transformers import AutoConfig
            mt = AutoConfig.from_pretrained(bodies.resolve_source(name)).model_type
        family = "vision" if mt in bodies.VISION_TYPES else "text"
    except Exception:  # noqa: BLE001 - offline / unknown: fall back to the name
        low = name.lower()
        family = "vision" if any(k in low for k in ("vit", "swin", "deit", "beit", "image")) \
            else "text"
    _FAMILY_CACHE[name] = family
    return family


def expand(spec: dict, out: str | Path, tasks: Optional[list[str]] = None,
           seeds: Optional[list[int]] = None, overrides: Optional[list[str]] = None) -> Plan:
    """All runs of a study: parts x tasks x variants x axes grid x seeds, deduplicated by id.

    Precedence (later wins): defaults < base < part `set` < task `set` < --set overrides <
    variant `set` < axis values. The runner then sets task.name, run.seed, run.out and
    align.cache_dir."""
    spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    cli = [parse_override(item) for item in (overrides or [])]
    for key, _ in cli:
        if key in RUNNER_KEYS:
            raise UserError(f"config key '{key}' is set by the study runner; use --out DIR")
    runs: dict[str, PlannedRun] = {}
    notes: list[str] = []
    order: list[tuple] = []
    parts = _parts(spec)
    for p_idx, part in enumerate(parts):
        experiment = part.get("experiment", "custom")
        part_tasks = _task_entries(part.get("tasks", spec.get("tasks") or []), tasks)
        part_seeds = list(seeds) if seeds else list(part.get("seeds") or spec.get("seeds") or [0])
        variants = part.get("variants") or [None]
        axes = part.get("axes") or {}
        grid = list(itertools.product(*axes.values())) if axes else [()]
        for t_idx, task in enumerate(part_tasks):
            for v_idx, variant in enumerate(variants):
                for g_idx, values in enumerate(grid):
                    for seed in part_seeds:
                        tree = copy.deepcopy(spec.get("base") or {})
                        _apply(tree, {"task.name": task["name"]})
                        _apply(tree, spec.get("set"))
                        if "parts" in spec:
                            _apply(tree, part.get("set"))
                        _apply(tree, task.get("set"))
                        for key, value in cli:
                            _apply(tree, {key: value})
                        body = (tree.get("body") or {}).get("name", "minilm")
                        if variant and variant.get("if_body") and \
                                body_family(body) != variant["if_body"]:
                            continue
                        _apply(tree, (variant or {}).get("set"))
                        axis_vals = dict(zip(axes.keys(), values))
                        _apply(tree, axis_vals)
                        _apply(tree, {"run.seed": seed})
                        where = (f"study '{spec['name']}', part '{part['name']}', task "
                                 f"'{task['name']}'" + (f", variant '{variant['label']}'"
                                                        if variant else ""))
                        cfg = _resolve(tree, out, where)
                        if cfg is None:
                            notes.append(f"{where}{_axis_text(axis_vals)}: skipped "
                                         f"(align.from_epoch > align.epochs)")
                            continue
                        rid = config_hash(cfg)
                        varied = {"task.name": task["name"], "run.seed": seed,
                                  **_flat_set(task.get("set")),
                                  **_flat_set((variant or {}).get("set")), **axis_vals}
                        label = " / ".join(([str(variant["label"])] if variant else []) +
                                           [str(v) for v in axis_vals.values()]) or None
                        labels = {"label": label, "variant": variant["label"] if variant else None,
                                  **(task.get("tags") or {}), **((variant or {}).get("tags") or {}),
                                  "axes": axis_vals, "task": task["name"], "seed": seed}
                        member = (part["name"], experiment, labels)
                        if rid not in runs:
                            from .fit import run_id as folder_name
                            runs[rid] = PlannedRun(rid, cfg, task["name"], seed, varied,
                                                   out / "runs" / folder_name(cfg))
                            order.append((part_seeds.index(seed), p_idx, t_idx, v_idx, g_idx, rid))
                        else:
                            runs[rid].axes = {**runs[rid].axes, **varied}
                        if not any(m[0] == part["name"] for m in runs[rid].members):
                            runs[rid].members.append(member)
    ordered = [runs[o[-1]] for o in sorted(order, key=lambda o: o[:-1])]
    if not ordered:
        raise UserError(f"study '{spec['name']}' expands to no runs (check tasks, seeds, "
                        f"variants' if_body and align.from_epoch values)")
    return Plan(spec["name"], spec.get("description", ""),
                "multi" if "parts" in spec else spec.get("experiment", "custom"), spec, ordered,
                notes)


def _axis_text(values: dict) -> str:
    return "".join(f", {k}={v}" for k, v in values.items())


def _resolve(tree: dict, out: Path, where: str) -> Optional[Config]:
    """Build the Config; canonicalise align.from_epoch so equal computations share an id."""
    tree = copy.deepcopy(tree)
    set_dotted(tree, "run.out", str(out / "runs"))
    set_dotted(tree, "align.cache_dir", str(out / "align-cache"))
    try:
        cfg = from_dict(tree)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    aligned = cfg.align.proxy != "none" and cfg.align.epochs > 0
    if cfg.align.from_epoch is not None:
        if not aligned or cfg.align.from_epoch == cfg.align.epochs:
            cfg.align.from_epoch = None       # "last epoch" (or no alignment at all)
        elif cfg.align.from_epoch > cfg.align.epochs:
            return None
        elif cfg.align.from_epoch < 0:
            raise UserError(f"{where}: align.from_epoch must be >= 0")
    return cfg


# ----------------------------------------------------------------------------- running

def _execute(job: dict) -> dict:
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
            from .fit import fit
            res = fit(job["config"], progress=job["progress"], log=log,
                      run_dir=Path(job["run_dir"]))
            out = {"status": res.status, "summary": res.summary, "history": res.history,
                   "error": res.summary.get("error")}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed run must not stop the study
            tb = traceback.format_exc()
            log(tb)
            history = []
            try:
                from .artifacts import read_jsonl
                history = read_jsonl(Path(job["run_dir"]) / "metrics.jsonl")
            except Exception:  # noqa: BLE001
                pass
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            out = {"status": "failed", "summary": {}, "history": history,
                   "error": f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__,
                   "traceback": tb}
        out["seconds"] = time.time() - started
        why = f" ({out['error']})" if out.get("error") else ""
        log(f"end {job['id']}: {out['status']}{why}")
    return out


def _worker_init(threads: int) -> None:
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
                  (f"; ETA {_fmt_seconds(eta)}" if left and math.isfinite(eta) else ""))

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


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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
              ray_cpus: Optional[float] = None, ray_gpus: Optional[float] = None) -> Outcome:
    """Run (or resume) a study into folder `out`. Returns an `Outcome`; never raises for
    failed runs (they are stored as failed). `workers` None: the spec's `workers` (else 1).

    `ray`: run on a Ray cluster instead (`cluster.RayPool`; address auto, HOST:PORT,
    ray://HOST:PORT or local), `ray_cpus` / `ray_gpus` (default 1 / 0) per run; `workers` is
    then the number of runs in flight (None: as many as the cluster holds at once)."""
    if ray is not None:
        return _run_study_ray(spec, out, tasks, seeds, overrides, workers, fresh, quiet,
                              progress, ray, ray_cpus, ray_gpus)
    if ray_cpus is not None or ray_gpus is not None:
        raise UserError("--ray-cpus and --ray-gpus need --ray ADDRESS")
    spec = load_spec(spec)
    workers = spec.get("workers", 1) if workers is None else workers
    if workers < 1:
        raise UserError("--workers must be >= 1")
    out = Path(out).expanduser().resolve()
    plan = expand(spec, out, tasks, seeds, overrides)  # before touching the folder
    prepare_dir(out, fresh)
    store = Store(out, create=True)
    try:
        return _run_plan(plan, store, out, workers, quiet, progress)
    finally:
        store.close()


def _run_study_ray(spec, out, tasks, seeds, overrides, workers, fresh, quiet, progress,
                   address, cpus, gpus) -> Outcome:
    """`run_study` on a Ray cluster. The spec's `workers` key (a local process count) is not
    used; the driver (this process) alone writes the store, as with local workers."""
    from . import cluster
    cluster.import_ray()                               # the missing-extra error comes first
    if workers is not None and workers < 1:
        raise UserError("--workers must be >= 1")
    spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    plan = expand(spec, out, tasks, seeds, overrides)  # before connecting or touching the folder
    pool = cluster.RayPool(address, 1.0 if cpus is None else cpus,
                           0.0 if gpus is None else gpus, quiet=quiet)
    try:
        workers = pool.slots() if workers is None else workers
        prepare_dir(out, fresh)
        warnings = pool.check_folder(out)
        store = Store(out, create=True)
        try:
            return _run_plan(plan, store, out, workers, quiet, progress, runner=pool,
                             notes=[pool.describe()] + warnings)
        finally:
            store.close()
    finally:
        pool.close()


def _run_plan(plan: Plan, store: Store, out: Path, workers: int, quiet: bool,
              progress: bool, runner=None, notes: Optional[list[str]] = None) -> Outcome:
    started = time.time()
    store.register({"name": plan.name, "description": plan.description,
                    "experiment": plan.experiment, "spec": plan.spec},
                   [{"id": r.id, "task": r.task, "seed": r.seed, "config": r.config.to_dict(),
                     "axes": r.axes, "run_dir": os.path.relpath(r.run_dir, out),
                     "members": r.members} for r in plan.runs])
    reclaimed = store.reclaim_stale()
    statuses = store.statuses()
    by_id = {r.id: r for r in plan.runs}
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
    token = process_token()
    failed: list = []
    attempted: set = set()
    if runner is None:
        runner = _InProcess(progress and not quiet) if workers == 1 else \
            _Pool(workers, max(1, available_cores() // workers))
    in_flight: dict[str, PlannedRun] = {}
    groups_done: set = set()

    def job(run: PlannedRun) -> dict:
        return {"id": run.id, "config": run.config, "run_dir": str(run.run_dir),
                "log": str(out / "logs" / f"{run.id}.log"), "describe": run.describe(),
                "progress": runner.progress}

    def finish(run_id: str, result: dict) -> None:
        run = by_id[run_id]
        in_flight.pop(run_id, None)
        result["run_dir"] = os.path.relpath(run.run_dir, out)
        store.record(run_id, result)
        if result["status"] == "done":
            if run.align_group():
                groups_done.add(run.align_group())
            s = result["summary"]
            msg = (f"done {run.describe()}: test {s.get('metric')} "
                   f"{_fmt(s.get('test_metric_best'))} ({result['seconds']:.0f}s)")
        else:
            failed.append((run, result.get("error")))
            msg = f"FAILED {run.describe()}: {result.get('error')}"
        console.advance(msg)
        if workers > 1:
            console.running([r.describe() for r in in_flight.values()])

    def next_run() -> Optional[PlannedRun]:
        busy_groups = {r.align_group() for r in in_flight.values()} - {None}
        current = store.statuses()
        for run in plan.runs:
            if run.id in attempted or current.get(run.id) not in ("pending", "failed"):
                continue
            group = run.align_group()
            if group in busy_groups and group not in groups_done:
                continue  # let the first run of this alignment fill the cache
            if store.claim(run.id, token):
                attempted.add(run.id)
                return run
        return None

    previous = {}
    if sys.platform != "win32":
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            while len(in_flight) < workers:
                run = next_run()
                if run is None:
                    break
                in_flight[run.id] = run
                runner.submit(run.id, job(run))
                if workers > 1:
                    console.running([r.describe() for r in in_flight.values()], run.describe())
            if in_flight:
                for run_id, result in runner.wait():
                    finish(run_id, result)
                continue
            # nothing to start here: wait for runs another process holds, if any
            store.reclaim_stale()
            current = store.statuses()
            others = [r for r in plan.runs if current.get(r.id) == "running"]
            retry = [r for r in plan.runs if current.get(r.id) == "pending"
                     and r.id not in attempted]
            if retry:
                continue
            if not others:
                break
            console.line(f"waiting for {len(others)} run(s) held by another process ...")
            time.sleep(5.0)
    except KeyboardInterrupt:
        for run_id in list(in_flight):
            store.release(run_id)
        runner.terminate()
        console.close()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    runner.close()
    console.close()
    final = store.statuses()
    done = sum(final.get(r.id) == "done" for r in plan.runs)
    return Outcome(len(plan.runs), done, failed, already, time.time() - started)


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
        yield run_id, _execute(job)

    def terminate(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        pass


class _Pool:
    """N spawned worker processes (concurrent.futures). A worker that dies breaks the pool: the
    runs in flight at that moment are stored as failed (retried on the next invocation) and a
    new pool takes the remaining runs."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        self.progress = False
        self.futures: dict = {}
        self.pool = self._new()

    def _new(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(max_workers=self.workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(self.threads,))

    def submit(self, run_id: str, job: dict) -> None:
        from concurrent.futures.process import BrokenProcessPool
        try:
            self.futures[self.pool.submit(_execute, job)] = run_id
        except BrokenProcessPool:
            self.pool = self._new()
            self.futures[self.pool.submit(_execute, job)] = run_id

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


# ----------------------------------------------------------------------------- status / export

def status_text(folder: str | Path) -> tuple[str, int]:
    """Human-readable status of a study folder and the number of failed runs."""
    folder = Path(folder)
    with Store(folder) as store:
        stale = {r["id"] for r in store.runs("running")} - {
            r["id"] for r in store.runs("running") if _alive(r)}
        runs = store.runs()
        members = store.members()
        studies = store.studies()
    counts = {s: 0 for s in ("done", "running", "pending", "failed")}
    for r in runs:
        key = "pending" if r["id"] in stale else r["status"]
        counts[key] += 1
    lines = []
    for s in studies:
        desc = " ".join(str(s["description"] or "").split())
        lines.append(f"study {s['name']}" + (f": {desc}" if desc else ""))
    lines.append(f"{folder}: {len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if stale:
        lines.append(f"  {len(stale)} run(s) marked running belong to a process that is gone; "
                     f"they resume on the next `xmodal study run`")
    parts: dict = {}
    status_of = {r["id"]: ("pending" if r["id"] in stale else r["status"]) for r in runs}
    for m in members:
        parts.setdefault((m["part"], m["experiment"]), {}).setdefault(status_of[m["run_id"]], 0)
        parts[(m["part"], m["experiment"])][status_of[m["run_id"]]] += 1
    for (part, exp), c in parts.items():
        lines.append(f"  part {part} ({exp}): " +
                     ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
    label_of: dict = {}
    for m in members:
        label_of.setdefault(m["run_id"], []).append(m["labels"].get("label") or m["part"])
    running = [r for r in runs if r["status"] == "running" and r["id"] not in stale]
    for r in running:
        elapsed = time.time() - (r["started"] or time.time())
        lines.append(f"  running: {r['id']} {r['task']} seed {r['seed']} "
                     f"({', '.join(dict.fromkeys(label_of.get(r['id'], [])))}) for "
                     f"{_fmt_seconds(elapsed)}")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines.append("failed runs:")
        for r in failed:
            lines.append(f"  {r['id']} {r['task']} seed {r['seed']} "
                         f"({', '.join(dict.fromkeys(label_of.get(r['id'], [])))}): {r['error']}")
            if r["run_dir"]:
                lines.append(f"    log: {folder / 'logs' / (r['id'] + '.log')}")
    return "\n".join(lines), len(failed)


def _alive(run: dict) -> bool:
    from .store import token_alive
    return token_alive(run.get("owner"))


def export_csv(folder: str | Path, path: str | Path) -> Path:
    with Store(folder) as store:
        return store.export_csv(path)


# ----------------------------------------------------------------------------- CLI

def _split(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError("expected a comma-separated list")
    return items


def _seeds(value: Optional[str]) -> Optional[list[int]]:
    items = _split(value)
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{value}'") from None


def _check_task_names(names: Optional[list[str]]) -> None:
    if not names:
        return
    from .tasks import REGISTRY, _load_plugins
    _load_plugins()
    for name in names:
        if name.startswith("npz:") or name in REGISTRY:
            continue
        import difflib
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown task '{name}' in --tasks{hint} (see `xmodal tasks`)")


def list_text() -> str:
    lines = ["built-in studies (xmodal study run NAME --out DIR):"]
    for name in builtin_names():
        spec = load_spec(name)
        exp = ", ".join(p.get("experiment", "custom") for p in _parts(spec))
        desc = " ".join(str(spec.get("description", "")).split())
        tasks = ", ".join(t if isinstance(t, str) else t["name"] for t in spec.get("tasks", []))
        import textwrap
        body = textwrap.wrap(f"[{exp}] {desc}", 84) + textwrap.wrap(
            f"tasks: {tasks}; seeds: {', '.join(map(str, spec.get('seeds', [0])))}", 84)
        lines.append(f"  {name:<13} {body[0]}")
        lines += [f"  {'':<13} {line}" for line in body[1:]]
    lines.append("Options: --tasks a,b  --seeds 0,1  --set key=value  --workers N  "
                 "--ray ADDRESS. See docs/studies.md for the spec format.")
    return "\n".join(lines)


def cli(args) -> int:
    cmd = args.study_command
    if cmd == "list":
        print(list_text())
        return 0
    if cmd == "run":
        tasks = _split(args.tasks)
        _check_task_names(tasks)
        outcome = run_study(args.spec, args.out, tasks=tasks, seeds=_seeds(args.seeds),
                            overrides=list(args.set or []),
                            workers=getattr(args, "workers", None),
                            ray=getattr(args, "ray", None),
                            ray_cpus=getattr(args, "ray_cpus", None),
                            ray_gpus=getattr(args, "ray_gpus", None),
                            fresh=args.fresh, quiet=args.quiet, progress=not args.quiet)
        msg = (f"study finished: {outcome.done}/{outcome.total} runs done, "
               f"{len(outcome.failed)} failed, {_fmt_seconds(outcome.seconds)} "
               f"({outcome.skipped} were already done)")
        if not args.quiet:
            print(msg, file=sys.stderr)
        for run, err in outcome.failed:
            print(f"  failed: {run.id} {run.describe()}: {err}", file=sys.stderr)
        if outcome.failed:
            print(f"see `xmodal study status {args.out}`; re-running the same command retries "
                  f"failed runs", file=sys.stderr)
        return 0 if outcome.ok else 1
    if cmd == "status":
        text, n_failed = status_text(args.dir)
        print(text)
        return 0
    if cmd == "export":
        path = export_csv(args.dir, args.csv)
        print(f"wrote {path}")
        return 0
    raise UserError(f"unknown study command {cmd!r}")
