"""The decision statistics (study/verdicts.py) against independent scipy computations, on
fixtures where the right and the wrong answer differ.

Planted bugs, each checked to fail a test here (then reverted), 2026-12-07:
- unpaired (Welch) test instead of the paired one: caught (test_pairing_decides_*)
- Holm not applied to the family: caught (test_holm_adjusts_the_family_*)
- TOST with the smaller instead of the larger one-sided p: caught (test_tost_p_*)
- diff = b - a instead of a - b: caught (test_swapping_a_and_b_*)
- margin ignored (equivalence from the difference test alone): caught (test_margin_decides_*)
- the logreg baseline fitted on train + test: caught (test_logreg_baseline_is_fitted_*)
"""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from xmodal.study.stats import Stat, holm
from xmodal.study.verdicts import (DecisionFamily, check_margin, check_record, claim_outcome,
                                   decide)

SEEDS = [0, 1, 2, 3, 4]


def stat(values, seeds=SEEDS):
    return Stat(list(values), list(seeds))


# a is lower than b by ~0.02 on every seed, but the seed effect (shared) is large: only pairing
# sees it
BASE = np.array([0.10, 0.30, 0.15, 0.25, 0.20])
A = BASE - np.array([0.020, 0.022, 0.018, 0.021, 0.019])


def test_difference_p_and_interval_match_scipy_paired_t():
    a, b = stat(A), stat(BASE)
    d = A - BASE
    dec = decide(a, b, margin=0.005)
    assert dec.diff == pytest.approx(d.mean())
    assert dec.p_diff == pytest.approx(sps.ttest_rel(A, BASE).pvalue)
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert dec.ci == pytest.approx([lo, hi])


def test_pairing_decides_a_difference_that_welch_cannot_see():
    fam = DecisionFamily()
    fam.add("k", stat(A), stat(BASE), margin=0.005)
    fam.adjust()
    assert sps.ttest_ind(A, BASE, equal_var=False).pvalue > 0.5     # unpaired: nothing
    assert fam.verdict("k") == "lower"


def test_swapping_a_and_b_flips_lower_and_higher():
    fam = DecisionFamily()
    fam.add("ab", stat(A), stat(BASE), 0.005)
    fam.add("ba", stat(BASE), stat(A), 0.005)
    fam.adjust()
    assert (fam.verdict("ab"), fam.verdict("ba")) == ("lower", "higher")
    assert fam.tests["ab"].diff == pytest.approx(-fam.tests["ba"].diff)


def test_tost_p_is_the_larger_one_sided_p_from_scipy():
    rng = np.random.default_rng(3)
    b = rng.normal(0.3, 0.05, 5)
    a = b + rng.normal(0.006, 0.002, 5)     # near the upper margin: the two p differ
    m = 0.01
    d = a - b
    expected = max(sps.ttest_1samp(d, -m, alternative="greater").pvalue,
                   sps.ttest_1samp(d, m, alternative="less").pvalue)
    assert decide(stat(a), stat(b), m).p_equiv == pytest.approx(expected)
    smaller = min(sps.ttest_1samp(d, -m, alternative="greater").pvalue,
                  sps.ttest_1samp(d, m, alternative="less").pvalue)
    assert expected > 10 * smaller         # the fixture tells max from min


def test_margin_decides_equivalent_or_inconclusive():
    rng = np.random.default_rng(5)
    b = rng.normal(0.3, 0.05, 5)
    a = b + np.array([0.004, -0.003, 0.002, -0.001, 0.003])
    wide, narrow = DecisionFamily(), DecisionFamily()
    wide.add("k", stat(a), stat(b), 0.01)
    narrow.add("k", stat(a), stat(b), 0.002)
    wide.adjust(), narrow.adjust()
    assert wide.verdict("k") == "equivalent" and narrow.verdict("k") == "inconclusive"
    assert narrow.tests["k"].p_diff_holm >= 0.05     # not a difference either


def test_holm_adjusts_the_family_separately_for_both_tests():
    rng = np.random.default_rng(7)
    fam = DecisionFamily()
    pairs = {}
    for i, shift in enumerate([0.0, 0.004, 0.01, 0.03]):
        b = rng.normal(0.3, 0.05, 5)
        a = b + shift + rng.normal(0, 0.006, 5)
        pairs[i] = (a, b)
        fam.add(i, stat(a), stat(b), 0.01)
    fam.adjust()
    raw_diff = [sps.ttest_rel(a, b).pvalue for a, b in pairs.values()]
    raw_eq = [max(sps.ttest_1samp(a - b, -0.01, alternative="greater").pvalue,
                  sps.ttest_1samp(a - b, 0.01, alternative="less").pvalue)
              for a, b in pairs.values()]
    # Holm by hand: sort, multiply by (m - rank), running max, capped at 1
    for raw, attr in ((raw_diff, "p_diff_holm"), (raw_eq, "p_equiv_holm")):
        order = np.argsort(raw)
        running, expected = 0.0, [0.0] * 4
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (4 - rank) * raw[i]))
            expected[i] = running
        assert [getattr(fam.tests[i], attr) for i in range(4)] == pytest.approx(expected)
        assert expected == pytest.approx(holm(raw))


