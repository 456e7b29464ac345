"""Smoke mode (`xmodal study run SPEC --smoke`): proof that every configuration of a study runs,
and what one optimizer step of each costs, before the study is run for real.

`smoke_plan(plan)` keeps the first seed and turns each planned run into its smoke run: the same
task, body architecture, token count, image size, batch size, fine-tune mode, proxy and stage-2
objective, with
- `SMOKE_STEPS` optimizer steps (one epoch of `SMOKE_STEPS` batches, `train.accumulate` 1: a
  step of the real run is `accumulate` of these; `smoke_table` multiplies it back);
- `EVAL_SAMPLES` validation and test samples;
- at most one embedder epoch on `ALIGN_MAXSAMPLES` samples per class and `ALIGN_SOURCE` proxy
  samples (a run that fine-tunes from embedder epoch 0 keeps that);
- random body weights (the architecture ships with xmodal, nothing is downloaded; loading
  pre-trained weights is what a smoke run does not check) and no checkpoint file.
Planned runs that become the same smoke run (e.g. fine-tuning from embedder epochs 5 and 60, or
a pre-trained and a random-init body) are run once; the plan's notes say which.

Each smoke run's `summary.json` records `step_seconds` and `peak_memory`
(`stages.training`, `stages.memory`); `smoke_table` reads them back for the report and
`--dry-run --smoke-from DIR`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from ..config import Config, config_hash
from ..config.derived import aligns
from ..config.identity import run_id
from ..errors import UserError
from .plan import Plan, PlannedRun

SMOKE_STEPS = 2
EVAL_SAMPLES = 8
ALIGN_MAXSAMPLES = 4
ALIGN_SOURCE = 100
CARDS_GB = (24, 40, 80)


def smoke_config(cfg: Config, n_train: int) -> tuple[Config, dict]:
    """(the smoke run of `cfg`, the real values it cut: accumulate, batch size, epochs,
    embedder epochs, whether the body was pre-trained). `n_train`: the real run's training
    set size, which sets its automatic batch size (`stages.optim.resolve_budget`)."""
    from ..stages.optim import resolve_budget
    tc, task, align = cfg.train, cfg.task, cfg.align
    budget = resolve_budget(tc, n_train)
    real = {"accumulate": tc.accumulate, "batch_size": budget.batch_size,
            "epochs": budget.epochs, "align_epochs": align.epochs if aligns(cfg) else 0,
            "pretrained": cfg.body.pretrained}
    train = dataclasses.replace(tc, epochs=1, accumulate=1, batch_size=budget.batch_size,
                                warmup_epochs=0.0)
    task = dataclasses.replace(task, max_train=budget.batch_size * SMOKE_STEPS,
                               max_val=EVAL_SAMPLES, max_test=EVAL_SAMPLES)
    if aligns(cfg):
        from_epoch = 0 if align.from_epoch == 0 else None
        align = dataclasses.replace(align, epochs=1, from_epoch=from_epoch,
                                    maxsamples=min(align.maxsamples, ALIGN_MAXSAMPLES),
                                    n_source=min(align.n_source, ALIGN_SOURCE))
    body = dataclasses.replace(cfg.body, pretrained=False)
    run = dataclasses.replace(cfg.run, save_checkpoint=False)
    return dataclasses.replace(cfg, task=task, train=train, align=align, body=body,
                               run=run), real


def train_size(cfg: Config) -> int:
    """The real run's training set size: the task's published size (NAS-Bench-360), else
    what its files hold (loaded once here), capped by `task.max_train`."""
    from ..data.registry import REGISTRY, load_task
    entry = REGISTRY.get(cfg.task.name)
    sizes = entry.spec.published_sizes if entry is not None else ()
    n = sizes[0] if sizes else len(load_task(cfg.task).x_train)
    return n if cfg.task.max_train is None else min(n, cfg.task.max_train)


def _smoke_of(cfg: Config, sizes: dict) -> tuple[Config, dict]:
    """`smoke_config` with the training set sizes looked up once per task (`sizes`)."""
    key = (cfg.task.name, cfg.task.data_dir, cfg.task.max_train)
    if key not in sizes:
        sizes[key] = train_size(cfg)
    return smoke_config(cfg, sizes[key])


def smoke_plan(plan: Plan) -> Plan:
    """The smoke runs of `plan` (first seed, each distinct smoke configuration once)."""
    seed = plan.runs[0].seed
    runs: dict[str, PlannedRun] = {}
    merged: dict[str, list[str]] = {}
    sizes: dict[tuple, int] = {}
    for run in plan.runs:
        if run.seed != seed:
            continue
        if run.config.baseline.method != "none":
            cfg, real = run.config, {}
        else:
            cfg, real = _smoke_of(run.config, sizes)
        rid = config_hash(cfg)
        members = [(p, e, {**labels, "smoke": real}) for p, e, labels in run.members]
        if rid in runs:
            kept = runs[rid]
            parts = {m[0] for m in kept.members}
            kept.members += [m for m in members if m[0] not in parts]
            merged.setdefault(rid, []).append(run.describe())
            continue
        runs[rid] = PlannedRun(rid, cfg, run.task, run.seed, run.axes,
                               run.run_dir.parent / run_id(cfg), members)
    notes = [f"smoke: {len(runs)} distinct smoke run(s) for the {len(plan.runs)} planned "
             f"(seed {seed} only; {SMOKE_STEPS} optimizer steps each, random body weights)"]
    for rid, same in merged.items():
        notes.append(f"smoke: {runs[rid].describe()} also stands for {'; '.join(same)} "
                     f"(they differ only in what smoke mode cuts)")
    spec = {**plan.spec, "smoke": {"steps": SMOKE_STEPS, "eval_samples": EVAL_SAMPLES,
                                   "seed": seed}}
    return Plan(plan.name, plan.description, plan.experiment, spec, list(runs.values()),
                [*plan.notes, *notes])


def is_smoke(studies: list[dict]) -> bool:
    """Whether a study store holds smoke runs (`studies` rows of `Store.studies()`)."""
    return any(_spec_of(s).get("smoke") for s in studies)


def _spec_of(study: dict) -> dict:
    spec = study.get("spec") or {}
    return json.loads(spec) if isinstance(spec, str) else spec


def check_folder_kind(studies: list[dict], smoke: bool, folder) -> None:
    """A study folder holds either smoke runs or real ones, never both."""
    if studies and is_smoke(studies) != smoke:
        held = "smoke runs" if not smoke else "a real (not --smoke) study"
        raise UserError(f"study folder '{folder}' holds {held}; "
                        f"{'--smoke' if smoke else 'a real study'} needs a folder of its own: "
                        f"pick another --out")



def smoke_rows(runs: list[dict], members: list[dict], finals: dict) -> list[dict]:
    """One row per smoke run of a store (`Store.runs()`, `members()`, `finals()`): what it
    was and what it measured, with the real run's seconds per step (x `accumulate`)."""
    labels: dict[str, list[str]] = {}
    real: dict[str, dict] = {}
    for m in members:
        lab = m["labels"].get("label") or "-"
        labels.setdefault(m["run_id"], []).append(f"{m['part']}: {lab}")
        real.setdefault(m["run_id"], m["labels"].get("smoke") or {})
    rows = []
    for r in runs:
        summary = (finals.get(r["id"]) or {}).get("summary") or {}
        cfg = r["config"]
        if cfg["baseline"]["method"] != "none":
            continue
        step = summary.get("step_seconds")
        acc = (real.get(r["id"]) or {}).get("accumulate") or 1
        peak = (summary.get("peak_memory") or {}).get("bytes")
        params = summary.get("parameters") or {}
        rows.append({"id": r["id"], "task": r["task"], "body": cfg["body"]["name"],
                     "settings": list(dict.fromkeys(labels.get(r["id"], []))),
                     "finetune": cfg["train"]["finetune"], "batch_size": cfg["train"]["batch_size"],
                     "accumulate": acc, "status": r["status"], "error": r.get("error"),
                     "trainable": params.get("trainable"), "step_seconds": step,
                     "real_step_seconds": None if step is None else step * acc,
                     "peak_bytes": peak,
                     "peak_how": (summary.get("peak_memory") or {}).get("how"),
                     "seconds": r.get("seconds")})
    return rows


