"""Decisions between two settings of one task: `lower`, `higher`, `equivalent` or `inconclusive`.

Settings of one task share their seeds, so a comparison is paired: d_i = a_i - b_i over the
n shared seeds (metrics are errors: lower is better), mean d and sample std s_d.

- Difference: the two-sided paired t-test of H0: E[d] = 0, t = mean(d) / (s_d / sqrt(n)),
  `scipy.stats.ttest_1samp(d, 0)`; its (1 - alpha) interval mean(d) +- t_{1-alpha/2, n-1} s_d /
  sqrt(n), `scipy.stats.t.interval`.
- Equivalence within a margin m fixed before the run (TOST, Schuirmann 1987): the two one-sided
  paired t-tests of H0: E[d] <= -m (`ttest_1samp(d, -m, alternative="greater")`) and of
  H0: E[d] >= +m (`ttest_1samp(d, m, alternative="less")`); p_equiv = the larger of the two.
- Holm's step-down adjustment (`stats.holm`) over one question's family, separately for the
  difference p-values and for the equivalence p-values.
- Verdict: `lower` / `higher` when p_diff_holm < alpha (by the sign of mean d); else
  `equivalent` when p_equiv_holm < alpha; else `inconclusive`. A difference that is significant
  and also inside the margin is called lower / higher.
- For an inconclusive comparison, the difference this design could detect with 80% power at
  the observed spread: (t_{1-alpha/2, n-1} + t_{0.80, n-1}) s_d / sqrt(n) (`scipy.stats.t.ppf`).
- No spread (every d_i equal): the difference is known exactly; p_diff = 0 if it is non-zero,
  else 1; p_equiv = 0 if |d| < m, else 1.
- Fewer than `MIN_SEEDS` shared seeds: inconclusive, no test.

`claim_outcome` turns a question's verdicts into `reproduced`, `contradicted` or `inconclusive`
against what the paper says; `check_margin` enforces the cap on margins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import stats as sps

from .stats import ALPHA, MIN_SEEDS, Stat, holm, num, p_text, paired, tost_p

POWER = 0.80
VERDICTS = ("lower", "higher", "equivalent", "inconclusive")
OUTCOMES = ("reproduced", "contradicted", "inconclusive")
EXPECTATIONS = ("no-effect", "lower", "higher", "not-lower", "not-higher")
RULE = ("Each comparison pairs the two settings by seed (d = a - b; errors, lower is better). "
        f"It is `lower` or `higher` when the two-sided paired t-test (scipy.stats.ttest_1samp on "
        f"d), Holm-adjusted within its question, gives p < {ALPHA}; else `equivalent` when both "
        "one-sided tests of the equivalence test (TOST) against the task's margin, fixed in the "
        f"study spec before the runs, reject at {ALPHA} after Holm's adjustment; else "
        "`inconclusive`, with the difference the design could have detected (80% power at the "
        f"observed spread). Fewer than {MIN_SEEDS} shared seeds: inconclusive.")


@dataclass
class Decision:
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci: list
    margin: Optional[float]
    p_diff: Optional[float] = None
    p_equiv: Optional[float] = None
    p_diff_holm: Optional[float] = None
    p_equiv_holm: Optional[float] = None
    detectable: Optional[float] = None
    verdict: str = "inconclusive"

    @property
    def p(self) -> Optional[float]:
        """The adjusted p that decided: equivalence for `equivalent`, the difference else."""
        return self.p_equiv_holm if self.verdict == "equivalent" else self.p_diff_holm


def decide(a: Stat, b: Stat, margin: float, alpha: float = ALPHA) -> Decision:
    """The unadjusted tests of one comparison (verdict set by `DecisionFamily.adjust`)."""
    xa, xb = paired(a, b)
    d = xa - xb
    n = len(d)
    mean_a, mean_b = (float(x.mean()) if n else float("nan") for x in (xa, xb))
    diff = float(d.mean()) if n else float("nan")
    out = Decision(n, mean_a, mean_b, diff, [float("nan"), float("nan")], margin)
    if n < MIN_SEEDS:
        return out
    spread = float(d.std(ddof=1))
    if spread <= 1e-12 * max(1.0, float(np.abs(d).max())):
        out.ci = [diff, diff]
        out.p_diff = 0.0 if abs(diff) > 1e-12 else 1.0
        out.p_equiv = 0.0 if margin is not None and abs(diff) < margin else 1.0
        out.detectable = 0.0
        return out
    se = spread / math.sqrt(n)
    out.ci = [float(v) for v in sps.t.interval(1 - alpha, n - 1, loc=diff, scale=se)]
    out.p_diff = float(sps.ttest_1samp(d, 0.0).pvalue)
    # no margin fixed for this task: no equivalence verdict
    out.p_equiv = 1.0 if margin is None else tost_p(d, margin)
    out.detectable = float((sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(POWER, n - 1)) * se)
    return out


@dataclass
class DecisionFamily:
    """The comparisons of one question: `add` them all, then `adjust` (Holm, separately for the
    difference and the equivalence p-values), then read the verdicts."""
    alpha: float = ALPHA
    tests: dict = field(default_factory=dict)

    def add(self, key, a: Stat, b: Stat, margin: float) -> Decision:
        self.tests[key] = decide(a, b, margin, self.alpha)
        return self.tests[key]

    def adjust(self) -> "DecisionFamily":
        tested = [t for t in self.tests.values() if t.p_diff is not None]
        for t, p in zip(tested, holm([t.p_diff for t in tested])):
            t.p_diff_holm = p
        for t, p in zip(tested, holm([t.p_equiv for t in tested])):
            t.p_equiv_holm = p
        for t in self.tests.values():
            t.verdict = _verdict(t, self.alpha)
        return self

    def verdict(self, key) -> str:
        return self.tests[key].verdict

    def text(self, key) -> str:
        t = self.tests[key]
        if t.p_diff_holm is None:
            return f"inconclusive ({t.n} shared seed(s); need {MIN_SEEDS})"
        ci = f"[{num(t.ci[0])}, {num(t.ci[1])}]"
        if t.verdict in ("lower", "higher"):
            return (f"{t.verdict} (diff {num(t.diff)} {ci}, paired t n={t.n}, "
                    f"p_Holm {p_text(t.p_diff_holm)})")
        if t.verdict == "equivalent":
            return (f"equivalent within ±{num(t.margin)} (diff {num(t.diff)} {ci}, TOST p_Holm "
                    f"{p_text(t.p_equiv_holm)})")
        margin = "no margin" if t.margin is None else f"margin ±{num(t.margin)}"
        return (f"inconclusive (diff {num(t.diff)} {ci}, {margin}; could detect "
                f"|diff| >= {num(t.detectable)} at this spread)")

    def records(self, question: str, describe) -> list[dict]:
        """verdicts.json comparisons; `describe(key) -> (task, a, b)`."""
        out = []
        for key, t in self.tests.items():
            task, a, b = describe(key)
            out.append({"question": question, "task": task, "a": a, "b": b, "n": t.n,
                        "mean_a": t.mean_a, "mean_b": t.mean_b, "diff": t.diff,
                        "ci": list(t.ci), "p": t.p, "margin": t.margin, "verdict": t.verdict,
                        "p_diff": t.p_diff_holm, "p_equiv": t.p_equiv_holm,
                        "detectable": t.detectable if t.verdict == "inconclusive" else None})
        return out


def _verdict(t: Decision, alpha: float) -> str:
    if t.p_diff_holm is None:
        return "inconclusive"
    if t.p_diff_holm < alpha:
        return "lower" if t.diff < 0 else "higher"
    if t.p_equiv_holm < alpha:
        return "equivalent"
    return "inconclusive"


def check_margin(margin: float, linear_error: Optional[float]) -> None:
    """A margin must be > 0 and at most max(0.01, 10% of the task's linear-baseline error): a
    wide margin makes every null result "equivalent" and decides nothing."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0; got {margin}")
    cap = max(0.01, 0.1 * (linear_error or 0.0))
    if margin > cap + 1e-12:
        raise ValueError(f"equivalence margin {margin} is wider than max(0.01, 10% of the "
                         f"linear baseline's error) = {cap:.4g}")


