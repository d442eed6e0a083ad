"""Named experiments, shared by the notebooks and the command line.

An experiment is a function ``fn(cfg, run) -> dict`` registered with :func:`experiment`. ``cfg`` holds
its settings (from :func:`dpbook.settings`, so the profile decides the sizes) and ``run`` is the
:class:`dpbook.runs.Run` that owns its results file and checkpoint. The same call backs a notebook cell
and ``python -m dpbook run NAME``.

One module per experiment: :mod:`.baseline` (non-private reference), :mod:`.gep_experiment` (GEP, Biased-GEP,
DP-SGD), :mod:`.shredder_experiment`, :mod:`.shredder_attacks` (Shredder's leakage under stronger attackers),
:mod:`.stobatch_experiment` (StoBatch and its baselines, trained by
:mod:`.stobatch_trainers`), :mod:`.audit_experiment`, :mod:`.tuning` (``gep_tuning``) and :mod:`.gep_public`
(``gep_public_data``: GEP's public anchors in and out of distribution). Every DP training loop goes through
:func:`dpbook.experiments.loop.private_epochs` (Poisson batches, checkpoints, resume).

Example:
    >>> import dpbook.experiments as ex
    >>> print(*sorted(ex.EXPERIMENTS))
    audit baseline gep gep_public_data gep_tuning shredder shredder_attacks stobatch stobatch_designs
"""
from __future__ import annotations

import contextlib
import os

from ..config import settings
from ..runs import Run
from .registry import EXPERIMENTS, USES, Interrupted, experiment


def config_of(name: str, cfg, profile: str | None = None) -> dict:
    """The configuration a result of experiment ``name`` with settings ``cfg`` is keyed by: ``cfg`` without
    its run-time estimate, plus the settings of the experiments it reads at run time (``USES[name]``)."""
    config = {k: v for k, v in cfg.items() if k != "minutes"}
    for other in USES[name]:
        config[f"settings_{other}"] = {k: v for k, v in settings(other, profile_name=profile).items() if k != "minutes"}
    return config


def run(name: str, *, profile: str | None = None, resume: bool = False, reuse: bool = False,
        results: str | None = None, stop_after_epoch: int | None = None, **overrides) -> dict:
    """Run experiment ``name`` and return its result dictionary (also written to the results file).

    Args:
        profile: settings profile; default the active one.
        resume: continue from the last checkpoint of the same config, if any; a finished run is returned
            as it is.
        reuse: return the finished result of the same config if it exists, silently (what notebooks do:
            training takes minutes to hours); otherwise run.
        results: results folder (default ``$DPBOOK_RESULTS`` or ``./results``).
        stop_after_epoch: stop with :class:`Interrupted` after this many epochs (tests of ``resume``).
        **overrides: settings to change, e.g. ``dataset="mnist"``.
    """
    if name not in EXPERIMENTS:
        raise KeyError(f"no experiment named {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    with active_profile(profile):  # the settings an experiment reads inside (its USES, inner runs) are the profile's
        cfg = settings(name, **overrides)
        handle = Run(name, config_of(name, cfg), root=results, resume=resume)
        if reuse or resume:
            done = handle.load_result()
            if done is not None:
                return done
        return EXPERIMENTS[name](cfg, handle, stop_after_epoch=stop_after_epoch)


@contextlib.contextmanager
def active_profile(profile: str | None):
    """Make ``profile`` the active profile (``DPBOOK_PROFILE``) inside the block; None leaves it as it is."""
    if profile is None:
        yield
        return
    before = os.environ.get("DPBOOK_PROFILE")
    os.environ["DPBOOK_PROFILE"] = profile
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DPBOOK_PROFILE", None)
        else:
            os.environ["DPBOOK_PROFILE"] = before


# registering: importing each module adds its experiment to EXPERIMENTS
from . import (audit_experiment, baseline, gep_experiment, shredder_experiment, stobatch_designs,  # noqa: E402
               stobatch_experiment)
from . import shredder_attacks  # noqa: E402,F401
from . import tuning  # noqa: E402,F401  (gep_tuning: equal-budget tuning of GEP, Biased-GEP, DP-SGD)
from . import gep_public  # noqa: E402,F401  (gep_public_data: GEP's anchors in and out of distribution)
from .stobatch_experiment import STOBATCH_METHODS, at_budget as stobatch_at_budget, stobatch_options  # noqa: E402

__all__ = ["EXPERIMENTS", "Interrupted", "STOBATCH_METHODS", "USES", "config_of", "experiment", "run", "stobatch_at_budget",
           "stobatch_options"]
