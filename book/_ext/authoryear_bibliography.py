"""Bibliography labels in author-year form, matching the author-year citations in the text.

The book cites as "(Yu et al., 2021)" (``bibtex_reference_style: author_year``), but pybtex's default label style
prints alpha labels such as ``[KStogbauerG04]`` in the reference list, which a reader cannot match to the
citation. This extension registers the pybtex style ``authoryear``: the ``unsrt`` formatting with labels
"Yu et al. 2021", "Kraskov et al. 2004" (a, b suffixes when two entries share a label).
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = []
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_last_name(p) for p in people]
            who = (names[0] if len(names) == 1 else f"{names[0]} and {names[1]}" if len(names) == 2
                   else f"{names[0]} et al." if names else entry.key)
            labels.append(f"{who} {entry.fields.get('year', 'n.d.')}")
        seen, count = Counter(), Counter(labels)
        for label in labels:
            if count[label] > 1:
                seen[label] += 1
                yield label + "abcdefghij"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
