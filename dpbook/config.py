"""Profiles, named settings and the compute device.

One code path runs at three sizes. The active *profile* is read from the environment variable
``DPBOOK_PROFILE``:

=========  ==========================================  ===============================
profile    meant for                                   budget
=========  ==========================================  ===============================
smoke      CI (nbval) and unit tests                   seconds per notebook
laptop     committed book outputs, readers on a CPU    minutes per notebook, 2 cores
paper      readers with a GPU                          the papers' settings, hours
=========  ==========================================  ===============================

When ``DPBOOK_PROFILE`` is unset the profile is ``paper`` if CUDA is available, else ``laptop``.

Every experiment and every notebook reads its sizes from :func:`settings`; nothing hard-codes them.
The presets live in :data:`dpbook.presets.PRESETS`, one entry per name: a ``base`` dictionary of defaults
(one comment per key) and, per profile, only the keys that differ (the nanoGPT habit).

Example
-------
>>> import os; os.environ["DPBOOK_PROFILE"] = "smoke"
>>> settings("baseline").dataset
'digits'
>>> settings("baseline", epochs=2).epochs
2
>>> sorted(settings("baseline", epochs=2).overridden)
['epochs']
"""
from __future__ import annotations

import os
import platform
from typing import Any

from . import checks
from .presets import PRESETS

PROFILES = ("smoke", "laptop", "paper")

#: Names of the presets read by settings() in this process (recorded in notebooks' provenance stamps).
USED_PRESETS: set[str] = set()


class Settings(dict):
    """A read-only dictionary whose keys are also attributes: ``s.epochs == s["epochs"]``.

    ``overridden`` holds the names of the settings the caller set (the ``**overrides`` of :func:`settings`, the
    command line's ``--name value``), as opposed to those the presets filled in, so that code which takes
    values from another table (StoBatch's ``hyperparameters="paper"``) lets the caller's win.
    """

    overridden: frozenset = frozenset()

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no setting {key!r}; available: {', '.join(sorted(self))}") from None

    def _readonly(self, *args, **kwargs):
        raise TypeError("Settings are read-only; pass overrides to dpbook.settings(name, key=value)")

    __setitem__ = __delitem__ = __setattr__ = update = pop = clear = setdefault = _readonly  # type: ignore


def profile() -> str:
    """The active profile: ``DPBOOK_PROFILE`` if set, else ``paper`` with CUDA and ``laptop`` without.

    Raises:
        ValueError: ``DPBOOK_PROFILE`` names no profile; the message lists the valid ones.
    """
    name = os.environ.get("DPBOOK_PROFILE", "").strip().lower()
    if not name:
        return "paper" if _cuda_available() else "laptop"
    if name not in PROFILES:
        raise ValueError(
            f"DPBOOK_PROFILE must be one of {', '.join(PROFILES)}; got {os.environ['DPBOOK_PROFILE']!r}. "
            f"Example: DPBOOK_PROFILE=smoke python -m dpbook run baseline"
        )
    return name


def settings(name: str, *, profile_name: str | None = None, **overrides: Any) -> Settings:
    """The settings of experiment or notebook ``name`` under the active profile.

    Args:
        name: a key of :data:`PRESETS` (``"baseline"``, ``"dp_primer"``, ...).
        profile_name: use this profile instead of the active one.
        **overrides: replace single settings; an unknown key raises, so a typo cannot pass silently.

    Returns:
        Settings: ``base`` updated by the profile's entries, then by ``overrides`` (whose names it keeps in
        ``overridden``).
    """
    if name not in PRESETS:
        raise KeyError(f"no settings named {name!r}; known: {', '.join(sorted(PRESETS))}")
    prof = profile_name or profile()
    checks.one_of(prof, PROFILES, "profile_name", "settings()")
    USED_PRESETS.add(name)
    preset = PRESETS[name]
    merged = dict(preset["base"])
    merged.update(preset.get(prof, {}))
    unknown = sorted(set(overrides) - set(merged))
    if unknown:
        raise KeyError(
            f"unknown setting(s) {', '.join(unknown)} for {name!r}; valid: {', '.join(sorted(merged))}"
        )
    merged.update(overrides)
    result = Settings(merged)
    object.__setattr__(result, "overridden", frozenset(overrides))  # Settings refuse attribute writes
    return result


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device():
    """The tensor device: ``DPBOOK_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:1``), else CUDA when available;
    under ``torchrun`` (``LOCAL_RANK`` set) each process's own GPU, ``cuda:<LOCAL_RANK>``."""
    import torch

    name = os.environ.get("DPBOOK_DEVICE", "").strip()
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"DPBOOK_DEVICE={name!r} but CUDA is not available; unset it or use 'cpu'")
        return dev
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cuda")


def device_description() -> str:
    """A one-line description of :func:`device`: GPU name, or CPU model and thread count."""
    import torch

    dev = device()
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def describe_run(name: str | None = None) -> str:
    """Print and return what this run is: package version, profile, device, torch, data, expected time.

    Every notebook's first code cell calls this with its own settings name, so each rendered page says
    which profile and device produced it.
    """
    import torch

    from . import __version__

    prof = profile()
    source = "DPBOOK_PROFILE" if os.environ.get("DPBOOK_PROFILE") else "default: " + (
        "CUDA found" if _cuda_available() else "no CUDA")
    lines = [
        f"dpbook {__version__} | profile {prof} ({source}) | torch {torch.__version__}",
        f"device: {device_description()}",
    ]
    if name is not None:
        s = settings(name)
        if "dataset" in s:
            from .data import locate

            lines.append(f"data: {s.dataset} ({locate(s.dataset)})")
        lines.append(f"expected run time of {name!r} under {prof!r}: about {s.minutes:g} min")
    text = "\n".join(lines)
    print(text)
    return text
