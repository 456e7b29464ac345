"""The report's "Smoke run" section (`xmodal study run --smoke`): per smoke run, what it ran,
its measured seconds per optimizer step (and per step of the real run, x `accumulate`), its
peak memory and the smallest card it fits; with a warning that the metrics of a smoke study
mean nothing.
"""

from __future__ import annotations

from ..smoke import fits, smoke_rows
from .data import Section


def section_smoke(runs: list[dict], members: list[dict], finals: dict, spec: dict) -> Section:
    smoke = spec.get("smoke") or {}
    rows = smoke_rows(runs, members, finals)
    sec = Section("Smoke run: does every configuration run, and what does a step cost?")
    sec.blocks.append(("p", (
        f"This folder holds a smoke run (`xmodal study run --smoke`): each distinct "
        f"configuration once (seed {smoke.get('seed', 0)}) at its real architecture, token "
        f"count, image size and batch size, with random body weights, for "
        f"{smoke.get('steps', '?')} optimizer steps (train.accumulate 1) and at most one "
        f"embedder epoch, scored on {smoke.get('eval_samples', '?')} validation and test "
        f"samples. Its metrics, figures and verdicts below say nothing about the question; "
        f"they show that the report builds. Seconds per real step = measured seconds x the "
        f"real run's train.accumulate. Card: the smallest of 24/40/80 GB the peak fits with "
        f"20% headroom.")))
    table = []
    for r in rows:
        peak = r["peak_bytes"]
        table.append([r["task"], r["body"], "; ".join(r["settings"]) or "-", r["finetune"],
                      "-" if r["trainable"] is None else f"{r['trainable']:,}",
                      f"{r['batch_size']} x {r['accumulate']}", _num(r["step_seconds"]),
                      _num(r["real_step_seconds"]),
                      "-" if peak is None else f"{peak / 1e9:.2f}", fits(peak),
                      r["status"] if r["status"] != "failed" else f"failed: {r['error']}"])
    sec.blocks.append(("table", ["task", "body", "settings", "fine-tune", "trainable",
                                 "batch x accumulate", "s / step (measured)", "s / real step",
                                 "peak GB", "card", "status"], table))
    hows = sorted({r["peak_how"] for r in rows if r["peak_how"]})
    failed = sum(r["status"] == "failed" for r in rows)
    peaks = [r["peak_bytes"] for r in rows if r["peak_bytes"] is not None]
    items = [f"{len(rows)} smoke runs, {failed} failed."]
    if peaks:
        items.append(f"Largest peak: {max(peaks) / 1e9:.2f} GB ({fits(max(peaks))} card).")
    items += [f"Peak memory measured as {h}." for h in hows]
    sec.blocks.append(("ul", items))
    return sec


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"
