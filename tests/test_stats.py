"""The report's statistics (xmodal.study.stats), checked against scipy.stats and worked examples."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from xmodal.study.stats import Family, Stat, compare, holm, spearman

A = [0.21, 0.25, 0.22, 0.24]          # one setting over seeds 0..3
B = [0.18, 0.23, 0.17, 0.22]          # another, same seeds
WIDE = [0.05, 0.40, 0.15, 0.33, 0.27]  # unequal spread, seeds 10..14


def test_confidence_interval_is_students_t_over_seeds():
    st = Stat(A)
    low, high = sps.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert st.ci95 == pytest.approx((high - low) / 2)
    assert st.ci95 == pytest.approx(3.182446 * np.std(A, ddof=1) / 2, rel=1e-6)  # t_{.975,3}
    assert Stat([0.3]).ci95 is None and Stat([0.3]).text() == "0.300 (1 seed)"


def test_comparison_is_paired_by_seed():
    t = compare(Stat(A, [0, 1, 2, 3]), Stat(B, [0, 1, 2, 3]))
    assert t.name == "paired t" and t.n == 4
    assert t.p == pytest.approx(sps.ttest_rel(A, B).pvalue)
    assert t.diff == pytest.approx(np.mean(A) - np.mean(B))
    # pairing follows the seeds, not the order the values came in
    shuffled = compare(Stat(A[::-1], [3, 2, 1, 0]), Stat(B, [0, 1, 2, 3]))
    assert shuffled.p == pytest.approx(t.p)


def test_unequal_spreads_without_shared_seeds_use_welch():
    t = compare(Stat(A, [0, 1, 2, 3]), Stat(WIDE, [10, 11, 12, 13, 14]))
    assert t.name == "Welch t" and t.n == 4
    assert t.p == pytest.approx(sps.ttest_ind(A, WIDE, equal_var=False).pvalue)
    assert t.p != pytest.approx(sps.ttest_ind(A, WIDE, equal_var=True).pvalue, rel=1e-3)
    assert t.diff == pytest.approx(np.mean(A) - np.mean(WIDE))


def test_fewer_than_three_seeds_give_no_test():
    t = compare(Stat([0.157, 0.157], [0, 1]), Stat([0.177, 0.177], [0, 1]))
    assert t.name == "not enough seeds" and t.p is None and t.diff == pytest.approx(-0.02)
    fam = Family()
    fam.add("k", Stat([0.157, 0.157], [0, 1]), Stat([0.177, 0.177], [0, 1]))
    fam.adjust()
    assert fam.verdict("k") == "unknown"
    assert fam.text("k") == "not enough seeds (2 seed(s); need 3)"


def test_differences_identical_over_seeds():
    same = compare(Stat([0.1, 0.2, 0.3], [0, 1, 2]), Stat([0.1, 0.2, 0.3], [0, 1, 2]))
    shifted = compare(Stat([0.2, 0.3, 0.4], [0, 1, 2]), Stat([0.1, 0.2, 0.3], [0, 1, 2]))
    assert same.p == 1.0 and shifted.p == 0.0


def test_holm_matches_a_worked_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])     # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])              # one test: unchanged


def test_family_adjusts_together_and_calls_directions():
    a, b = Stat(A, [0, 1, 2, 3]), Stat(B, [0, 1, 2, 3])
    raw = sps.ttest_rel(A, B).pvalue
    fam = Family()
    fam.add("a vs b", a, b)
    fam.add("b vs a", b, a)
    fam.add("a vs a", a, Stat(A, [0, 1, 2, 3]))
    fam.adjust()
    # p-values sorted: raw, raw, 1.0 -> 3 * raw, max(3 * raw, 2 * raw), 1.0
    assert fam.tests["a vs b"].p_holm == pytest.approx(min(1.0, 3 * raw))
    assert fam.tests["a vs a"].p_holm == 1.0
    expect = "worse" if 3 * raw < 0.05 else "same"
    assert fam.verdict("a vs b") == expect
    assert fam.verdict("b vs a") == {"worse": "better", "same": "same"}[expect]
    assert fam.verdict("a vs a") == "same"
    assert fam.text("a vs a") == "inconclusive (paired t, n=4, p_Holm = 1.000)"


def test_a_raw_p_below_alpha_can_fail_after_holm():
    x = [0.30, 0.25, 0.29, 0.27]
    y = [0.26, 0.24, 0.25, 0.24]
    raw = sps.ttest_rel(x, y).pvalue
    assert 0.05 / 3 < raw < 0.05                    # significant alone, not among 3 tests
    alone, three = Family(), Family()
    alone.add("k", Stat(x, [0, 1, 2, 3]), Stat(y, [0, 1, 2, 3]))
    for i in range(3):
        three.add(i, Stat(x, [0, 1, 2, 3]), Stat(y, [0, 1, 2, 3]))
    assert alone.adjust().verdict("k") == "worse"
    assert three.adjust().verdict(0) == "same"


def test_spearman_is_scipys_with_an_exact_p_for_few_points():
    x, y = [1.0, 2.0, 3.5, 4.0, 7.0, 9.0, 11.0, 12.0], [3.0, 1.0, 4.0, 6.0, 5.0, 9.0, 8.0, 10.0]
    rho, p = spearman(x, y)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert p == pytest.approx(sps.spearmanr(x, y).pvalue)          # 8 points: scipy's p
    rho4, p4 = spearman([1, 2, 3, 4], [40, 30, 20, 10])
    assert rho4 == pytest.approx(-1.0) and p4 == pytest.approx(2 / math.factorial(4))
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 2, 3], [5, 5, 5]) is None


def test_welch_with_no_spread_on_either_side():
    """Unpaired settings that are constant over seeds: p = 1 when equal, 0 when not; one
    constant side is scipy's Welch test."""
    same = compare(Stat([0.2] * 3, [0, 1, 2]), Stat([0.2] * 4, [5, 6, 7, 8]))
    differ = compare(Stat([0.2] * 3, [0, 1, 2]), Stat([0.3] * 4, [5, 6, 7, 8]))
    assert same.name == differ.name == "Welch t" and same.p == 1.0 and differ.p == 0.0
    one = compare(Stat([0.2] * 3, [0, 1, 2]), Stat(A, [5, 6, 7, 8]))
    assert one.p == pytest.approx(sps.ttest_ind([0.2] * 3, A, equal_var=False).pvalue)
    other = compare(Stat(A, [5, 6, 7, 8]), Stat([0.2] * 3, [0, 1, 2]))
    assert other.p == pytest.approx(one.p)


