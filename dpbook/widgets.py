"""Interactive explorers that degrade to a static figure.

In a live notebook (see :func:`dpbook.progress.interactive`) :func:`explorer` shows ipywidgets sliders
that redraw a figure. Under the executor, in CI and in the rendered book there is no kernel to answer the
sliders, so the same drawing function fills a static grid of small multiples, one panel per row of
``static``: the rendered book shows exactly that figure.
"""
from __future__ import annotations

import math
from typing import Callable

from .progress import interactive


def explorer(draw: Callable, *, controls: dict, static: list[dict], title: str = "", ncols: int = 2):
    """Show ``draw(ax, **values)`` with sliders when live, else a grid of panels for ``static``.

    Args:
        draw: draws one panel onto a matplotlib ``Axes`` for the keyword values given.
        controls: name -> ipywidgets widget (or anything ``ipywidgets.interactive`` accepts).
        static: value dictionaries, one panel each, for the static figure.
        title: figure title.

    Returns:
        The ipywidgets object when live, else the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if interactive():
        try:
            import ipywidgets
        except ImportError:  # pragma: no cover - ipywidgets is pinned, but stay usable without it
            pass
        else:
            def redraw(**values):
                fig, ax = plt.subplots(figsize=(6, 4))
                draw(ax, **values)
                fig.suptitle(title)
                plt.show()

            widget = ipywidgets.interactive(redraw, **controls)
            from IPython.display import display

            display(widget)
            return widget
    nrows = math.ceil(len(static) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, values in zip(axes.flat, static):
        draw(ax, **values)
    for ax in list(axes.flat)[len(static):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return fig
