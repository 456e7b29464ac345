"""Reports of a study folder: figures (PNG), `report.md` and `report.html` in DIR/report/.

Everything is read from the study store (`DIR/study.db`). For every part of the study, by its
experiment:

- proxy (RQ1): per task, validation metric per fine-tuning epoch, one line per proxy and one
  for naive fine-tuning (no embedder training), mean and a +-1 std band over seeds (paper Fig. 2);
- align-epochs (RQ2): per task, OTDD per embedder epoch and the test metric after fine-tuning
  from that epoch's embedder, on two y-axes (Fig. 3);
- freezing (RQ3): per task, validation curves of the freezing modes, trained vs untrained
  embedder (Fig. 4);
- pretraining (RQ4): per task, final test metric vs pre-training amount (log x when every body
  has a numeric token count), random initialisation included (Fig. 5);
- custom: validation curves per label.

Each part also gets a table of final test metrics (mean +- std over seeds) and, per task, a
sentence computed from those numbers with one stated rule (`compare`): a difference counts only
when the difference of the means exceeds the larger of the two seed standard deviations.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .store import Store

RULE = ("A difference between two settings counts only when the difference of their means "
        "exceeds the larger of their two standard deviations over seeds (sample std, ddof=1); "
        "otherwise it is reported as no difference beyond the seed spread. With fewer than two "
        "seeds on either side the spread is unknown and no verdict is given. All metrics are "
        "errors: lower is better.")
BODY_FROZEN_MODES = ("freeze-body", "predictor-only")
MODE_ORDER = ("all", "freeze-embedder", "non-attn", "layernorm", "lora", "freeze-body",
              "predictor-only")
MODE_TEXT = {"all": "all (embedder + body + predictor)", "freeze-embedder": "freeze embedder",
             "freeze-body": "freeze body", "predictor-only": "predictor only",
             "layernorm": "LayerNorm only", "non-attn": "all but attention", "lora": "LoRA"}
EXPERIMENT_TITLES = {
    "proxy": "RQ1: does the proxy dataset (or embedder training at all) matter?",
    "align-epochs": "RQ2: does more embedder training (lower OTDD) give lower error?",
    "freezing": "RQ3: which components need fine-tuning?",
    "pretraining": "RQ4: how much does the body's pre-training matter?",
    "custom": "Custom study",
}


# ----------------------------------------------------------------------------- statistics

@dataclass
class Stat:
    values: list

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> Optional[float]:
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

    def text(self, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        dec = _decimals(self.mean, digits)
        if self.std is None:
            return f"{_num(self.mean, digits)} (1 seed)"
        return f"{_num(self.mean, digits)} ± {_num(self.std, digits, dec)}"


def _decimals(x: float, digits: int = 3) -> int:
    """Decimals that show at least `digits` significant digits of a small number (max 6)."""
    if x == 0 or not math.isfinite(x):
        return digits
    if abs(x) >= 1:
        return max(1, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return int(min(6, max(digits, digits - math.floor(math.log10(abs(x))) - 1)))


def _num(x: Optional[float], digits: int = 3, decimals: Optional[int] = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{_decimals(x, digits) if decimals is None else decimals}f}"


def compare(a: Stat, b: Stat) -> str:
    """Verdict for setting `a` against setting `b` (lower is better): 'better', 'worse',
    'same' (within the seed spread) or 'unknown' (fewer than 2 seeds on a side)."""
    if a.n < 2 or b.n < 2:
        return "unknown"
    diff = a.mean - b.mean
    if abs(diff) > max(a.std, b.std):
        return "better" if diff < 0 else "worse"
    return "same"


VERDICT_TEXT = {"better": "better", "worse": "worse",
                "same": "no difference beyond the seed spread",
                "unknown": "spread unknown (one seed)"}


def spearman(x: list, y: list) -> Optional[float]:
    if len(x) < 3:
        return None
    rx = _ranks(np.asarray(x, float))
    ry = _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = a.argsort(kind="stable")
    ranks = np.empty(len(a), float)
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # average ties
        idx = a == v
        ranks[idx] = ranks[idx].mean()
    return ranks


# ----------------------------------------------------------------------------- data

@dataclass
class RunView:
    id: str
    task: str
    seed: int
    config: dict
    labels: dict
    status: str
    final: Optional[dict]
    epochs: list
    trace: list

    @property
    def aligned(self) -> bool:
        a = self.config.get("align", {})
        return a.get("proxy", "none") != "none" and (a.get("epochs") or 0) > 0

    @property
    def test(self) -> Optional[float]:
        return None if not self.final else self.final.get("test_metric_best")

    @property
    def label(self) -> str:
        return str(self.labels.get("label") or self.labels.get("variant") or "run")


@dataclass
class Part:
    name: str
    experiment: str
    runs: list = field(default_factory=list)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.runs))

    def done(self, task: Optional[str] = None) -> list[RunView]:
        return [r for r in self.runs if r.status == "done" and r.final is not None
                and r.test is not None and (task is None or r.task == task)]


def load_parts(store: Store) -> list[Part]:
    runs = {r["id"]: r for r in store.runs()}
    finals = store.finals()
    epochs = store.epochs()
    traces = store.align_traces()
    parts: dict[str, Part] = {}
    seen: set = set()
    for m in store.members():
        if (m["part"], m["run_id"]) in seen:   # one run in the same part of two studies
            continue
        seen.add((m["part"], m["run_id"]))
        r = runs[m["run_id"]]
        part = parts.setdefault(m["part"], Part(m["part"], m["experiment"]))
        part.runs.append(RunView(r["id"], r["task"], r["seed"], r["config"], m["labels"],
                                 r["status"], finals.get(r["id"]), epochs.get(r["id"], []),
                                 traces.get(r["id"], [])))
    return list(parts.values())


def _metric_label(runs: list[RunView]) -> str:
    for r in runs:
        if r.final and r.final.get("metric_label"):
            return r.final["metric_label"]
    for r in runs:
        if r.final and r.final.get("metric"):
            return r.final["metric"]
    return "metric"


def _group(runs: list[RunView], key) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def _stat(runs: list[RunView], attr: str = "test") -> Stat:
    vals = [getattr(r, attr) if attr == "test" else (r.final or {}).get(attr) for r in runs]
    return Stat([float(v) for v in vals if v is not None and math.isfinite(float(v))])


def _curve(runs: list[RunView], field_: str = "val_metric"):
    """Mean and std per epoch over runs (epochs where every run has a value)."""
    per: dict[int, list] = {}
    for r in runs:
        for e in r.epochs:
            if e.get(field_) is not None:
                per.setdefault(int(e["epoch"]), []).append(float(e[field_]))
    xs = sorted(k for k, v in per.items() if len(v) == len(runs))
    mean = np.array([np.mean(per[x]) for x in xs])
    std = np.array([np.std(per[x], ddof=1) if len(per[x]) > 1 else 0.0 for x in xs])
    return np.array(xs), mean, std


def _band(ax, xs, mean, std, color) -> None:
    """+-1 std band, clipped at 0 (every metric here is a non-negative error)."""
    ax.fill_between(xs, np.maximum(mean - std, 0.0), mean + std, color=color, alpha=0.15, lw=0)


def _curve_field(runs: list[RunView]) -> str:
    """Per-epoch test metric if every run recorded it, else the validation metric."""
    has_test = runs and all(r.epochs and all(e.get("test_metric") is not None for e in r.epochs)
                            for r in runs)
    return "test_metric" if has_test else "val_metric"


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                         "legend.fontsize": 9, "figure.titlesize": 12,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _panel_grid(n: int, ncols_max: int = 3, w: float = 5.0, h: float = 3.8,
                extra_rows: float = 0.0):
    plt = _plt()
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + extra_rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    import textwrap
    width = max(40, int(fig.get_figwidth() * 11))
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, width)]
    fig.suptitle("\n".join(lines))


def _save(fig, path: Path, legend_items: Optional[tuple] = None, ncol: int = 4) -> Path:
    if legend_items:
        handles, labels = legend_items
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(labels) / ncol), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def _collect_legend(axes) -> tuple:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    return handles, labels


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
MODE_STYLE = {"all": ("#1f77b4", "o", "-"), "freeze-embedder": ("#ff7f0e", "s", "--"),
              "non-attn": ("#9467bd", "v", "-"), "layernorm": ("#17becf", "P", "-"),
              "lora": ("#bcbd22", "X", "-"), "freeze-body": ("#2ca02c", "^", "-"),
              "predictor-only": ("#d62728", "D", ":")}


def _curves_figure(part: Part, path: Path, key, order: list, title: str,
                   styles=None) -> Optional[Path]:
    tasks = [t for t in part.tasks() if part.done(t)]
    if not tasks:
        return None
    fig, axes = _panel_grid(len(tasks))
    seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
    fields = set()
    for ax, task in zip(axes, tasks):
        groups = _group(part.done(task), key)
        fld = _curve_field(part.done(task))
        fields.add(fld)
        for i, name in enumerate([k for k in order if k in groups]):
            xs, mean, std = _curve(groups[name], fld)
            if not len(xs):
                continue
            style = (styles or {}).get(name, {})
            color = style.get("color", COLORS[order.index(name) % len(COLORS)])
            ls = style.get("ls", "-")
            marker = style.get("marker", MARKERS[order.index(name) % len(MARKERS)])
            ax.plot(xs, mean, ls, color=color, marker=marker, ms=4.5, lw=1.8, label=str(name))
            if len(groups[name]) > 1:
                _band(ax, xs, mean, std, color)
        metric = _metric_label(part.done(task))
        which = "test" if fld == "test_metric" else "validation"
        ax.set_title(task)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel(f"{which} {metric}\n(lower is better)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    which = "test" if fields == {"test_metric"} else "validation"
    _suptitle(fig, f"{title}\n{which} metric per epoch, mean ± 1 std over {seeds} seed(s)")
    return _save(fig, path, _collect_legend(axes))


# ----------------------------------------------------------------------------- sections

@dataclass
class Section:
    title: str
    # ("p", text) | ("table", head, rows) | ("img", path, alt) | ("ul", items)
    blocks: list = field(default_factory=list)


def _proxy_key(r: RunView) -> str:
    if not r.aligned:
        return r.labels.get("variant") or "naive"
    return r.labels.get("variant") or f"proxy {r.config['align']['proxy']}"


def section_proxy(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['proxy']} (part '{part.name}')")
    done = part.done()
    order = list(dict.fromkeys(_proxy_key(r) for r in sorted(done, key=lambda r: r.aligned)))
    styles = {k: ({"color": "black", "ls": "--"} if not any(r.aligned for r in done
                                                             if _proxy_key(r) == k) else {})
              for k in order}
    fig = _curves_figure(part, out / _fig_name("rq1", part), _proxy_key, order,
                         "RQ1 proxy datasets (dashed: naive fine-tuning, no embedder training)",
                         styles)
    if fig:
        sec.blocks.append(("img", fig, f"{part.name}: metric per fine-tuning epoch per proxy"))
    rows, sentences = [], []
    for task in part.tasks():
        groups = _group(part.done(task), _proxy_key)
        if not groups:
            continue
        metric = _metric_label(part.done(task))
        naive = [k for k in groups if not any(r.aligned for r in groups[k])]
        base = Stat([]) if not naive else _stat(groups[naive[0]])
        for k in [k for k in order if k in groups]:
            st = _stat(groups[k])
            verdict = "" if k in naive or not naive else VERDICT_TEXT[compare(st, base)]
            rows.append([task, k, str(st.n), st.text(), _stat(groups[k], "test_metric_last").text(),
                         _otdd_final(groups[k]), verdict])
        proxies = [k for k in order if k in groups and k not in naive]
        if not proxies:
            continue
        if naive:
            verdicts = {k: compare(_stat(groups[k]), base) for k in proxies}
            better = [k for k, v in verdicts.items() if v == "better"]
            worse = [k for k, v in verdicts.items() if v == "worse"]
            if all(v == "unknown" for v in verdicts.values()):
                head = (f"On {task}, with one seed the comparison of embedder training against "
                        f"naive fine-tuning has no spread to judge by")
            elif better and not worse:
                head = (f"On {task}, embedder training beat naive fine-tuning beyond the seed "
                        f"spread with {_join(better)}")
            elif worse and not better:
                head = (f"On {task}, embedder training was worse than naive fine-tuning beyond "
                        f"the seed spread with {_join(worse)}")
            elif better and worse:
                head = (f"On {task}, embedder training beat naive fine-tuning with "
                        f"{_join(better)} but was worse with {_join(worse)}")
            else:
                head = (f"On {task}, embedder training did not beat naive fine-tuning beyond "
                        f"the seed spread with any proxy")
            detail = "; ".join(f"{k} {_stat(groups[k]).text()}" for k in proxies)
            sentences.append(f"{head} ({metric}: naive {base.text()}; {detail}).")
        if len(proxies) >= 2:
            stats = {k: _stat(groups[k]) for k in proxies}
            pairs = [(a, b, compare(stats[a], stats[b])) for i, a in enumerate(proxies)
                     for b in proxies[i + 1:]]
            differ = [(a, b, v) for a, b, v in pairs if v in ("better", "worse")]
            if all(v == "unknown" for _, _, v in pairs):
                sentences.append(f"On {task}, the proxies cannot be compared with one seed.")
            elif differ:
                desc = ", ".join(f"{a} {'<' if v == 'better' else '>'} {b}" for a, b, v in differ)
                sentences.append(f"On {task}, the choice of proxy mattered beyond the seed "
                                 f"spread ({desc}).")
            else:
                sentences.append(f"On {task}, the choice of proxy made no difference beyond "
                                 f"the seed spread ({', '.join(proxies)}).")
    sec.blocks.append(("table", ["task", "setting", "seeds", "test (best val) mean ± std",
                                 "test (last epoch)", "final OTDD", "vs naive"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs to compare yet."]))
    return sec


def _otdd_final(runs: list[RunView]) -> str:
    vals = [r.trace[-1]["otdd"] for r in runs if r.trace and r.trace[-1].get("otdd") is not None]
    return Stat(vals).text() if vals else "-"


def _join(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _from_epoch(r: RunView) -> int:
    a = r.config["align"]
    return int(a["epochs"] if a.get("from_epoch") is None else a["from_epoch"])


def _trace_stats(runs: list[RunView]):
    """OTDD per embedder epoch: mean and std over seeds (one trace per seed)."""
    per_seed: dict[int, list] = {}
    for r in runs:
        if len(r.trace) > len(per_seed.get(r.seed, [])):
            per_seed[r.seed] = r.trace
    per_epoch: dict[int, list] = {}
    for trace in per_seed.values():
        for rec in trace:
            if rec.get("otdd") is not None:
                per_epoch.setdefault(int(rec["epoch"]), []).append(float(rec["otdd"]))
    xs = sorted(per_epoch)
    return ({x: Stat(per_epoch[x]) for x in xs}, len(per_seed))


def section_align_epochs(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['align-epochs']} (part '{part.name}')")
    tasks = [t for t in part.tasks() if any(r.aligned for r in part.done(t))]
    rows, sentences = [], []
    if tasks:
        fig, axes = _panel_grid(len(tasks), ncols_max=2, w=6.0, h=4.0)
        twins = []
        for ax, task in zip(axes, tasks):
            done = part.done(task)
            aligned = [r for r in done if r.aligned]
            naive = [r for r in done if not r.aligned]
            trace, n_traces = _trace_stats(aligned)
            metric = _metric_label(done)
            ax2 = ax.twinx()
            twins.append(ax2)
            ax2.spines["right"].set_visible(True)
            if trace:
                xs = np.array(list(trace))
                m = np.array([trace[x].mean for x in xs])
                s = np.array([trace[x].std or 0.0 for x in xs])
                ax.plot(xs, m, "-", color="#1f77b4", lw=1.8, label="OTDD (proxy vs target)")
                if n_traces > 1:
                    _band(ax, xs, m, s, "#1f77b4")
            by_epoch = _group(aligned, _from_epoch)
            ex = sorted(by_epoch)
            em = [_stat(by_epoch[e]).mean for e in ex]
            es = [_stat(by_epoch[e]).std or 0.0 for e in ex]
            ax2.errorbar(ex, em, yerr=es, fmt="s-", color="#d62728", capsize=4, lw=1.8, ms=6,
                         label=f"test {metric} after fine-tuning")
            if naive:
                st = _stat(naive)
                ax2.axhline(st.mean, color="black", ls="--", lw=1.2,
                            label="naive fine-tuning (no embedder training)")
            ax.set_title(task)
            ax.set_xlabel("embedder (alignment) epoch")
            ax.set_ylabel("OTDD to proxy (lower = closer)", color="#1f77b4")
            ax.tick_params(axis="y", colors="#1f77b4")
            ax2.set_ylabel(f"test {metric}\n(lower is better)", color="#d62728")
            ax2.tick_params(axis="y", colors="#d62728")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            for e in ex:
                rows.append([task, str(e), trace[e].text() if e in trace else "-",
                             str(_stat(by_epoch[e]).n), _stat(by_epoch[e]).text()])
            if naive:
                rows.append([task, "naive", "-", str(_stat(naive).n), _stat(naive).text()])
            sentences.append(_align_sentence(task, metric, trace, by_epoch))
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        _suptitle(fig, "RQ2 embedder training: OTDD per embedder epoch (blue, left axis) and "
                       "test error after fine-tuning from that epoch's embedder (red, right "
                       f"axis); mean ± 1 std over {seeds} seed(s)")
        path = _save(fig, out / _fig_name("rq2", part),
                     _collect_legend(axes + twins), ncol=3)
        sec.blocks.append(("img", path,
                           f"{part.name}: OTDD and downstream error per embedder epoch"))
    sec.blocks.append(("table", ["task", "embedder epoch", "OTDD", "seeds",
                                 "test after fine-tuning (mean ± std)"], rows))
    sec.blocks.append(("ul", sentences or ["No finished aligned runs yet."]))
    return sec


def _align_sentence(task: str, metric: str, trace: dict, by_epoch: dict) -> str:
    ex = sorted(by_epoch)
    parts = []
    if trace:
        first, last = min(trace), max(trace)
        a, b = trace[first].mean, trace[last].mean
        change = "fell" if b < a else "rose" if b > a else "stayed"
        parts.append(f"On {task}, OTDD {change} from {_num(a)} (embedder epoch {first}) to "
                     f"{_num(b)} (epoch {last})")
    else:
        parts.append(f"On {task}, no OTDD trace was recorded")
    if len(ex) >= 2:
        e0, e1 = ex[0], ex[-1]
        s0, s1 = _stat(by_epoch[e0]), _stat(by_epoch[e1])
        v = compare(s1, s0)
        what = {"better": "lower, beyond the seed spread",
                "worse": "higher, beyond the seed spread",
                "same": "not different beyond the seed spread",
                "unknown": "not comparable (one seed)"}[v]
        parts.append(f"; fine-tuning from the epoch-{e1} embedder gave {metric} {s1.text()} vs "
                     f"{s0.text()} from the epoch-{e0} embedder ({what})")
        best = min(ex, key=lambda e: _stat(by_epoch[e]).mean)
        parts.append(f"; the lowest mean error came from embedder epoch {best}")
        common = [e for e in ex if e in trace]
        rho = spearman([trace[e].mean for e in common], [_stat(by_epoch[e]).mean for e in common])
        if rho is not None:
            rel = ("lower OTDD went with lower error" if rho >= 0.8 else
                   "lower OTDD went with higher error" if rho <= -0.8 else
                   "no consistent relation between OTDD and error")
            parts.append(f"; Spearman correlation of OTDD with mean error over {len(common)} "
                         f"embedder epochs: {rho:+.2f} ({rel}; rule: |rho| >= 0.8)")
    return "".join(parts) + "."


def section_freezing(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['freezing']} (part '{part.name}')")
    done = part.done()
    tasks = [t for t in part.tasks() if part.done(t)]
    modes = [m for m in MODE_ORDER if any(r.config["train"]["finetune"] == m for r in done)]
    emb = lambda r: "trained" if r.aligned else "untrained"  # noqa: E731
    kinds = [k for k in ("trained", "untrained") if any(emb(r) == k for r in done)]
    if tasks:
        plt = _plt()
        fig, axes = plt.subplots(len(tasks), len(kinds), squeeze=False, sharey="row",
                                 figsize=(5.2 * len(kinds), 3.8 * len(tasks)))
        fld_all = set()
        for i, task in enumerate(tasks):
            tdone = part.done(task)
            fld = _curve_field(tdone)
            fld_all.add(fld)
            metric = _metric_label(tdone)
            for j, kind in enumerate(kinds):
                ax = axes[i][j]
                for mode in modes:
                    runs = [r for r in tdone
                            if emb(r) == kind and r.config["train"]["finetune"] == mode]
                    if not runs:
                        continue
                    xs, m, s = _curve(runs, fld)
                    color, marker, ls = MODE_STYLE.get(mode, ("#7f7f7f", "o", "-"))
                    ax.plot(xs, m, ls=ls, marker=marker, color=color, ms=5, lw=1.8,
                            label=MODE_TEXT.get(mode, mode))
                    if len(runs) > 1:
                        _band(ax, xs, m, s, color)
                ax.set_title(f"{task}: {kind} embedder")
                ax.set_xlabel("fine-tuning epoch")
                which = "test" if fld == "test_metric" else "validation"
                ax.set_ylabel(f"{which} {metric}\n(lower is better)")
                ax.tick_params(labelleft=True)
                ax.grid(alpha=0.3)
                ax.xaxis.get_major_locator().set_params(integer=True)
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        which = "test" if fld_all == {"test_metric"} else "validation"
        _suptitle(fig, "RQ3 freezing in fine-tuning: trained (aligned) vs untrained embedder\n"
                       f"{which} metric per epoch, mean ± 1 std over {seeds} seed(s)")
        path = _save(fig, out / _fig_name("rq3", part), _collect_legend(list(axes.flat)))
        sec.blocks.append(("img", path, f"{part.name}: curves per freezing mode"))
    rows, sentences = [], []
    for task in tasks:
        tdone = part.done(task)
        metric = _metric_label(tdone)
        stats = {(m, k): _stat([r for r in tdone
                                if r.config["train"]["finetune"] == m and emb(r) == k])
                 for m in modes for k in kinds}
        for m in modes:
            tr, un = stats.get((m, "trained"), Stat([])), stats.get((m, "untrained"), Stat([]))
            verdict = VERDICT_TEXT[compare(tr, un)] if tr.n and un.n else "-"
            rows.append([task, MODE_TEXT.get(m, m), tr.text() if tr.n else "-",
                         un.text() if un.n else "-", verdict])
        kind = "trained" if "trained" in kinds else kinds[0]
        present = [m for m in modes if stats[(m, kind)].n]
        body_on = {m: stats[(m, kind)] for m in present if m not in BODY_FROZEN_MODES}
        body_off = {m: stats[(m, kind)] for m in present if m in BODY_FROZEN_MODES}
        if body_on and body_off:
            bon = min(body_on, key=lambda m: body_on[m].mean)
            boff = min(body_off, key=lambda m: body_off[m].mean)
            v = compare(body_on[bon], body_off[boff])
            text = {"better": "fine-tuning the body helped beyond the seed spread",
                    "worse": "fine-tuning the body hurt beyond the seed spread",
                    "same": "fine-tuning the body made no difference beyond the seed spread",
                    "unknown": "with one seed the effect of fine-tuning the body has no spread "
                               "to judge by"}[v]
            sentences.append(f"On {task} ({kind} embedder), {text}: best mode that trains the body "
                             f"({MODE_TEXT.get(bon, bon)}) {metric} {body_on[bon].text()} vs best "
                             f"mode that freezes it ({MODE_TEXT.get(boff, boff)}) "
                             f"{body_off[boff].text()}.")
        if len(kinds) == 2:
            verdicts = {m: compare(stats[(m, "trained")], stats[(m, "untrained")]) for m in modes
                        if stats[(m, "trained")].n and stats[(m, "untrained")].n}
            if verdicts:
                better = [MODE_TEXT.get(m, m) for m, v in verdicts.items() if v == "better"]
                worse = [MODE_TEXT.get(m, m) for m, v in verdicts.items() if v == "worse"]
                known = [m for m, v in verdicts.items() if v != "unknown"]
                if not known:
                    sentences.append(f"On {task}, trained vs untrained embedder cannot be judged "
                                     f"with one seed.")
                else:
                    msg = (f"On {task}, the trained embedder beat the untrained one beyond "
                           f"the seed spread in {len(better)} of {len(known)} freezing modes"
                           + (f" ({_join(better)})" if better else ""))
                    if worse:
                        msg += f" and was worse in {len(worse)} ({_join(worse)})"
                    sentences.append(msg + ".")
    sec.blocks.append(("table", ["task", "fine-tuned", "trained embedder", "untrained embedder",
                                 "trained vs untrained"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs to compare yet."]))
    return sec


def _is_random(r: RunView) -> bool:
    return r.config.get("body", {}).get("pretrained", True) is False


def _pre_key(r: RunView) -> str:
    if r.labels.get("variant"):
        return str(r.labels["variant"])
    body = r.config.get("body", {}).get("name", "body")
    return f"{body} (random init)" if _is_random(r) else body


def _tokens(runs: list[RunView]) -> Optional[float]:
    for r in runs:
        t = r.labels.get("tokens")
        if t is not None:
            try:
                return float(t)
            except (TypeError, ValueError):
                return None
    return None


def section_pretraining(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['pretraining']} (part '{part.name}')")
    tasks = [t for t in part.tasks() if part.done(t)]
    rows, sentences = [], []
    all_numeric = True
    if tasks:
        fig, axes = _panel_grid(len(tasks), ncols_max=3, w=5.2, h=4.0)
        for ax, task in zip(axes, tasks):
            done = part.done(task)
            metric = _metric_label(done)
            groups = _group(done, _pre_key)
            rnd = {k: v for k, v in groups.items() if all(_is_random(r) for r in v)}
            pre = {k: v for k, v in groups.items() if k not in rnd}
            tokens = {k: _tokens(v) for k, v in pre.items()}
            numeric = bool(pre) and all(t is not None and t > 0 for t in tokens.values())
            all_numeric = all_numeric and numeric
            if numeric:
                keys = sorted(pre, key=lambda k: tokens[k])
                xs = [tokens[k] for k in keys]
                ms = [_stat(pre[k]).mean for k in keys]
                ss = [_stat(pre[k]).std or 0.0 for k in keys]
                ax.errorbar(xs, ms, yerr=ss, fmt="o-", color="#1f77b4", capsize=4, lw=1.8,
                            label="pre-trained body")
                for k, x, m in zip(keys, xs, ms):
                    ax.annotate(k, (x, m), textcoords="offset points", xytext=(4, 6), fontsize=8)
                ax.set_xscale("log")
                ax.margins(x=0.2)
                ax.set_xlabel("pre-training tokens (log scale)")
                for i, (k, runs) in enumerate(rnd.items()):
                    st = _stat(runs)
                    ax.axhline(st.mean, color="black", ls="--", lw=1.4, label="random init")
                    if st.std:
                        ax.axhspan(st.mean - st.std, st.mean + st.std, color="black", alpha=0.08)
            else:
                keys = list(rnd) + list(pre)
                xs = np.arange(len(keys))
                for i, k in enumerate(keys):
                    st = _stat(groups[k])
                    color = "black" if k in rnd else "#1f77b4"
                    ax.errorbar([i], [st.mean], yerr=[st.std or 0.0], fmt="o", color=color,
                                capsize=5, ms=8,
                                label="random init" if k in rnd else "pre-trained body")
                    for r in groups[k]:
                        ax.plot([i + 0.12], [r.test], ".", color=color, alpha=0.5)
                ax.set_xticks(xs, [k.replace(" (", "\n(") for k in keys])
                ax.set_xlim(-0.6, len(keys) - 0.4)
                ax.set_xlabel("body (pre-training amount)")
            ax.set_title(task)
            ax.set_ylabel(f"test {metric}\n(lower is better)")
            ax.grid(alpha=0.3)
            for k in list(rnd) + sorted(pre, key=lambda k: (tokens.get(k) or 0)):
                st = _stat(groups[k])
                tk = "0 (random init)" if k in rnd else \
                    (_num(tokens[k], 2) if tokens.get(k) else "unknown")
                rows.append([task, k, tk, str(st.n), st.text()])
            if rnd and pre:
                rk = list(rnd)[0]
                best = min(pre, key=lambda k: _stat(pre[k]).mean)
                v = compare(_stat(pre[best]), _stat(rnd[rk]))
                text = {"better": "pre-training helped beyond the seed spread",
                        "worse": "pre-training hurt beyond the seed spread",
                        "same": "pre-training made no difference beyond the seed spread",
                        "unknown": "with one seed the effect of pre-training has no spread to "
                                   "judge by"}[v]
                msg = (f"On {task}, {text}: best pre-trained body ({best}) {metric} "
                       f"{_stat(pre[best]).text()} vs random initialisation "
                       f"{_stat(rnd[rk]).text()}")
                if numeric and len(pre) >= 3:
                    keys = list(pre)
                    rho = spearman([math.log10(tokens[k]) for k in keys],
                                   [_stat(pre[k]).mean for k in keys])
                    if rho is not None:
                        msg += (f"; Spearman correlation of error with log pre-training tokens "
                                f"over {len(keys)} bodies: {rho:+.2f}")
                sentences.append(msg + ".")
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        dots = "" if all_numeric else "; small dots: single seeds"
        _suptitle(fig, f"RQ4 pre-training amount: test error after fine-tuning, mean ± 1 std "
                       f"over {seeds} seed(s){dots}")
        path = _save(fig, out / _fig_name("rq4", part), _collect_legend(axes), ncol=3)
        sec.blocks.append(("img", path, f"{part.name}: final error vs pre-training amount"))
    sec.blocks.append(("table", ["task", "body", "pre-training tokens", "seeds",
                                 "test (best val) mean ± std"], rows))
    sec.blocks.append(("ul", sentences or ["Needs both a pre-trained and a randomly initialised "
                                           "body to compare."]))
    return sec


def section_custom(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['custom']}: part '{part.name}'")
    done = part.done()
    key = lambda r: r.label  # noqa: E731
    order = list(dict.fromkeys(key(r) for r in done))
    fig = _curves_figure(part, out / _fig_name("custom", part), key, order, f"{part.name}")
    if fig:
        sec.blocks.append(("img", fig, f"{part.name}: metric per fine-tuning epoch"))
    rows, sentences = [], []
    for task in part.tasks():
        groups = _group(part.done(task), key)
        for k in [k for k in order if k in groups]:
            rows.append([task, k, str(_stat(groups[k]).n), _stat(groups[k]).text(),
                         _stat(groups[k], "test_metric_last").text()])
        if len(groups) >= 2:
            best = min(groups, key=lambda k: _stat(groups[k]).mean)
            others = [k for k in groups if k != best]
            same = [k for k in others if compare(_stat(groups[best]), _stat(groups[k])) == "same"]
            msg = (f"On {task}, the lowest mean error came from {best} "
                   f"({_stat(groups[best]).text()})")
            if same:
                msg += f", not beyond the seed spread of {_join(same)}"
            sentences.append(msg + ".")
    sec.blocks.append(("table", ["task", "setting", "seeds", "test (best val) mean ± std",
                                 "test (last epoch)"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs yet."]))
    return sec


SECTIONS = {"proxy": section_proxy, "align-epochs": section_align_epochs,
            "freezing": section_freezing, "pretraining": section_pretraining,
            "custom": section_custom}


# ----------------------------------------------------------------------------- rendering

def build_sections(folder: Path, out: Path) -> tuple[list[Section], dict]:
    with Store(folder) as store:
        parts = load_parts(store)
        counts = store.counts()
        studies = store.studies()
        failed = store.runs("failed")
        runs = store.runs()
    if not any(p.done() for p in parts):
        from .errors import UserError
        raise UserError(f"study folder '{folder}' has no finished runs to report yet "
                        f"(see `xmodal study status {folder}`)")
    order = {"proxy": 0, "align-epochs": 1, "freezing": 2, "pretraining": 3, "custom": 4}
    sections = [SECTIONS[p.experiment](p, out) for p in sorted(parts, key=lambda p: order.get(
        p.experiment, 9)) if p.done()]
    seconds = sum(r["seconds"] or 0 for r in runs)
    meta = {"counts": counts, "studies": studies, "failed": failed, "run_seconds": seconds,
            "n_runs": len(runs)}
    return sections, meta


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
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(head, sections))
    return out / "report.md"


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
                        "and sentences use the test metric of the best-validation weights. " + RULE))
    if meta["failed"]:
        blocks.append(("p", f"{len(meta['failed'])} run(s) failed and are left out of the "
                            f"figures and tables:"))
        blocks.append(("ul", [f"{r['id']} ({r['task']}, seed {r['seed']}): {r['error']}"
                              for r in meta["failed"]]))
    return blocks


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _markdown(head: list, sections: list[Section], out: Path) -> str:
    lines: list[str] = []
    for block in head:
        lines += _md_block(block, out, level=1)
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            lines += _md_block(block, out)
    return "\n".join(lines).rstrip() + "\n"


def _md_block(block: tuple, out: Path, level: int = 2) -> list[str]:
    kind = block[0]
    if kind == "h1":
        return [f"# {block[1]}", ""]
    if kind == "p":
        return [block[1], ""]
    if kind == "ul":
        return [f"- {item}" for item in block[1]] + [""]
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


def _html(head: list, sections: list[Section]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>xmodal study report</title>",
             f"<style>{CSS}</style></head><body>"]
    for block in head:
        parts.append(_html_block(block))
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            parts.append(_html_block(block))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_block(block: tuple) -> str:
    kind = block[0]
    esc = html.escape
    if kind == "h1":
        return f"<h1>{esc(block[1])}</h1>"
    if kind == "p":
        return f"<p>{esc(block[1])}</p>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{esc(str(i))}</li>" for i in block[1]) + "</ul>"
    if kind == "img":
        data = base64.b64encode(Path(block[1]).read_bytes()).decode()
        return f"<img alt='{esc(block[2])}' src='data:image/png;base64,{data}'>"
    if kind == "table":
        headers, rows = block[1], block[2]
        if not rows:
            return ""
        out = ["<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in headers) + "</tr>"]
        out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        return "".join(out) + "</table>"
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"


def _fig_name(prefix: str, part: Part) -> str:
    """rq1-proxy.png; the part name is added when it differs from the experiment."""
    name = _slug(part.name)
    return f"{prefix}-{part.experiment}.png" if name == part.experiment else \
        f"{prefix}-{part.experiment}-{name}.png"