def test_family_counts_its_verdicts():
    fam = Family()
    fam.add("worse", Stat(A, [0, 1, 2, 3]), Stat([a - 0.1 for a in A], [0, 1, 2, 3]))
    fam.add("better", Stat([a - 0.1 for a in A], [0, 1, 2, 3]), Stat(A, [0, 1, 2, 3]))
    fam.add("same", Stat(A, [0, 1, 2, 3]), Stat(A, [0, 1, 2, 3]))
    fam.add("same too", Stat(B, [0, 1, 2, 3]), Stat(B, [0, 1, 2, 3]))
    fam.add("unknown", Stat([0.1, 0.2], [0, 1]), Stat([0.3, 0.4], [0, 1]))
    assert fam.adjust().counts() == {"better": 1, "worse": 1, "equivalent": 0, "same": 2,
                                     "unknown": 1}


@pytest.mark.parametrize("x, digits, text", [
    (0.0, 3, "0.000"), (1.0, 3, "1.00"), (1.5, 3, "1.50"), (12.34, 3, "12.3"),
    (0.1234, 3, "0.123"), (0.01234, 3, "0.0123"), (0.001234, 3, "0.00123"),
    (2e-6, 3, "2.00e-06"), (3e5, 3, "3.00e+05"), (1e5, 3, "1.00e+05"), (1e-5, 3, "0.000010"),
    (2e-5, 3, "0.000020"), (-0.5, 3, "-0.500"), (2e-6, 4, "2.000e-06"), (0.1234, 4, "0.1234"), (12.34, 4, "12.34"),
    (None, 3, "n/a"), (float("nan"), 3, "n/a"), (float("inf"), 3, "n/a")])
