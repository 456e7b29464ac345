"""The `xmodal` argument parser: the fit flags and their config keys, one sub-parser per
command, and the argv clean-up (`--lr -1e-3`) before argparse sees it."""

from __future__ import annotations

import argparse
import re

from ..config.choices import FINETUNE_MODES, NO_PROXY, NPZ_PREFIX, OBJECTIVES, PROXIES, help_text

FIT_FLAGS = [  # (flag, config key, type, help)
    ("--task", "task.name", str, "task name (see `xmodal tasks`) or npz:PATH"),
    ("--body", "body.name", str, "minilm, a Hugging Face hub name, or a local model folder"),
    ("--epochs", "train.epochs", int, "fine-tuning epochs"),
    ("--batch-size", "train.batch_size", int, "batch size"),
    ("--lr", "train.lr", float, "fine-tuning learning rate"),
    ("--seed", "run.seed", int, "random seed"),
    ("--finetune", "train.finetune", str, help_text(FINETUNE_MODES)),
    ("--seq-len", "embedder.seq_len", int, "target number of tokens for 1D inputs"),
    ("--max-train", "task.max_train", int, "subsample the training set to N samples (none: all)"),
    ("--max-test", "task.max_test", int,
     "subsample the test (and validation) set to N samples (none: all)"),
    ("--device", "run.device", str, "cpu | cuda | cuda:N | auto"),
    ("--out", "run.out", str, "folder for run folders"),
    ("--data-dir", "task.data_dir", str,
     "folder with NAS-Bench-360 files (none: $XMODAL_DATA_DIR)"),
    ("--proxy", "align.proxy", str, f"alignment proxy: {NO_PROXY} | {help_text(PROXIES)} | "
                                    f"{NPZ_PREFIX}PATH"),
    ("--align-epochs", "align.epochs", int, "embedder (alignment) epochs"),
    ("--align-objective", "align.objective", str, help_text(OBJECTIVES)),
]


BASELINE_FLAGS = ("--seed", "--max-train", "--max-test", "--out", "--data-dir")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes (`--epochs two`) are one line and exit 2, like UserError;
    its help shows every option's default (options without one say so in their help)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append `(default: X)` to an option's help, except where there is no default to show."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _config_default(key: str):
    from ..config import Config, flatten
    return flatten(Config().to_dict()).get(key)


AUTOMATIC = ("train.epochs", "train.batch_size")   # None: sized to the training set


