"""Differential-privacy mechanisms, noise calibration and privacy accounting.

The functions here are pure functions of numbers (the maths); :class:`Accountant` only records the steps
of a training run and asks them. Every privacy number the book prints comes from this module.

Conventions (shared by every module of dpbook; pass them by keyword):

* ``epsilon``, ``delta``: an (epsilon, delta)-DP guarantee, epsilon in nats.
* ``sensitivity``: the l1 (Laplace) or l2 (Gaussian) sensitivity of the released query.
* ``sigma``: the standard deviation of Gaussian noise; ``noise_multiplier`` = sigma / sensitivity.
* ``sample_rate`` (q): probability that each example joins a batch (Poisson sampling).
* ``steps`` (T): number of releases composed.

Neighbouring datasets differ by adding or removing one example (the relation dp-accounting calls
``ADD_OR_REMOVE_ONE``); this is what Poisson-subsampled accounting assumes.

Example
-------
>>> round(epsilon(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=14_070, delta=1e-5), 1)
2.6
"""
from __future__ import annotations

import logging
import math
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import optimize, special

#: Renyi orders used by the RDP accountant. Small fractional orders matter for large epsilon, large orders
#: for small epsilon; the minimum over this grid is taken.
DEFAULT_ORDERS = tuple(np.concatenate([np.round(np.arange(1.1, 11.0, 0.1), 2), np.arange(11, 64),
                                       [80, 96, 128, 160, 192, 256, 384, 512, 1024]]).tolist())
ACCOUNTANTS = ("rdp", "pld")


class UnsafeSeedWarning(UserWarning):
    """DP noise drawn from a fixed seed: reproducible, therefore not private against whoever knows the seed."""


# ---------------------------------------------------------------------------------------------------
# Validation, in one place, with the same message shape everywhere
# ---------------------------------------------------------------------------------------------------
def _check(ok: bool, name: str, where: str, constraint: str, value, fix: str = "") -> None:
    if not ok:
        raise ValueError(f"{name} of {where} must be {constraint}; got {value!r}." + (f" {fix}" if fix else ""))


def _check_positive(value: float, name: str, where: str) -> None:
    _check(value is not None and math.isfinite(value) and value > 0, name, where, "a finite number > 0", value)


def _check_delta(delta: float, where: str) -> None:
    _check(0 < delta < 1, "delta", where, "in (0, 1)", delta,
           "Use delta well below 1/n for a dataset of n examples, e.g. 1e-5.")


def _check_sample_rate(sample_rate: float, where: str) -> None:
    _check(0 < sample_rate <= 1, "sample_rate", where, "in (0, 1]", sample_rate,
           "With Poisson sampling it is the expected batch size divided by the dataset size.")


def _check_steps(steps: int, where: str) -> None:
    _check(isinstance(steps, (int, np.integer)) and steps >= 0, "steps", where, "an integer >= 0", steps)


# ---------------------------------------------------------------------------------------------------
# Noise: a dedicated generator seeded from the OS
# ---------------------------------------------------------------------------------------------------
_DEFAULT_GENERATORS: dict[str, torch.Generator] = {}


def noise_generator(device: str | torch.device | None = None, *, seed: int | None = None) -> torch.Generator:
    """A random generator for DP noise, seeded from the operating system's entropy.

    DP noise must never come from the global seed that also fixes initialisation and batch order: anyone who
    reads that seed in a notebook could subtract the noise. So every mechanism here draws from a generator
    made by this function.

    Args:
        device: where the noise is drawn (``"cpu"``, ``"cuda"``); default CPU.
        seed: opt-in fixed seed for exact reproduction of a figure. Emits :class:`UnsafeSeedWarning`:
            fine for teaching and tests, never for real data.

    Notes:
        torch's generators (Mersenne Twister on the CPU, Philox on CUDA) are not cryptographically secure,
        and floating-point Laplace/Gaussian samples leak through their low-order bits (Mironov, CCS 2012).
        Like most DP deep-learning code we accept both; a deployment should use a CSPRNG and a
        snapping or discrete mechanism.
    """
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    if seed is None:
        gen.manual_seed(secrets.randbits(63))
    else:
        warnings.warn(f"DP noise seeded with the fixed seed {seed}: reproducible, and therefore not private "
                      "against anyone who knows the seed. Fine for figures and tests, never for real data.",
                      UnsafeSeedWarning, stacklevel=2)
        gen.manual_seed(seed)
    return gen


