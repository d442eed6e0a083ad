"""One accountant for every part of a sound StoBatch run, under replace-one.

The parts (:class:`Parts`), each on the private training set of N examples:

* the **input release** (:mod:`.release`): one Gaussian mechanism of noise multiplier s / (2C) (l2
  sensitivity 2C of an example's clipped code), or one Laplace mechanism of b / (2C) (l1 sensitivity 2C);
* the **labels** by K-ary randomized response at eps_y;
* **DP-SGD above the DP layer** (:mod:`.above`): T steps, each on a batch of m examples drawn uniformly
  without replacement, per-example gradients clipped to C, Gaussian noise of standard deviation z 2C on their
  sum (2C: the sum's l2 sensitivity when one example is replaced).

They are composed by Google's ``dp-accounting`` RDP accountant with ``NeighboringRelation.REPLACE_ONE``
(Gaussian and Laplace mechanisms; randomized response; Wang, Balle & Kasiviswanathan 2019, Theorem 27, for
sampling without replacement), and :func:`epsilon` converts to (eps, delta). The relation is replace-one
because the input and label releases publish one row per example: their number N is public.

Example (randomized response alone is pure eps-DP; the RDP conversion adds a little):
    >>> round(epsilon(Parts(label_epsilon=1.0, n_classes=10), delta=1e-5), 2) >= 1.0
    True
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from scipy import optimize

from .. import checks
from ..privacy.accounting import DEFAULT_ORDERS


@dataclass(frozen=True)
class Parts:
    """What a run releases. ``input_multiplier``: s / (2C) of the input release (Gaussian std or Laplace
    scale over the l2 or l1 sensitivity; None: no input release); ``label_epsilon``: randomized response (None:
    none); ``dpsgd_multiplier`` with ``dataset_size``, ``batch_size``, ``steps``: DP-SGD (None: none)."""

    input_multiplier: float | None = None
    input_mechanism: str = "gaussian"
    label_epsilon: float | None = None
    n_classes: int = 10
    dpsgd_multiplier: float | None = None
    dataset_size: int = 1
    batch_size: int = 1
    steps: int = 0


def _events(parts: Parts) -> list:
    import dp_accounting as dpa

    events = []
    if parts.input_multiplier is not None:
        mechanism = dpa.GaussianDpEvent if parts.input_mechanism == "gaussian" else dpa.LaplaceDpEvent
        events.append(mechanism(parts.input_multiplier))
    if parts.label_epsilon is not None:
        k = parts.n_classes
        events.append(dpa.RandomizedResponseDpEvent(noise_parameter=k / (math.exp(parts.label_epsilon) + k - 1),
                                                    num_buckets=k))
    if parts.dpsgd_multiplier is not None and parts.steps > 0:
        step = dpa.SampledWithoutReplacementDpEvent(parts.dataset_size, parts.batch_size,
                                                    dpa.GaussianDpEvent(parts.dpsgd_multiplier))
        events.append(dpa.SelfComposedDpEvent(step, parts.steps))
    return events


def epsilon(parts: Parts, *, delta: float) -> float:
    """eps at ``delta`` of all parts composed (RDP, replace-one); 0 when nothing is released."""
    import dp_accounting as dpa

    checks.delta(delta, "epsilon()")
    events = _events(parts)
    if not events:
        return 0.0
    acc = dpa.rdp.RdpAccountant(list(DEFAULT_ORDERS), dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def calibrate(parts: Parts, field: str, *, target_epsilon: float, delta: float) -> Parts:
    """``parts`` with the multiplier ``field`` (``"input_multiplier"`` or ``"dpsgd_multiplier"``) set to the
    smallest value whose composed eps at ``delta`` is <= ``target_epsilon`` (bisection on a log scale).
    Raises if the other parts alone already spend the target. Cached: the same question is answered once."""
    checks.one_of(field, ("input_multiplier", "dpsgd_multiplier"), "field", "calibrate()")
    checks.positive(target_epsilon, "target_epsilon", "calibrate()")
    rest = replace(parts, **{field: None})
    floor = epsilon(rest, delta=delta)
    checks.check(floor < target_epsilon, "target_epsilon", "calibrate()",
                 f"above what the other parts spend ({floor:.4g})", target_epsilon,
                 "Give the labels (or the input release) a smaller share of the budget.")

    def gap(log_z: float) -> float:
        return epsilon(replace(parts, **{field: math.exp(log_z)}), delta=delta) - target_epsilon

    lo, hi = math.log(1e-3), math.log(1e4)
    while gap(lo) < 0:
        lo -= 2.0
    checks.check(gap(hi) < 0, "target_epsilon", "calibrate()",
                 f"reachable: even noise multiplier {math.exp(hi):g} spends {gap(hi) + target_epsilon:.4g}",
                 target_epsilon, "With batches of nearly the whole dataset the bound cannot go lower; use smaller "
                 "batches or a larger budget.")
    z = math.exp(optimize.brentq(gap, lo, hi, xtol=1e-6))
    while gap(math.log(z)) > 0:  # the bound need not fall monotonically in z: step up until it is met
        z *= 1.0001
    return replace(parts, **{field: z})


def report(parts: Parts, *, delta: float) -> dict:
    """The accountant's (eps, delta) for ``parts`` and the parts' parameters, for a result file."""
    return {"epsilon": epsilon(parts, delta=delta), "delta": delta, "relation": "replace-one",
            "input_multiplier": parts.input_multiplier, "input_mechanism": parts.input_mechanism,
            "label_epsilon": parts.label_epsilon, "dpsgd_multiplier": parts.dpsgd_multiplier,
            "dpsgd_steps": parts.steps, "dpsgd_sample_rate": parts.batch_size / parts.dataset_size}
