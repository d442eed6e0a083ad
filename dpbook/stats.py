"""Means with confidence intervals over independent runs (seeds), and how to read two of them side by side.

Every number the book compares across methods is the mean of ``n >= 3`` runs that differ only in their seed,
shown with a two-sided Student-t interval: with sample mean :math:`\\bar x`, sample standard deviation
:math:`s` (``n - 1`` in the denominator) and :math:`t_{n-1}` the Student quantile,

.. math:: \\bar x \\pm t_{n-1,\\,1-(1-c)/2}\\; s / \\sqrt{n}.

The t interval assumes the runs' scores are roughly normal around their mean; with three to five seeds it is
wide, which is the honest answer for so few runs.

Example:
    >>> m = mean_interval([0.80, 0.82, 0.81])
    >>> round(m.mean, 3), round(m.low, 3), round(m.high, 3)
    (0.81, 0.785, 0.835)
    >>> m.text()
    '81.0% [78.5, 83.5]'
    >>> compare(mean_interval([0.86, 0.87, 0.865]), m)
    'higher'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _scipy_stats

from . import checks


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` runs and its two-sided confidence interval ``[low, high]`` (same units as the runs)."""

    mean: float
    low: float
    high: float
    n: int
    std: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, percent: bool = True, digits: int = 1) -> str:
        """``'81.0% [78.5, 83.5]'`` (fractions as percentages) or ``'0.810 [0.785, 0.835]'``."""
        if percent:
            return f"{100 * self.mean:.{digits}f}% [{100 * self.low:.{digits}f}, {100 * self.high:.{digits}f}]"
        d = digits + 2
        return f"{self.mean:.{d}f} [{self.low:.{d}f}, {self.high:.{d}f}]"

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict; ``Interval(**d)`` rebuilds the interval."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "std": self.std,
                "confidence": self.confidence}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (one per seed) with its Student-t ``confidence`` interval.

    Args:
        values: at least two finite numbers, one per independent run.
        confidence: coverage of the interval, in (0, 1).

    Raises:
        ValueError: fewer than two values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    xs = [float(v) for v in values]
    checks.check(len(xs) >= 2, "values", "mean_interval()", "at least two runs (one per seed)", xs)
    checks.check(all(math.isfinite(v) for v in xs), "values", "mean_interval()", "finite numbers", xs)
    checks.check(0 < confidence < 1, "confidence", "mean_interval()", "in (0, 1)", confidence)
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = float(_scipy_stats.t.ppf(1 - (1 - confidence) / 2, df=n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, confidence)


def compare(a: Interval, b: Interval) -> str:
    """How ``a`` stands against ``b``: ``"higher"`` or ``"lower"`` when the intervals do not overlap,
    ``"overlap"`` when they do (the runs do not settle the order).

    Non-overlapping 95% intervals are a conservative test of a difference (it implies p < 0.05 for a difference
    of means, not the other way round): a comparison the book calls settled is settled at least that firmly.
    """
    if a.low > b.high:
        return "higher"
    if a.high < b.low:
        return "lower"
    return "overlap"
