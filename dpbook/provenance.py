"""Provenance stamps of executed notebooks.

:mod:`dpbook.execute` writes ``metadata.dpbook`` into every notebook it runs::

    {"profile": "laptop", "code_hash": "...", "package_files": ["dpbook/config.py", ...],
     "package_hash": "...", "presets": {"gep": "...", ...}, "device": "cpu (x86_64, 2 threads)",
     "seconds": 41.3, "date": "2026-11-23T05:00:00+00:00", "dpbook": "0.1.0", "torch": "2.14.1"}

``code_hash`` covers the source of the code cells; ``package_files`` are the dpbook modules the kernel had
imported when the notebook finished, and ``package_hash`` covers their source. The settings tables in
``dpbook/presets.py`` are hashed one entry at a time: ``presets`` maps each preset the notebook read
(through :func:`dpbook.config.settings`) to the hash of its values, so editing another chapter's preset (or
a comment) leaves the stamp current. A stamp is *stale* when any hash no longer matches: then the stored
outputs may not be what the code now produces, and ``tests/test_provenance.py`` fails until the notebook is
executed again.
"""
from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path

import nbformat

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
#: Profiles whose outputs may be committed (smoke outputs are for CI only).
COMMITTABLE_PROFILES = ("laptop", "paper")
#: Hashed per entry (:func:`preset_hashes`), not as a file.
PRESETS_FILE = "dpbook/presets.py"


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the sources of the code cells, in order (markdown edits do not make a stamp stale)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode() + b"\n\x00")
    return h.hexdigest()


def package_hash(files: list[str]) -> str:
    """SHA-256 over the given package files (paths relative to the repository root) and their contents."""
    h = hashlib.sha256()
    for rel in sorted(files):
        path = REPO_ROOT / rel
        h.update(rel.encode() + b"\x00")
        h.update(path.read_bytes() if path.exists() else b"<missing>")
        h.update(b"\x00")
    return h.hexdigest()


def preset_hashes(names, presets: dict | None = None) -> dict[str, str]:
    """SHA-256 of the values of each named preset (``None`` for a name that no longer exists), read from
    ``dpbook/presets.py`` on disk unless ``presets`` is given."""
    if presets is None:
        presets = runpy.run_path(str(REPO_ROOT / PRESETS_FILE))["PRESETS"]
    return {name: hashlib.sha256(json.dumps(presets[name], sort_keys=True, default=repr).encode()).hexdigest()
            if name in presets else None for name in sorted(names)}


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Descriptions of the error outputs stored in ``nb`` (a committed notebook must have none)."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return found


def problems(path: str | Path) -> list[str]:
    """Why the stored outputs of notebook ``path`` cannot be trusted; empty when the stamp is current."""
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("dpbook")
    if not stamp:
        return ["no provenance stamp: run  python -m dpbook.execute --profile laptop " + str(path)]
    found = []
    if stamp.get("profile") not in COMMITTABLE_PROFILES:
        found.append(f"executed under profile {stamp.get('profile')!r}; commit only {COMMITTABLE_PROFILES}")
    if stamp.get("code_hash") != code_hash(nb):
        found.append("code cells changed since the notebook was executed")
    missing = [f for f in stamp.get("package_files", []) if not (REPO_ROOT / f).exists()]
    if missing:
        found.append(f"package files gone since execution: {', '.join(missing)}")
    elif stamp.get("package_hash") != package_hash(stamp.get("package_files", [])):
        found.append("dpbook source it imported changed since execution: "
                     + ", ".join(stamp.get("package_files", [])))
    recorded = stamp.get("presets", {})
    changed = [name for name, h in preset_hashes(recorded).items() if h != recorded[name]]
    if changed:
        found.append(f"settings it read changed since execution: {', '.join(changed)} in {PRESETS_FILE}")
    found += error_outputs(nb)
    return found


def toc_notebooks(toc: str | Path = REPO_ROOT / "_toc.yml") -> list[Path]:
    """The notebooks listed in the book's table of contents, as paths."""
    import yaml

    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(Path(toc).read_text()))
    root = Path(toc).parent
    return [root / f"{f}.ipynb" if not f.endswith(".ipynb") else root / f
            for f in files if (root / (f if f.endswith(".ipynb") else f + ".ipynb")).exists()]
