"""A study folder keeps one configuration per setting: re-running an edited spec into the same
`--out` must not pool the old runs of a setting with runs of its new configuration.

A setting is a (part, label, task) slot of the report; its configuration is the run's config
less its seed (`sequential.setting_key`). Adding seeds, tasks, parts or labels is fine; giving a
stored label another configuration is a `UserError` that names the label and what changed.
"""

from __future__ import annotations

import dataclasses
import json

from ..config import Config, config_hash, from_dict
from ..config.validate import flatten
from ..errors import UserError
from .plan import Plan
from .sequential import setting_key


def _slot(study: str, part: str, labels: dict) -> tuple:
    return (study, part, labels.get("label"), labels.get("task"))


def _unseeded(cfg: Config) -> dict:
    return flatten(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=0)).to_dict())


def check_unchanged(plan: Plan, members: list[dict], configs: dict[str, dict], out) -> None:
    """`members`: the store's member rows (study, part, run_id, labels); `configs`: stored run
    id -> config tree. Raises when a planned setting's slot already holds another config."""
    stored: dict[tuple, str] = {}
    for m in members:
        stored.setdefault(_slot(m["study"], m["part"], m["labels"]), m["run_id"])
    cache: dict[str, tuple] = {}
    for run in plan.runs:
        for part, _, labels in run.members:
            old_id = stored.get(_slot(plan.name, part, labels))
            if old_id is None or old_id == run.id or old_id not in configs:
                continue
            if old_id not in cache:
                old_cfg = from_dict(configs[old_id])
                # a stored id that its own config no longer hashes to: the data changed
                same_data = config_hash(old_cfg) == old_id
                cache[old_id] = (setting_key(old_cfg) if same_data else None, old_cfg)
            old_key, old_cfg = cache[old_id]
            if old_key != setting_key(run.config):
                raise UserError(_message(plan.name, part, labels, old_cfg, run.config, out))


def _message(study: str, part: str, labels: dict, old: Config, new: Config, out) -> str:
    a, b = _unseeded(old), _unseeded(new)
    changed = [f"{k} {json.dumps(a.get(k), default=str)} -> {json.dumps(b.get(k), default=str)}"
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
               and k not in ("run.out", "run.name", "align.cache_dir")]
    what = "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else "") or \
        "the same keys, but the task's data changed"
    return (f"study folder {out} already holds study '{study}', part '{part}', setting "
            f"'{labels.get('label') or part}' on task '{labels.get('task')}' with another "
            f"configuration ({what}); old and new runs would be pooled under one label: "
            f"use --fresh to start over, another --out, or a new label")
