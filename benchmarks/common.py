"""Helpers shared by the benchmark scripts: timing with CUDA synchronisation, and saving results.

Results go to ``benchmarks/results/<name>-<machine>.json`` (or to ``$DPBOOK_BENCH_RESULTS`` when set) with the
machine description of :func:`dpbook.runs.environment`, where ``<machine>`` is the GPU's name as a slug on a GPU
box (``nvidia-h200`` for "NVIDIA H200") and ``cpu-<N>cores`` otherwise (:func:`machine`).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
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


def machine(*, cpu_only: bool = False) -> str:
    """The machine part of a results file's name: the slug of the first GPU's name (``nvidia-h200``) when CUDA
    is available and the benchmark uses it, else ``cpu-<N>cores``."""
    if torch.cuda.is_available() and not cpu_only:
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return f"cpu-{os.cpu_count()}cores"


def results_dir() -> Path:
    """Where results go: ``$DPBOOK_BENCH_RESULTS`` if set (the GPU check's tests write to a temporary folder),
    else ``benchmarks/results/``."""
    return Path(os.environ.get("DPBOOK_BENCH_RESULTS") or RESULTS)


def save_results(name: str, rows: list[dict], *, cpu_only: bool = False) -> Path:
    """Write ``rows`` and the machine description to ``<results_dir()>/<name>-<machine>.json``; return the
    path."""
    out = results_dir() / f"{name}-{machine(cpu_only=cpu_only)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    print(f"saved {display_path(out)}")
    return out


def torchrun_throughput(processes: int, module: str, args: list[str]) -> dict:
    """Launch ``torchrun --standalone --nproc_per_node <processes> -m <module> throughput <args>`` with one thread
    per process and return the JSON its rank 0 prints after ``THROUGHPUT `` (examples per second and more)."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", module, "throughput", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("THROUGHPUT "))[len("THROUGHPUT "):])


def add_speedups(rows: list[dict]) -> None:
    """Set each row's ``speedup_over_first``: its examples per second over the first row's, and print it."""
    first = rows[0]
    for row in rows:
        row["speedup_over_first"] = row["examples_per_second"] / first["examples_per_second"]
        print(f"{row.get('mode', '')}{' ' if 'mode' in row else ''}{row['processes']} process(es): "
              f"{row['speedup_over_first']:.2f}x the throughput of {first['processes']}")
