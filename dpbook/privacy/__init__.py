"""Differential-privacy mechanisms, noise calibration and privacy accounting.

The functions here are pure functions of numbers (the maths); :class:`Accountant` only records the steps
of a training run and asks them. Every privacy number the book prints comes from this package.

==================================  ==================================================================
module                              what it holds
==================================  ==================================================================
:mod:`~dpbook.privacy.mechanisms`   the DP noise generator, Laplace and Gaussian noise and mechanisms
:mod:`~dpbook.privacy.calibration`  noise for one Gaussian release (classical, analytic, extended) and
                                    for a training run (:func:`calibrate_sigma`)
:mod:`~dpbook.privacy.composition`  basic, parallel and advanced composition
:mod:`~dpbook.privacy.accounting`   RDP and PLD accounting of subsampled Gaussian steps, the
                                    :class:`Accountant`, :func:`joint_noise_multiplier`
:mod:`~dpbook.privacy.sampling`     Poisson batches and :func:`steps_per_epoch`
==================================  ==================================================================

Everything is importable from ``dpbook.privacy`` itself (``from dpbook import privacy; privacy.epsilon(...)``).

Conventions (shared by every module of dpbook; pass them by keyword):

* ``epsilon``, ``delta``: an (epsilon, delta)-DP guarantee, epsilon in nats.
* ``sensitivity``: the l1 (Laplace) or l2 (Gaussian) sensitivity of the released query.
* ``noise_multiplier``: the standard deviation of Gaussian noise in units of the l2 sensitivity (the
  papers' sigma); ``noise_std``: the absolute standard deviation, noise_multiplier * sensitivity.
  ``scale``: the scale b of Laplace noise. ``sigma=`` is still accepted where ``noise_std`` is meant, as its
  former name. Functions named ``*_sigma`` keep their names: :func:`calibrate_sigma` returns a noise
  multiplier, the ``*_gaussian_sigma`` calibrations of one release return a ``noise_std``.
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

from .accounting import (ACCOUNTANTS, CONVERSIONS, DEFAULT_ORDERS, Accountant, epsilon, joint_noise_multiplier,
                         rdp, rdp_to_epsilon)
from .calibration import (analytic_gaussian_delta, analytic_gaussian_epsilon, analytic_gaussian_sigma,
                          calibrate_sigma, classical_gaussian_sigma, extended_gaussian_sigma)
from .composition import compose_advanced, compose_basic, compose_parallel
from .mechanisms import (UnsafeSeedWarning, gaussian_mechanism, gaussian_noise, laplace_mechanism, laplace_noise,
                         noise_generator)
from .sampling import SAMPLINGS, poisson_batch, steps_per_epoch

__all__ = [
    # mechanisms
    "UnsafeSeedWarning", "noise_generator", "laplace_noise", "gaussian_noise", "laplace_mechanism",
    "gaussian_mechanism",
    # calibration
    "classical_gaussian_sigma", "analytic_gaussian_delta", "analytic_gaussian_epsilon", "analytic_gaussian_sigma",
    "extended_gaussian_sigma", "calibrate_sigma",
    # composition
    "compose_basic", "compose_parallel", "compose_advanced",
    # accounting
    "DEFAULT_ORDERS", "ACCOUNTANTS", "CONVERSIONS", "rdp", "rdp_to_epsilon", "epsilon", "joint_noise_multiplier",
    "Accountant",
    # sampling
    "SAMPLINGS", "poisson_batch", "steps_per_epoch",
]
