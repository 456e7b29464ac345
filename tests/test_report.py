"""Reports: sentences computed from the stored numbers, figures and both report files."""

import json

import numpy as np
from scipy import stats as sps
import pytest

from xmodal.errors import UserError
from xmodal.study.report import write_report
from xmodal.study.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def _config(task, seed, proxy="none", epochs=4, from_epoch=None, finetune="all",
            pretrained=True, body="minilm", lora_rank=8, embedder="conv"):
    return {"task": {"name": task}, "run": {"seed": seed}, "embedder": {"kind": embedder},
            "align": {"proxy": proxy, "epochs": epochs if proxy != "none" else 0,
                      "from_epoch": from_epoch},
            "train": {"finetune": finetune, "epochs": 3, "lora_rank": lora_rank},
            "body": {"name": body, "pretrained": pretrained}}


class Builder:
    """Writes runs with chosen final test metrics into a study store."""

    def __init__(self, path):
        self.store = Store(path, create=True)
        self.n = 0

    def add(self, part, experiment, task, values, labels, trace=None, trainable=None,
            embedder_total=None, **cfg):
        for seed, value in enumerate(values):
            rid = f"r{self.n:04d}"
            self.n += 1
            history = [{"epoch": e, "train_loss": 1.0 / e, "val_metric": value + 0.1 / e,
                        "lr": 1e-4, "seconds": 0.1} for e in (1, 2, 3)]
            summary = {"metric": "error", "metric_label": "0-1 error", "best_epoch": 3,
                       "best_val_metric": value, "test_metric_best": value,
                       "test_metric_last": value + 0.01,
                       "parameters": {"total": 1, **({} if trainable is None else
                                                     {"trainable": trainable}),
                                      **({} if embedder_total is None else
                                         {"embedder_total": embedder_total})},
                       "align": None if trace is None else {"trace": trace(seed)}}
            self.store.register({"name": "synthetic", "description": "numbers chosen by hand"},
                                [{"id": rid, "task": task, "seed": seed,
                                  "config": _config(task, seed, **cfg), "axes": {},
                                  "run_dir": f"runs/{rid}",
                                  "members": [(part, experiment, {**labels, "seed": seed})]}])
            self.store.claim(rid)
            self.store.record(rid, {"status": "done", "summary": summary, "history": history,
                                    "seconds": 1.0})

    def fail(self, part, experiment, task):
        rid = f"r{self.n:04d}"
        self.n += 1
        self.store.register({"name": "synthetic"}, [{
            "id": rid, "task": task, "seed": 9, "config": _config(task, 9), "axes": {},
            "members": [(part, experiment, {"label": "naive", "variant": "naive"})]}])
        self.store.claim(rid)
        self.store.record(rid, {"status": "failed", "error": "TrainingDiverged: loss became nan"})


def _proxy_part(b: Builder):
    for task, naive, text, fake in (
            ("digits", [0.10, 0.11, 0.12], [0.20, 0.21, 0.22], [0.105, 0.115, 0.11]),
            ("italypower", [0.30, 0.31, 0.32], [0.10, 0.11, 0.12], [0.11, 0.12, 0.10])):
        b.add("proxy", "proxy", task, naive, {"label": "naive", "variant": "naive"})
        b.add("proxy", "proxy", task, text, {"label": "text", "variant": "text"}, proxy="text")
        b.add("proxy", "proxy", task, fake, {"label": "fake-text", "variant": "fake-text"},
              proxy="fake-text")


def _sentences(md: str) -> list[str]:
    return [line[2:] for line in md.splitlines() if line.startswith("- On ")]


def test_proxy_sentences_follow_the_numbers(tmp_path):
    b = Builder(tmp_path)
    _proxy_part(b)
    b.fail("proxy", "proxy", "digits")
    b.store.close()
    path = write_report(tmp_path)
    md = path.read_text()
    said = _sentences(md)
    digits = [s for s in said if s.startswith("On digits, embedder")][0]
    assert "was significantly worse than naive fine-tuning with text" in digits
    # mean ± t_{0.975,2} * 0.01 / sqrt(3) = ± 0.025
    assert "naive 0.110 ± 0.025" in digits and "text 0.210 ± 0.025" in digits
    # fake-text: paired differences 0.005, 0.005, -0.01
    assert "fake-text" not in digits.split("(")[0]
    italy = [s for s in said if s.startswith("On italypower, embedder")][0]
    assert "beat naive fine-tuning significantly with text and fake-text" in italy
    assert any(s.startswith("On digits, the choice of proxy mattered") for s in said)
    assert any(s.startswith("On italypower, the choice of proxy: inconclusive")
               for s in said)
    # only the experiment present is reported; the failed run is listed
    assert "RQ1" in md and "RQ2" not in md and "RQ3" not in md and "RQ4" not in md
    assert "1 run(s) failed" in md and "TrainingDiverged" in md
    assert "Holm-adjusted" in md and "95% confidence interval" in md
    # table values are the stored numbers
    assert "| digits | text | 3 | 0.210 ± 0.025 |" in md
    assert "| digits | fake-text | 3 | 0.110 ± 0.012 | 0.120 ± 0.012 | - | inconclusive " \
           "(paired t, n=3, p_Holm = 1.000) |" in md
    assert "| this study | Embedder training vs naive fine-tuning (4 task-proxy comparisons): 2 " \
           "significantly lower error, 1 higher, 0 equivalent, 1 inconclusive." in md
    figs = list((tmp_path / "report").glob("*.png"))
    assert [f.name for f in figs] == ["rq1-proxy.png"]
    assert figs[0].read_bytes()[:8] == PNG and figs[0].stat().st_size > 10_000
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<table>" in page


