"""Privacy accounting of Poisson-subsampled Gaussian mechanisms (DP-SGD, GEP, SecureSGD), through dp-accounting.

:func:`rdp` and :func:`rdp_to_epsilon` expose the Renyi-DP route step by step, :func:`epsilon` answers with
RDP or with privacy-loss distributions (PLD), and :class:`Accountant` records the steps of a training run.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import checks

#: Renyi orders used by the RDP accountant. Small fractional orders matter for large epsilon, large orders
#: for small epsilon; the minimum over this grid is taken.
DEFAULT_ORDERS = tuple(np.concatenate([np.round(np.arange(1.1, 11.0, 0.1), 2), np.arange(11, 64),
                                       [80, 96, 128, 160, 192, 256, 384, 512, 1024]]).tolist())
ACCOUNTANTS = ("rdp", "pld")
CONVERSIONS = ("improved", "legacy")


def _sgm_event(noise_multiplier: float, sample_rate: float, steps: int):
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    sampled = gaussian if sample_rate == 1 else dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)
    return dp_accounting.SelfComposedDpEvent(sampled, int(steps))


def _check_sgm(noise_multiplier: float, sample_rate: float, steps: int, where: str) -> None:
    checks.positive(noise_multiplier, "noise_multiplier", where)
    checks.sample_rate(sample_rate, where)
    checks.steps(steps, where)


def rdp(*, noise_multiplier: float, sample_rate: float, steps: int,
        orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """Renyi-DP curve of ``steps`` Poisson-subsampled Gaussian mechanisms, one value per order.

    For ``sample_rate`` = 1 it is steps * alpha / (2 noise_multiplier^2) (Mironov 2017, Proposition 7); for
    q < 1 the sampled Gaussian mechanism's bound of Mironov, Talwar & Zhang (2019), as computed by
    dp-accounting's ``RdpAccountant``.

    Returns:
        float array of shape ``(len(orders),)``, in nats.
    """
    from dp_accounting import rdp as dp_rdp

    _check_sgm(noise_multiplier, sample_rate, steps, "rdp()")
    accountant = dp_rdp.RdpAccountant(list(orders))
    # dp-accounting logs a warning for each fractional order whose series does not converge and gives
    # it an infinite RDP, which the minimum over orders then ignores: correct, but noise in a notebook.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        accountant.compose(_sgm_event(noise_multiplier, sample_rate, steps))
    finally:
        absl_logger.setLevel(level)
    return np.asarray(accountant.rdp, dtype=float)


def rdp_to_epsilon(orders: Sequence[float], rdp_values: Sequence[float], delta: float, *,
                   conversion: str = "improved") -> tuple[float, float]:
    """Convert an RDP curve to (epsilon, best order) at ``delta``.

    ``conversion="improved"`` (default): epsilon = min_a [RDP(a) + ln(1 - 1/a) - ln(delta a) / (a - 1)],
    Balle et al. (AISTATS 2020), Theorem 21, as in dp-accounting.
    ``conversion="legacy"``: epsilon = min_a [RDP(a) - ln(delta) / (a - 1)], Mironov (2017), Proposition 3;
    what TF-Privacy's 2018 accountant, and hence the GEP code, report. Always larger.
    """
    from dp_accounting import rdp as dp_rdp

    checks.delta(delta, "rdp_to_epsilon()")
    checks.one_of(conversion, CONVERSIONS, "conversion", "rdp_to_epsilon()")
    if conversion == "improved":
        eps, order = dp_rdp.compute_epsilon(list(orders), list(rdp_values), delta)
        return float(eps), float(order)
    orders_a, rdp_a = np.asarray(orders, dtype=float), np.asarray(rdp_values, dtype=float)
    eps = rdp_a - math.log(delta) / (orders_a - 1)
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), float(orders_a[i])


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp", conversion: str = "improved", orders: Sequence[float] = DEFAULT_ORDERS,
            pld_discretization: float = 1e-4) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian mechanisms at ``delta`` (add/remove-one neighbours).

    Each step releases a sum of per-example contributions of l2 norm at most C, plus N(0, (sigma C)^2)
    noise, over a batch that contains each example independently with probability ``sample_rate``;
    ``noise_multiplier`` = sigma.

    Args:
        noise_multiplier: sigma, noise standard deviation in units of the sensitivity C.
        sample_rate: q, Poisson sampling probability.
        steps: T, number of steps.
        delta: target delta.
        accountant: ``"rdp"`` (Renyi DP, an upper bound, fast) or ``"pld"`` (privacy-loss distributions,
            tight up to the discretisation, slower).
        conversion: RDP only; see :func:`rdp_to_epsilon`.
        orders: RDP only; the Renyi orders searched.
        pld_discretization: PLD only; ``value_discretization_interval`` of dp-accounting's ``PLDAccountant``
            (smaller is tighter and slower; the result stays an upper bound).

    Returns:
        float: epsilon, in nats.
    """
    _check_sgm(noise_multiplier, sample_rate, steps, "epsilon()")
    checks.delta(delta, "epsilon()")
    checks.one_of(accountant, ACCOUNTANTS, "accountant", "epsilon()")
    if steps == 0:
        return 0.0
    if accountant == "rdp":
        return rdp_to_epsilon(orders, rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                          steps=steps, orders=orders), delta, conversion=conversion)[0]
    from dp_accounting import pld

    checks.check(conversion == "improved", "conversion", "epsilon()", "'improved' with the PLD accountant",
                 conversion)
    acc = pld.PLDAccountant(value_discretization_interval=pld_discretization)
    acc.compose(_sgm_event(noise_multiplier, sample_rate, steps))
    return float(acc.get_epsilon(delta))


