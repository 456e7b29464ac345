"""The `xmodal study` subcommands (`list`, `run`, `status`, `export`, `compare`): argument parsing
helpers, the status text and the CSV export, all on top of `spec`, `runner`, `store` and
`export`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from ..config.choices import NO_BASELINE
from ..errors import UserError
from ..runs.cost import GPU_TFLOPS
from .costs import PlanCost, plan_cost
from .export import export_csv as _write_csv
from .liveness import token_alive
from .plan import Plan, expand
from .runner import fmt_seconds, run_study
from .smoke import fits, measured, smoke_plan
from .spec import builtin_names, is_preset_name, load_spec, parts_of
from .store import Store


def status_text(folder: str | Path) -> tuple[str, int]:
    """Human-readable status of a study folder and the number of failed runs."""
    folder = Path(folder)
    with Store(folder) as store:
        stale = {r["id"] for r in store.runs("running")} - {
            r["id"] for r in store.runs("running") if _alive(r)}
        runs = store.runs()
        members = store.members()
        studies = store.studies()
    counts = {s: 0 for s in ("done", "running", "pending", "failed")}
    for r in runs:
        key = "pending" if r["id"] in stale else r["status"]
        counts[key] += 1
    lines = []
    for s in studies:
        desc = " ".join(str(s["description"] or "").split())
        lines.append(f"study {s['name']}" + (f": {desc}" if desc else ""))
    lines.append(f"{folder}: {len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if stale:
        lines.append(f"  {len(stale)} run(s) marked running belong to a process that is gone; "
                     f"they resume on the next `xmodal study run`")
    parts: dict = {}
    status_of = {r["id"]: ("pending" if r["id"] in stale else r["status"]) for r in runs}
    for m in members:
        parts.setdefault((m["part"], m["experiment"]), {}).setdefault(status_of[m["run_id"]], 0)
        parts[(m["part"], m["experiment"])][status_of[m["run_id"]]] += 1
    for (part, exp), c in parts.items():
        lines.append(f"  part {part} ({exp}): " +
                     ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
    label_of: dict = {}
    for m in members:
        label_of.setdefault(m["run_id"], []).append(m["labels"].get("label") or m["part"])
    running = [r for r in runs if r["status"] == "running" and r["id"] not in stale]
    for r in running:
        elapsed = time.time() - (r["started"] or time.time())
        lines.append(f"  running: {r['id']} {r['task']} seed {r['seed']} "
                     f"({', '.join(dict.fromkeys(label_of.get(r['id'], [])))}) for "
                     f"{fmt_seconds(elapsed)}")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines.append("failed runs:")
        for r in failed:
            lines.append(f"  {r['id']} {r['task']} seed {r['seed']} "
                         f"({', '.join(dict.fromkeys(label_of.get(r['id'], [])))}): {r['error']}")
            if r["run_dir"]:
                lines.append(f"    log: {folder / 'logs' / (r['id'] + '.log')}")
    return "\n".join(lines), len(failed)


def _alive(run: dict) -> bool:
    return token_alive(run.get("owner"))


def export_csv(folder: str | Path, path: str | Path, what: str = "csv") -> Optional[Path]:
    """`what`: csv (one row per run), epochs (per fine-tuning epoch), align (per embedder
    epoch)."""
    from .export import align_rows, epoch_rows
    with Store(folder) as store:
        rows = {"csv": None, "epochs": epoch_rows, "align": align_rows}[what]
        return _write_csv(store, path, f"--{what}", None if rows is None else rows(store))


def _split(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError("expected a comma-separated list")
    return items


def _seeds(value: Optional[str]) -> Optional[list[int]]:
    items = _split(value)
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{value}'") from None


def _check_task_names(names: Optional[list[str]]) -> None:
    if not names:
        return
    from ..data.registry import REGISTRY
    for name in names:
        if name.startswith("npz:") or name in REGISTRY or is_preset_name(name):
            continue
        import difflib
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown task '{name}' in --tasks{hint} (see `xmodal tasks`)")


def list_text() -> str:
    lines = ["built-in studies (xmodal study run NAME --out DIR):"]
    for name in builtin_names():
        spec = load_spec(name)
        exp = ", ".join(p.get("experiment", "custom") for p in parts_of(spec))
        desc = " ".join(str(spec.get("description", "")).split())
        tasks = ", ".join(t if isinstance(t, str) else t.get("name") or t["preset"]
                          for t in spec.get("tasks", []))
        import textwrap
        body = textwrap.wrap(f"[{exp}] {desc}", 79) + textwrap.wrap(
            f"tasks: {tasks}; seeds: {', '.join(map(str, spec.get('seeds', [0])))}", 79)
        lines.append(f"  {name:<18} {body[0]}")
        lines += [f"  {'':<18} {line}" for line in body[1:]]
    lines.append("Options: --tasks a,b  --seeds 0,1  --set key=value  --workers N  --dry-run  "
                 "--smoke  --ray ADDRESS. See docs/studies.md for the spec format.")
    return "\n".join(lines)


def plan_text(plan: Plan, tflops: float = GPU_TFLOPS,
              measured: Optional[dict] = None) -> str:
    """`study run --dry-run`: one line per planned run (task, body, variant, seed; with
    `measured`, `smoke.measured`'s peak memory and seconds per step), how the GPU-hours were
    estimated (`study/costs.py`), the run count and the estimate."""
    rows = []
    for r in plan.runs:
        labels = [m[2].get("label") for m in r.members if m[2].get("label")]
        what = ", ".join(dict.fromkeys(labels)) or "-"
        body = r.config.body.name + ("" if r.config.body.pretrained else " (random init)")
        if r.config.baseline.method != NO_BASELINE:
            body = "baseline"
        seed = f"seed {r.seed}"
        if measured is not None:
            seed += "  " + _measured_text(measured.get(r.id), r.config.baseline.method)
        rows.append((r.task, body, what, seed))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3]
             for row in rows]
    cost = plan_cost(plan, tflops)
    lines.append(cost_text(cost, len(plan.runs)))
    if measured is not None:
        lines.append(memory_text(measured, plan))
    estimate = (f"about {cost.hours:.0f} GPU-hours" if cost.hours >= 10
                else f"about {cost.hours:.1f} GPU-hours")
    estimate = "no GPU-hours estimate" if cost.unknown == len(plan.runs) else estimate
    parts = ", ".join(plan.parts())
    lines.append(f"study '{plan.name}' ({parts}): {len(plan.runs)} runs; {estimate}; "
                 f"dry run: nothing was trained or written")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _measured_text(row: Optional[dict], method: str) -> str:
    if method != NO_BASELINE:
        return "(CPU baseline)"
    if row is None:
        return "(no smoke run)"
    peak = row["peak_bytes"]
    mem = "peak ?" if peak is None else f"peak {peak / 1e9:.1f} GB ({fits(peak)} card)"
    step = row["real_step_seconds"]
    return mem + ("" if step is None else f", {step:.1f} s/step on the smoke machine")


def memory_text(measured: dict, plan: Plan) -> str:
    """The largest measured peak and how many runs have a measurement."""
    model_runs = [r for r in plan.runs if r.config.baseline.method == NO_BASELINE]
    peaks = [row["peak_bytes"] for row in measured.values() if row["peak_bytes"] is not None]
    got = f"peak memory measured for {len(measured)} of {len(model_runs)} fine-tuning runs"
    if not peaks:
        return got
    how = next(row["peak_how"] for row in measured.values() if row["peak_bytes"] is not None)
    return (f"{got}; the largest {max(peaks) / 1e9:.1f} GB needs a {fits(max(peaks))} card "
            f"(with 20% headroom; measured as {how})")


def cost_text(cost: PlanCost, runs: int) -> str:
    """How the estimate was made, in one line."""
    how = []
    if cost.counted:
        how.append(f"{cost.counted} run(s) from FLOPs counted on their architectures "
                   f"(torch.utils.flop_counter, meta device) x the published split sizes, at "
                   f"{cost.tflops:g} TFLOP/s sustained (--gpu-tflops; alignment, data loading "
                   f"and start-up not counted)")
    tagged = runs - cost.counted - cost.unknown
    if tagged:
        how.append(f"{tagged} from the spec's gpu_hours_per_epoch tags or CPU baselines (0)")
    if cost.unknown:
        how.append(f"{cost.unknown} without an estimate (a task without published sizes "
                   f"and no gpu_hours_per_epoch tag)")
    return "GPU-hours: " + "; ".join(how)


def cli(args) -> int:
    cmd = args.study_command
    if cmd == "list":
        print(list_text())
        return 0
    if cmd == "run" and getattr(args, "dry_run", False):
        tasks = _split(args.tasks)
        _check_task_names(tasks)
        plan = expand(load_spec(args.spec), args.out, tasks=tasks, seeds=_seeds(args.seeds),
                      overrides=list(args.set or []))
        if getattr(args, "smoke", False):
            plan = smoke_plan(plan)
        smoke_dir = getattr(args, "smoke_from", None)
        found = measured(plan, smoke_dir) if smoke_dir else None
        print(plan_text(plan, getattr(args, "gpu_tflops", None) or GPU_TFLOPS, found))
        return 0
    if cmd == "run" and getattr(args, "smoke_from", None):
        raise UserError("--smoke-from goes with --dry-run (it reads a smoke study's "
                        "measurements into the plan); drop it or add --dry-run")
    if cmd == "run":
        tasks = _split(args.tasks)
        _check_task_names(tasks)
        outcome = run_study(args.spec, args.out, tasks=tasks, seeds=_seeds(args.seeds),
                            overrides=list(args.set or []),
                            workers=getattr(args, "workers", None),
                            ray=getattr(args, "ray", None),
                            ray_cpus=getattr(args, "ray_cpus", None),
                            ray_gpus=getattr(args, "ray_gpus", None),
                            fresh=args.fresh, quiet=args.quiet, progress=not args.quiet,
                            smoke=getattr(args, "smoke", False))
        msg = (f"study finished: {outcome.done}/{outcome.total} runs done, "
               f"{len(outcome.failed)} failed, {fmt_seconds(outcome.seconds)} "
               f"({outcome.skipped} were already done)")
        if not args.quiet:
            print(msg, file=sys.stderr)
        for run, err in outcome.failed:
            print(f"  failed: {run.id} {run.describe()}: {err}", file=sys.stderr)
        if outcome.failed:
            print(f"see `xmodal study status {args.out}`; re-running the same command retries "
                  f"failed runs", file=sys.stderr)
        if getattr(args, "smoke", False) and outcome.done:
            from .report import write_report
            path = write_report(args.out)
            if not args.quiet:
                print(f"smoke report: {path} (section 'Smoke run': peak memory and seconds per "
                      f"step of each run)", file=sys.stderr)
        return 0 if outcome.ok else 1
    if cmd == "status":
        text, n_failed = status_text(args.dir)
        print(text)
        return 0
    if cmd == "export":
        targets = [(flag, getattr(args, flag)) for flag in ("csv", "epochs", "align")
                   if getattr(args, flag)]
        if not targets:
            raise UserError("study export needs --csv FILE, --epochs FILE or --align FILE")
        if sum(path == "-" for _, path in targets) > 1:
            raise UserError("only one of --csv / --epochs / --align can be '-' (stdout)")
        for flag, target in targets:
            path = export_csv(args.dir, target, flag)
            if path is not None:      # '-': the CSV itself went to stdout
                print(f"wrote {path}", file=sys.stderr)
        return 0
    if cmd == "compare":
        from .compare import compare_command
        print(compare_command(args.a, args.b, args.md), end="")
        return 0
    raise UserError(f"unknown study command {cmd!r}")
