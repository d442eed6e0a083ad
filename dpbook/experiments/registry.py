"""The registry of named experiments (name -> function) and the interruption used by resume tests."""
from __future__ import annotations

from typing import Callable

EXPERIMENTS: dict[str, Callable] = {}


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` to simulate an interruption (used by the resume tests)."""


def experiment(name: str) -> Callable:
    """Register ``fn(cfg, run, **options)`` as experiment ``name``; its settings are ``PRESETS[name]``."""
    def register(fn: Callable) -> Callable:
        EXPERIMENTS[name] = fn
        return fn
    return register
