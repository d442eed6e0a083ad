"""The registry of named experiments (name -> function) and the interruption used by resume tests."""
from __future__ import annotations

from typing import Callable

EXPERIMENTS: dict[str, Callable] = {}
#: name -> the other experiments' settings it reads at run time (they are part of its results' key)
USES: dict[str, tuple[str, ...]] = {}


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` to simulate an interruption (used by the resume tests)."""


def experiment(name: str, uses: tuple[str, ...] = ()) -> Callable:
    """Register ``fn(cfg, run, **options)`` as experiment ``name``; its settings are ``PRESETS[name]``.

    ``uses`` names the other settings entries the experiment reads (e.g. the audit reads ``settings("gep")``):
    their values under the active profile join the configuration a result is keyed by, so a finished result
    is not reused after any of them changed.
    """
    def register(fn: Callable) -> Callable:
        EXPERIMENTS[name] = fn
        USES[name] = tuple(uses)
        return fn
    return register
