"""Noise calibration: how much Gaussian noise one release, or a whole training run, needs.

The ``*_gaussian_sigma`` functions (one release, any sensitivity) return a ``noise_std``, an absolute standard
deviation; :func:`calibrate_sigma` (Poisson-subsampled steps) returns a ``noise_multiplier``, the standard
deviation in units of the sensitivity. The names are historical; each docstring says which it returns.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import optimize, special

from .. import checks
from .accounting import epsilon


# ---------------------------------------------------------------------------------------------------
# One Gaussian release: three calibrations
# ---------------------------------------------------------------------------------------------------
def classical_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """noise_std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon, valid only for epsilon < 1.

    Returns a ``noise_std`` (absolute). Dwork & Roth (2014), Theorem A.1. Loose; kept because most papers,
    GEP's Theorem 3.1 among them, use it.
    """
    checks.check(0 < epsilon < 1, "epsilon", "classical_gaussian_sigma()", "in (0, 1)", epsilon,
                 "The classical bound is proved only for epsilon < 1; use analytic_gaussian_sigma() instead.")
    checks.delta(delta, "classical_gaussian_sigma()")
    checks.positive(sensitivity, "sensitivity", "classical_gaussian_sigma()")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def analytic_gaussian_delta(*, epsilon: float, noise_std: float | None = None, sensitivity: float = 1.0,
                            sigma: float | None = None) -> float:
    """The smallest delta for which one Gaussian release is (epsilon, delta)-DP (exact, any epsilon >= 0).

    delta(epsilon) = Phi(D/(2 s) - epsilon s/D) - e^epsilon Phi(-D/(2 s) - epsilon s/D), with D the l2
    sensitivity and s = ``noise_std`` (absolute; ``sigma`` is its former name). Balle & Wang (ICML 2018),
    Theorem 8.
    """
    noise_std = checks.renamed(noise_std, sigma, "noise_std", "sigma", "analytic_gaussian_delta()")
    checks.check(epsilon >= 0, "epsilon", "analytic_gaussian_delta()", ">= 0", epsilon)
    checks.positive(noise_std, "noise_std", "analytic_gaussian_delta()")
    checks.positive(sensitivity, "sensitivity", "analytic_gaussian_delta()")
    a = sensitivity / (2.0 * noise_std)
    b = epsilon * noise_std / sensitivity
    # e^eps * Phi(-a-b) computed in log space: it is a difference of two small numbers for large epsilon.
    return float(max(special.ndtr(a - b) - math.exp(epsilon + special.log_ndtr(-a - b)), 0.0))


def analytic_gaussian_epsilon(*, noise_std: float | None = None, delta: float, sensitivity: float = 1.0,
                              sigma: float | None = None) -> float:
    """The smallest epsilon for which one Gaussian release with noise ``noise_std`` is (epsilon, delta)-DP.

    ``noise_std`` is absolute (``sigma``: its former name). Inverts :func:`analytic_gaussian_delta` in epsilon
    (it is decreasing in epsilon) by root finding.
    """
    noise_std = checks.renamed(noise_std, sigma, "noise_std", "sigma", "analytic_gaussian_epsilon()")
    checks.positive(noise_std, "noise_std", "analytic_gaussian_epsilon()")
    checks.delta(delta, "analytic_gaussian_epsilon()")
    checks.positive(sensitivity, "sensitivity", "analytic_gaussian_epsilon()")

    def excess(eps: float) -> float:
        return analytic_gaussian_delta(epsilon=eps, noise_std=noise_std, sensitivity=sensitivity) - delta

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-12))


def _solve_noise_std(delta_of_std: Callable[[float], float], delta: float, sensitivity: float, where: str) -> float:
    """The noise_std at which the decreasing function ``delta_of_std`` equals ``delta``."""
    lo, hi = 1e-3 * sensitivity, sensitivity
    while delta_of_std(hi) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e8 * sensitivity:
            raise ValueError(f"{where}: no noise_std below 1e8 * sensitivity reaches delta={delta}")
    while delta_of_std(lo) < delta:
        lo /= 2.0
    return float(optimize.brentq(lambda s: delta_of_std(s) - delta, lo, hi, xtol=1e-14, rtol=1e-12))


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest noise for which one Gaussian release is (epsilon, delta)-DP, any epsilon > 0.

    Returns a ``noise_std`` (absolute). Inverts :func:`analytic_gaussian_delta` by root finding (Balle & Wang
    2018, Algorithm 1 does the same).
    """
    checks.positive(epsilon, "epsilon", "analytic_gaussian_sigma()")
    checks.delta(delta, "analytic_gaussian_sigma()")
    checks.positive(sensitivity, "sensitivity", "analytic_gaussian_sigma()")
    return _solve_noise_std(
        lambda s: analytic_gaussian_delta(epsilon=epsilon, noise_std=s, sensitivity=sensitivity),
        delta, sensitivity, "analytic_gaussian_sigma()")


