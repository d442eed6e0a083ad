"""The privacy of GEP steps: the sound joint accounting (default) and the original code's (for reproduction).

GEP releases the noisy embedding and the noisy residual computed on the *same* Poisson sample, so one step is
one Gaussian mechanism on the rescaled concatenation, with noise multiplier (sigma_0^-2 + sigma_1^-2)^(-1/2)
(:func:`effective_noise_multiplier`, :func:`calibrate`). The original code (``utils.get_sigma``) accounts it
as two independently subsampled mechanisms, which under-counts the privacy loss; :func:`original_sigma`
reproduces that calculation and :func:`accounting_audit` measures the gap (``book/gep.md``; notebook
``21_gep_experiments``, section 2).
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks, privacy
from .step import MODES

ORIGINAL_ORDERS = tuple(np.arange(2, 32, 0.1).tolist())  # the orders of the GEP code's accountant


def effective_noise_multiplier(mode: str, noise_multiplier: float,
                               residual_noise_multiplier: float | None = None) -> float:
    """Noise multiplier of the single Gaussian mechanism one step is: joint for GEP, sigma_0 for Biased-GEP,
    sigma_1 for DP-SGD (pass it to :mod:`dpbook.privacy`'s accountant)."""
    checks.one_of(mode, MODES, "mode", "effective_noise_multiplier()")
    sigma1 = noise_multiplier if residual_noise_multiplier is None else residual_noise_multiplier
    if mode == "gep":
        return privacy.joint_noise_multiplier(noise_multiplier, sigma1)
    if mode == "biased":
        return noise_multiplier
    return sigma1


def calibrate(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, mode: str = "gep",
              **accountant_options) -> float:
    """The noise multiplier sigma (= sigma_0 = sigma_1) that meets (target_epsilon, delta) after ``steps``
    steps, accounting one step as *one* subsampled Gaussian mechanism with the effective noise multiplier
    (sigma / sqrt(2) for GEP). ``accountant_options`` go to :func:`dpbook.privacy.calibrate_sigma`.

    Returns a ``noise_multiplier``.
    """
    sigma_eff = privacy.calibrate_sigma(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                                        steps=steps, **accountant_options)
    return sigma_eff * math.sqrt(2.0) if mode == "gep" else sigma_eff


# ---------------------------------------------------------------------------------------------------
# The original code's accounting
# ---------------------------------------------------------------------------------------------------
def original_steps(epochs: float, sample_rate: float) -> int:
    """The steps the original code accounts for a run: T = int(epochs / q) (``main.py``).

    The training loop itself runs epochs * (N // B) steps (SVHN, 10 epochs: it accounts 6,043 and runs 6,040);
    :func:`dpbook.privacy.steps_per_epoch` is dpbook's count.
    """
    return int(epochs / sample_rate)


def original_sigma(*, target_epsilon: float, delta: float, sample_rate: float, epochs: float,
                   residual: bool = True) -> tuple[float, float]:
    """The noise multiplier the original code picks (``utils.get_sigma``), and the epsilon it claims.

    It accounts T = :func:`original_steps` steps with TF-Privacy's 2018 RDP accountant (``rdp_accountant.py``)
    on the orders 2.0, 2.1, ..., 31.9, *doubles* the RDP when the residual is released (two independent
    mechanisms, which they are not), converts with the legacy formula, and searches sigma downwards from 10 in
    steps of 1, 0.1 and 0.01 (``utils.loop_for_sigma``), returning the smallest grid value with
    epsilon < target. Use it to reproduce the paper; :func:`calibrate` is the sound calibration.

    Returns:
        ``(noise_multiplier, claimed epsilon)``.

    Raises:
        ValueError: when even sigma = 10 exceeds the target (the original crashes with UnboundLocalError).
    """
    steps = original_steps(epochs, sample_rate)

    def eps(sigma: float) -> float:
        curve = privacy.rdp(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, orders=ORIGINAL_ORDERS)
        return privacy.rdp_to_epsilon(ORIGINAL_ORDERS, (2.0 if residual else 1.0) * curve, delta,
                                      conversion="legacy")[0]

    sigma = 10.0
    if eps(sigma) >= target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon} needs sigma > 10, where the original search starts")
    for step in (1.0, 0.1, 0.01):  # the original's three passes over a shrinking grid
        while sigma - step > 0 and eps(round(sigma - step, 2)) < target_epsilon:
            sigma = round(sigma - step, 2)
    return sigma, eps(sigma)


def accounting_audit(*, dataset_size: int, batch_size: int, epochs: float, target_epsilon: float, delta: float,
                     pld_discretization: float = 1e-4) -> dict:
    """What the original accounting claims for a GEP run, and what the joint mechanism really spends.

    Returns a dict with ``sigma_original`` and ``epsilon_claimed`` (:func:`original_sigma`), the epsilon of
    one subsampled Gaussian with noise multiplier sigma_original / sqrt(2) per step over the same steps:
    ``epsilon_rdp_legacy`` (RDP with the original's conversion), ``epsilon_rdp`` (RDP, improved conversion)
    and ``epsilon_pld`` (PLD, tight up to ``pld_discretization``), and ``sigma_joint``, the sigma the sound
    calibration needs for the target (RDP, improved conversion), with ``steps`` and ``sample_rate``. All
    sigmas are noise multipliers.
    """
    q = batch_size / dataset_size
    steps = original_steps(epochs, q)  # as the original counts them
    sigma_orig, claimed = original_sigma(target_epsilon=target_epsilon, delta=delta, sample_rate=q, epochs=epochs)
    sigma_eff = sigma_orig / math.sqrt(2.0)
    eps = {name: privacy.epsilon(noise_multiplier=sigma_eff, sample_rate=q, steps=steps, delta=delta, **kw)
           for name, kw in [("epsilon_rdp_legacy", dict(conversion="legacy")), ("epsilon_rdp", {}),
                            ("epsilon_pld", dict(accountant="pld", pld_discretization=pld_discretization))]}
    return dict(sample_rate=q, steps=steps, sigma_original=sigma_orig, epsilon_claimed=claimed, **eps,
                sigma_joint=calibrate(target_epsilon=target_epsilon, delta=delta, sample_rate=q, steps=steps))
