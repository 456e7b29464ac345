"""Statistics of a study's results over seeds, all from scipy.stats.

- `Stat`: the values of one setting (one per seed), its mean and the 95% confidence interval
  of the mean, mean +- t_{0.975, n-1} * s / sqrt(n) (Student's t, s the sample std, ddof=1).
- `compare(a, b)`: a two-sided test of "mean(a) = mean(b)". Settings of one task share their seeds
  (seed = initialisation and data order), so the comparison is paired by seed: the paired
  t-test on d_i = a_i - b_i over the shared seeds (`scipy.stats.ttest_rel`,
  t = mean(d) / (s_d / sqrt(n))). With fewer than `MIN_SEEDS` shared seeds but enough on each
  side, Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`). A paired t-test rather than
  Wilcoxon's signed-rank test: with 3 seeds the smallest two-sided Wilcoxon p is 0.25, so it
  could never find anything.
- `holm(p)`: Holm's step-down adjustment of the p-values of one family (one report section):
  with p_(1) <= ... <= p_(m), adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
- `Family`: the comparisons of one question, adjusted together; its verdicts are the report's.
- `spearman(x, y)`: Spearman's rank correlation (`scipy.stats.spearmanr`).

No verdict with fewer than `MIN_SEEDS` seeds on a side: "not enough seeds".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
MIN_SEEDS = 3
RULE = ("Each setting is shown as the mean over seeds ± the half-width of its 95% confidence "
        "interval (Student's t, n-1 degrees of freedom). Two settings of one task are compared "
        "with a two-sided paired t-test over the seeds they share (scipy.stats.ttest_rel; "
        "Welch's t-test when fewer than 3 seeds are shared); the p-values of one question "
        "(one report section) are Holm-adjusted together, and a setting is called better or "
        f"worse only when the adjusted p < {ALPHA}. With fewer than {MIN_SEEDS} seeds on a side "
        "no verdict is given (\"not enough seeds\"). All metrics are errors: lower is better.")


@dataclass
class Stat:
    values: list
    seeds: Optional[list] = None     # the seed of each value, to pair settings by seed

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> Optional[float]:
        if self.n < 2:
            return None
        if np.ptp(self.values) == 0:   # equal values: exactly 0, not rounding noise
            return 0.0
        return float(np.std(self.values, ddof=1))

    @property
    def ci95(self) -> Optional[float]:
        """Half-width of the 95% CI of the mean: t_{0.975, n-1} * s / sqrt(n)."""
        if self.n < 2:
            return None
        return float(sps.t.ppf(0.975, self.n - 1) * self.std / math.sqrt(self.n))

    def text(self, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        dec = _decimals(self.mean, digits)
        if self.ci95 is None:
            return f"{num(self.mean, digits)} (1 seed)"
        return f"{num(self.mean, digits)} ± {num(self.ci95, digits, dec)}"


def _decimals(x: float, digits: int = 3) -> int:
    """Decimals that show at least `digits` significant digits of a small number (max 6)."""
    if x == 0 or not math.isfinite(x):
        return digits
    if abs(x) >= 1:
        return max(1, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return int(min(6, max(digits, digits - math.floor(math.log10(abs(x))) - 1)))


def num(x: Optional[float], digits: int = 3, decimals: Optional[int] = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{_decimals(x, digits) if decimals is None else decimals}f}"


@dataclass
class Comparison:
    """One comparison of setting a with setting b; `diff` = mean(a) - mean(b)."""
    name: str                  # "paired t", "Welch t" or "not enough seeds"
    n: int                     # pairs (paired) or the smaller side
    diff: float
    p: Optional[float] = None
    p_holm: Optional[float] = None
    margin: Optional[float] = None
    p_equiv: Optional[float] = None       # TOST within the margin (paired only)
    p_equiv_holm: Optional[float] = None


def compare(a: Stat, b: Stat, margin: Optional[float] = None) -> Comparison:
    """Two-sided test of mean(a) = mean(b): paired by seed where >= MIN_SEEDS seeds are shared,
    else Welch's; "not enough seeds" (p None) with fewer than MIN_SEEDS on a side."""
    diff = a.mean - b.mean
    if min(a.n, b.n) < MIN_SEEDS:
        return Comparison("not enough seeds", min(a.n, b.n), diff)
    xa, xb = paired(a, b)
    if len(xa) >= MIN_SEEDS:
        d = xa - xb
        return Comparison("paired t", len(xa), diff, _paired_p(d), margin=margin,
                          p_equiv=None if margin is None else tost_p(d, margin))
    return Comparison("Welch t", min(a.n, b.n), diff, _welch_p(np.asarray(a.values, float),
                                                         np.asarray(b.values, float)))