def test_numbers_show_three_significant_digits(x, digits, text):
    from xmodal.study.stats import num
    assert num(x, digits) == text


def test_interval_text_uses_the_means_decimals():
    assert Stat([]).text() == "n/a"
    st = Stat([0.0121, 0.0125, 0.0119])
    half = sps.t.ppf(0.975, 2) * np.std(st.values, ddof=1) / math.sqrt(3)
    assert st.text() == f"{np.mean(st.values):.4f} ± {half:.4f}"
    half = sps.t.ppf(0.975, 1) * np.std([12, 12.5], ddof=1) / math.sqrt(2)
    assert Stat([12.0, 12.5]).text(4) == f"12.25 ± {half:.2f}"
    assert Stat([12.25]).text(4) == "12.25 (1 seed)"
    tiny = Stat([0.1, 0.1 + 1e-6, 0.1 + 2e-6])                  # an interval below 1e-5
    assert tiny.text() == f"0.100 ± {tiny.ci95:.2e}" and tiny.ci95 < 1e-5


def test_p_text_boundary():
    from xmodal.study.stats import p_text
    assert p_text(0.0009) == "< 0.001" and p_text(0.001) == "= 0.001"
    assert p_text(0.04999) == "= 0.050"


def test_spearman_range_of_one_and_seven_points_exact():
    rho, p = spearman([0.0, 0.5, 1.0], [1.0, 2.0, 3.0])    # x spans exactly 1
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 6)
    x, y = [1, 2, 3, 4, 5, 6, 7], [2, 1, 4, 3, 6, 5, 7]
    exact = sps.permutation_test((np.array(x, float),),
                                 lambda a: sps.spearmanr(a, y).statistic,
                                 permutation_type="pairings", n_resamples=np.inf).pvalue
    assert spearman(x, y)[1] == pytest.approx(exact)
    assert exact != pytest.approx(sps.spearmanr(x, y).pvalue, rel=1e-3)


def test_family_equivalence_is_scipys_tost_after_holm():
    """With a margin, a comparison that is not significantly different is `equivalent` only
    when both one-sided tests reject after Holm's adjustment (scipy, computed here)."""
    from scipy import stats as sps
    a = [0.300, 0.302, 0.299, 0.301, 0.300]
    b = [0.301, 0.300, 0.300, 0.302, 0.299]          # |diff| tiny, spread tiny: equivalent
    c = [0.310, 0.260, 0.340, 0.280, 0.330]          # same mean region, wide: inconclusive
    seeds = [0, 1, 2, 3, 4]
    fam = Family()
    fam.add("ab", Stat(a, seeds), Stat(b, seeds), margin=0.01)
    fam.add("ac", Stat(a, seeds), Stat(c, seeds), margin=0.01)
    fam.adjust()
    raw = {}
    for key, other in (("ab", b), ("ac", c)):
        d = np.array(a) - np.array(other)
        raw[key] = max(sps.ttest_1samp(d, -0.01, alternative="greater").pvalue,
                       sps.ttest_1samp(d, 0.01, alternative="less").pvalue)
    lo, hi = sorted(raw, key=raw.get)
    expect = {lo: min(1.0, 2 * raw[lo]), hi: max(min(1.0, 2 * raw[lo]), raw[hi])}
    for key in raw:
        assert fam.tests[key].p_equiv_holm == pytest.approx(expect[key])
    assert fam.verdict("ab") == "equivalent" and fam.verdict("ac") == "same"
    assert fam.text("ab").startswith("equivalent (TOST ±0.0100, n=5, p_Holm")
    assert fam.text("ac").startswith("inconclusive (paired t, n=5")
    # the same numbers without a margin: never equivalent
    plain = Family()
    plain.add("ab", Stat(a, seeds), Stat(b, seeds))
    plain.adjust()
    assert plain.verdict("ab") == "same"
