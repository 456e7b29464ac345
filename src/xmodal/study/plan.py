"""A study's plan: `expand(spec, out)` turns a validated spec into a `Plan` of runs: parts x
tasks x variants x axes grid x seeds, each a resolved `Config` whose id is `config_hash(config)`
and whose folder is `run_id(config)`. Identical configurations (e.g. ORCA's default setting,
which is RQ1's "text" proxy and RQ3's "all / trained embedder") are run once and belong to
several parts. Imports `config` and `data` only: no model, stage or run code.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import Config, config_hash, from_dict, parse_override, set_dotted
from ..config.bodies import body_family
from ..config.choices import BASELINES
from ..config.derived import aligns
from ..config.identity import alignment_key, run_id
from ..errors import UserError
from .spec import RUNNER_KEYS, _task_entries, load_spec, parts_of


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
        return alignment_key(self.config) if aligns(self.config) else None

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


def expand(spec: dict, out: str | Path, tasks: Optional[list[str]] = None,
           seeds: Optional[list[int]] = None, overrides: Optional[list[str]] = None) -> Plan:
    """All runs of a study: parts x tasks x variants x axes grid x seeds, deduplicated by id.

    Precedence (later wins): defaults < base < task preset (configs/NAME.yaml) < spec `set` <
    part `set` < task `set` < --set overrides < variant `set` < axis values. The runner then
    sets task.name, run.seed, run.out and align.cache_dir."""
    spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    cli = [parse_override(item) for item in (overrides or [])]
    for key, _ in cli:
        if key in RUNNER_KEYS:
            raise UserError(f"config key '{key}' is set by the study runner; use --out DIR")
    plan = _PlanBuilder(spec, out, cli)
    for p_idx, part in enumerate(parts_of(spec)):
        part_seeds = list(seeds) if seeds else list(part.get("seeds") or spec.get("seeds") or [0])
        axes = part.get("axes") or {}
        grid = list(itertools.product(*axes.values())) if axes else [()]
        part_tasks = _task_entries(part.get("tasks", spec.get("tasks") or []), tasks)
        for t_idx, task in enumerate(part_tasks):
            for (v_idx, variant), (g_idx, values), seed in itertools.product(
                    enumerate(_variants(part, task)), enumerate(grid), part_seeds):
                where = (part_seeds.index(seed), p_idx, t_idx, v_idx, g_idx)
                plan.add(part, task, variant, dict(zip(axes, values)), seed, where)
    ordered = [plan.runs[o[-1]] for o in sorted(plan.order, key=lambda o: o[:-1])]
    if not ordered:
        raise UserError(f"study '{spec['name']}' expands to no runs (check tasks, seeds, "
                        f"variants' if_body and align.from_epoch values)")
    return Plan(spec["name"], spec.get("description", ""),
                "multi" if "parts" in spec else spec.get("experiment", "custom"), spec, ordered,
                plan.notes)


def _variants(part: dict, task: dict) -> list:
    if part.get("experiment", "custom") == "baselines":
        return baseline_variants(part, task["name"])
    return part.get("variants") or [None]


class _PlanBuilder:
    """Collects the runs of a plan: one `PlannedRun` per distinct configuration, with one
    membership per part that asked for it."""

    def __init__(self, spec: dict, out: Path, cli: list):
        self.spec, self.out, self.cli = spec, out, cli
        self.runs: dict[str, PlannedRun] = {}
        self.notes: list[str] = []
        self.order: list[tuple] = []

    def tree(self, part: dict, task: dict) -> dict:
        """The config tree of a part and task, before variant and axis values."""
        tree = copy.deepcopy(self.spec.get("base") or {})
        _apply(tree, {"task.name": task["name"]})
        _apply(tree, task.get("preset_tree"))
        _apply(tree, self.spec.get("set"))
        if "parts" in self.spec:
            _apply(tree, part.get("set"))
        _apply(tree, task.get("set"))
        for key, value in self.cli:
            _apply(tree, {key: value})
        return tree

    def add(self, part: dict, task: dict, variant: Optional[dict], axis_vals: dict, seed: int,
            where: tuple) -> None:
        tree = self.tree(part, task)
        body = (tree.get("body") or {}).get("name", "minilm")
        if variant and variant.get("if_body") and body_family(body) != variant["if_body"]:
            return
        _apply(tree, (variant or {}).get("set"))
        _apply(tree, axis_vals)
        _apply(tree, {"run.seed": seed})
        text = (f"study '{self.spec['name']}', part '{part['name']}', task '{task['name']}'"
                + (f", variant '{variant['label']}'" if variant else ""))
        cfg = _resolve(tree, self.out, text)
        if cfg is None:
            self.notes.append(f"{text}{_axis_text(axis_vals)}: skipped "
                              f"(align.from_epoch > align.epochs)")
            return
        self._member(cfg, part, task, variant, axis_vals, seed, where)

    def _member(self, cfg: Config, part: dict, task: dict, variant: Optional[dict],
                axis_vals: dict, seed: int, where: tuple) -> None:
        rid = config_hash(cfg)
        varied = {"task.name": task["name"], "run.seed": seed, **_flat_set(task.get("set")),
                  **_flat_set((variant or {}).get("set")), **axis_vals}
        label = " / ".join(([str(variant["label"])] if variant else []) +
                           [str(v) for v in axis_vals.values()]) or None
        labels = {"label": label, "variant": variant["label"] if variant else None,
                  **({"preset": task["preset"]} if task.get("preset") else {}),
                  **(task.get("tags") or {}), **((variant or {}).get("tags") or {}),
                  "axes": axis_vals, "task": task["name"], "seed": seed}
        if rid not in self.runs:
            self.runs[rid] = PlannedRun(rid, cfg, task["name"], seed, varied,
                                        self.out / "runs" / run_id(cfg))
            self.order.append((*where, rid))
        else:
            self.runs[rid].axes = {**self.runs[rid].axes, **varied}
        same_part = [m for m in self.runs[rid].members if m[0] == part["name"]]
        if same_part and same_part[0][2].get("label") != label:
            raise UserError(f"study '{self.spec['name']}', part '{part['name']}': settings "
                            f"'{same_part[0][2].get('label')}' and '{label}' give the same "
                            f"configuration on task '{task['name']}' (one would hide the other "
                            f"in the report); make them differ or drop one")
        if not same_part:
            self.runs[rid].members.append((part["name"], part.get("experiment", "custom"), labels))


def baseline_variants(part: dict, task: str) -> list[dict]:
    """A `baselines` part: one variant per domain method (`methods`, default all) that applies
    to the task; a task xmodal does not know before loading (npz) keeps the methods given."""
    from ..data.registry import REGISTRY
    methods = part.get("methods") or list(BASELINES)
    spec = REGISTRY[task].spec if task in REGISTRY else None
    return [{"label": m, "set": {"baseline.method": m}} for m in methods
            if spec is None or (spec.kind in BASELINES[m].kinds
                                and spec.modality in BASELINES[m].modalities)]


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
    epoch = cfg.align.from_epoch
    if epoch is None:
        return cfg
    if not aligns(cfg) or epoch == cfg.align.epochs:   # "last epoch" (or no alignment at all)
        return dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, from_epoch=None))
    if epoch > cfg.align.epochs:
        return None
    if epoch < 0:
        raise UserError(f"{where}: align.from_epoch must be >= 0")
    return cfg