def _generator_for(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    key = str(device)
    if key not in _DEFAULT_GENERATORS:
        _DEFAULT_GENERATORS[key] = noise_generator(device)
    return _DEFAULT_GENERATORS[key]


def laplace_noise(shape: Sequence[int], *, scale: float, generator: torch.Generator | None = None,
                  device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Samples of Laplace(0, ``scale``) with density exp(-|z|/scale) / (2 scale), shape ``shape``.

    Drawn as ``scale * ln(U1 / U2)`` with U1, U2 independent uniform on (0, 1]: -ln U is Exp(1), and the
    difference of two Exp(1) is Laplace(1). Three times faster on a CPU than ``exponential_``. The uniforms
    have the resolution of ``dtype``, so |z| <= scale * ln(2^24) = 16.6 scale in float32 (a true Laplace
    exceeds that with probability 6e-8) and 36.7 scale in float64.
    """
    _check(scale >= 0 and math.isfinite(scale), "scale", "laplace_noise()", "a finite number >= 0", scale)
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = _generator_for(device, generator)
    u = torch.empty((2, *shape), device=device, dtype=dtype).uniform_(generator=gen)
    u = 1.0 - u  # uniform_ draws from [0, 1); 1 - u lies in (0, 1], so the log is finite
    return scale * torch.log(u[0] / u[1])


def gaussian_noise(shape: Sequence[int], *, sigma: float, generator: torch.Generator | None = None,
                   device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Samples of N(0, ``sigma``^2), shape ``shape``, from a DP noise generator."""
    _check(sigma >= 0 and math.isfinite(sigma), "sigma", "gaussian_noise()", "a finite number >= 0", sigma)
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = _generator_for(device, generator)
    return sigma * torch.randn(tuple(shape), generator=gen, device=device, dtype=dtype)


def laplace_mechanism(value: torch.Tensor, *, sensitivity: float, epsilon: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Release ``value`` + Laplace(sensitivity / epsilon) noise: epsilon-DP for an l1 ``sensitivity``.

    Dwork, McSherry, Nissim & Smith (2006); Dwork & Roth (2014), Theorem 3.6.
    """
    _check_positive(sensitivity, "sensitivity", "laplace_mechanism()")
    _check_positive(epsilon, "epsilon", "laplace_mechanism()")
    value = torch.as_tensor(value, dtype=torch.get_default_dtype()) if not torch.is_tensor(value) else value
    noise = laplace_noise(value.shape, scale=sensitivity / epsilon, generator=generator,
                          device=value.device, dtype=value.dtype)
    return value + noise


def gaussian_mechanism(value: torch.Tensor, *, sensitivity: float, sigma: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Release ``value`` + N(0, sigma^2) noise. Its (epsilon, delta) follow from :func:`analytic_gaussian_delta`
    (one release) or the accountant (many)."""
    _check_positive(sensitivity, "sensitivity", "gaussian_mechanism()")
    _check_positive(sigma, "sigma", "gaussian_mechanism()")
    value = torch.as_tensor(value, dtype=torch.get_default_dtype()) if not torch.is_tensor(value) else value
    return value + gaussian_noise(value.shape, sigma=sigma, generator=generator, device=value.device,
                                  dtype=value.dtype)


# ---------------------------------------------------------------------------------------------------
# One Gaussian release: three calibrations
# ---------------------------------------------------------------------------------------------------
def classical_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon, valid only for epsilon < 1.

    Dwork & Roth (2014), Theorem A.1. Loose; kept because most papers, GEP's Theorem 3.1 among them, use it.
    """
    _check(0 < epsilon < 1, "epsilon", "classical_gaussian_sigma()", "in (0, 1)", epsilon,
           "The classical bound is proved only for epsilon < 1; use analytic_gaussian_sigma() instead.")
    _check_delta(delta, "classical_gaussian_sigma()")
    _check_positive(sensitivity, "sensitivity", "classical_gaussian_sigma()")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def analytic_gaussian_delta(*, epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """The smallest delta for which one Gaussian release is (epsilon, delta)-DP (exact, any epsilon >= 0).

    delta(epsilon) = Phi(D/(2 sigma) - epsilon sigma/D) - e^epsilon Phi(-D/(2 sigma) - epsilon sigma/D),
    with D the l2 sensitivity. Balle & Wang (ICML 2018), Theorem 8.
    """
    _check(epsilon >= 0, "epsilon", "analytic_gaussian_delta()", ">= 0", epsilon)
    _check_positive(sigma, "sigma", "analytic_gaussian_delta()")
    _check_positive(sensitivity, "sensitivity", "analytic_gaussian_delta()")
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # e^eps * Phi(-a-b) computed in log space: it is a difference of two small numbers for large epsilon.
    return float(max(special.ndtr(a - b) - math.exp(epsilon + special.log_ndtr(-a - b)), 0.0))


def analytic_gaussian_epsilon(*, sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest epsilon for which one Gaussian release with noise ``sigma`` is (epsilon, delta)-DP.

    Inverts :func:`analytic_gaussian_delta` in epsilon (it is decreasing in epsilon) by root finding.
    """
    _check_positive(sigma, "sigma", "analytic_gaussian_epsilon()")
    _check_delta(delta, "analytic_gaussian_epsilon()")
    _check_positive(sensitivity, "sensitivity", "analytic_gaussian_epsilon()")

    def excess(eps: float) -> float:
        return analytic_gaussian_delta(epsilon=eps, sigma=sigma, sensitivity=sensitivity) - delta

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-12))


def _solve_sigma(delta_of_sigma, delta: float, sensitivity: float, where: str) -> float:
    """The sigma at which the decreasing function ``delta_of_sigma`` equals ``delta``."""
    lo, hi = 1e-3 * sensitivity, sensitivity
    while delta_of_sigma(hi) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e8 * sensitivity:
            raise ValueError(f"{where}: no sigma below 1e8 * sensitivity reaches delta={delta}")
    while delta_of_sigma(lo) < delta:
        lo /= 2.0
    return float(optimize.brentq(lambda s: delta_of_sigma(s) - delta, lo, hi, xtol=1e-14, rtol=1e-12))


def analytic_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest sigma for which one Gaussian release is (epsilon, delta)-DP, any epsilon > 0.

    Inverts :func:`analytic_gaussian_delta` by root finding (Balle & Wang 2018, Algorithm 1 does the same).
    """
    _check_positive(epsilon, "epsilon", "analytic_gaussian_sigma()")
    _check_delta(delta, "analytic_gaussian_sigma()")
    _check_positive(sensitivity, "sensitivity", "analytic_gaussian_sigma()")
    return _solve_sigma(lambda s: analytic_gaussian_delta(epsilon=epsilon, sigma=s, sensitivity=sensitivity),
                        delta, sensitivity, "analytic_gaussian_sigma()")


def extended_gaussian_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """Noise of the extended Gaussian mechanism (EGM) of Phan et al. (IJCAI 2019), valid for any epsilon > 0.

    sigma = sqrt(2) * sensitivity * (sqrt(s) + sqrt(s + epsilon)) / (2 epsilon),  s = ln(sqrt(2/pi) / delta).

    StoBatch's SecureSGD baseline and PixelDP-style robustness noise use it (spec stobatch.md, section 1.11).
    """
    _check_positive(epsilon, "epsilon", "extended_gaussian_sigma()")
    _check(0 < delta < math.sqrt(2 / math.pi), "delta", "extended_gaussian_sigma()",
           "in (0, sqrt(2/pi))", delta)
    _check_positive(sensitivity, "sensitivity", "extended_gaussian_sigma()")
    s = math.log(math.sqrt(2.0 / math.pi) / delta)
    return math.sqrt(2.0) * sensitivity * (math.sqrt(s) + math.sqrt(s + epsilon)) / (2.0 * epsilon)


# ---------------------------------------------------------------------------------------------------
# Composition of separate releases
# ---------------------------------------------------------------------------------------------------
def compose_basic(epsilons: Iterable[float], deltas: Iterable[float] | None = None) -> tuple[float, float]:
    """Sequential composition: releases on the same data add up, (sum epsilon_i, sum delta_i).

    Dwork & Roth (2014), Theorem 3.16. Holds for any mechanisms, adaptively chosen.
    """
    eps = [float(e) for e in epsilons]
    dels = [float(d) for d in deltas] if deltas is not None else [0.0] * len(eps)
    _check(len(eps) == len(dels), "deltas", "compose_basic()", "as long as epsilons", len(dels))
    return sum(eps), sum(dels)


def compose_parallel(epsilons: Iterable[float], deltas: Iterable[float] | None = None) -> tuple[float, float]:
    """Parallel composition: releases on *disjoint* parts of the data cost (max epsilon_i, max delta_i).

    McSherry (SIGMOD 2009), Theorem 4. StoBatch's disjoint batches rely on it.
    """
    eps = [float(e) for e in epsilons]
    dels = [float(d) for d in deltas] if deltas is not None else [0.0] * len(eps)
    _check(len(eps) == len(dels) and len(eps) > 0, "epsilons", "compose_parallel()",
           "non-empty and as long as deltas", len(eps))
    return max(eps), max(dels)


def compose_advanced(*, epsilon: float, delta: float, steps: int, delta_slack: float) -> tuple[float, float]:
    """k-fold adaptive composition of (epsilon, delta)-DP mechanisms (Dwork, Rothblum & Vadhan 2010).

    Returns (epsilon sqrt(2 k ln(1/delta')) + k epsilon (e^epsilon - 1), k delta + delta'),
    Dwork & Roth (2014), Theorem 3.20, with k = ``steps`` and delta' = ``delta_slack``.
    """
    _check_positive(epsilon, "epsilon", "compose_advanced()")
    _check_steps(steps, "compose_advanced()")
    _check_delta(delta_slack, "compose_advanced()")
    eps = epsilon * math.sqrt(2 * steps * math.log(1 / delta_slack)) + steps * epsilon * math.expm1(epsilon)
    return eps, steps * delta + delta_slack


# ---------------------------------------------------------------------------------------------------
# Poisson-subsampled Gaussian mechanism (DP-SGD, GEP, SecureSGD): RDP and PLD through dp-accounting
# ---------------------------------------------------------------------------------------------------
def _sgm_event(noise_multiplier: float, sample_rate: float, steps: int):
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    sampled = gaussian if sample_rate == 1 else dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)
    return dp_accounting.SelfComposedDpEvent(sampled, int(steps))


def _check_sgm(noise_multiplier, sample_rate, steps, where):
    _check_positive(noise_multiplier, "noise_multiplier", where)
    _check_sample_rate(sample_rate, where)
    _check_steps(steps, where)


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

    _check_delta(delta, "rdp_to_epsilon()")
    if conversion == "improved":
        eps, order = dp_rdp.compute_epsilon(list(orders), list(rdp_values), delta)
        return float(eps), float(order)
    if conversion == "legacy":
        orders_a, rdp_a = np.asarray(orders, dtype=float), np.asarray(rdp_values, dtype=float)
        eps = rdp_a - math.log(delta) / (orders_a - 1)
        i = int(np.nanargmin(eps))
        return float(max(eps[i], 0.0)), float(orders_a[i])
    raise ValueError(f"conversion of rdp_to_epsilon() must be 'improved' or 'legacy'; got {conversion!r}")


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
    _check_delta(delta, "epsilon()")
    if steps == 0:
        return 0.0
    if accountant == "rdp":
        return rdp_to_epsilon(orders, rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                          steps=steps, orders=orders), delta, conversion=conversion)[0]
    if accountant == "pld":
        from dp_accounting import pld

        _check(conversion == "improved", "conversion", "epsilon()", "'improved' with the PLD accountant",
               conversion)
        acc = pld.PLDAccountant(value_discretization_interval=pld_discretization)
        acc.compose(_sgm_event(noise_multiplier, sample_rate, steps))
        return float(acc.get_epsilon(delta))
    raise ValueError(f"accountant of epsilon() must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")


def calibrate_sigma(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp", conversion: str = "improved", rtol: float = 1e-4,
                    max_sigma: float = 1e3, **accountant_options) -> float:
    """The smallest noise multiplier (up to ``rtol``) whose :func:`epsilon` is at most ``target_epsilon``.

    Bisection on log sigma; the returned sigma always satisfies the target (it is the upper end of the
    final bracket).

    Raises:
        ValueError: the budget is impossible: even ``max_sigma`` exceeds ``target_epsilon``.
    """
    _check_positive(target_epsilon, "target_epsilon", "calibrate_sigma()")
    _check_delta(delta, "calibrate_sigma()")
    _check_sample_rate(sample_rate, "calibrate_sigma()")
    _check(isinstance(steps, (int, np.integer)) and steps >= 1, "steps", "calibrate_sigma()", "an integer >= 1",
           steps)

    def eps(sigma: float) -> float:
        return epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
                       accountant=accountant, conversion=conversion, **accountant_options)

    if eps(max_sigma) > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is impossible at delta={delta}, sample_rate={sample_rate}, "
            f"steps={steps}: even noise_multiplier={max_sigma} gives epsilon={eps(max_sigma):.4g}. "
            "Raise the budget, lower the sample rate, or train for fewer steps.")
    lo, hi = 0.1, 1.0
    while eps(lo) <= target_epsilon and lo > 1e-4:
        lo /= 4.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, min(hi * 4.0, max_sigma)
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def joint_noise_multiplier(*noise_multipliers: float) -> float:
    """Noise multiplier of one Gaussian mechanism equivalent to releasing several Gaussian parts at once.

    Releasing parts with sensitivities C_j and noise sigma_j C_j *computed on the same batch* is one
    Gaussian mechanism on the rescaled concatenation, with sigma_eff = (sum_j sigma_j^-2)^(-1/2). GEP's
    embedding and residual are such a pair (spec gep.md, section 2.3).
    """
    _check(len(noise_multipliers) > 0, "noise_multipliers", "joint_noise_multiplier()", "non-empty",
           noise_multipliers)
    for s in noise_multipliers:
        _check_positive(s, "each noise multiplier", "joint_noise_multiplier()")
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
        _check_delta(self.delta, "Accountant()")
        _check(self.accountant in ACCOUNTANTS, "accountant", "Accountant()",
               f"one of {', '.join(ACCOUNTANTS)}", self.accountant)

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
        _check_delta(delta, "Accountant.epsilon()")
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
