"""Export of a study, read from the store (`xmodal study export`): one row per run
(`--csv`), per run and fine-tuning epoch (`--epochs`), or per run and embedder epoch
(`--align`); CSV, or Parquet for a name ending in .parquet (with pyarrow).

A run row holds the run's identity (id, task, seed), the config keys the study varied (one
column per axis; list and dict values as JSON), the study parts and labels it belongs to, its
status and its final metrics. Nothing here writes to the store.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..io.artifacts import write_user_file
from .store import Store

IDENTITY_AXES = ("task.name", "run.seed")   # columns of their own (task, seed)


def export_rows(store: Store) -> list[dict]:
    """One row per run: identity, axes, experiments/labels, status and final metrics."""
    runs = store.runs()
    finals = store.finals()
    members = _member_labels(store)
    axis_keys = _axis_keys(runs)
    return [_row(r, finals.get(r["id"], {}), members.get(r["id"], []), axis_keys) for r in runs]


def export_csv(store: Store, path: str | Path, role: str = "--csv",
               rows: Optional[list[dict]] = None) -> Optional[Path]:
    """Write `rows` (default `export_rows(store)`) to `path`: CSV (None as an empty cell), or
    Parquet when the name ends in .parquet (needs pyarrow). `-` writes CSV to stdout (returns
    None). The study's own database is never overwritten, and the file appears whole or not at
    all (temp file, then rename)."""
    rows = export_rows(store) if rows is None else rows
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    if not fields:
        fields = ["id", "task", "seed", "status"]

    def write(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    if str(path) == "-":
        write(sys.stdout)
        return None
    path = Path(path)
    db = Path(store.path).resolve()
    if path.resolve() in {db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")}:
        raise UserError(f"{role} {path} is the study's own database; pick another file name")
    if path.is_dir():
        raise UserError(f"{role} {path} is a folder; give a file name, e.g. {path / 'study.csv'}")
    if path.suffix == ".parquet":
        return write_user_file(path, role, _parquet_writer(rows, fields, role))

    def to_file(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            write(fh)
    return write_user_file(path, role, to_file)


def _parquet_writer(rows: list[dict], fields: list[str], role: str):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{role}: a .parquet file needs pyarrow (pip install pyarrow); or give "
                        f"a .csv name") from None
    table = pa.table({f: [r.get(f) for r in rows] for f in fields})
    return lambda tmp: pq.write_table(table, tmp)


def epoch_rows(store: Store) -> list[dict]:
    """One row per run and fine-tuning epoch: run id, task, seed, the run's parts and labels,
    epoch, train_loss, val_metric, test_metric (with train.test_each_epoch), lr, seconds."""
    return _per_epoch(store, store.epochs(),
                      ("epoch", "train_loss", "val_metric", "test_metric", "lr", "seconds"))


def align_rows(store: Store) -> list[dict]:
    """One row per run and embedder epoch: run id, task, seed, parts and labels, epoch, the
    alignment objective's value (OTDD unless align.objective says otherwise), seconds."""
    return _per_epoch(store, store.align_traces(), ("epoch", "value", "seconds"))


def _per_epoch(store: Store, per_run: dict, columns: tuple) -> list[dict]:
    runs = {r["id"]: r for r in store.runs()}
    members = _member_labels(store)
    out = []
    for run_id, records in per_run.items():
        run = runs.get(run_id)
        if run is None:
            continue
        head = {"id": run_id, "task": run["task"], "seed": run["seed"],
                "experiments": ";".join(members.get(run_id, []))}
        out += [{**head, **{c: rec.get(c) for c in columns}} for rec in records]
    return out


def _member_labels(store: Store) -> dict[str, list[str]]:
    """{run id: ["part:label" (or "part") for each part it belongs to]}."""
    members: dict[str, list[str]] = {}
    for m in store.members():
        label = m["labels"].get("label")
        members.setdefault(m["run_id"], []).append(f"{m['part']}:{label}" if label else m["part"])
    return members


def _axis_keys(runs: list[dict]) -> list[str]:
    """The varied config keys over all runs, in first-seen order, less task and seed."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r["axes"] if k not in keys and k not in IDENTITY_AXES]
    return keys


def _row(run: dict, final: dict, members: list[str], axis_keys: list[str]) -> dict:
    row = {"id": run["id"], "task": run["task"], "seed": run["seed"], "status": run["status"],
           "experiments": ";".join(members)}
    for key in axis_keys:
        value = run["axes"].get(key, _lookup(run["config"], key))
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.update({
        "metric": final.get("metric"), "test_metric_best": final.get("test_metric_best"),
        "test_metric_last": final.get("test_metric_last"),
        "best_val_metric": final.get("best_val_metric"), "best_epoch": final.get("best_epoch"),
        "seconds": run["seconds"], "attempts": run["attempts"], "run_dir": run["run_dir"],
        "error": run["error"]})
    return row


def _lookup(tree: dict, dotted: str):
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
