"""Composition of separate releases: sequential (basic), parallel and advanced.

For many Poisson-subsampled Gaussian steps, :func:`dpbook.privacy.epsilon` (RDP or PLD) is far tighter than
these general theorems; they serve mechanisms the accountant does not describe (StoBatch's Laplace releases).
"""
from __future__ import annotations

import math
from typing import Iterable

from .. import checks


def compose_basic(epsilons: Iterable[float], deltas: Iterable[float] | None = None) -> tuple[float, float]:
    """Sequential composition: releases on the same data add up, (sum epsilon_i, sum delta_i).

    Dwork & Roth (2014), Theorem 3.16. Holds for any mechanisms, adaptively chosen.
    """
    eps = [float(e) for e in epsilons]
    dels = [float(d) for d in deltas] if deltas is not None else [0.0] * len(eps)
    checks.check(len(eps) == len(dels), "deltas", "compose_basic()", "as long as epsilons", len(dels))
    return sum(eps), sum(dels)


def compose_parallel(epsilons: Iterable[float], deltas: Iterable[float] | None = None) -> tuple[float, float]:
    """Parallel composition: releases on *disjoint* parts of the data cost (max epsilon_i, max delta_i).

    McSherry (SIGMOD 2009), Theorem 4. StoBatch's disjoint batches rely on it.
    """
    eps = [float(e) for e in epsilons]
    dels = [float(d) for d in deltas] if deltas is not None else [0.0] * len(eps)
    checks.check(len(eps) == len(dels) and len(eps) > 0, "epsilons", "compose_parallel()",
                 "non-empty and as long as deltas", len(eps))
    return max(eps), max(dels)


def compose_advanced(*, epsilon: float, delta: float, steps: int, delta_slack: float) -> tuple[float, float]:
    """k-fold adaptive composition of (epsilon, delta)-DP mechanisms (Dwork, Rothblum & Vadhan 2010).

    Returns (epsilon sqrt(2 k ln(1/delta')) + k epsilon (e^epsilon - 1), k delta + delta'),
    Dwork & Roth (2014), Theorem 3.20, with k = ``steps`` and delta' = ``delta_slack``.
    """
    checks.positive(epsilon, "epsilon", "compose_advanced()")
    checks.steps(steps, "compose_advanced()")
    checks.delta(delta_slack, "compose_advanced()")
    eps = epsilon * math.sqrt(2 * steps * math.log(1 / delta_slack)) + steps * epsilon * math.expm1(epsilon)
    return eps, steps * delta + delta_slack
