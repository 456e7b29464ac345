"""Command-line interface: `xmodal tasks | fit | distance | study ... | report`.

Every user mistake surfaces as one line `xmodal: error: ...` and exit code 2; a run that
fails (e.g. NaN loss) exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from .errors import UserError

FIT_FLAGS = [  # (flag, config key, type, help)
    ("--task", "task.name", str, "task name (see `xmodal tasks`) or npz:PATH"),
    ("--body", "body.name", str, "minilm, a Hugging Face hub name, or a local model folder"),
    ("--epochs", "train.epochs", int, "fine-tuning epochs"),
    ("--batch-size", "train.batch_size", int, "batch size"),
    ("--lr", "train.lr", float, "fine-tuning learning rate"),
    ("--seed", "run.seed", int, "random seed"),
    ("--finetune", "train.finetune", str, "all | layernorm | non-attn | freeze-embedder | "
                                          "freeze-body | predictor-only | lora"),
    ("--seq-len", "embedder.seq_len", int, "target number of tokens for 1D inputs"),
    ("--max-train", "task.max_train", int, "subsample the training set to N samples"),
    ("--max-test", "task.max_test", int, "subsample the test (and validation) set to N samples"),
    ("--device", "run.device", str, "cpu | cuda | auto"),
    ("--out", "run.out", str, "folder for run folders"),
    ("--data-dir", "task.data_dir", str, "folder with NAS-Bench-360 files"),
    ("--proxy", "align.proxy", str, "alignment proxy: none | digits | fakedata | cifar10 | mnist "
                                    "| text | fake-text | npz:PATH"),
    ("--align-epochs", "align.epochs", int, "embedder (alignment) epochs"),
    ("--align-objective", "align.objective", str, "otdd | otdd-gaussian | mmd | l2"),
]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes (`--epochs two`) are one line and exit 2, like UserError."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xmodal", description="Cross-modal fine-tuning (ORCA) "
                     "and the ablation study of arXiv 2403.13537")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list the tasks").add_argument("--json", action="store_true")
    _fit_parser(sub)
    _distance_parser(sub)
    _study_parser(sub)
    rep = sub.add_parser("report", help="figures and report.md / report.html for a study folder")
    rep.add_argument("dir")
    return parser


def _fit_parser(sub) -> None:
    fit = sub.add_parser("fit", help="align (optional) and fine-tune one configuration")
    fit.add_argument("--config", help="YAML config file")
    for flag, _key, typ, help_ in FIT_FLAGS:
        fit.add_argument(flag, type=typ, help=help_)
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key (repeatable), e.g. train.warmup_epochs=1")
    fit.add_argument("--dry-run", action="store_true", help="print the resolved config and the "
                     "model summary without training")
    fit.add_argument("--force", action="store_true", help="retrain even if the run is complete")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")


def _distance_parser(sub) -> None:
    dist = sub.add_parser("distance", help="OTDD between two labelled feature sets or tasks")
    dist.add_argument("--source", required=True, help="npz with x (N,d), y (N,), or a task/proxy")
    dist.add_argument("--target", required=True, help="npz with x (N,d) [, y], or a task name")
    dist.add_argument("--inner", default="sinkhorn", choices=["sinkhorn", "gaussian", "exact"])
    dist.add_argument("--eps", type=float, default=0.1)
    dist.add_argument("--body", default="minilm", help="body whose embedding space is used for tasks")
    dist.add_argument("--max-samples", type=int, default=1000, help="per set, for task names")
    dist.add_argument("--json", action="store_true")


def _study_parser(sub) -> None:
    study = sub.add_parser("study", help="run / inspect ablation studies")
    ssub = study.add_subparsers(dest="study_command", required=True)
    ssub.add_parser("list", help="built-in studies")
    run = ssub.add_parser("run", help="run (or resume) a study")
    run.add_argument("spec", help="built-in study name or a study YAML file")
    run.add_argument("--out", required=True)
    run.add_argument("--tasks", help="comma-separated task names")
    run.add_argument("--seeds", help="comma-separated seeds")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--workers", type=int, default=None,
                     help="parallel worker processes (default: the spec's `workers`, else 1); "
                          "with --ray: runs in flight at once (default: as many as the cluster "
                          "holds, cluster CPUs // --ray-cpus)")
    run.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="run on a Ray cluster: auto (this machine's cluster), HOST:PORT, "
                          "ray://HOST:PORT, or local (start a local instance); the study folder "
                          "must be on a file system shared by all nodes (docs/studies.md)")
    run.add_argument("--ray-cpus", type=float, default=None, metavar="N",
                     help="CPUs Ray reserves per run (default 1; also its torch threads)")
    run.add_argument("--ray-gpus", type=float, default=None, metavar="G",
                     help="GPUs per run for CUDA runs, e.g. 1 or 0.5 (default 0: runs see no GPU)")
    run.add_argument("--fresh", action="store_true", help="delete DIR first")
    run.add_argument("--dry-run", action="store_true",
                     help="print the planned runs (task, body, variant, seed), their count and a "
                          "GPU-hours estimate; train nothing, write nothing")
    run.add_argument("--quiet", action="store_true")
    st = ssub.add_parser("status", help="counts and failures of a study folder")
    st.add_argument("dir")
    ex = ssub.add_parser("export", help="one CSV row per run")
    ex.add_argument("dir")
    ex.add_argument("--csv", required=True)


def overrides_from_args(args) -> list[str]:
    items = []
    for flag, key, _typ, _help in FIT_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            items.append(f"{key}={value}")
    return items + list(args.set)


def cmd_tasks(args) -> int:
    from .tasks import list_specs
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


def cmd_fit(args) -> int:
    from .config import load_config, to_yaml
    from .fit import fit
    cfg = load_config(args.config, overrides_from_args(args))
    if args.dry_run:
        return _dry_run(cfg, to_yaml)
    result = fit(cfg, progress=not args.quiet, force=args.force,
                 log=_log_line)
    print(json.dumps({"run_dir": str(result.run_dir), "status": result.status,
                      "metric": result.summary.get("metric"),
                      "test_metric": result.summary.get("test_metric_best"),
                      "error": result.summary.get("error")}))
    return 0 if result.status == "done" else 1


def _log_line(message: str) -> None:
    """One status line on stderr that does not tear an active progress bar."""
    from tqdm.auto import tqdm
    tqdm.write(message, file=sys.stderr)


def _dry_run(cfg, to_yaml) -> int:
    from .model import apply_finetune_mode, build_model, trainable_summary
    from .tasks import REGISTRY, _load_plugins
    print(to_yaml(cfg))
    _load_plugins()
    if cfg.task.name in REGISTRY:
        spec = REGISTRY[cfg.task.name].spec
    else:
        from .tasks import load_task
        spec = load_task(cfg.task).spec
    model, notes = build_model(spec, cfg)
    model = apply_finetune_mode(model, cfg.train.finetune, cfg.train.lora_rank)
    params = trainable_summary(model)
    print(f"# task {spec.name}: input {spec.input_shape}, {spec.kind}, metric {spec.metric}")
    print(f"# embedder: {model.embedder.n_tokens} tokens, grid {model.embedder.grid}; "
          f"init from body: {', '.join(notes) or 'no'}")
    print("# parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    return 0


def cmd_distance(args) -> int:
    from .distance import distance_command
    result = distance_command(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def cmd_study(args) -> int:
    from . import study
    return study.cli(args)


def cmd_report(args) -> int:
    from .study.report import write_report
    path = write_report(args.dir)
    print(f"report written to {path}")
    return 0


COMMANDS = {"tasks": cmd_tasks, "fit": cmd_fit, "distance": cmd_distance, "study": cmd_study,
            "report": cmd_report}


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU spinning threads
    # slowed OTDD and AdamW steps several-fold (docs/benchmarks.md). Set it yourself to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"xmodal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xmodal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
