"""The report of a study folder: `write_report` builds every part's `Section` (one module per
research question) and writes DIR/report/report.md, the figures (PNG) and report.html, which is
report.md rendered to HTML (the `markdown` package) with the figures embedded.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

from ...config.choices import EXPERIMENTS
from ...io.artifacts import write_json, write_text
from ..stats import RULE
from ..verdicts import RULE as VERDICT_RULE
from . import decisions
from ..store import Store
from .baselines import baseline_refs, reference_table, section_baselines
from .custom import section_custom
from .provenance import section_provenance
from .data import Section, load_parts
from .rq1_proxy import section_proxy
from .rq2_align_epochs import section_align_epochs
from .rq3_freezing import section_freezing
from .rq4_pretraining import section_pretraining
from .rq5_scope import section_scope
from .rq6_embedder import section_embedder
from .smoke import section_smoke

SECTIONS = {"proxy": section_proxy, "align-epochs": section_align_epochs,
            "freezing": section_freezing, "pretraining": section_pretraining,
            "scope": section_scope, "embedder": section_embedder, "custom": section_custom}


# ----------------------------------------------------------------------------- rendering

def build_sections(folder: Path, out: Path) -> tuple[list[Section], dict]:
    with Store(folder) as store:
        parts = load_parts(store)
        counts = store.counts()
        studies = store.studies()
        failed = store.runs("failed")
        runs = store.runs()
        members = store.members()
        finals = store.finals()
    if not any(p.done() for p in parts):
        from ...errors import UserError
        raise UserError(f"study folder '{folder}' has no finished runs to report yet "
                        f"(see `xmodal study status {folder}`)")
    order = {name: i for i, name in enumerate(EXPERIMENTS)}   # the questions in turn
    refs = baseline_refs(parts)
    margins = spec_margins(studies)
    task_margins = {t: decisions.margin_of(margins, t) for t in margins}
    sections = [section_smoke(runs, members, finals, smoke_spec)
                for smoke_spec in _smoke_specs(studies)]
    for part in sorted(parts, key=lambda p: order.get(p.experiment, 9)):
        if part.experiment == "baselines" or not part.done():
            continue
        part.refs = refs
        part.margins = task_margins
        sec = SECTIONS[part.experiment](part, out)
        table = reference_table(part.tasks(), refs)
        if table is not None:   # before the closing paper-vs-ours table, where there is one
            sec.blocks.insert(len(sec.blocks) - (part.experiment != "custom"), table)
        sections.append(sec)
    if refs:
        sections.append(section_baselines(parts, refs, task_margins))
    verdicts, comparisons, claims = decisions.build(parts, refs, margins, _modality)
    verdicts.blocks[1:1] = _sequential_note(studies, comparisons)
    sections.append(verdicts)
    sections.append(section_provenance(folder, members, runs))
    seconds = sum(r["seconds"] or 0 for r in runs)
    meta = {"counts": counts, "studies": studies, "failed": failed, "run_seconds": seconds,
            "n_runs": len(runs), "verdicts": {"rule": VERDICT_RULE, "comparisons": comparisons,
                                              "claims": claims}}
    return sections, meta


def _smoke_specs(studies: list[dict]) -> list[dict]:
    """The spec of the smoke study in this folder, if it is one (a list of 0 or 1)."""
    return [s["spec"] for s in studies if (s.get("spec") or {}).get("smoke")][:1]


def decide(folder: str | Path) -> list[dict]:
    """The study's comparisons with their verdicts (as in verdicts.json), without figures or
    files: what sequential seeding reads between rounds."""
    with Store(Path(folder)) as store:
        parts = load_parts(store)
        studies = store.studies()
    refs = baseline_refs(parts)
    return decisions.build(parts, refs, spec_margins(studies), _modality)[1]


def write_report(folder: str | Path) -> Path:
    """Write DIR/report/{report.md, report.html, *.png}; returns the path of report.md."""
    folder = Path(folder)
    Store(folder).close()   # a missing or damaged store fails before anything is written
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    sections, meta = build_sections(folder, out)
    head = _header(folder, meta)
    md = _markdown(head, sections, out)
    write_text(out / "report.md", md)
    write_text(out / "report.html", _html(md, out))
    write_json(out / "verdicts.json", meta["verdicts"])
    return out / "report.md"


def _sequential_note(studies: list[dict], comparisons: list[dict]) -> list:
    """The stopping rule of sequential seeding, when a spec used it, and the seeds it reached."""
    from ..sequential import sequential_of
    for s in studies:
        seq = sequential_of(s.get("spec") or {})
        if seq is None:
            continue
        first = len((s.get("spec") or {}).get("seeds") or [0])
        ns = sorted({c["n"] for c in comparisons})
        reached = f" Comparisons ended with {ns[0]} to {ns[-1]} shared seeds." if ns else ""
        return [("p", seq.rule(first) + reached)]
    return []


def spec_margins(studies: list[dict]) -> dict:
    """{task: {margin, reason}}: the equivalence margins the study specs fixed before the runs."""
    out: dict = {}
    for s in studies:
        out.update((s.get("spec") or {}).get("margins") or {})
    return out


def _modality(task: str) -> str:
    from ...data.registry import REGISTRY
    entry = REGISTRY.get(task)
    return entry.spec.modality if entry is not None else "1d"


def _header(folder: Path, meta: dict) -> list:
    c = meta["counts"]
    names = ", ".join(s["name"] for s in meta["studies"]) or folder.name
    blocks = [("h1", f"Study report: {names}")]
    for s in meta["studies"]:
        if s.get("description"):
            blocks.append(("p", f"{s['name']}: {' '.join(str(s['description']).split())}"))
    blocks.append(("p", f"Runs: {meta['n_runs']} ({c['done']} done, {c['failed']} failed, "
                        f"{c['running']} running, {c['pending']} pending); compute in finished "
                        f"runs {meta['run_seconds'] / 60:.1f} min. Generated "
                        f"{time.strftime('%Y-%m-%d %H:%M')} from {folder / 'study.db'}."))
    blocks.append(("p", "Curves show the test metric per fine-tuning epoch where the runs "
                        "recorded it (train.test_each_epoch), else the validation metric; each "
                        "figure's axis says which. Model selection uses validation only; tables "
                        "and sentences use the test metric of the best-validation weights. "
                        + RULE))
    if meta["failed"]:
        blocks.append(("p", f"{len(meta['failed'])} run(s) failed and are left out of the "
                            f"figures and tables:"))
        blocks.append(("ul", [f"{r['id']} ({r['task']}, seed {r['seed']}): {r['error']}"
                              for r in meta["failed"]]))
    return blocks


def _one_line(text) -> str:
    """A label with a newline must not end a list item or a paragraph early."""
    return " ".join(str(text).splitlines())


def _md_cell(x) -> str:
    return _one_line(x).replace("|", "\\|")


def _markdown(head: list, sections: list[Section], out: Path) -> str:
    lines: list[str] = []
    for block in head:
        lines += _md_block(block, out, level=1)
    for sec in sections:
        lines += [f"## {_one_line(sec.title)}", ""]
        for block in sec.blocks:
            lines += _md_block(block, out)
    return "\n".join(lines).rstrip() + "\n"


def _md_block(block: tuple, out: Path, level: int = 2) -> list[str]:
    kind = block[0]
    if kind == "h1":
        return [f"# {_one_line(block[1])}", ""]
    if kind == "p":
        return [_one_line(block[1]), ""]
    if kind == "ul":
        return [f"- {_one_line(item)}" for item in block[1]] + [""]
    if kind == "img":
        return [f"![{block[2]}]({Path(block[1]).relative_to(out)})", ""]
    if kind == "table":
        headers, rows = block[1], block[2]
        if not rows:
            return []
        lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                 "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        return lines + [""]
    return []


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.92em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
h2{margin-top:2em;border-bottom:1px solid #ddd}
li{margin:0.3em 0}"""


def _html(md: str, out: Path) -> str:
    """report.md as a self-contained HTML page: the same text, the figures inlined."""
    import html

    import markdown
    # report.md holds no intended HTML: escaping it first keeps a label such as
    # "<script>...</script>" as text instead of running it when the report is opened
    body = markdown.markdown(html.escape(md, quote=False), extensions=["tables"],
                             output_format="html")
    body = re.sub(r'src="([^"]+\.png)"', lambda m: _inline_png(out / m.group(1)), body)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>xmodal study report</title><style>{CSS}</style></head><body>\n"
            f"{body}\n</body></html>\n")


def _inline_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'src="data:image/png;base64,{data}"'
