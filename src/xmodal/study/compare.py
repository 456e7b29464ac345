"""`xmodal study compare A B`: the settings two study folders share, side by side.

A setting is a (part, label, task) of a study; the two folders' runs of a shared setting are
paired by seed (d = A - B over the seeds both finished) and decided with the study reports'
vocabulary (`verdicts.decide`: lower / higher / equivalent / inconclusive), Holm-adjusted over
all the shared settings, at the margin A's spec fixed for the task (B's when A has none; no
margin: equivalence is not tested). Typical use: before and after a recipe change, or a CPU
and a GPU run of one spec. Writes nothing unless `--md FILE` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserError
from .report.data import load_parts, stat_of
from .report.decisions import margin_of
from .report.render import spec_margins
from .store import Store
from .verdicts import DecisionFamily

HEADERS = ["part", "setting", "task", "n", "mean A", "mean B", "diff (A - B)", "95% CI",
           "margin", "verdict"]


def _settings(folder: Path) -> tuple[dict, dict]:
    """({(part, label, task): [done RunView]}, {task: {margin, reason}}) of one study folder."""
    with Store(folder) as store:
        parts = load_parts(store)
        margins = spec_margins(store.studies())
    out: dict = {}
    for part in parts:
        for run in part.done():
            if run.test is not None:
                out.setdefault((part.name, run.label, run.task), []).append(run)
    return out, margins


def compare(a: str | Path, b: str | Path) -> list[dict]:
    """One row per shared setting, in A's order, with its decision."""
    sa, ma = _settings(Path(a))
    sb, mb = _settings(Path(b))
    shared = [k for k in sa if k in sb]
    if not shared:
        raise UserError(f"study folders {a} and {b} share no setting (part, label and task); "
                        f"compare two runs of the same spec")
    family = DecisionFamily()
    for key in shared:
        margin = margin_of(ma, key[2])
        family.add(key, stat_of(sa[key]), stat_of(sb[key]),
                   margin if margin is not None else margin_of(mb, key[2]))
    family.adjust()
    rows = []
    for key in shared:
        d = family.tests[key]
        rows.append({"part": key[0], "setting": key[1], "task": key[2], "n": d.n,
                     "mean_a": d.mean_a, "mean_b": d.mean_b, "diff": d.diff, "ci": d.ci,
                     "margin": d.margin, "verdict": d.verdict})
    return rows


def table(rows: list[dict]) -> str:
    def num(x) -> str:
        return "" if x is None or x != x else f"{x:.4f}"
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        ci = f"[{num(r['ci'][0])}, {num(r['ci'][1])}]"
        cells = [r["part"], r["setting"], r["task"], str(r["n"]), num(r["mean_a"]),
                 num(r["mean_b"]), num(r["diff"]), ci, num(r["margin"]), r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def compare_command(a: str, b: str, md: Optional[str] = None) -> str:
    from ..io.artifacts import write_user_file
    rows = compare(a, b)
    counts: dict = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    text = (f"# {a} (A) vs {b} (B)\n\n{len(rows)} shared settings, paired by seed: "
            + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + "\n\n" + table(rows))
    if md:
        write_user_file(md, "--md", lambda tmp: Path(tmp).write_text(text))
    return text