def extended_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Noise of the extended Gaussian mechanism (EGM) of Phan et al. (IJCAI 2019), valid for any epsilon > 0.

    noise_std = sqrt(2) * sensitivity * (sqrt(s) + sqrt(s + epsilon)) / (2 epsilon),  s = ln(sqrt(2/pi) / delta).

    Returns a ``noise_std`` (absolute). StoBatch's SecureSGD baseline (:func:`dpbook.baselines.hgm_sigma`) and
    PixelDP-style robustness noise use it.
    """
    checks.positive(epsilon, "epsilon", "extended_gaussian_sigma()")
    checks.check(0 < delta < math.sqrt(2 / math.pi), "delta", "extended_gaussian_sigma()",
                 "in (0, sqrt(2/pi))", delta)
    checks.positive(sensitivity, "sensitivity", "extended_gaussian_sigma()")
    s = math.log(math.sqrt(2.0 / math.pi) / delta)
    return math.sqrt(2.0) * sensitivity * (math.sqrt(s) + math.sqrt(s + epsilon)) / (2.0 * epsilon)


# ---------------------------------------------------------------------------------------------------
# Many Poisson-subsampled Gaussian steps
# ---------------------------------------------------------------------------------------------------
def calibrate_sigma(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp", conversion: str = "improved", rtol: float = 1e-4,
                    max_noise_multiplier: float | None = None, max_sigma: float | None = None,
                    **accountant_options) -> float:
    """The smallest noise multiplier (up to ``rtol``) whose :func:`~dpbook.privacy.epsilon` is at most
    ``target_epsilon``.

    Returns a ``noise_multiplier`` (noise standard deviation in units of the sensitivity), not a noise_std.
    Bisection on its logarithm; the result always satisfies the target (it is the upper end of the final
    bracket). ``max_noise_multiplier`` (default 1000; ``max_sigma`` is its former name) bounds the search.

    Raises:
        ValueError: the budget is impossible: even ``max_noise_multiplier`` exceeds ``target_epsilon``.
    """
    if max_noise_multiplier is None and max_sigma is None:
        max_noise_multiplier = 1e3
    max_noise_multiplier = checks.renamed(max_noise_multiplier, max_sigma, "max_noise_multiplier", "max_sigma",
                                    "calibrate_sigma()")
    checks.positive(target_epsilon, "target_epsilon", "calibrate_sigma()")
    checks.delta(delta, "calibrate_sigma()")
    checks.sample_rate(sample_rate, "calibrate_sigma()")
    checks.check(isinstance(steps, (int, np.integer)) and steps >= 1, "steps", "calibrate_sigma()",
                 "an integer >= 1", steps)

    def eps(noise_multiplier: float) -> float:
        return epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
                       accountant=accountant, conversion=conversion, **accountant_options)

    top = max_noise_multiplier
    if eps(top) > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is impossible at delta={delta}, sample_rate={sample_rate}, "
            f"steps={steps}: even noise_multiplier={top} gives epsilon={eps(top):.4g}. "
            "Raise the budget, lower the sample rate, or train for fewer steps.")
    lo, hi = 0.1, 1.0
    while eps(lo) <= target_epsilon and lo > 1e-4:
        lo /= 4.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, min(hi * 4.0, top)
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
