"""Helpers shared by the benchmark scripts: timing with CUDA synchronisation, and saving results.

Results go to ``benchmarks/results/<name>-<machine>.json`` with the machine description of
:func:`dpbook.runs.environment`, where ``<machine>`` is ``cuda`` on a GPU box and ``cpu-<N>cores`` otherwise.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from dpbook.runs import display_path, environment

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn, repeat: int = 1):
    """(value, seconds): the last value of ``fn()`` and the best wall time over ``repeat`` calls."""
    best, value = math.inf, None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return value, best


def save_results(name: str, rows: list[dict], *, cpu_only: bool = False) -> Path:
    """Write ``rows`` and the machine description to ``results/<name>-<machine>.json``; return the path."""
    machine = "cuda" if torch.cuda.is_available() and not cpu_only else f"cpu-{os.cpu_count()}cores"
    out = RESULTS / f"{name}-{machine}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    print(f"saved {display_path(out)}")
    return out
