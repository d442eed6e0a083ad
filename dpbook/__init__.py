"""dpbook: private and robust deep learning in notebooks.

The package behind the book *Private and Robust Deep Learning in Notebooks*: GPU-ready re-implementations
of GEP (Yu et al., ICLR 2021), Shredder (Mireshghallah et al., ASPLOS 2020) and StoBatch (Phan et al.,
ICML 2020), with the privacy accounting, data, models and tools they share.

Importing the package is cheap: submodules (``dpbook.privacy``, ``dpbook.data``, ...) load on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import describe_run, device, profile, settings  # noqa: E402

_SUBMODULES = ("attacks", "audit", "baselines", "checks", "claims", "config", "data", "distributed",
               "evaluation", "execute", "experiments", "gep", "guarantees", "mi", "models", "persample",
               "plotting", "presets", "privacy", "progress", "provenance", "robustness", "runs", "shredder",
               "stobatch", "tables", "training", "widgets")

__all__ = ["__version__", "describe_run", "device", "profile", "settings", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dpbook' has no attribute {name!r}")
