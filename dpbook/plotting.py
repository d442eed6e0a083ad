"""One figure style for every chapter: sharp on high-density screens, legible fonts, legends off the data.

Every notebook calls :func:`use` once after its imports. Figures are drawn at ``DPI`` dots per inch (the inline
backend renders PNGs at the figure's dpi), with font sizes a reader can read at the book's column width, and
legends placed where they cover the fewest points (``legend.loc="best"`` with a translucent frame).

Example:
    >>> import matplotlib
    >>> use()
    >>> matplotlib.rcParams["figure.dpi"] == DPI and matplotlib.rcParams["legend.fontsize"] >= 9
    True
"""
from __future__ import annotations

import matplotlib

#: Resolution of the figures in the book (dots per inch).
DPI = 150

STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.figsize": (7.0, 4.0),
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "legend.loc": "best",
    "legend.framealpha": 0.85,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.markersize": 5,
}


def use() -> None:
    """Apply :data:`STYLE` to matplotlib (for the rest of the kernel's life)."""
    matplotlib.rcParams.update(STYLE)