def test_all_four_experiments(tmp_path):
    b = Builder(tmp_path)
    _proxy_part(b)
    # RQ2: OTDD falls with embedder epochs while the error rises
    otdd = {0: 10.0, 1: 8.0, 2: 6.0, 4: 4.0}
    trace = lambda seed: [{"epoch": e, "value": v + 0.1 * seed, "seconds": 0.1}  # noqa: E731
                          for e, v in otdd.items()]
    for e, errs in ((0, [0.10, 0.11, 0.12]), (1, [0.12, 0.13, 0.14]), (2, [0.15, 0.16, 0.17]),
                    (4, [0.20, 0.21, 0.22])):
        b.add("align", "align-epochs", "gunpoint", errs, {"label": str(e)}, trace=trace,
              proxy="text", from_epoch=e)
    # RQ3: fine-tuning the body matters, embedder training does not
    modes = {"all": 0.10, "freeze-embedder": 0.11, "freeze-body": 0.40, "predictor-only": 0.45}
    for mode, base in modes.items():
        for kind, proxy in (("trained", "text"), ("untrained", "none")):
            b.add("freezing", "freezing", "gunpoint", [base, base + 0.01, base + 0.02],
                  {"label": f"{kind} / {mode}", "variant": kind}, proxy=proxy, finetune=mode)
    # RQ4: numeric token counts; random init is as good as the best body
    for label, tokens, errs, pre in (("roberta-base", 3e10, [0.20, 0.21, 0.22], True),
                                     ("1B", 1e9, [0.25, 0.26, 0.27], True),
                                     ("10M", 1e7, [0.30, 0.31, 0.32], True),
                                     ("random init", 0, [0.20, 0.22, 0.21], False)):
        b.add("pre", "pretraining", "gunpoint", errs,
              {"label": label, "variant": label, "tokens": tokens}, proxy="text", pretrained=pre)
    b.store.close()
    md = write_report(tmp_path).read_text()
    verdicts = json.loads((tmp_path / "report" / "verdicts.json").read_text())
    by = {(c["question"], c["a"], c["b"]): c for c in verdicts["comparisons"]}
    rq2v = by[("rq2", "embedder epoch 4", "embedder epoch 0")]
    assert rq2v["verdict"] == "higher" and rq2v["diff"] == pytest.approx(0.10)
    body = by[("rq3", "freeze-body (trained embedder)", "all (trained embedder)")]
    assert body["verdict"] == "higher" and body["n"] == 3
    d = np.array([0.40, 0.41, 0.42]) - np.array([0.10, 0.11, 0.12])   # constant: exact
    assert body["ci"] == pytest.approx([d.mean(), d.mean()])
    claims = {(c["question"], c["claim"]): c["outcome"] for c in verdicts["claims"]}
    assert claims[("rq3", "fine-tuning the body is what matters: freezing it hurts")] == \
        "reproduced"
    assert claims[("rq2", "more embedder training (lower OTDD) does not lower the error")] == \
        "reproduced"
    said = _sentences(md)
    rq2 = [s for s in said if s.startswith("On gunpoint, OTDD")][0]
    assert "OTDD fell from 10.1 (embedder epoch 0) to 4.10 (epoch 4)" in rq2
    assert "0.210 ± 0.025 vs 0.110 ± 0.025 from the epoch-0 embedder (higher; paired t, n=3, " \
           "p_Holm < 0.001)" in rq2
    assert "lowest mean error came from embedder epoch 0" in rq2
    # 4 points in reverse order: exact two-sided permutation p = 2 / 4! = 0.083
    assert "-1.00, p = 0.083 (lower OTDD went with higher error" in rq2
    rq3 = [s for s in said if "fine-tuning the body" in s][0]
    assert rq3.startswith("On gunpoint (trained embedder), fine-tuning the body helped")
    assert "all (embedder + body + predictor)) 0-1 error 0.110 ± 0.025" in rq3
    emb = [s for s in said if "trained embedder beat the untrained" in s][0]
    assert "in 0 of 4 freezing modes" in emb
    rq4 = [s for s in said if "pre-training" in s][0]
    assert "the effect of pre-training: inconclusive" in rq4
    assert "best pre-trained body (roberta-base)" in rq4 and "-1.00" in rq4
    names = sorted(f.name for f in (tmp_path / "report").glob("*.png"))
    assert names == ["rq1-proxy.png", "rq2-align-epochs-align.png", "rq3-freezing.png",
                     "rq4-pretraining-pre.png"]
    for name in names:
        data = (tmp_path / "report" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    for rq in ("RQ1", "RQ2", "RQ3", "RQ4"):
        assert rq in md
    # every section ends with the paper's finding beside ours
    for section in md.split("\n## ")[1:]:
        if section.startswith(("Verdicts", "Provenance")):   # end with their own tables
            continue
        table = section.rstrip().splitlines()[-3:]
        assert table[1].startswith("| paper (arXiv 2403.13537) |")
        assert table[2].startswith("| this study |")
    assert "Lower OTDD does not mean lower error" in md


def test_single_seed_gives_no_verdict(tmp_path):
    b = Builder(tmp_path)
    b.add("proxy", "proxy", "digits", [0.1], {"label": "naive", "variant": "naive"})
    b.add("proxy", "proxy", "digits", [0.3], {"label": "text", "variant": "text"}, proxy="text")
    b.store.close()
    md = write_report(tmp_path).read_text()
    assert "not enough seeds for a verdict" in md
    assert "beat" not in md.split("## ")[-1].split("|")[-1]


def test_two_seeds_that_agree_give_no_verdict(tmp_path):
    """The old rule called 0.157 ± 0.000 'better' than 0.177 ± 0.000 on two seeds."""
    b = Builder(tmp_path)
    b.add("proxy", "proxy", "digits", [0.177, 0.177], {"label": "naive", "variant": "naive"})
    b.add("proxy", "proxy", "digits", [0.157, 0.157], {"label": "text", "variant": "text"},
          proxy="text")
    b.store.close()
    md = write_report(tmp_path).read_text()
    assert "| digits | text | 2 | 0.157 ± 0.000 | 0.167 ± 0.000 | - | not enough seeds " \
           "(2 seed(s); need 3) |" in md
    assert _sentences(md) == ["On digits, embedder training against naive fine-tuning: not "
                              "enough seeds for a verdict (0-1 error: naive 0.177 ± 0.000; "
                              "text 0.157 ± 0.000)."]
    assert "0 significantly lower error, 0 higher, 0 equivalent, 0 inconclusive, 1 not " \
           "enough seeds" in md


def test_report_needs_finished_runs(tmp_path):
    with pytest.raises(UserError, match="not a study folder"):
        write_report(tmp_path)
    b = Builder(tmp_path)
    b.fail("proxy", "proxy", "digits")
    b.store.close()
    with pytest.raises(UserError, match="no finished runs"):
        write_report(tmp_path)


def test_run_shared_by_two_studies_counts_once_per_part(tmp_path):
    from xmodal.study.report.data import load_parts
    store = Store(tmp_path, create=True)
    run = {"id": "r1", "task": "t", "seed": 0, "config": _config("t", 0), "axes": {},
           "run_dir": "runs/r1", "members": [("proxy", "proxy", {"label": "naive"})]}
    store.register({"name": "first"}, [run])
    store.register({"name": "renamed"}, [run])   # same folder, same part, same run
    (part,) = load_parts(store)
    assert [r.id for r in part.runs] == ["r1"]


def _holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment, written out here to check the report's."""
    order = sorted(pvalues, key=pvalues.get)
    out, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        out[key] = running
    return out


def test_unequal_spreads_are_judged_by_the_paired_test(tmp_path):
    """Settings with very different spreads over 4 seeds: the verdicts, p-values and intervals
    in the report are scipy's paired t-test over seeds, Holm-adjusted over the section, and each
    setting's own Student-t interval. Guards: Welch's (unpaired) test would call text vs naive
    a tie, and the intervals differ tenfold, so swapping any of these changes the report."""
    from scipy import stats as sps
    values = {"naive": [0.30, 0.18, 0.42, 0.25],      # wide
              "text": [0.26, 0.15, 0.37, 0.22],       # wide, but below naive on every seed
              "fake-text": [0.24, 0.23, 0.25, 0.24]}  # narrow
    b = Builder(tmp_path)
    for label, vals in values.items():
        b.add("proxy", "proxy", "digits", vals, {"label": label, "variant": label},
              proxy="none" if label == "naive" else label)
    b.store.close()
    md = write_report(tmp_path).read_text()

    pairs = {"text": ("text", "naive"), "fake-text": ("fake-text", "naive"),
             "between": ("text", "fake-text")}
    raw = {k: sps.ttest_rel(values[a], values[b]).pvalue for k, (a, b) in pairs.items()}
    adj = _holm(raw)
    assert adj["text"] < 0.05 <= adj["fake-text"] and adj["between"] >= 0.05
    assert sps.ttest_ind(values["text"], values["naive"], equal_var=False).pvalue > 0.5

    def interval(vals):
        low, high = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
        return f"{np.mean(vals):.3f} ± {(high - low) / 2:.3f}"
    cis = {k: interval(v) for k, v in values.items()}
    assert cis["fake-text"] == "0.240 ± 0.013" and cis["naive"].endswith("± 0.161")
    last = {k: interval([x + 0.01 for x in v]) for k, v in values.items()}
    assert f"| digits | naive | 4 | {cis['naive']} | {last['naive']} | - |  |" in md
    assert f"| digits | text | 4 | {cis['text']} | {last['text']} | - | lower (paired t, " \
           f"n=4, p_Holm = {adj['text']:.3f}) |" in md
    assert f"| digits | fake-text | 4 | {cis['fake-text']} | {last['fake-text']} | - | " \
           f"inconclusive (paired t, n=4, p_Holm = {adj['fake-text']:.3f}) |" in md
    said = _sentences(md)
    assert said[0] == (f"On digits, embedder training beat naive fine-tuning significantly with "
                       f"text (0-1 error: naive {cis['naive']}; text {cis['text']}; fake-text "
                       f"{cis['fake-text']}).")
    assert said[1] == "On digits, the choice of proxy: inconclusive, neither a difference " \
                      "nor equivalence shown (text, fake-text)."
    assert "2 task-proxy comparisons): 1 significantly lower error, 0 higher, 0 " \
           "equivalent, 1 inconclusive." in md


def test_freezing_verdicts_with_unequal_spreads(tmp_path):
    """RQ3 on 4 seeds with wide and narrow settings: the body sentence and the trained vs
    untrained column are scipy's paired t-test, Holm-adjusted over the section's 3 tests."""
    from scipy import stats as sps
    values = {("trained", "all"): [0.12, 0.20, 0.15, 0.30],
              ("trained", "freeze-body"): [0.30, 0.33, 0.31, 0.45],
              ("untrained", "all"): [0.13, 0.19, 0.17, 0.29],
              ("untrained", "freeze-body"): [0.39, 0.41, 0.40, 0.52]}
    b = Builder(tmp_path)
    for (kind, mode), vals in values.items():
        b.add("freezing", "freezing", "gunpoint", vals, {"label": f"{kind} / {mode}",
                                                         "variant": kind},
              proxy="text" if kind == "trained" else "none", finetune=mode)
    b.store.close()
    md = write_report(tmp_path).read_text()

    pairs = {"body": (("trained", "all"), ("trained", "freeze-body")),
             "all": (("trained", "all"), ("untrained", "all")),
             "freeze-body": (("trained", "freeze-body"), ("untrained", "freeze-body"))}
    raw = {k: sps.ttest_rel(values[a], values[b]).pvalue for k, (a, b) in pairs.items()}
    adj = _holm(raw)
    verdict = {k: ("same" if adj[k] >= 0.05 else
                   "better" if np.mean(values[a]) < np.mean(values[b]) else "worse")
               for k, (a, b) in pairs.items()}
    assert verdict == {"body": "better", "all": "same", "freeze-body": "better"}
    assert sps.ttest_ind(*[values[k] for k in pairs["freeze-body"]]).pvalue > 0.05  # unpaired: tie

    def interval(vals):
        low, high = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
        return f"{np.mean(vals):.3f} ± {(high - low) / 2:.3f}"
    body = [s for s in _sentences(md) if "fine-tuning the body" in s][0]
    assert body == (f"On gunpoint (trained embedder), fine-tuning the body helped significantly "
                    f"(paired t, n=4, p_Holm = {adj['body']:.3f}): best mode that trains the "
                    f"body (all (embedder + body + predictor)) 0-1 error "
                    f"{interval(values['trained', 'all'])} vs best mode that freezes it "
                    f"(freeze body) {interval(values['trained', 'freeze-body'])}.")
    words = {"same": "inconclusive", "better": "lower"}
    for mode, text in (("all", "all (embedder + body + predictor)"),
                       ("freeze-body", "freeze body")):
        row = (f"| gunpoint | {text} | {interval(values['trained', mode])} | "
               f"{interval(values['untrained', mode])} | {words[verdict[mode]]} (paired t, n=4, "
               f"p_Holm = {adj[mode]:.3f}) |")
        assert row in md
    assert "the trained embedder beat the untrained one significantly in 1 of 2 freezing " \
           "modes (freeze body)." in md


def test_custom_part_table_and_sentences(tmp_path):
    """A custom part on 4 seeds: each label's interval is its own Student-t interval, each other
    label is compared with the lowest mean by scipy's paired t-test, Holm-adjusted over the
    part, and the sentence sorts the labels by that verdict. Guards: Welch's test would call b
    vs a a tie; d has 2 seeds (no test); a task with one label gets no sentence."""
    from scipy import stats as sps
    values = {"a": [0.10, 0.20, 0.15, 0.30],   # lowest mean, wide
              "b": [0.12, 0.23, 0.18, 0.33],   # above a on every seed
              "c": [0.19, 0.20, 0.21, 0.20],   # narrow, no consistent difference from a
              "d": [0.50, 0.60]}               # too few seeds
    b = Builder(tmp_path)
    for label, vals in values.items():
        b.add("sweep", "custom", "gunpoint", vals, {"label": label, "variant": label})
    b.add("sweep", "custom", "ecg", [0.4, 0.5, 0.45], {"label": "a", "variant": "a"})
    b.fail("sweep", "custom", "darcy")
    b.store.close()
    md = write_report(tmp_path).read_text()

    raw = {k: sps.ttest_rel(values[k], values["a"]).pvalue for k in ("b", "c")}
    adj = _holm(raw)
    assert adj["b"] < 0.05 <= adj["c"]
    assert sps.ttest_ind(values["b"], values["a"], equal_var=False).pvalue > 0.5

    def interval(vals):
        if len(vals) < 2:
            return f"{np.mean(vals):.3f}"
        low, high = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
        return f"{np.mean(vals):.3f} ± {(high - low) / 2:.3f}"
    ci = {k: interval(v) for k, v in values.items()}
    last = {k: interval([x + 0.01 for x in v]) for k, v in values.items()}
    assert "## Custom study: part 'sweep'" in md
    assert f"| gunpoint | a | 4 | {ci['a']} | {last['a']} | lowest mean |" in md
    assert f"| gunpoint | b | 4 | {ci['b']} | {last['b']} | higher (paired t, n=4, " \
           f"p_Holm = {adj['b']:.3f}) |" in md
    assert f"| gunpoint | c | 4 | {ci['c']} | {last['c']} | inconclusive " \
           f"(paired t, n=4, p_Holm = {adj['c']:.3f}) |" in md
    assert f"| gunpoint | d | 2 | {ci['d']} | {last['d']} | not enough seeds (2 seed(s); " \
           f"need 3) |" in md
    assert f"| ecg | a | 3 | {interval([0.4, 0.5, 0.45])} |" in md
    said = _sentences(md)
    assert said == [f"On gunpoint, the lowest mean error came from a ({ci['a']}): significantly "
                    f"lower than b; not significantly lower than c; not enough seeds to compare "
                    f"it with d."]
    assert "| darcy |" not in md  # a task whose runs all failed has no row
    assert (tmp_path / "report" / "custom-custom-sweep.png").read_bytes().startswith(PNG)


def test_rq2_correlates_otdd_not_the_epoch_number(tmp_path):
    """RQ2's rho is Spearman's of the mean OTDD at each embedder epoch with the mean error after
    fine-tuning from that epoch. OTDD here is not monotone in the epoch, so the epoch number,
    the final OTDD or the first one would each give another rho (-0.80, none, none)."""
    b = Builder(tmp_path)
    otdd = {0: 5.0, 1: 2.0, 2: 4.0, 3: 1.0}
    trace = lambda seed: [{"epoch": e, "value": v + 0.01 * seed, "seconds": 0.1}  # noqa: E731
                          for e, v in otdd.items()]
    errors = {0: 0.50, 1: 0.20, 2: 0.40, 3: 0.10}
    for e, err in errors.items():
        b.add("align", "align-epochs", "gunpoint", [err, err + 0.01, err + 0.02],
              {"label": str(e)}, trace=trace, proxy="text", from_epoch=e)
    b.store.close()
    md = write_report(tmp_path).read_text()
    rq2 = [s for s in _sentences(md) if s.startswith("On gunpoint, OTDD")][0]
    rho = sps.spearmanr(list(otdd.values()), list(errors.values())).statistic
    wrong = sps.spearmanr(list(otdd), list(errors.values())).statistic
    assert rho == pytest.approx(1.0) and wrong == pytest.approx(-0.8)
    # exact two-sided permutation p of rho = 1 over 4! orderings: 2 / 24
    assert "over 4 embedder epochs: +1.00, p = 0.083 (lower OTDD went with lower error" in rq2


def test_labels_cannot_inject_html_or_break_the_markdown(tmp_path):
    b = Builder(tmp_path)
    evil = "<script>alert(1)</script>\nsecond line"
    b.add("proxy", "proxy", "digits", [0.10, 0.11, 0.12], {"label": "naive", "variant": "naive"})
    b.add("proxy", "proxy", "digits", [0.20, 0.21, 0.22], {"label": evil, "variant": evil},
          proxy="text")
    b.store.close()
    md = write_report(tmp_path).read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not any(line.startswith("second line") for line in md.splitlines())
    assert "<script>alert(1)</script> second line" in md


def test_custom_part_without_per_epoch_records_still_reports(tmp_path):
    """A user's first custom study: finished runs whose history has no per-epoch metrics."""
    b = Builder(tmp_path)
    b.add("sweep", "custom", "gunpoint", [0.1, 0.2, 0.15], {"label": "a"})
    b.add("sweep", "custom", "gunpoint", [0.3, 0.4, 0.35], {"label": "b"})
    with b.store.conn:
        b.store.conn.execute("DELETE FROM epochs")
    b.store.close()
    md = write_report(tmp_path).read_text()
    assert "## Custom study: part 'sweep'" in md and "| gunpoint | b | 3 |" in md


def test_provenance_names_the_base_each_settings_difference_and_the_recorded_code(tmp_path):
    """The base is the value most settings share; a setting lists only where it differs; the
    code and machine come from the runs' own config.yaml files."""
    import yaml
    b = Builder(tmp_path)
    _proxy_part(b)     # 2 tasks x naive / text / fake-text, 3 seeds each
    b.store.close()
    for i in range(b.n):
        folder = tmp_path / "runs" / f"r{i:04d}"
        folder.mkdir(parents=True)
        commit = "abc123" if i < 10 else "def456-dirty"
        (folder / "config.yaml").write_text(yaml.safe_dump(
            {"git_commit": commit, "device": "cpu", "versions": {"xmodal": "0.1.0"}}))
    md = write_report(tmp_path).read_text()
    prov = md[md.index("## Provenance"):]
    # align.proxy: "none", "text" and "fake-text" on 2 settings each: the tie goes to the first
    # seen ("none"); align.epochs: 4 of the 6 settings have 4 (naive has 0)
    assert '| align.epochs | 4 |' in prov and '| body.name | "minilm" |' in prov
    assert '| align.proxy | "none" |' in prov
    assert "| proxy | naive | digits | align.epochs=0 | 0-2 (3) |" in prov
    assert '| proxy | text | italypower | align.proxy="text" | 0-2 (3) |' in prov
    assert "| git_commit | abc123 | 10 |" in prov and "| git_commit | def456-dirty | 8 |" in prov
    assert "| xmodal | 0.1.0 | 18 |" in prov


def test_study_compare_pairs_shared_settings_by_seed(tmp_path, capsys):
    """`xmodal study compare A B`: only shared settings, paired by seed, decided by the paired
    t-test (checked against scipy) with Holm over the shared settings."""
    from xmodal import cli
    from xmodal.study.compare import compare
    a, b = Builder(tmp_path / "a"), Builder(tmp_path / "b")
    a.add("proxy", "proxy", "digits", [0.10, 0.11, 0.12, 0.13], {"label": "naive"})
    b.add("proxy", "proxy", "digits", [0.20, 0.205, 0.23, 0.22], {"label": "naive"})
    a.add("proxy", "proxy", "digits", [0.30, 0.31, 0.29, 0.30], {"label": "text"}, proxy="text")
    b.add("proxy", "proxy", "digits", [0.30, 0.31, 0.29, 0.31], {"label": "text"}, proxy="text")
    b.add("proxy", "proxy", "digits", [0.5, 0.5, 0.5], {"label": "only-b"}, proxy="fake-text")
    a.store.close()
    b.store.close()
    rows = {r["setting"]: r for r in compare(tmp_path / "a", tmp_path / "b")}
    assert set(rows) == {"naive", "text"}          # "only-b" is not shared
    d = np.array([0.10, 0.11, 0.12, 0.13]) - np.array([0.20, 0.205, 0.23, 0.22])
    p = sps.ttest_1samp(d, 0).pvalue
    assert rows["naive"]["diff"] == pytest.approx(d.mean())
    assert rows["naive"]["verdict"] == ("lower" if min(1, 2 * p) < 0.05 else "inconclusive")
    assert rows["naive"]["margin"] is None          # no spec margins: no equivalence test
    assert rows["text"]["verdict"] == "inconclusive"
    assert cli.main(["study", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "2 shared settings, paired by seed" in out and "| proxy | naive | digits | 4 |" in out


def test_export_of_per_epoch_metrics_and_alignment_traces(tmp_path, capsys):
    import csv
    from xmodal import cli
    b = Builder(tmp_path / "s")
    b.add("align-epochs", "align-epochs", "digits", [0.1, 0.2], {"label": "4"},
          trace=lambda seed: [{"epoch": e, "value": 10.0 - e + seed} for e in range(3)],
          proxy="text")
    b.store.close()
    assert cli.main(["study", "export", str(tmp_path / "s"), "--epochs", str(tmp_path / "e.csv"),
                     "--align", str(tmp_path / "a.csv")]) == 0
    epochs = list(csv.DictReader(open(tmp_path / "e.csv")))
    align = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(epochs) == 2 * 3 and len(align) == 2 * 3          # 2 runs x 3 epochs each
    first = [r for r in epochs if r["seed"] == "1"]
    assert [float(r["val_metric"]) for r in first] == pytest.approx([0.2 + 0.1 / e for e in (1, 2, 3)])
    assert [float(r["value"]) for r in align if r["seed"] == "1"] == [11.0, 10.0, 9.0]
    assert all(r["experiments"] == "align-epochs:4" for r in epochs)
    rc = cli.main(["study", "export", str(tmp_path / "s")])
    assert rc == 2 and "needs --csv FILE, --epochs FILE or --align FILE" in capsys.readouterr().err
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        rc = cli.main(["study", "export", str(tmp_path / "s"), "--epochs",
                       str(tmp_path / "e.parquet")])
        assert rc == 2 and "needs pyarrow" in capsys.readouterr().err


def test_legend_rows_are_filled_evenly():
    from xmodal.study.report.figures import legend_columns
    assert [legend_columns(n, 4) for n in (1, 4, 5, 6, 7, 9)] == [1, 4, 3, 3, 4, 3]
    assert legend_columns(6, 6) == 6


def test_task_without_per_epoch_metrics_shows_each_settings_final_test(tmp_path):
    """No validation split (e.g. UCR tasks): the panel is not left empty, it plots each
    setting's final test metric, mean and std over seeds, named on the x axis."""
    from xmodal.study.report.data import RunView
    from xmodal.study.report.figures import finals_panel, pyplot
    runs = {name: [RunView(f"{name}{s}", "osuleaf", s, {}, {"label": name}, "done",
                           {"test_metric_best": v}, [{"epoch": 1, "train_loss": 1.0}], [])
                   for s, v in enumerate(vals)]
            for name, vals in (("naive", [0.30, 0.34, 0.32]), ("text", [0.20, 0.22, 0.27]))}
    fig, ax = pyplot().subplots()
    finals_panel(ax, runs, ["naive", "text"], {}, ["naive", "text"])
    bars = ax.containers
    assert [c.get_label() for c in bars] == ["naive", "text"]
    for c, vals in zip(bars, ([0.30, 0.34, 0.32], [0.20, 0.22, 0.27])):
        (_x, y), = c.lines[0].get_xydata()
        assert y == pytest.approx(np.mean(vals))
        seg = c.lines[2][0].get_segments()[0]
        assert seg[1][1] - seg[0][1] == pytest.approx(2 * np.std(vals, ddof=1))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["naive", "text"]


def test_rq3_panel_without_per_epoch_metrics_shows_each_modes_final_test():
    """RQ3's panels of a task without a validation split (OSULeaf, BasicMotions in paper-cpu)
    were empty: they now plot each freezing mode's final test metric, named on the x axis."""
    from xmodal.study.report.data import RunView
    from xmodal.study.report.figures import pyplot
    from xmodal.study.report.rq3_freezing import _panel

    def run(mode, seed, value):
        return RunView(f"{mode}{seed}", "osuleaf", seed, {"train": {"finetune": mode}},
                       {"label": mode}, "done", {"test_metric_best": value},
                       [{"epoch": 1, "train_loss": 1.0}], [])

    values = {"all": [0.40, 0.44, 0.42], "freeze-body": [0.55, 0.60, 0.58]}
    runs = [run(m, s, v) for m, vals in values.items() for s, v in enumerate(vals)]
    fig, ax = pyplot().subplots()
    _panel(ax, runs, "osuleaf", "untrained", list(values), "val_metric", "0-1 error")
    labels = [c.get_label() for c in ax.containers]
    assert len(labels) == 2 and [t.get_text() for t in ax.get_xticklabels()] == labels
    for c, vals in zip(ax.containers, values.values()):
        (_x, y), = c.lines[0].get_xydata()
        assert y == pytest.approx(np.mean(vals))
    assert ax.get_ylabel().startswith("test ")


def test_rq6_compares_each_embedder_with_the_conv_and_with_itself_unaligned(tmp_path):
    """RQ6: each kind vs ORCA's conv at the same alignment and each kind aligned vs not, Holm
    over the question's comparisons; the table shows the embedder's parameters."""
    b = Builder(tmp_path)
    values = {("conv", "text"): [0.10, 0.11, 0.12], ("conv", "none"): [0.20, 0.23, 0.21],
              ("linear", "text"): [0.30, 0.32, 0.33], ("linear", "none"): [0.31, 0.30, 0.34]}
    for (kind, proxy), vals in values.items():
        b.add("embedder", "embedder", "digits", vals, {"label": f"{kind} {proxy}"},
              proxy=proxy, embedder=kind, embedder_total=4_096 if kind == "linear" else 1_000)
    b.store.close()
    md = write_report(tmp_path).read_text()
    section = md.split("## RQ6")[1].split("\n## ")[0]
    assert (tmp_path / "report" / "rq6-embedder.png").read_bytes()[:8] == PNG
    assert "| digits | linear | aligned | 4,096 |" in section
    comps = {(c["a"], c["b"]): c for c in json.loads(
        (tmp_path / "report" / "verdicts.json").read_text())["comparisons"]
        if c["question"] == "rq6"}
    assert set(comps) == {("linear (aligned)", "conv (aligned)"),
                          ("linear (not aligned)", "conv (not aligned)"),
                          ("conv (aligned)", "conv (not aligned)"),
                          ("linear (aligned)", "linear (not aligned)")}
    raw = {k: sps.ttest_rel(values[a], values[b_]).pvalue for k, a, b_ in (
        (("linear (aligned)", "conv (aligned)"), ("linear", "text"), ("conv", "text")),
        (("linear (not aligned)", "conv (not aligned)"), ("linear", "none"), ("conv", "none")),
        (("conv (aligned)", "conv (not aligned)"), ("conv", "text"), ("conv", "none")),
        (("linear (aligned)", "linear (not aligned)"), ("linear", "text"), ("linear", "none")))}
    holm = {}
    order = sorted(raw, key=raw.get)
    running = 0.0
    for rank, k in enumerate(order):                      # Holm step-down, from scipy's p
        running = max(running, min(1.0, (4 - rank) * raw[k]))
        holm[k] = running
    for k, c in comps.items():
        assert c["p"] == pytest.approx(holm[k], rel=1e-6)
    assert comps[("linear (aligned)", "conv (aligned)")]["verdict"] == "higher"
    assert comps[("conv (aligned)", "conv (not aligned)")]["verdict"] == "lower"


def test_rq5_compares_each_scope_with_full_fine_tuning(tmp_path):
    """RQ5: the table puts each setting's trainable parameters next to its error, the figure
    plots one against the other, and every setting is decided against full fine-tuning."""
    b = Builder(tmp_path)
    for label, mode, rank, values, n in (
            ("full fine-tuning", "all", 8, [0.10, 0.11, 0.12], 1_500_000),
            ("LoRA r=4", "lora", 4, [0.30, 0.32, 0.33], 20_000),
            ("LayerNorm only", "layernorm", 8, [0.105, 0.10, 0.125], 9_000)):
        b.add("scope", "scope", "digits", values, {"label": label, "variant": label},
              proxy="text", finetune=mode, lora_rank=rank, trainable=n)
    b.store.close()
    md = write_report(tmp_path).read_text()
    section = md.split("## RQ5")[1].split("\n## ")[0]
    assert (tmp_path / "report" / "rq5-scope.png").read_bytes()[:8] == PNG
    rows = {line.split(" | ")[1]: line for line in section.splitlines()
            if line.startswith("| digits |")}
    assert "1,500,000" in rows["full fine-tuning"] and "20,000" in rows["LoRA r=4"]
    comps = {c["a"]: c for c in json.loads(
        (tmp_path / "report" / "verdicts.json").read_text())["comparisons"]
        if c["question"] == "rq5"}
    assert set(comps) == {"LoRA r=4", "LayerNorm only"}
    assert {c["b"] for c in comps.values()} == {"full fine-tuning"}
    assert comps["LoRA r=4"]["verdict"] == "higher"
    assert comps["LayerNorm only"]["verdict"] == "inconclusive"   # no margin fixed: no "equivalent"
    p = sps.ttest_rel([0.30, 0.32, 0.33], [0.10, 0.11, 0.12]).pvalue
    assert comps["LoRA r=4"]["p"] == pytest.approx(min(1.0, 2 * p), rel=1e-6)  # Holm over 2
    assert "higher error: LoRA r=4" in section
