"""Statistics of a study's results over seeds: `Stat` (values of one setting), number
formatting, `compare` (the verdict between two settings) and `spearman`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


RULE = ("A difference between two settings counts only when the difference of their means "
        "exceeds the larger of their two standard deviations over seeds (sample std, ddof=1); "
        "otherwise it is reported as no difference beyond the seed spread. With fewer than two "
        "seeds on either side the spread is unknown and no verdict is given. All metrics are "
        "errors: lower is better.")


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
            return f"{num(self.mean, digits)} (1 seed)"
        return f"{num(self.mean, digits)} ± {num(self.std, digits, dec)}"


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
