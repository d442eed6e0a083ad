"""Argument checks, in one place, with one message shape everywhere.

Every public function of dpbook that refuses an argument says the parameter, the function, the constraint,
the value it got and, where there is one, the fix::

    ValueError: delta of epsilon() must be in (0, 1); got 1.5. Use delta well below 1/n ...

Example:
    >>> check(0 < 0.5 < 1, "delta", "epsilon()", "in (0, 1)", 0.5)
    >>> one_of("gaussian", ("laplace", "gaussian"), "mechanism", "noise()")
    'gaussian'
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


def check(ok: bool, name: str, where: str, constraint: str, value: Any, fix: str = "") -> None:
    """Raise ``ValueError`` naming parameter ``name`` of ``where`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} of {where} must be {constraint}; got {value!r}." + (f" {fix}" if fix else ""))


def positive(value: float, name: str, where: str, fix: str = "") -> None:
    """``value`` is a finite number > 0."""
    check(isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0,
          name, where, "a finite number > 0", value, fix)


def non_negative(value: float, name: str, where: str, fix: str = "") -> None:
    """``value`` is a finite number >= 0."""
    check(isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value >= 0,
          name, where, "a finite number >= 0", value, fix)


def delta(value: float, where: str) -> None:
    """``value`` is a delta of (epsilon, delta)-DP: in (0, 1)."""
    check(0 < value < 1, "delta", where, "in (0, 1)", value,
          "Use delta well below 1/n for a dataset of n examples, e.g. 1e-5.")


def sample_rate(value: float, where: str) -> None:
    """``value`` is a Poisson sampling rate q in (0, 1]."""
    check(0 < value <= 1, "sample_rate", where, "in (0, 1]", value,
          "With Poisson sampling it is the expected batch size divided by the dataset size.")


def steps(value: int, where: str, name: str = "steps") -> None:
    """``value`` is an integer >= 0."""
    check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
          name, where, "an integer >= 0", value)


def one_of(value: Any, allowed: Iterable[Any], name: str, where: str) -> Any:
    """``value`` is one of ``allowed``; returns it."""
    allowed = tuple(allowed)
    check(value in allowed, name, where, "one of " + ", ".join(map(repr, allowed)), value)
    return value


def renamed(value: Any, old_value: Any, name: str, old: str, where: str) -> Any:
    """The value of keyword ``name``, which callers may still pass under its former name ``old``; exactly one
    of the two must be given. Used for ``noise_std`` (formerly ``sigma``, a name that meant a standard
    deviation in some functions and a noise multiplier in others)."""
    if old_value is not None:
        check(value is None, name, where, f"given once ({old}= is its former name)", value)
        return old_value
    check(value is not None, name, where, "given", value)
    return value
