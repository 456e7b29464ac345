"""Study specs and their expansion into runs.

A study spec (see docs/studies.md) names a `base` config, `tasks`, `seeds`, and either one
experiment (`experiment`, `variants`, `axes`) or several `parts`, each its own experiment.
`load_spec` reads a built-in name (`xmodal/studies/*.yaml`), a YAML file or a dict and validates
it. `expand` turns it into a `Plan`: tasks x variants x axes-grid x seeds, each a resolved
`Config` whose id is `config_hash(config)`. Identical configurations (e.g. ORCA's default
setting, which is RQ1's "text" proxy and RQ3's "all / trained embedder") are run once and
belong to several experiments. Nothing here touches the study folder or the store.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional


from ..config import (Config, config_hash, from_dict, parse_override, parse_yaml,
                      read_text_file, set_dotted)
from ..config.bodies import body_family
from ..config.choices import BASELINES, EXPERIMENTS
from ..config.derived import aligns
from ..config.identity import alignment_key, run_id
from ..errors import UserError

SPEC_KEYS = {"name", "description", "experiment", "base", "tasks", "seeds", "axes", "variants",
             "parts", "set", "notes", "workers"}
PART_KEYS = {"name", "experiment", "description", "tasks", "seeds", "axes", "variants", "set",
             "methods"}
VARIANT_KEYS = {"label", "set", "tags", "if_body"}
TASK_KEYS = {"name", "preset", "set", "tags"}
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
    if "methods" in part:
        METHODS = tuple(BASELINES)
        methods = part["methods"]
        if exp != "baselines":
            fail(f"{where}: 'methods' belongs to a part with experiment: baselines")
        if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
            fail(f"{where}: 'methods' must be a non-empty list of {', '.join(METHODS)}; "
                 f"got {methods!r}")
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
        if not isinstance(t, dict) or not ("name" in t or "preset" in t):
            fail(f"{where}: a task entry must be a name, a preset (nb360/satellite) or a mapping "
                 f"with 'name' or 'preset' (got {t!r})")
        _check_keys(t, TASK_KEYS, f"{where}, task '{t.get('name') or t['preset']}'", fail)


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

    def gpu_hours(self) -> tuple[float, int]:
        """(estimated GPU-hours of the runs that have an estimate, runs without one)."""
        hours = [run_gpu_hours(r) for r in self.runs]
        return sum(h for h in hours if h is not None), sum(h is None for h in hours)


def run_gpu_hours(run: PlannedRun) -> Optional[float]:
    """Rough GPU-hours of one run: train.epochs x the `gpu_hours_per_epoch` tag a spec gives
    a task (its estimate for one GPU at full size); None without the tag."""
    per_epoch = next((m[2]["gpu_hours_per_epoch"] for m in run.members
                      if m[2].get("gpu_hours_per_epoch") is not None), None)
    if run.config.baseline.method != "none":
        return 0.0                       # scikit-learn on the CPU
    if per_epoch is None or run.config.train.epochs is None:
        return None                      # no tag, or an automatic budget
    return float(per_epoch) * run.config.train.epochs


def parts_of(spec: dict) -> list[dict]:
    if "parts" in spec:
        return spec["parts"]
    return [{k: spec[k] for k in ("experiment", "variants", "axes") if k in spec}
            | {"name": spec.get("experiment", "custom")}]


def _task_entries(entries: list, pick: Optional[list[str]]) -> list[dict]:
    """Task entries as {name, preset?, preset_tree?, set?, tags?}; `pick` (--tasks) selects by
    task or preset name, in its order."""
    norm = [_task_entry(e) for e in entries]
    if pick is None:
        return norm
    by_name = {e["name"]: e for e in norm} | {e["preset"]: e for e in norm if e.get("preset")}
    return [by_name.get(name) or _task_entry(name) for name in pick]


def _task_entry(entry) -> dict:
    """A task name, `nb360/satellite` (a preset: configs/nb360/satellite.yaml) or a mapping."""
    entry = {"name": entry} if isinstance(entry, str) else dict(entry)
    if "preset" not in entry and is_preset_name(entry["name"]):
        entry["preset"] = entry.pop("name")
    if "preset" in entry:
        entry["preset_tree"] = load_preset(entry["preset"])
        task = (entry["preset_tree"].get("task") or {}).get("name")
        if not entry.get("name") and not task:
            raise UserError(f"preset '{entry['preset']}' names no task (task.name)")
        entry.setdefault("name", task)
    return entry


def is_preset_name(name: str) -> bool:
    """`nb360/satellite` or a .yaml path, not a task name or npz:PATH."""
    return not name.startswith("npz:") and ("/" in name or name.endswith((".yaml", ".yml")))


def preset_dirs() -> list[Path]:
    """Where preset names are looked up: ./configs, then the source checkout's configs/."""
    return [Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"]


def load_preset(name: str) -> dict:
    """The config tree of a preset: a YAML path, or NAME -> configs/NAME.yaml."""
    from ..config import read_yaml
    path = Path(name).expanduser()
    candidates = [path] if path.suffix in (".yaml", ".yml") else \
        [d / f"{name}.yaml" for d in preset_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return read_yaml(candidate)
    raise UserError(f"task preset '{name}' not found (looked for "
                    f"{', '.join(str(c) for c in candidates)}); a preset is a config YAML such "
                    f"as configs/nb360/satellite.yaml")


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
        if not any(m[0] == part["name"] for m in self.runs[rid].members):
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
