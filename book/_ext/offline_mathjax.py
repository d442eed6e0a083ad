"""Serve MathJax from the book itself, so formulas render without network.

Readers of a book on privacy often read it offline or behind a firewall; MathJax from a CDN leaves every formula
as raw TeX there. This Sphinx extension copies the pinned MathJax 3 of the PyPI package
``django-static-mathjax`` (the official MathJax distribution files, installed by ``requirements.txt``; Django
itself is not needed) into the book's ``_static/`` folder and points Sphinx's ``mathjax_path`` at it.
"""
from __future__ import annotations

from pathlib import Path


def _use_local_mathjax(app) -> None:
    import mathjax  # the package that django-static-mathjax installs

    static = Path(mathjax.__file__).resolve().parent / "static"
    script = static / "mathjax" / "es5" / "tex-chtml.js"
    if not script.exists():
        raise FileNotFoundError(f"MathJax not found at {script}; run  pip install -r requirements.txt")
    app.config.html_static_path.append(str(static))  # copied to _static/mathjax/
    app.config.mathjax_path = "mathjax/es5/tex-chtml.js"  # relative to _static/


def setup(app):
    app.connect("builder-inited", _use_local_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
