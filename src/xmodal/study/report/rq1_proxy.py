"""RQ1 (`experiment: proxy`): does the proxy dataset, or embedder training at all, matter?
Per task: validation/test curves per proxy and for naive fine-tuning (paper Fig. 2), a table of
final test metrics, and sentences comparing each proxy with naive fine-tuning and the proxies
with each other.
"""

from __future__ import annotations

from pathlib import Path

from ..stats import VERDICT_TEXT, Stat, compare
from .data import EXPERIMENT_TITLES, Part, RunView, Section, group, join, metric_label, stat_of
from .figures import curves_figure, fig_name


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
    fig = curves_figure(part, out / fig_name("rq1", part), _proxy_key, order,
                         "RQ1 proxy datasets (dashed: naive fine-tuning, no embedder training)",
                         styles)
    if fig:
        sec.blocks.append(("img", fig, f"{part.name}: metric per fine-tuning epoch per proxy"))
    rows, sentences = [], []
    for task in part.tasks():
        groups = group(part.done(task), _proxy_key)
        if not groups:
            continue
        metric = metric_label(part.done(task))
        naive = [k for k in groups if not any(r.aligned for r in groups[k])]
        base = Stat([]) if not naive else stat_of(groups[naive[0]])
        for k in [k for k in order if k in groups]:
            st = stat_of(groups[k])
            verdict = "" if k in naive or not naive else VERDICT_TEXT[compare(st, base)]
            rows.append([task, k, str(st.n), st.text(), stat_of(groups[k], "test_metric_last").text(),
                         _otdd_final(groups[k]), verdict])
        proxies = [k for k in order if k in groups and k not in naive]
        if not proxies:
            continue
        if naive:
            verdicts = {k: compare(stat_of(groups[k]), base) for k in proxies}
            better = [k for k, v in verdicts.items() if v == "better"]
            worse = [k for k, v in verdicts.items() if v == "worse"]
            if all(v == "unknown" for v in verdicts.values()):
                head = (f"On {task}, with one seed the comparison of embedder training against "
                        f"naive fine-tuning has no spread to judge by")
            elif better and not worse:
                head = (f"On {task}, embedder training beat naive fine-tuning beyond the seed "
                        f"spread with {join(better)}")
            elif worse and not better:
                head = (f"On {task}, embedder training was worse than naive fine-tuning beyond "
                        f"the seed spread with {join(worse)}")
            elif better and worse:
                head = (f"On {task}, embedder training beat naive fine-tuning with "
                        f"{join(better)} but was worse with {join(worse)}")
            else:
                head = (f"On {task}, embedder training did not beat naive fine-tuning beyond "
                        f"the seed spread with any proxy")
            detail = "; ".join(f"{k} {stat_of(groups[k]).text()}" for k in proxies)
            sentences.append(f"{head} ({metric}: naive {base.text()}; {detail}).")
        if len(proxies) >= 2:
            stats = {k: stat_of(groups[k]) for k in proxies}
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
