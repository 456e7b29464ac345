"""RQ1 (`experiment: proxy`): does the proxy dataset, or embedder training at all, matter?
Per task: validation/test curves per proxy and for naive fine-tuning (paper Fig. 2), a table of
final test metrics, and sentences comparing each proxy with naive fine-tuning and the proxies
with each other.
"""

from __future__ import annotations

from pathlib import Path

from ...config.choices import EXPERIMENTS
from ..stats import Family, Stat, p_text
from .data import (Part, RunView, Section, group, join, metric_label, test_header,
                   paper_vs_ours, stat_of)
from .figures import curves_figure, fig_name


def _proxy_key(r: RunView) -> str:
    if not r.aligned:
        return r.labels.get("variant") or "naive"
    return r.labels.get("variant") or f"proxy {r.config['align']['proxy']}"


def section_proxy(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['proxy'].title} (part '{part.name}')")
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
    fam = _tests(part)
    rows, sentences = [], []
    for task in part.tasks():
        groups = group(part.done(task), _proxy_key)
        if not groups:
            continue
        metric = metric_label(part.done(task))
        naive = _naive(groups)
        base = Stat([]) if not naive else stat_of(groups[naive])
        for k in [k for k in order if k in groups]:
            st = stat_of(groups[k])
            verdict = "" if k == naive or not naive else fam.text(("vs-naive", task, k))
            last = stat_of(groups[k], "test_metric_last")
            rows.append([task, k, str(st.n), st.text(), last.text(), _otdd_final(groups[k]),
                         verdict])
        proxies = [k for k in order if k in groups and k != naive]
        if not proxies:
            continue
        if naive:
            verdicts = {k: fam.verdict(("vs-naive", task, k)) for k in proxies}
            detail = "; ".join(f"{k} {stat_of(groups[k]).text()}" for k in proxies)
            sentences.append(f"{_naive_head(task, verdicts)} ({metric}: naive {base.text()}; "
                             f"{detail}).")
        if len(proxies) >= 2:
            sentences.append(_proxies_sentence(task, proxies, fam))
    sec.blocks.append(("table", ["task", "setting", "seeds",
                                 f"{test_header(part.done())} mean ± 95% CI",
                                 "test (last epoch)", "final OTDD", "vs naive"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs to compare yet."]))
    sec.blocks.append(paper_vs_ours("proxy", _ours(part, fam)))
    return sec


def _naive(groups: dict):
    """The label of the runs without embedder training, if any."""
    return next((k for k in groups if not any(r.aligned for r in groups[k])), None)


def _tests(part: Part) -> Family:
    """RQ1's family: per task, each proxy vs naive fine-tuning and each pair of proxies."""
    fam = Family()
    for task in part.tasks():
        groups = group(part.done(task), _proxy_key)
        naive = _naive(groups)
        proxies = [k for k in groups if k != naive]
        for k in proxies:
            if naive:
                fam.add(("vs-naive", task, k), stat_of(groups[k]), stat_of(groups[naive]),
                        part.margin(task))
        for i, a in enumerate(proxies):
            for b in proxies[i + 1:]:
                fam.add(("between", task, a, b), stat_of(groups[a]), stat_of(groups[b]),
                        part.margin(task))
    return fam.adjust()


def _naive_head(task: str, verdicts: dict) -> str:
    better = [k for k, v in verdicts.items() if v == "better"]
    worse = [k for k, v in verdicts.items() if v == "worse"]
    if all(v == "unknown" for v in verdicts.values()):
        return (f"On {task}, embedder training against naive fine-tuning: not enough seeds for "
                f"a verdict")
    if better and not worse:
        return (f"On {task}, embedder training beat naive fine-tuning significantly with "
                f"{join(better)}")
    if worse and not better:
        return (f"On {task}, embedder training was significantly worse than naive fine-tuning "
                f"with {join(worse)}")
    if better and worse:
        return (f"On {task}, embedder training beat naive fine-tuning significantly with "
                f"{join(better)} but was worse with {join(worse)}")
    equiv = [k for k, v in verdicts.items() if v == "equivalent"]
    if equiv and len(equiv) == len(verdicts):
        return (f"On {task}, embedder training was equivalent to naive fine-tuning (within the "
                f"margin) with {join(equiv)}")
    return (f"On {task}, embedder training against naive fine-tuning: inconclusive (no "
            f"difference shown" + (f"; equivalent with {join(equiv)} only" if equiv else
                                   ", and no equivalence") + ")")


def _proxies_sentence(task: str, proxies: list, fam: Family) -> str:
    pairs = [(a, b, fam.verdict(("between", task, a, b))) for i, a in enumerate(proxies)
             for b in proxies[i + 1:]]
    differ = [(a, b, v) for a, b, v in pairs if v in ("better", "worse")]
    if all(v == "unknown" for _, _, v in pairs):
        return f"On {task}, the proxies: not enough seeds for a verdict."
    if differ:
        desc = ", ".join(f"{a} {'<' if v == 'better' else '>'} {b} "
                         f"(p_Holm {p_text(fam.tests[('between', task, a, b)].p_holm)})"
                         for a, b, v in differ)
        return f"On {task}, the choice of proxy mattered significantly ({desc})."
    if all(v == "equivalent" for _, _, v in pairs):
        return (f"On {task}, the proxies were equivalent within the margin "
                f"({', '.join(proxies)}).")
    return (f"On {task}, the choice of proxy: inconclusive, neither a difference nor "
            f"equivalence shown ({', '.join(proxies)}).")


def _ours(part: Part, fam: Family) -> list:
    """This study's answer, counted over the family's tests."""
    vs_naive = [k for k in fam.tests if k[0] == "vs-naive"]
    between = [k for k in fam.tests if k[0] == "between"]
    out = []
    if vs_naive:
        c = {v: sum(fam.verdict(k) == v for k in vs_naive) for v in ("better", "worse", "equivalent",
                                                                      "same", "unknown")}
        out.append(f"Embedder training vs naive fine-tuning ({len(vs_naive)} task-proxy "
                   f"comparisons): {c['better']} significantly lower error, {c['worse']} higher, "
                   f"{c['equivalent']} equivalent, {c['same']} inconclusive" +
                   (f", {c['unknown']} not enough seeds" if c["unknown"] else "") + ".")
    if between:
        differ = [k for k in between if fam.verdict(k) in ("better", "worse")]
        tasks = list(dict.fromkeys(k[1] for k in differ))
        same = sum(fam.verdict(k) == "equivalent" for k in between)
        out.append(f"Proxy vs proxy: {len(differ)} of {len(between)} comparisons differed "
                   f"significantly" + (f" (on {join(tasks)})" if tasks else "") +
                   f", {same} were equivalent within the margin.")
    return out


def _otdd_final(runs: list[RunView]) -> str:
    vals = [r.trace[-1]["value"] for r in runs if r.trace and r.trace[-1].get("value") is not None]
    return Stat(vals).text() if vals else "-"