def fits(peak_bytes: Optional[int]) -> str:
    """The smallest of 24/40/80 GB cards the measured peak fits, with 20% headroom."""
    if peak_bytes is None:
        return "?"
    for gb in CARDS_GB:
        if peak_bytes * 1.2 <= gb * 1e9:
            return f"{gb} GB"
    return f"> {CARDS_GB[-1]} GB"


def smoke_key(cfg: Config) -> str:
    """What pairs a smoke run with the real runs it stands for: its configuration without the
    seed and the data and proxy folders (a smoke run reads fixtures, the real run real files)."""
    task = dataclasses.replace(cfg.task, data_dir=None)
    align = dataclasses.replace(cfg.align, proxy_dir=None)
    run = dataclasses.replace(cfg.run, seed=0)
    return config_hash(dataclasses.replace(cfg, task=task, align=align, run=run))


def measured(plan: Plan, folder) -> dict[str, dict]:
    """{planned run id: its smoke row} from the smoke study in `folder` (`--smoke-from`)."""
    from pathlib import Path
    from ..config import from_dict
    from .store import DB_NAME, Store
    folder = Path(folder).expanduser()
    if not (folder / DB_NAME).is_file():
        raise UserError(f"--smoke-from '{folder}': no {DB_NAME} there; run `xmodal study run "
                        f"{plan.name} --smoke --out {folder}` first")
    with Store(folder) as store:
        studies = store.studies()
        if not is_smoke(studies):
            raise UserError(f"--smoke-from '{folder}' holds a real study, not smoke runs")
        rows = smoke_rows(store.runs(), store.members(), store.finals())
        configs = {r["id"]: r["config"] for r in store.runs()}
    by_key = {smoke_key(from_dict(configs[row["id"]])): row for row in rows}
    sizes: dict[tuple, int] = {}
    out = {}
    for run in plan.runs:
        if run.config.baseline.method != "none":
            continue
        row = by_key.get(smoke_key(_smoke_of(run.config, sizes)[0]))
        if row is not None:
            out[run.id] = row
    return out
