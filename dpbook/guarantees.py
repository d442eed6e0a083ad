"""Modes that void a privacy guarantee: they warn once, and results say so.

The package is sound by default and faithful on request: the original code's behaviour stays available as an
explicit mode, for reproduction. A mode that voids the stated guarantee calls :func:`warn_unsound` (one
:class:`UnsoundModeWarning` per mode and process, saying what it voids and when it is fine to use it), and
the experiment records :func:`record` in its result file, so the report never presents such a run's epsilon
as a guarantee.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     reasons = [warn_unsound("sampling='shuffle'")]
    >>> record(reasons)["guarantee"]
    'none'
    >>> record([])["guarantee"]
    'as stated'
"""
from __future__ import annotations

import warnings

#: What each unsound mode voids, and when it is fine to use it (keys are the option as a user writes it).
UNSOUND_MODES: dict[str, tuple[str, str]] = {
    "sampling='shuffle'": (
        "the accountant's epsilon, which assumes Poisson sampling; fixed-size shuffled batches are not covered "
        "by that analysis",
        "to reproduce the original GEP code's batches"),
    "accounting='original'": (
        "the claimed epsilon: the GEP code accounts the embedding and residual releases as if they spent less "
        "than they do (the joint mechanism spends more)",
        "to reproduce the GEP paper's noise levels and show the difference"),
    "variant='original'": (
        "StoBatch's epsilon: the original code draws its noise once from a public seed and reuses it, so "
        "whoever knows the seed removes the noise",
        "to reproduce the StoBatch paper's accuracy and show why it does not hold"),
    "release='batch_shared'": (
        "StoBatch's epsilon: the paper's mechanism adds one noise draw to every example of a batch, so the "
        "released differences x_i - x_j carry no noise, and the labels reach the hidden layers without noise",
        "to reproduce the paper's mechanism and show why it does not hold"),
    "noise_reuse='global_once'": (
        "StoBatch's epsilon: one noise draw reused for every batch and epoch",
        "to reproduce the original StoBatch code"),
    "norm='batch'": (
        "the per-example sensitivity: batch statistics couple the examples of a batch, which the per-example "
        "analysis does not cover",
        "to reproduce the original networks"),
    "delta_x_convention='unit'": (
        "StoBatch's input-noise epsilon: Delta_x = 1 is not the l1 sensitivity of a replaced example "
        "(2 d_in for inputs in [-1, 1]^d_in)",
        "to reproduce the original code's noise scale"),
}


class UnsoundModeWarning(UserWarning):
    """An option that voids the stated privacy guarantee is in use."""


_WARNED: set[str] = set()


def warn_unsound(mode: str) -> str:
    """Warn (once per process) that ``mode`` voids a guarantee; returns the reason to record.

    ``mode`` is a key of :data:`UNSOUND_MODES`, e.g. ``"sampling='shuffle'"``.
    """
    if mode not in UNSOUND_MODES:
        raise ValueError(f"mode of warn_unsound() must be one of {', '.join(UNSOUND_MODES)}; got {mode!r}")
    voids, fine = UNSOUND_MODES[mode]
    reason = f"{mode} voids {voids}"
    if mode not in _WARNED:
        _WARNED.add(mode)
        # shown as "dpbook: UnsoundModeWarning: ...": no file path of this machine in a notebook's output
        warnings.warn_explicit(f"{reason}. Fine {fine}; not for data that must stay private.", UnsoundModeWarning,
                               filename="dpbook", lineno=0, module="dpbook.guarantees")
    return reason


def record(reasons: list[str]) -> dict:
    """What a result file's metrics say of the guarantee: ``{"guarantee": "none", "guarantee_voided_by":
    [...]}`` when any unsound mode ran, else ``{"guarantee": "as stated", "guarantee_voided_by": []}``."""
    reasons = list(dict.fromkeys(reasons))
    return {"guarantee": "none" if reasons else "as stated", "guarantee_voided_by": reasons}


#: Settings values that select an unsound mode (setting name -> value -> key of :data:`UNSOUND_MODES`).
_UNSOUND_SETTINGS = {"sampling": {"shuffle": "sampling='shuffle'"},
                     "accounting": {"original": "accounting='original'"},
                     "variant": {"original": "variant='original'", "paper": "release='batch_shared'"},
                     "noise_reuse": {"global_once": "noise_reuse='global_once'"},
                     "norm": {"batch": "norm='batch'"},
                     "delta_x_convention": {"unit": "delta_x_convention='unit'"}}


def unsound_settings(config: dict) -> list[str]:
    """The keys of :data:`UNSOUND_MODES` that an experiment's settings select (no warning).

    >>> unsound_settings({"method": "gep", "sampling": "shuffle", "accounting": "joint"})
    ["sampling='shuffle'"]
    """
    return [modes[config[name]] for name, modes in _UNSOUND_SETTINGS.items() if config.get(name) in modes]


def check_settings(config: dict) -> dict:
    """Warn once for each unsound mode the settings select; returns :func:`record` of them, for the result."""
    return record([warn_unsound(mode) for mode in unsound_settings(config)])
