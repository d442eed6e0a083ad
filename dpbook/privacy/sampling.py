"""Poisson sampling, what the accountant assumes, and the number of steps in an epoch.

Under Poisson sampling each of the n examples joins a batch independently with probability q (the
``sample_rate``); batch sizes are random with mean B = q n. The accountant's subsampling amplification is
proved for this (and for add/remove-one neighbours), not for fixed-size shuffled batches.

Example:
    >>> steps_per_epoch(60_000, 256)          # q = 256 / 60,000: round(234.375)
    234
    >>> steps_per_epoch(sample_rate=0.02)
    50
    >>> steps_per_epoch(1010, 50, sampling="shuffle")
    20
"""
from __future__ import annotations

import torch

from .. import checks
from .mechanisms import noise_generator

SAMPLINGS = ("poisson", "shuffle")


def poisson_batch(n: int, sample_rate: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of a Poisson sample: each of the n examples joins independently with probability q (what
    the accountant assumes). The sample is private, so draw it from a DP generator."""
    gen = generator if generator is not None else noise_generator()
    chosen = torch.rand(n, generator=gen, device=gen.device) < sample_rate  # drawn where the generator lives
    return torch.nonzero(chosen).flatten().cpu()


def steps_per_epoch(n: int | None = None, batch_size: int | None = None, *, sample_rate: float | None = None,
                    sampling: str = "poisson") -> int:
    """Steps in one epoch: the one count every training loop and calibration of dpbook uses.

    * ``sampling="poisson"``: max(1, round(1 / q)), with q = ``sample_rate``, or q = ``batch_size / n`` when
      the sample rate is not given (computed in that order, so the count is bit-for-bit the one of a caller
      that forms q first). An epoch then sees each example once on average.
    * ``sampling="shuffle"``: n // ``batch_size`` fixed-size batches of a permutation (the original GEP
      code's batches; the last incomplete batch is dropped).

    ``round`` is Python's (ties to even). The original GEP code counts a whole run as int(epochs / q) steps
    instead (:func:`dpbook.gep.original_steps`), which can differ by a few steps.
    """
    checks.one_of(sampling, SAMPLINGS, "sampling", "steps_per_epoch()")
    if sampling == "poisson" and sample_rate is not None:
        checks.check(n is None and batch_size is None, "sample_rate", "steps_per_epoch()",
                     "given alone (or give n and batch_size instead)", sample_rate)
        checks.sample_rate(sample_rate, "steps_per_epoch()")
        return max(1, round(1 / sample_rate))
    checks.check(sample_rate is None, "sample_rate", "steps_per_epoch()",
                 "left out with sampling='shuffle'", sample_rate)
    checks.check(n is not None and n >= 1, "n", "steps_per_epoch()", "an integer >= 1", n)
    checks.check(batch_size is not None and 1 <= batch_size <= n, "batch_size", "steps_per_epoch()",
                 f"in [1, {n}]", batch_size)
    if sampling == "shuffle":
        return n // batch_size
    q = batch_size / n
    return max(1, round(1 / q))
