"""Result tables that render as HTML in the book and as aligned text in a terminal.

A :class:`Table` is what a notebook cell returns (or passes to ``display``) to show results: Jupyter and the
rendered book call :meth:`Table._repr_html_` (a plain ``<table>`` whose cells wrap, so it fits the page), a
terminal or a doctest gets :meth:`Table.__repr__`, text columns padded to their widths.

Example:
    >>> t = Table(["method", "accuracy"], [["GEP", "86.2%"], ["DP-SGD", "84.9%"]])
    >>> print(repr(t))
    method  accuracy
    GEP     86.2%
    DP-SGD  84.9%
    >>> "<th>method</th>" in t._repr_html_()
    True
"""
from __future__ import annotations

import html
from typing import Any, Sequence


def fmt(value: Any, format_spec: str = ".3f") -> str:
    """``value`` formatted with ``format_spec``; ``None`` as a dash; strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, format_spec)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: ``pct(0.8616) == '86.2%'``."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


class Table:
    """Rows of cells under a header, with an optional caption (shown above the table).

    Args:
        header: column names (key columns first).
        rows: one sequence of cells per row; cells are shown with ``str`` (format numbers before).
        caption: a line above the table, e.g. where its numbers come from.
    """

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = ""):
        self.header = [str(h) for h in header]
        self.rows = [[str(c) for c in row] for row in rows]
        self.caption = caption
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"rows of Table() must have {len(self.header)} cells like the header; got {row!r}")

    def column(self, name: str) -> list[str]:
        """The cells of column ``name``."""
        i = self.header.index(name)
        return [row[i] for row in self.rows]

    def __repr__(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = [self.caption] if self.caption else []
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [self.header, *self.rows]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def cells(row, tag):
            return "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)

        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in self.rows)
        return (f'<table class="dpbook-table">{caption}<thead><tr>{cells(self.header, "th")}</tr></thead>'
                f"<tbody>{body}</tbody></table>")
