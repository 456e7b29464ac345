"""The results store of a study: one SQLite database per study folder (`DIR/study.db`).

The store is the single source of truth for what a study has run: `xmodal study status`,
`xmodal study export` (`export.py`) and `xmodal report` read it and nothing else. Checkpoints and logs stay
as files in the run folders; the store holds their paths (relative to the study folder).

Tables
------
- `meta`          key/value (schema version)
- `studies`       one row per study spec that was run in this folder (name, experiment, spec JSON)
- `runs`          one row per distinct configuration: `id` = `config_hash(config)` is the primary
                  key, so a run can never be stored twice; status pending | running | done | failed,
                  error text, timings, who is running it (pid + process start time + host)
- `members`       which study part (experiment) a run belongs to and its labels there; one run
                  can serve several experiments (e.g. ORCA's default is RQ1's "text" proxy and
                  RQ3's "all / trained")
- `epochs`        per fine-tuning epoch: train loss, validation metric (test metric if recorded)
- `align_traces`  per embedder epoch: the alignment objective's value (column `otdd`, returned
                  as `value` by `Store.align_traces`) and seconds
- `finals`        final metrics of a finished run (test metric of the best-validation and the
                  last weights, best epoch, parameter counts, the whole summary JSON)

Every write is one transaction (`with conn:`); the database runs in WAL mode with a busy
timeout, so readers (status, report) never block a running study.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import UserError
from ..runs.folder import Summary
from .liveness import process_token, token_alive

SCHEMA_VERSION = 1
DB_NAME = "study.db"
STATUSES = ("pending", "running", "done", "failed")
TRACE_COLUMN = "otdd"   # align_traces' value column, named before other objectives came

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    description TEXT,
    experiment TEXT,
    spec TEXT,              -- the study spec as run (JSON)
    created REAL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,    -- config_hash(config): one row per distinct configuration
    task TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,   -- resolved config (JSON)
    axes TEXT NOT NULL,     -- {dotted key: value} that the study varied (JSON)
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    error TEXT,
    traceback TEXT,
    run_dir TEXT,           -- relative to the study folder
    position INTEGER,       -- order of first expansion
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,             -- host:pid:start-time of the process running it
    created REAL,
    started REAL,
    finished REAL,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS members (
    study TEXT NOT NULL,
    part TEXT NOT NULL,         -- the part of the study (e.g. "proxy" in the demo)
    experiment TEXT NOT NULL,   -- proxy | align-epochs | freezing | pretraining | custom
    run_id TEXT NOT NULL REFERENCES runs(id),
    labels TEXT NOT NULL,       -- JSON: variant label, annotations, axis values, task, seed
    PRIMARY KEY (study, part, run_id)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    train_loss REAL,
    val_metric REAL,
    test_metric REAL,
    lr REAL,
    seconds REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS align_traces (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    otdd REAL,
    seconds REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS finals (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    metric TEXT,
    metric_label TEXT,
    best_epoch INTEGER,
    best_val_metric REAL,
    test_metric_best REAL,
    test_metric_last REAL,
    last_val_metric REAL,
    parameters TEXT,        -- JSON
    summary TEXT            -- the run's summary.json (JSON)
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS members_run ON members(run_id);
"""


# ----------------------------------------------------------------------------- helpers