def claim_outcome(expected: str, verdicts: list[str]) -> str:
    """What a question's verdicts say of the paper's claim.

    - `no-effect` (it does not matter): reproduced if every verdict is `equivalent`,
      contradicted if any is `lower` or `higher`, else inconclusive;
    - `lower` (a is better than b): reproduced if every verdict is `lower`, contradicted if any
      is `higher` or `equivalent`, else inconclusive; `higher` likewise;
    - `not-lower` (a does not help): reproduced if every verdict is `equivalent` or `higher`,
      contradicted if any is `lower`, else inconclusive; `not-higher` likewise.
    """
    if expected not in EXPECTATIONS:
        raise ValueError(f"unknown expectation '{expected}'; valid: {', '.join(EXPECTATIONS)}")
    if not verdicts:
        return "inconclusive"
    v = set(verdicts)
    if expected == "no-effect":
        ok, bad = {"equivalent"}, {"lower", "higher"}
    elif expected in ("lower", "higher"):
        ok, bad = {expected}, {"lower", "higher", "equivalent"} - {expected}
    else:
        worse = expected.removeprefix("not-")
        ok, bad = {"equivalent"} | ({"lower", "higher"} - {worse}), {worse}
    if v & bad:
        return "contradicted"
    return "reproduced" if v <= ok else "inconclusive"


def check_record(rec: dict) -> None:
    """A verdicts.json comparison holds the agreed keys and a known verdict (ValueError)."""
    need = ("question", "task", "a", "b", "n", "mean_a", "mean_b", "diff", "ci", "p", "margin",
            "verdict")
    missing = [k for k in need if k not in rec]
    if missing:
        raise ValueError(f"comparison record lacks {', '.join(missing)}: {rec}")
    if rec["verdict"] not in VERDICTS:
        raise ValueError(f"unknown verdict {rec['verdict']!r}")
    if rec["question"] not in ("rq1", "rq2", "rq3", "rq4", "baselines"):
        raise ValueError(f"unknown question {rec['question']!r}")
