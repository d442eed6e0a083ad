"""Results files and checkpoints of named experiments.

A run of experiment ``E`` with configuration ``config`` lives in ``<results>/E/``:

* ``<hash>.json``: the finished result: config, environment, metrics, timings;
* ``<hash>.ckpt``: the latest checkpoint (``torch.save``), written after every epoch.

``<hash>`` is :func:`config_hash` of the config, so the same settings always find the same files and a
notebook can load a finished result instead of re-training. ``<results>`` is ``$DPBOOK_RESULTS``, else
``results/`` at the root of the source checkout (so the command line and the notebooks share it), else
``./results``. Every write goes to a temporary file first and is then renamed, so an interruption never
leaves a half-written file behind.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def config_hash(config: dict) -> str:
    """First 12 hex digits of the SHA-256 of the config as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def results_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$DPBOOK_RESULTS``, else the checkout's ``results/``, else ``./results``."""
    if root is None:
        root = os.environ.get("DPBOOK_RESULTS")
    if root is None:
        checkout = Path(__file__).resolve().parents[1]
        root = checkout / "results" if (checkout / "pyproject.toml").exists() else "results"
    return Path(root).expanduser()


def display_path(path: str | os.PathLike) -> str:
    """``path`` as messages show it: relative to the repository root when it lies in the source checkout (so
    logs and notebook outputs read the same on every machine), else unchanged.

    >>> display_path(Path(__file__).resolve().parents[1] / "results" / "baseline" / "0123abcd.json")
    'results/baseline/0123abcd.json'
    """
    checkout = Path(__file__).resolve().parents[1]
    path = Path(path)
    return str(path.resolve().relative_to(checkout)) if path.resolve().is_relative_to(checkout) else str(path)


def environment() -> dict[str, Any]:
    """What produced a result: versions, device, machine, and the git commit if there is one."""
    from . import __version__
    from .config import device_description, profile

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "dpbook": __version__, "git_commit": commit, "profile": profile(), "device": device_description(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Run:
    """The files of one experiment run. Experiments call :meth:`load_checkpoint`, :meth:`save_checkpoint`
    after each epoch, and :meth:`finish` once."""

    def __init__(self, experiment: str, config: dict, *, root: str | os.PathLike | None = None,
                 resume: bool = False):
        self.experiment, self.config, self.resume = experiment, dict(config), resume
        self.hash = config_hash(self.config)
        self.dir = results_root(root) / experiment
        self.result_path = self.dir / f"{self.hash}.json"
        self.checkpoint_path = self.dir / f"{self.hash}.ckpt"

    def load_result(self) -> dict | None:
        """The finished result of this config, or ``None``."""
        if self.result_path.exists():
            return json.loads(self.result_path.read_text())
        return None

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint if resuming and one exists, else ``None`` (a fresh start)."""
        if not (self.resume and self.checkpoint_path.exists()):
            return None
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("config_hash") != self.hash:
            raise RuntimeError(f"checkpoint {self.checkpoint_path} belongs to another config; delete it")
        return state

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` (model and optimiser state dicts, epoch, history, ...) atomically."""
        state = {**state, "config_hash": self.hash}
        _atomic_write(self.checkpoint_path, lambda p: torch.save(state, p))

    def finish(self, metrics: dict, timings: dict, **extra: Any) -> dict:
        """Write and return the result file: config, environment, metrics, timings (seconds)."""
        result = {
            "experiment": self.experiment, "config_hash": self.hash, "config": self.config,
            "environment": environment(), "metrics": metrics, "timings": timings,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
        }
        _atomic_write(self.result_path, lambda p: p.write_text(json.dumps(result, indent=2, default=str)))
        return result