def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_jsonable)


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _num(value) -> Optional[float]:
    """A float for the store: None stays None, NaN/inf are stored as NULL."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def has_sqlite_header(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def is_store(path: str | Path) -> bool:
    """Whether `path` is an xmodal study database: an SQLite file with our `meta` table and a
    schema version. Reads only; never raises for a damaged or foreign file."""
    path = Path(path)
    if not path.is_file() or not has_sqlite_header(path):
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None


def _damaged(path: Path) -> str:
    return (f"study database {path} is damaged or not an xmodal store; restore it from a copy, "
            f"or move it away and rerun the study into a new --out")


class Store:
    """Access to one study database. Cheap to open; open one per process."""

    def __init__(self, path: str | Path, create: bool = False):
        path = Path(path)
        if path.is_dir() or path.suffix != ".db":
            path = path / DB_NAME
        if not path.is_file() and not create:
            raise UserError(f"'{path.parent}' is not a study folder (no {DB_NAME}); "
                            f"run `xmodal study run SPEC --out {path.parent}` first")
        if path.is_file() and path.stat().st_size and not has_sqlite_header(path):
            raise UserError(f"{_damaged(path)} (it is not an SQLite file)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.root = path.parent
        self.conn = sqlite3.connect(str(path), timeout=60.0)
        try:
            self._open(create)
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise UserError(f"{_damaged(path)} ({exc})") from None
        except UserError:
            self.conn.close()
            raise

    def _open(self, create: bool) -> None:
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 60000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        existed = self._has_table("meta")
        if not existed and not create:
            raise UserError(f"'{self.path}' is not an xmodal study database")
        if not existed and self.conn.execute("SELECT 1 FROM sqlite_master").fetchone():
            raise UserError(f"'{self.path}' is another application's SQLite database (it has "
                            f"tables but not xmodal's); pick another --out")
        if existed:
            problem = self.conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
        self.conn.executescript(SCHEMA)
        self._check_schema(create)

    def _check_schema(self, create: bool) -> None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            if self._has_table("meta") else None
        if row is None:
            if not create:
                raise UserError(f"'{self.path}' is not an xmodal study database")
            with self.conn:
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
        elif int(row["value"]) > SCHEMA_VERSION:
            raise UserError(f"'{self.path}' was written by a newer xmodal (schema "
                            f"{row['value']} > {SCHEMA_VERSION}); upgrade xmodal")

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (name,)).fetchone() is not None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing the plan
    def register(self, study: dict, runs: Iterable[dict]) -> dict:
        """Record a study and its planned runs. `runs`: dicts with id, task, seed, config,
        axes, run_dir, members [(part, experiment, labels)]. Existing runs keep their status.
        Returns {"new": n, "existing": m}."""
        now = time.time()
        new = existing = 0
        with self.conn:
            self.conn.execute(
                "INSERT INTO studies (name, description, experiment, spec, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "description=excluded.description, experiment=excluded.experiment, "
                "spec=excluded.spec, updated=excluded.updated",
                (study["name"], study.get("description", ""), study.get("experiment", "custom"),
                 _dumps(study.get("spec", {})), now, now))
            start = self.conn.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM runs").fetchone()[0]
            for i, run in enumerate(runs):
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO runs (id, task, seed, config, axes, status, run_dir, "
                    "position, created) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (run["id"], run["task"], int(run["seed"]), _dumps(run["config"]),
                     _dumps(run.get("axes", {})), run.get("run_dir"), start + i, now))
                if cur.rowcount:
                    new += 1
                else:
                    existing += 1
                    self.conn.execute("UPDATE runs SET axes=? WHERE id=?",
                                      (_dumps({**self._axes(run["id"]), **run.get("axes", {})}),
                                       run["id"]))
                for part, experiment, labels in run.get("members", []):
                    self.conn.execute(
                        "INSERT INTO members (study, part, experiment, run_id, labels) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(study, part, run_id) DO UPDATE SET "
                        "experiment=excluded.experiment, labels=excluded.labels",
                        (study["name"], part, experiment, run["id"], _dumps(labels)))
        return {"new": new, "existing": existing}

    def _axes(self, run_id: str) -> dict:
        row = self.conn.execute("SELECT axes FROM runs WHERE id=?", (run_id,)).fetchone()
        return json.loads(row["axes"]) if row else {}

    # ------------------------------------------------------------------ claiming
    def reclaim_stale(self) -> list[str]:
        """Runs marked running by a process that no longer exists go back to pending."""
        rows = self.conn.execute("SELECT id, owner FROM runs WHERE status='running'").fetchall()
        stale = [r["id"] for r in rows if not token_alive(r["owner"])]
        if stale:
            with self.conn:
                for run_id in stale:
                    self.conn.execute("UPDATE runs SET status='pending', owner=NULL "
                                      "WHERE id=? AND status='running'", (run_id,))
        return stale

    def claim(self, run_id: str, token: Optional[str] = None, retry_failed: bool = True) -> bool:
        """Atomically mark a pending (or failed) run as running by this process."""
        allowed = ("pending", "failed") if retry_failed else ("pending",)
        with self.conn:
            cur = self.conn.execute(
                f"UPDATE runs SET status='running', owner=?, started=?, finished=NULL, "
                f"attempts=attempts+1 WHERE id=? AND status IN ({','.join('?' * len(allowed))})",
                (token or process_token(), time.time(), run_id, *allowed))
        return cur.rowcount == 1

    def release(self, run_id: str) -> None:
        """Give a run back (interrupted by the user): running -> pending."""
        with self.conn:
            self.conn.execute("UPDATE runs SET status='pending', owner=NULL WHERE id=? "
                              "AND status='running'", (run_id,))

    # ------------------------------------------------------------------ results
    def record(self, run_id: str, result: dict) -> None:
        """Store the outcome of a run: `result` has status (done|failed), summary, history,
        error, traceback, seconds, run_dir. One transaction."""
        status = result.get("status", "failed")
        if status not in ("done", "failed"):
            raise ValueError(f"cannot record status {status!r}")
        blob = result.get("summary") or {}
        summary = Summary.from_dict(blob)
        with self.conn:
            for table in ("epochs", "align_traces", "finals"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            self._record_epochs(run_id, result.get("history") or [])
            self._record_trace(run_id, summary)
            if status == "done":
                self._record_final(run_id, summary, blob)
            self.conn.execute(
                "UPDATE runs SET status=?, error=?, traceback=?, finished=?, seconds=?, "
                "owner=NULL, run_dir=COALESCE(?, run_dir) WHERE id=?",
                (status, None if status == "done" else (result.get("error") or "failed"),
                 result.get("traceback"), time.time(), _num(result.get("seconds")),
                 result.get("run_dir"), run_id))

    def _record_epochs(self, run_id: str, history: list[dict]) -> None:
        for rec in history:
            self.conn.execute(
                "INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, int(rec["epoch"]), _num(rec.get("train_loss")),
                 _num(rec.get("val_metric")), _num(rec.get("test_metric")),
                 _num(rec.get("lr")), _num(rec.get("seconds"))))

    def _record_trace(self, run_id: str, summary: Summary) -> None:
        """The alignment trace; its `value` goes into the table's `otdd` column (the column
        keeps its first name so that existing study.db files open and resume)."""
        trace = (summary.align.get("trace") or []) if isinstance(summary.align, dict) else []
        for rec in trace:
            value = rec.get("value", rec.get("otdd"))   # "otdd": stages stored before
            self.conn.execute("INSERT OR REPLACE INTO align_traces VALUES (?, ?, ?, ?)",
                              (run_id, int(rec["epoch"]), _num(value), _num(rec.get("seconds"))))

    def _record_final(self, run_id: str, summary: Summary, blob: dict) -> None:
        self.conn.execute(
            "INSERT INTO finals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, blob.get("metric"), blob.get("metric_label"), summary.best_epoch,
             _num(summary.best_val_metric), _num(summary.test_metric_best),
             _num(summary.test_metric_last), _num(summary.last_val_metric),
             _dumps(summary.parameters), _dumps(blob)))

    # ------------------------------------------------------------------ reading
    def runs(self, status: Optional[str] = None, ids: Optional[Iterable[str]] = None) -> list[dict]:
        sql = "SELECT * FROM runs"
        args: list = []
        if status is not None:
            sql += " WHERE status=?"
            args.append(status)
        rows = [self._run_row(r) for r in self.conn.execute(sql + " ORDER BY position", args)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["id"] in wanted]
        return rows

    @staticmethod
    def _run_row(row: sqlite3.Row) -> dict:
        out = dict(row)
        out["config"] = json.loads(out["config"])
        out["axes"] = json.loads(out["axes"])
        return out

    def run(self, run_id: str) -> Optional[dict]:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run_row(row) if row else None

    def statuses(self) -> dict[str, str]:
        return {r["id"]: r["status"] for r in self.conn.execute("SELECT id, status FROM runs")}

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self.conn.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status"):
            out[row["status"]] = row["n"]
        return out

    def studies(self) -> list[dict]:
        rows = [dict(r) for r in self.conn.execute("SELECT * FROM studies ORDER BY created")]
        for r in rows:
            r["spec"] = json.loads(r["spec"] or "{}")
        return rows

    def members(self) -> list[dict]:
        rows = [dict(r) for r in self.conn.execute(
            "SELECT m.*, r.task, r.seed, r.status FROM members m JOIN runs r ON r.id = m.run_id "
            "ORDER BY r.position")]
        for r in rows:
            r["labels"] = json.loads(r["labels"])
        return rows

    def epochs(self, run_id: Optional[str] = None) -> dict[str, list[dict]]:
        return self._per_run_epochs("epochs", run_id)

    def align_traces(self, run_id: Optional[str] = None) -> dict[str, list[dict]]:
        """{run id: [{run_id, epoch, value, seconds}]}: the alignment objective per embedder
        epoch (stored in the `otdd` column, whatever the objective)."""
        traces = self._per_run_epochs("align_traces", run_id)
        for trace in traces.values():
            for rec in trace:
                rec["value"] = rec.pop(TRACE_COLUMN)
        return traces

    def _per_run_epochs(self, table: str, run_id: Optional[str]) -> dict[str, list[dict]]:
        sql, args = f"SELECT * FROM {table}", []
        if run_id is not None:
            sql, args = sql + " WHERE run_id=?", [run_id]
        out: dict[str, list[dict]] = {}
        for row in self.conn.execute(sql + " ORDER BY run_id, epoch", args):
            out.setdefault(row["run_id"], []).append(dict(row))
        return out

    def finals(self) -> dict[str, dict]:
        out = {}
        for row in self.conn.execute("SELECT * FROM finals"):
            rec = dict(row)
            rec["parameters"] = json.loads(rec["parameters"] or "null")
            rec["summary"] = json.loads(rec["summary"] or "{}")
            out[rec["run_id"]] = rec
        return out