def joint_noise_multiplier(*noise_multipliers: float) -> float:
    """Noise multiplier of one Gaussian mechanism equivalent to releasing several Gaussian parts at once.

    Releasing parts with sensitivities C_j and noise standard deviations sigma_j C_j *computed on the same
    batch* is one Gaussian mechanism on the rescaled concatenation, with sigma_eff = (sum_j sigma_j^-2)^(-1/2)
    (the rule of TF-Privacy's ``compute_rdp_from_ledger``). GEP's embedding and residual are such a pair
    (``book/gep.md``; notebook ``20_gep_algorithm``, section 7).
    """
    checks.check(len(noise_multipliers) > 0, "noise_multipliers", "joint_noise_multiplier()", "non-empty",
                 noise_multipliers)
    for s in noise_multipliers:
        checks.positive(s, "each noise multiplier", "joint_noise_multiplier()")
    return float(sum(s ** -2.0 for s in noise_multipliers) ** -0.5)


# ---------------------------------------------------------------------------------------------------
# A thin stateful accountant for training loops
# ---------------------------------------------------------------------------------------------------
@dataclass
class Accountant:
    """Records the steps of a training run and answers its epsilon through :func:`epsilon`.

    Each segment ``(noise_multiplier, sample_rate, steps)`` is a run of identical Poisson-subsampled
    Gaussian steps; segments compose. ``state_dict()`` / ``load_state_dict()`` let a checkpoint carry it.

    Example:
        >>> acc = Accountant(delta=1e-5)
        >>> acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
        >>> round(acc.epsilon(), 1)
        2.1
    """

    delta: float
    accountant: str = "rdp"
    history: list = field(default_factory=list)

    def __post_init__(self):
        checks.delta(self.delta, "Accountant()")
        checks.one_of(self.accountant, ACCOUNTANTS, "accountant", "Accountant()")

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` more steps with this noise multiplier and sample rate."""
        _check_sgm(noise_multiplier, sample_rate, steps, "Accountant.step()")
        if self.history and self.history[-1][:2] == [noise_multiplier, sample_rate]:
            self.history[-1][2] += int(steps)
        else:
            self.history.append([float(noise_multiplier), float(sample_rate), int(steps)])

    @property
    def steps(self) -> int:
        return sum(h[2] for h in self.history)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the accountant's)."""
        import dp_accounting
        from dp_accounting import pld
        from dp_accounting import rdp as dp_rdp

        delta = self.delta if delta is None else delta
        checks.delta(delta, "Accountant.epsilon()")
        if not self.history:
            return 0.0
        if len(self.history) == 1:
            s, q, t = self.history[0]
            return epsilon(noise_multiplier=s, sample_rate=q, steps=t, delta=delta, accountant=self.accountant)
        event = dp_accounting.ComposedDpEvent([_sgm_event(s, q, t) for s, q, t in self.history])
        acc = dp_rdp.RdpAccountant(list(DEFAULT_ORDERS)) if self.accountant == "rdp" else pld.PLDAccountant()
        acc.compose(event)
        return float(acc.get_epsilon(delta))

    def state_dict(self) -> dict:
        return {"delta": self.delta, "accountant": self.accountant, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.delta, self.accountant = state["delta"], state["accountant"]
        self.history = [list(h) for h in state["history"]]