def test_too_few_shared_seeds_is_inconclusive_without_a_test():
    fam = DecisionFamily()
    fam.add("k", stat([0.1, 0.2], [0, 1]), stat([0.3, 0.4], [0, 1]), 0.01)
    fam.adjust()
    assert fam.verdict("k") == "inconclusive" and fam.tests["k"].p is None


def test_zero_spread_is_decided_exactly():
    fam = DecisionFamily()
    fam.add("same", stat([0.0] * 5), stat([0.0] * 5), 0.01)
    fam.add("shift", stat(BASE + 0.05), stat(BASE), 0.01)
    fam.adjust()
    assert fam.verdict("same") == "equivalent" and fam.verdict("shift") == "higher"


def test_detectable_difference_has_about_80_percent_power():
    rng = np.random.default_rng(11)
    b = rng.normal(0.3, 0.05, 6)
    a = b + rng.normal(0.0, 0.01, 6)
    dec = decide(stat(a, range(6)), stat(b, range(6)), 0.001)
    n, sd = 6, np.std(a - b, ddof=1)
    nc = dec.detectable / (sd / math.sqrt(n))
    crit = sps.t.ppf(0.975, n - 1)
    power = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
    assert 0.75 <= power <= 0.85


@pytest.mark.parametrize("expected, verdicts, outcome", [
    ("no-effect", ["equivalent", "equivalent"], "reproduced"),
    ("no-effect", ["equivalent", "inconclusive"], "inconclusive"),
    ("no-effect", ["equivalent", "lower"], "contradicted"),
    ("higher", ["higher", "higher"], "reproduced"),
    ("higher", ["higher", "equivalent"], "contradicted"),
    ("higher", ["higher", "inconclusive"], "inconclusive"),
    ("lower", ["higher"], "contradicted"),
    ("not-lower", ["equivalent", "higher"], "reproduced"),
    ("not-lower", ["lower", "equivalent"], "contradicted"),
    ("not-lower", ["inconclusive", "equivalent"], "inconclusive"),
    ("lower", [], "inconclusive"),
])
def test_claim_outcomes(expected, verdicts, outcome):
    assert claim_outcome(expected, verdicts) == outcome


def test_margin_cap_is_max_of_a_hundredth_and_a_tenth_of_the_linear_error():
    check_margin(0.01, 0.05)
    check_margin(0.03, 0.3)
    with pytest.raises(ValueError, match="wider"):
        check_margin(0.011, 0.05)
    with pytest.raises(ValueError, match="> 0"):
        check_margin(0.0, 0.3)


def test_records_have_the_verdicts_json_shape():
    fam = DecisionFamily()
    fam.add("k", stat(A), stat(BASE), 0.005)
    fam.adjust()
    (rec,) = fam.records("rq3", lambda key: ("gunpoint", "a", "b"))
    check_record(rec)
    json.dumps(rec)
    assert rec["p"] == fam.tests["k"].p_diff_holm and rec["verdict"] == "lower"
    with pytest.raises(ValueError):
        check_record({**rec, "verdict": "same"})


def test_logreg_baseline_is_fitted_on_the_training_split_only():
    """A baseline fitted with validation or test labels would score better on them; here the
    test labels contradict the training signal, so a leak changes the predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from xmodal.data.types import TaskData, TaskSpec
    from xmodal.runs.baselines import predict_baseline
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1, 6)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    x_tr, y_tr, x_va, y_va, x_te = x[:60], y[:60], x[60:90], 1 - y[60:90], x[90:]
    y_te = 1 - y[90:]                                     # flipped: only a leak could fit it
    data = TaskData(TaskSpec("t", "t", "1d", "classification", (1, 6), 2), x_tr, y_tr, x_va,
                    y_va, x_te, y_te)
    out = predict_baseline("logreg", data, seed=0)
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    ref.fit(x_tr.reshape(60, -1).astype(np.float64), y_tr)
    expected = ref.decision_function(x_te.reshape(30, -1).astype(np.float64))
    np.testing.assert_allclose(out["test"][:, 1], expected, rtol=1e-6, atol=1e-8)
    assert (out["test"].argmax(1) != y_te).mean() > 0.8   # it really is wrong on flipped labels
