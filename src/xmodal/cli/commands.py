"""The `xmodal` commands: one `cmd_*` function per sub-command, each returning its exit code.
Heavy modules (torch, transformers) are imported inside the commands, so `xmodal --help` and
`import xmodal.cli` stay fast."""

from __future__ import annotations

import contextlib
import json
import sys

from .parser import overrides_from_args

def cmd_tasks(args) -> int:
    from ..data.registry import list_specs
    specs = list_specs()
    if args.json:
        print(json.dumps([{**s.__dict__, "loss": s.loss} for s in specs], indent=2))
        return 0
    rows = [("task", "input", "output", "loss", "metric", "source")]
    for s in specs:
        out = f"{s.kind} ({s.n_out})" if s.kind != "dense" else f"dense {s.output_shape}"
        rows.append((s.name, str(s.input_shape), out, s.loss, s.metric, s.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\nYour own data: --task npz:PATH (x_train, y_train, x_test, y_test [, x_val, y_val]).")
    return 0


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM during `fit`: finish the epoch, write the resume snapshot, exit 143. A second
    SIGTERM stops at once (the snapshot of an earlier epoch, if any, stays)."""
    import signal
    import threading
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("xmodal: SIGTERM: stopping after this epoch with a resume snapshot (send it again "
              "to stop now)", file=sys.stderr, flush=True)
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:        # not the main thread (e.g. called from a notebook's worker)
        yield None
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_fit(args) -> int:
    from ..config import load_config
    from ..runs.fit import fit
    cfg = load_config(args.config, overrides_from_args(args))
    if args.dry_run:
        return _dry_run(cfg)
    log = _quiet_log if args.quiet else _log_line
    with _stop_on_sigterm() as stop:
        result = fit(cfg, progress=not args.quiet, force=args.force, log=log, stop=stop)
    if result.reused:
        log(f"run {result.run_dir} is already complete (use --force to retrain)")
    print(json.dumps({"run_dir": str(result.run_dir), "status": result.status,
                      "metric": result.summary.get("metric"),
                      "test_metric": result.summary.get("test_metric_best"),
                      "error": result.summary.get("error")}))
    return 0 if result.status == "done" else 1


def cmd_baseline(args) -> int:
    from ..runs.baselines import check_method, default_methods
    from ..config import load_config
    from ..runs.fit import fit
    from ..data.registry import load_task
    items = overrides_from_args(args)
    cfg = load_config(args.config, items)
    data = load_task(cfg.task)
    methods = args.method or default_methods(data.spec)
    for method in methods:
        check_method(method, data.spec)
    failed = 0
    for method in methods:
        mcfg = load_config(args.config, items + [f"baseline.method={method}"])
        result = fit(mcfg, progress=not args.quiet, force=args.force, data=data,
                     log=(lambda _m: None) if args.quiet else _log_line)
        failed += result.status != "done"
        print(json.dumps({"run_dir": str(result.run_dir), "status": result.status,
                          "method": method, "metric": result.summary.get("metric"),
                          "test_metric": result.summary.get("test_metric_best"),
                          "error": result.summary.get("error")}), flush=True)
    return 1 if failed else 0


def _log_line(message: str) -> None:
    """One status line on stderr that does not tear an active progress bar."""
    from tqdm.auto import tqdm
    tqdm.write(message, file=sys.stderr)


def _quiet_log(message: str) -> None:  # noqa: ARG001 - --quiet: no log lines
    return None


def _dry_run(cfg) -> int:
    """Every pre-training check first (errors print alone), then the config and model summary."""
    from ..config import to_yaml
    from ..runs.fit import check_output_dir, preflight
    from ..config.identity import run_id
    from ..model.finetune import apply_finetune_mode, trainable_summary
    check_output_dir(cfg)
    checked = preflight(cfg)
    spec = checked.data.spec
    if checked.model is None:   # a domain baseline: no network to summarise
        print(to_yaml(cfg))
        print(f"# task {spec.name}: baseline {cfg.baseline.method}, sizes {checked.data.sizes()}")
        print(f"# run folder: {check_output_dir(cfg)} (run id {run_id(cfg)})")
        return 0
    model = apply_finetune_mode(checked.model, cfg.train.finetune, cfg.train.lora_rank)
    params = trainable_summary(model)
    print(to_yaml(cfg))
    print(f"# task {spec.name}: input {spec.input_shape}, {spec.kind}, metric {spec.metric}, "
          f"sizes {checked.data.sizes()}; device {checked.device}")
    print(f"# embedder: {model.embedder.n_tokens} tokens, grid {model.embedder.grid}; "
          f"init from body: {', '.join(checked.notes) or 'no'}")
    print("# parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    from ..stages.optim import resolve_budget
    from ..stages.device import resolve_precision
    b = resolve_budget(cfg.train, len(checked.data.x_train))
    print(f"# budget: batch {b.batch_size}, {b.epochs} epochs x {b.steps_per_epoch} steps = "
          f"{b.steps} optimizer steps ({b.rule}); precision "
          f"{resolve_precision(checked.device, cfg.run.precision)}")
    print(f"# run folder: {check_output_dir(cfg)} (run id {run_id(cfg)})")
    return 0


def cmd_predict(args) -> int:
    from ..runs.predict import predict_command
    result = predict_command(args.run_dir, args.input, args.output, labels=args.labels,
                             device=args.device, progress=not args.quiet)
    if "value" in result:
        print(f"{result['metric']}: {result['value']!r}")
    if not args.quiet:
        print(f"wrote {result['output']}: {result['n']} predictions for task {result['task']}",
              file=sys.stderr)
    return 0


def cmd_distance(args) -> int:
    from ..runs.distance import distance_command
    from ..ot.sinkhorn import sinkhorn_notes
    with sinkhorn_notes(_log_line, "raise --max-iter or --eps"):
        result = distance_command(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def cmd_study(args) -> int:
    from .. import study
    return study.cli(args)


def cmd_report(args) -> int:
    from pathlib import Path

    from ..study.report import is_run_folder, write_report, write_run_report
    folder = Path(args.dir)
    one_run = is_run_folder(folder) and not (folder / "study.db").exists()
    path = write_run_report(folder) if one_run else write_report(folder)
    print(f"report written to {path}")
    return 0


def cmd_export(args) -> int:
    from ..runs.predict import load_run
    result = load_run(args.run_dir, "cpu").export(args.out, args.format)
    print(json.dumps(result))
    return 0


def cmd_nb360(args) -> int:
    """`xmodal nb360 fixtures DIR`: synthetic files in the published formats, into a new or
    empty folder (never over a user's files)."""
    from pathlib import Path

    from ..data.nb360.fixtures import write_fixtures
    from ..errors import UserError
    folder = Path(args.dir).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "not empty" if folder.is_dir() else "not a folder"
        raise UserError(f"nb360 fixtures: '{folder}' is {what}; give a new or empty folder")
    written = write_fixtures(folder, seed=args.seed, text_width=args.text_width)
    for what, paths in written.items():
        size = sum(p.stat().st_size for p in paths) / 2**20
        names = ", ".join(str(p.relative_to(folder)) for p in paths)
        print(f"{what:22s} {size:6.1f} MB  {names}")
    print(f"\nsynthetic NAS-Bench-360 files (seeded noise, published formats) in {folder}: use "
          f"--set task.data_dir={folder} --set align.proxy_dir={folder}")
    return 0


COMMANDS = {"export": cmd_export, "tasks": cmd_tasks, "fit": cmd_fit, "baseline": cmd_baseline,
            "predict": cmd_predict, "distance": cmd_distance, "study": cmd_study,
            "report": cmd_report, "nb360": cmd_nb360}
