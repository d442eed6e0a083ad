"""Progress for long loops: a tqdm bar for a person watching, a quiet line now and then for machines.

A bar is shown in a terminal and in an interactive notebook. Under the notebook executor
(``DPBOOK_EXECUTING=1``, set by :mod:`dpbook.execute`), under CI (``CI`` set) or when output goes to a file,
the loop prints a plain line every ``every`` items instead, so committed outputs and logs stay readable.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """True when a person is likely watching: a terminal, or a live notebook outside the executor and CI."""
    if os.environ.get("DPBOOK_EXECUTING") or os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", every: int = 0) -> Iterator[T]:
    """Iterate over ``iterable`` showing progress.

    Args:
        total: number of items, if ``iterable`` has no ``len``.
        desc: label of the bar or line.
        every: when not interactive, print a line every ``every`` items (0: stay silent).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if interactive():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if every and i % every == 0:
            print(f"{desc} {i}/{total if total is not None else '?'} ({time.perf_counter() - start:.1f} s)",
                  flush=True)
