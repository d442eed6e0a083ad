"""Means with Student-t intervals over seeds (dpbook.stats) and the interval verdict (dpbook.claims)."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dpbook import claims
from dpbook.stats import Interval, compare, mean_interval


def test_interval_matches_a_hand_computation_with_scipys_t_quantile():
    values = [0.80, 0.83, 0.79, 0.85]
    mean = sum(values) / 4
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = scipy_stats.t.ppf(0.975, df=3) * s / 2
    m = mean_interval(values)
    assert (m.mean, m.std, m.n) == (pytest.approx(mean), pytest.approx(s), 4)
    assert (m.low, m.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    # and scipy's own interval of the mean, an independent route
    low, high = scipy_stats.t.interval(0.9, df=3, loc=mean, scale=scipy_stats.sem(values))
    m90 = mean_interval(values, confidence=0.9)
    assert (m90.low, m90.high) == (pytest.approx(low), pytest.approx(high))
    assert m90.half_width < m.half_width


def test_the_documented_example():
    m = mean_interval([0.80, 0.82, 0.81])
    assert (round(m.mean, 3), round(m.low, 3), round(m.high, 3)) == (0.81, 0.785, 0.835)
    assert m.text() == "81.0% [78.5, 83.5]" and m.text(percent=False) == "0.810 [0.785, 0.835]"
    assert Interval(**m.as_dict()) == m


@pytest.mark.parametrize("n, confidence", [(3, 0.95), (5, 0.95), (3, 0.8)])
def test_coverage_in_simulation(n, confidence):
    """2,000 experiments of n normal runs: the interval holds the true mean in about `confidence` of them (a
    normal-quantile interval, or a population sd, would cover ~0.78 at n = 3 and fail)."""
    rng = np.random.default_rng(1234 + n)
    true_mean, draws = 0.7, 2000
    covered = 0
    for _ in range(draws):
        m = mean_interval(rng.normal(true_mean, 0.03, size=n), confidence=confidence)
        covered += m.low <= true_mean <= m.high
    sd = math.sqrt(confidence * (1 - confidence) / draws)
    assert abs(covered / draws - confidence) < 4 * sd


def test_compare_flips_when_the_intervals_stop_overlapping():
    b = Interval(mean=0.70, low=0.68, high=0.72, n=3, std=0.01)
    assert compare(Interval(0.75, 0.73, 0.77, 3, 0.01), b) == "higher"
    assert compare(Interval(0.74, 0.715, 0.765, 3, 0.01), b) == "overlap"  # low 0.715 < b's high 0.72
    assert compare(Interval(0.65, 0.63, 0.67, 3, 0.01), b) == "lower"
    assert compare(b, Interval(0.65, 0.63, 0.67, 3, 0.01)) == "higher"
    # same means, wider spread: the same gap stops being settled
    a = mean_interval([0.74, 0.75, 0.76])
    c = mean_interval([0.69, 0.70, 0.71])
    assert compare(a, c) == "higher"
    assert compare(mean_interval([0.70, 0.75, 0.80]), mean_interval([0.65, 0.70, 0.75])) == "overlap"


@pytest.mark.parametrize("values, confidence, match", [
    ([0.8], 0.95, "values of mean_interval"),
    ([0.8, float("nan")], 0.95, "finite"),
    ([0.8, 0.9], 1.0, "confidence of mean_interval"),
])
def test_bad_arguments_raise_with_the_parameter_named(values, confidence, match):
    with pytest.raises(ValueError, match=match):
        mean_interval(values, confidence=confidence)


def test_interval_verdict_says_holds_only_when_every_interval_supports_it():
    high = mean_interval([0.80, 0.81, 0.82])
    low = mean_interval([0.70, 0.71, 0.72])
    near = mean_interval([0.78, 0.80, 0.83])  # mean 0.803, overlaps `high`
    assert claims.interval_verdict([(high, low), (high, low)]) == "holds"
    assert claims.interval_verdict([(low, high)]) == "does not hold"
    assert claims.interval_verdict([(high, low), (low, high)]) == "does not hold"
    # one setting unsettled: no "holds", whatever the other says
    assert claims.interval_verdict([(high, low), (high, near)]).startswith("not settled: the means point")
    assert claims.interval_verdict([(near, high)]) == "not settled: the intervals overlap"  # means disagree too
    assert claims.interval_verdict([]) == "not tested here"
    # the verdict flips exactly where the lower end of A crosses the upper end of B
    b = Interval(0.70, 0.68, 0.72, 3, 0.01)
    assert claims.interval_verdict([(Interval(0.75, 0.7201, 0.78, 3, 0.01), b)]) == "holds"
    assert claims.interval_verdict([(Interval(0.75, 0.7199, 0.78, 3, 0.01), b)]).startswith("not settled")


def test_tuned_reads_the_interval_of_a_tuning_result():
    m = mean_interval([0.8, 0.82, 0.81])
    result = {"metrics": {"cells": [{"method": "gep", "epsilon": 8.0, "interval": m.as_dict()}]}}
    assert claims.tuned(result, "gep", 8) == m
    with pytest.raises(KeyError, match="dpsgd"):
        claims.tuned(result, "dpsgd", 8.0)