def paired(a: Stat, b: Stat) -> tuple[np.ndarray, np.ndarray]:
    """The values of a and b on their shared seeds, in seed order."""
    shared = sorted(set(a.seeds or []) & set(b.seeds or []))
    xa = np.array([a.values[a.seeds.index(s)] for s in shared], float)
    xb = np.array([b.values[b.seeds.index(s)] for s in shared], float)
    return xa, xb


def _paired_p(d: np.ndarray) -> float:
    """p of the paired t-test on differences d. Differences identical across seeds have no
    spread: p = 1 when they are all 0, else 0 (the limit of t -> infinity)."""
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 1.0 if abs(float(d.mean())) <= 1e-12 else 0.0
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def tost_p(d: np.ndarray, margin: float) -> float:
    """p of the paired equivalence test (TOST, Schuirmann 1987) of |E[d]| < margin: the larger
    of the one-sided p-values of H0: E[d] <= -margin and H0: E[d] >= +margin
    (`scipy.stats.ttest_1samp`). No spread: 0 if |d| < margin, else 1."""
    d = np.asarray(d, float)
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 0.0 if abs(float(d.mean())) < margin else 1.0
    low = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
    high = sps.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(low, high))


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: list) -> list:
    """Holm-adjusted p-values, in the input order. With p_(1) <= ... <= p_(m):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).

    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Family:
    """The comparisons of one question (a report section), Holm-adjusted together: `add` them
    all first, then `adjust`, then read `verdict` / `text`. Verdicts use the vocabulary of
    `study.verdicts`: a comparison with a margin that shows neither a difference nor
    equivalence is `inconclusive`, never "no difference"."""
    tests: dict = field(default_factory=dict)

    def add(self, key, a: Stat, b: Stat, margin: Optional[float] = None) -> Comparison:
        self.tests[key] = compare(a, b, margin)
        return self.tests[key]

    def adjust(self) -> "Family":
        tested = [t for t in self.tests.values() if t.p is not None]
        for t, p in zip(tested, holm([t.p for t in tested])):
            t.p_holm = p
        equiv = [t for t in tested if t.p_equiv is not None]
        for t, p in zip(equiv, holm([t.p_equiv for t in equiv])):
            t.p_equiv_holm = p
        return self

    def verdict(self, key) -> str:
        """'better' / 'worse' (a lower / higher than b, adjusted p < ALPHA), 'equivalent'
        (TOST within the task's margin, adjusted p < ALPHA), 'same' (inconclusive: neither
        shown) or 'unknown' (not enough seeds)."""
        t = self.tests[key]
        if t.p_holm is None:
            return "unknown"
        if t.p_holm < ALPHA:
            return "better" if t.diff < 0 else "worse"
        if t.p_equiv_holm is not None and t.p_equiv_holm < ALPHA:
            return "equivalent"
        return "same"

    def text(self, key) -> str:
        """The verdict with its evidence, e.g. 'better (paired t, n=3, p_Holm = 0.012)'."""
        return f"{VERDICT_TEXT[self.verdict(key)]} ({self.evidence(key)})"

    def evidence(self, key) -> str:
        """'paired t, n=3, p_Holm = 0.012', or '2 seeds; need 3' when not tested."""
        t = self.tests[key]
        if t.p_holm is None:
            return f"{t.n} seed(s); need {MIN_SEEDS}"
        if self.verdict(key) == "equivalent":
            return f"TOST ±{num(t.margin)}, n={t.n}, p_Holm {p_text(t.p_equiv_holm)}"
        return f"{t.name}, n={t.n}, p_Holm {p_text(t.p_holm)}"

    def counts(self) -> dict:
        """How many tests came out better / worse / equivalent / same / unknown."""
        out = {"better": 0, "worse": 0, "equivalent": 0, "same": 0, "unknown": 0}
        for key in self.tests:
            out[self.verdict(key)] += 1
        return out


VERDICT_TEXT = {"better": "lower", "worse": "higher", "equivalent": "equivalent",
                "same": "inconclusive", "unknown": "not enough seeds"}


def p_text(p: float) -> str:
    """'< 0.001' or '= 0.012', to follow 'p' or 'p_Holm'."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


EXACT_SPEARMAN_MAX_N = 7   # up to 7! = 5040 orderings: the exact permutation p


def spearman(x: list, y: list) -> Optional[tuple]:
    """(rho, p) of Spearman's rank correlation (scipy.stats.spearmanr), or None with fewer than
    3 points or a constant input. The two-sided p is exact (all n! pairings,
    scipy.stats.permutation_test) for n <= EXACT_SPEARMAN_MAX_N, where spearmanr's t
    approximation is far off (it gives p = 0 for 3 points in order; the exact p is 1/3)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(sps.spearmanr(x, y).statistic)
    if len(x) > EXACT_SPEARMAN_MAX_N:
        return rho, float(sps.spearmanr(x, y).pvalue)
    res = sps.permutation_test((x,), lambda a: sps.spearmanr(a, y).statistic,
                               permutation_type="pairings", n_resamples=np.inf)
    return rho, float(res.pvalue)