def _shown(value, key: str = "") -> str:
    if value is None:
        return "automatic" if key in AUTOMATIC else "none"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = _Parser(prog="xmodal", description="Cross-modal fine-tuning (ORCA) "
                     "and the ablation study of arXiv 2403.13537")
    parser.add_argument("--version", action="version", version=f"xmodal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="`xmodal COMMAND --help` for its options")
    tasks = _command(sub, "tasks", "list the tasks", "List the bundled and NAS-Bench-360 "
                     "tasks: input shape, output, loss, metric and data source.")
    tasks.add_argument("--json", action="store_true", help="print the task list as JSON")
    _fit_parser(sub)
    _baseline_parser(sub)
    _predict_parser(sub)
    _distance_parser(sub)
    _study_parser(sub)
    exp = _command(sub, "export", "a finished run as a folder that loads without xmodal",
                   "Write FOLDER/model.pt (TorchScript: torch.jit.load, PyTorch only; raw "
                   "inputs (N, *input shape) in, the run's outputs out: logits, or dense "
                   "values in the targets' units), FOLDER/task.json and FOLDER/README.md.")
    exp.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    exp.add_argument("--out", required=True, metavar="FOLDER", help="the folder to write")
    exp.add_argument("--format", default="torchscript", choices=["torchscript"],
                     help="the model file's format (default torchscript)")
    nb = _command(sub, "nb360", "NAS-Bench-360 helpers: synthetic files in the published formats",
                  "`xmodal nb360 fixtures DIR` writes small synthetic files (seeded noise) in "
                  "exactly the formats, names and shapes the NAS-Bench-360 loaders read: the six "
                  "tasks, CIFAR-10, and the MNIST and ORCA text-feature proxies. For smoke runs "
                  "of the presets and paper studies without the real data.")
    nbsub = nb.add_subparsers(dest="nb360_command", required=True, metavar="COMMAND",
                              title="commands", help="`xmodal nb360 COMMAND --help` for its options")
    fx = _command(nbsub, "fixtures", "write the synthetic files into a new or empty folder",
                  "Write the fixtures into DIR (use it as task.data_dir and align.proxy_dir).")
    fx.add_argument("dir", metavar="DIR", help="a new or empty folder")
    fx.add_argument("--seed", type=int, default=0, help="seed of the synthetic values")
    fx.add_argument("--text-width", type=int, default=768,
                    help="width of the text-proxy features: the text body's hidden size "
                         "(768: roberta-base)")
    rep = _command(sub, "report", "figures and report.md / report.html for a study or one run",
                   "Write DIR/report/: report.md, report.html and the figures. For a study "
                   "folder: one figure per research question, from the study store in DIR. For "
                   "one run folder (`xmodal fit`'s): its curves, summary and provenance.")
    rep.add_argument("dir", metavar="DIR", help="a study folder (`xmodal study run --out DIR`) "
                                                "or a run folder (`xmodal fit`'s)")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _command(sub, name: str, help_: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=description)


def _fit_parser(sub) -> None:
    fit = _command(sub, "fit", "align (optional) and fine-tune one configuration",
                   "Train and evaluate one configuration and write its run folder "
                   "(--out/<run id>): config.yaml, task.json, metrics.jsonl, summary.json, "
                   "best.safetensors. Flags override the config file; the defaults shown are "
                   "the config's. The last line on stdout is a JSON summary.")
    fit.add_argument("--config", metavar="YAML", help="YAML config file (default: none, "
                     "the built-in defaults)")
    for flag, key, typ, help_ in FIT_FLAGS:
        shown = _shown(_config_default(key), key)
        fit.add_argument(flag, type=typ, help=f"{help_} [{key}] (default: {shown})")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key (repeatable), e.g. train.warmup_epochs=1")
    fit.add_argument("--dry-run", action="store_true", help="make every check a run makes "
                     "(device, data files, body, model), print the resolved config and the "
                     "model summary, and stop before training")
    fit.add_argument("--force", action="store_true", help="retrain even if the run is complete")
    fit.add_argument("--quiet", action="store_true", help="no progress bars or log lines: only "
                     "the final JSON line on stdout (and errors on stderr)")


def _predict_parser(sub) -> None:
    pred = _command(sub, "predict", "predict with a finished run on new data",
                    "Load RUN_DIR (config.yaml, task.json, best.safetensors), apply the input "
                    "normalisation the run fitted on its training data, and write PRED.npz with "
                    "`pred` (class ids, 0/1 per label, or dense values), `proba` (class or "
                    "per-label probabilities) and `label_names` where the task has them.")
    pred.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `xmodal fit`")
    pred.add_argument("--input", required=True, metavar="FILE.npz",
                      help="npz with `x`: (N, *input shape), channels first, as the task's "
                           "x_* arrays (a single channel may be left out) [, `y` with --labels]")
    pred.add_argument("--output", required=True, metavar="PRED.npz",
                      help="where to write the predictions (replaced atomically)")
    pred.add_argument("--labels", action="store_true",
                      help="the input also holds `y`: print the task metric on it and copy "
                           "`y` into the output")
    pred.add_argument("--device", default="auto", metavar="DEVICE",
                      help="cpu | cuda | cuda:N | auto (default: auto, as fit)")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")


def _baseline_parser(sub) -> None:
    base = _command(sub, "baseline", "domain baselines on a task, with the same output as fit",
                    "Fit the obvious domain methods (logistic regression on the raw values, "
                    "MiniRocket for series, ridge and the mean field for dense tasks) on the "
                    "training split `xmodal fit` uses; one run folder and one JSON line each.")
    base.add_argument("--task", required=True, help="task name (see `xmodal tasks`) or npz:PATH")
    base.add_argument("--method", action="append", default=None,
                      choices=["logreg", "minirocket", "ridge", "mean"],
                      help="repeatable (default: every method that applies to the task, "
                           "except mean where another applies)")
    base.add_argument("--config", metavar="YAML",
                      help="YAML config file; its task section is used (default: none)")
    for flag in BASELINE_FLAGS:
        _flag, key, typ, help_ = next(f for f in FIT_FLAGS if f[0] == flag)
        base.add_argument(flag, type=typ, help=f"{help_} [{key}] "
                          f"(default: {_shown(_config_default(key), key)})")
    base.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (repeatable), e.g. task.validation=carve")
    base.add_argument("--force", action="store_true", help="refit even if the run is complete")
    base.add_argument("--quiet", action="store_true", help="only the JSON lines on stdout")


def _distance_parser(sub) -> None:
    dist = _command(sub, "distance", "OTDD between two labelled feature sets or tasks",
                    "The optimal-transport dataset distance (OTDD) between a source and a "
                    "target: labelled feature files, or task / proxy names embedded with a body.")
    dist.add_argument("--source", required=True, help="npz with x (N,d), y (N,), or a task/proxy")
    dist.add_argument("--target", required=True, help="npz with x (N,d) [, y], a task name, or "
                      "a run folder (its task through its trained embedder)")
    dist.add_argument("--inner", default="sinkhorn", choices=["sinkhorn", "gaussian", "exact"],
                      help="label-to-label distance: entropic OT (sinkhorn), Gaussian "
                           "approximation (Bures-Wasserstein), or exact OT")
    dist.add_argument("--eps", type=float, default=0.1, help="entropic regularisation of the "
                      "Sinkhorn solver")
    dist.add_argument("--max-iter", type=int, default=2000,
                      help="Sinkhorn iterations per solve at the final eps")
    dist.add_argument("--body", default="minilm", help="body whose embedding space is used for tasks")
    dist.add_argument("--max-samples", type=int, default=1000, help="per set, for task names")
    dist.add_argument("--seq-len", type=int, default=16,
                      help="target number of tokens for 1D tasks (as embedder.seq_len)")
    dist.add_argument("--data-dir", default=None,
                      help="folder with NAS-Bench-360 files (none: $XMODAL_DATA_DIR)")
    dist.add_argument("--proxy-dir", default=None,
                      help="folder with cifar10 / mnist / CoNLL files (as align.proxy_dir)")
    dist.add_argument("--cache-dir", default=None,
                      help="proxy feature cache (none: $XMODAL_CACHE, else ~/.cache/xmodal)")
    dist.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _study_parser(sub) -> None:
    study = _command(sub, "study", "run / inspect ablation studies",
                     "Run a study (a grid of fit configurations) into a SQLite-backed folder, "
                     "resume it, and inspect or export its results.")
    ssub = study.add_subparsers(dest="study_command", required=True, metavar="COMMAND",
                                title="commands",
                                help="`xmodal study COMMAND --help` for its options")
    _command(ssub, "list", "built-in studies", "List the built-in study specs.")
    run = _command(ssub, "run", "run (or resume) a study",
                   "Run every pending or failed run of a study; re-running the same command "
                   "resumes it (finished runs are kept).")
    run.add_argument("spec", metavar="SPEC", help="built-in study name or a study YAML file")
    run.add_argument("--out", required=True, metavar="DIR", help="the study folder")
    run.add_argument("--tasks", help="comma-separated task names (default: the spec's)")
    run.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key in every run (repeatable)")
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
    run.add_argument("--gpu-tflops", type=_positive_float, default=None, metavar="X",
                     help="with --dry-run: the sustained GPU throughput the GPU-hours assume, "
                          "in TFLOP/s (default 100)")
    run.add_argument("--smoke", action="store_true",
                     help="smoke mode: every distinct configuration once (first seed) at its real "
                          "architecture, token count, image size and batch size, with random "
                          "body weights, for 2 optimizer steps and at most 1 embedder epoch; "
                          "records time per step and peak memory, then writes the report "
                          "(a folder of its own; docs/studies.md, 'Smoke mode')")
    run.add_argument("--smoke-from", metavar="DIR", default=None,
                     help="with --dry-run: add each run's peak memory and seconds per step "
                          "measured by a smoke run of the same study in DIR")
    run.add_argument("--quiet", action="store_true", help="no progress or summary lines; "
                     "only failures are reported (on stderr)")
    st = _command(ssub, "status", "counts and failures of a study folder",
                  "Runs done / running / pending / failed, and each failure's error.")
    st.add_argument("dir", metavar="DIR", help="a study folder")
    ex = _command(ssub, "export", "CSV (or Parquet) tables of a study's results",
                  "Export one row per run (--csv: axes, status, final metrics), per run and "
                  "fine-tuning epoch (--epochs) or per run and embedder epoch (--align: the "
                  "alignment objective). A name ending in .parquet writes Parquet (needs "
                  "pyarrow); '-' writes CSV to stdout.")
    ex.add_argument("dir", metavar="DIR", help="a study folder")
    ex.add_argument("--csv", metavar="FILE", help="one row per run")
    ex.add_argument("--epochs", metavar="FILE", help="one row per run and fine-tuning epoch")
    ex.add_argument("--align", metavar="FILE", help="one row per run and embedder epoch")
    cmp_ = _command(ssub, "compare", "two study folders side by side",
                    "The settings (part, label, task) two study folders share, paired by seed, "
                    "each decided lower / higher / equivalent / inconclusive (A - B, Holm over "
                    "the shared settings, at A's margins), e.g. before and after a recipe "
                    "change. Prints a markdown table.")
    cmp_.add_argument("a", metavar="A", help="a study folder")
    cmp_.add_argument("b", metavar="B", help="another study folder")
    cmp_.add_argument("--md", metavar="FILE", help="also write the table to FILE")


def overrides_from_args(args) -> list[str]:
    """`key=value` for each fit flag the command has and the user gave, then the `--set` items."""
    items = []
    for flag, key, _typ, _help in FIT_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            items.append(f"{key}={value}")
    return items + list(args.set)


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_values(argv: list) -> list:
    """`--lr -1e-3` -> `--lr=-1e-3`: argparse takes '-1e-3' for an option (it only knows plain
    negative numbers such as -1 or -0.5), so a flag followed by a negative number is joined."""
    out: list = []
    for tok in map(str, argv):
        if out and NEGATIVE_NUMBER.match(tok) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out
