"""The report's last section, "Provenance": what produced every number above it.

The base configuration once (for each key, the value most runs share), then one row per
setting (part, label, task) with the keys where its runs differ from that base and the seeds
they ran; then the code and machine the runs recorded in their `config.yaml` (xmodal version,
git commit, package versions, platform, device, torch threads), each distinct value with the
number of runs that had it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from ...config.validate import flatten
from .data import Section

SKIP = ("run.seed", "run.out", "run.name", "align.cache_dir", "task.name")


def _flat(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if k not in SKIP}


def _text(value) -> str:
    return json.dumps(value, default=str)


def base_config(configs: list[dict]) -> dict:
    """For each key, the value most of `configs` (flattened) share: the study's base."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for flat in configs:
        for k, v in flat.items():
            counts[k][_text(v)] += 1
    return {k: json.loads(c.most_common(1)[0][0]) for k, c in sorted(counts.items())}


def settings(members: list[dict], runs: dict[str, dict]) -> list[tuple]:
    """(part, label, task, flat config of the setting, seeds) per setting, in plan order."""
    groups: dict[tuple, list] = {}
    for m in members:
        run = runs.get(m["run_id"])
        if run is None or run["status"] != "done":
            continue
        key = (m["part"], m["labels"].get("label") or m["part"], run["task"])
        groups.setdefault(key, []).append(run)
    return [(*key, _flat(rs[0]["config"]), sorted(r["seed"] for r in rs))
            for key, rs in groups.items()]


def recorded(folder: Path, runs: list[dict]) -> list[tuple]:
    """(what, value, runs) for the code and machine fields of the runs' config.yaml files."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for run in runs:
        if run["status"] != "done" or not run.get("run_dir"):
            continue
        try:
            doc = yaml.safe_load((folder / run["run_dir"] / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            counts["config.yaml"]["missing or unreadable"] += 1
            continue
        for key in ("git_commit", "platform", "device", "cuda", "threads"):
            counts[key][str(doc.get(key))] += 1
        for name, version in (doc.get("versions") or {}).items():
            counts[name][str(version)] += 1
    return [(what, value, n) for what, c in counts.items() for value, n in c.most_common()]


def section_provenance(folder: Path, members: list[dict], runs: list[dict]) -> Section:
    by_id = {r["id"]: r for r in runs}
    rows = settings(members, by_id)
    base = base_config([flat for *_, flat, _ in rows])
    sec = Section("Provenance")
    sec.blocks.append(("p", "Every setting's resolved configuration: the base below (for each "
                            "key, the value most settings share), then per setting the keys "
                            "where it differs, and its seeds. Then the code and machine the "
                            "runs recorded (each run's config.yaml), with how many runs "
                            "recorded each value."))
    sec.blocks.append(("table", ["key", "base value"],
                       [[k, _text(v)] for k, v in base.items()]))
    table = []
    for part, label, task, flat, seeds in rows:
        diff = [f"{k}={_text(v)}" for k, v in flat.items() if _text(base.get(k)) != _text(v)]
        table.append([part, label, task, ", ".join(diff) or "(the base)", _seeds(seeds)])
    sec.blocks.append(("table", ["part", "setting", "task", "differs from the base", "seeds"],
                       table))
    sec.blocks.append(("table", ["recorded", "value", "runs"],
                       [[w, v, str(n)] for w, v, n in recorded(folder, runs)]))
    return sec


def _seeds(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]} ({len(seeds)})"
    return ", ".join(map(str, seeds))
