"""Study specs: loading, validation and task presets (their expansion into runs is `plan.py`).

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
from importlib import resources
from pathlib import Path
from typing import Optional


from ..config import (parse_yaml,
                      read_text_file)
from ..config.choices import BASELINES, EXPERIMENTS
from ..errors import UserError

SPEC_KEYS = {"name", "description", "experiment", "base", "tasks", "seeds", "axes", "variants",
             "parts", "set", "notes", "workers", "margins", "sequential"}
PART_KEYS = {"name", "experiment", "description", "tasks", "seeds", "axes", "variants", "set",
             "methods"}
VARIANT_KEYS = {"label", "set", "tags", "if_body"}
TASK_KEYS = {"name", "preset", "set", "tags"}
SEQUENTIAL_STEP = 2   # seeds a round of sequential seeding adds when the spec gives no step
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
    _check_margins(spec.get("margins", {}), fail)
    _check_sequential(spec.get("sequential"), fail)


def _check_sequential(block, fail) -> None:
    """`sequential: {max_seeds: N, step: k}`: the stopping rule of sequential seeding
    (`study.sequential`), fixed before the runs."""
    if block is None:
        return
    if not isinstance(block, dict) or "max_seeds" not in block or set(block) - {"max_seeds", "step"}:
        fail(f"'sequential' must be {{max_seeds: N, step: k}} (step optional, default "
             f"{SEQUENTIAL_STEP}); "
             f"got {block!r}")
    for key in ("max_seeds", "step"):
        value = block.get(key, SEQUENTIAL_STEP)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"sequential.{key} must be an integer >= 1; got {value!r}")


def _check_margins(margins, fail) -> None:
    """`margins: {task: {margin: m, reason: why}}`: the equivalence margin of each task, fixed
    before the runs, with its reason (the report states both)."""
    if not isinstance(margins, dict):
        fail("'margins' must map task names to {margin, reason}")
    for task, m in margins.items():
        ok = isinstance(m, dict) and set(m) == {"margin", "reason"} and \
            isinstance(m["margin"], (int, float)) and not isinstance(m["margin"], bool) and \
            m["margin"] > 0 and isinstance(m["reason"], str) and m["reason"].strip()
        if not ok:
            fail(f"margins: '{task}' must be {{margin: a number > 0, reason: a sentence}}; "
                 f"got {m!r}")


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
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        fail(f"{where}: seed(s) {repeated} appear more than once in 'seeds' (a seed runs once; "
             f"list distinct seeds)")


# ----------------------------------------------------------------------------- expansion


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


