"""Execute notebooks in place under a profile and stamp their provenance.

Usage::

    python -m dpbook.execute --profile laptop notebooks/01_dp_primer.ipynb
    python -m dpbook.execute --profile paper notebooks/*.ipynb
    python -m dpbook.execute --check            # list notebooks of _toc.yml whose stamp is stale

Each notebook runs top to bottom in a fresh kernel whose working directory is the notebook's folder, with
``DPBOOK_PROFILE`` set to the profile and ``DPBOOK_EXECUTING=1`` (progress bars become plain lines). On
success the outputs and ``metadata.dpbook`` (see :mod:`dpbook.provenance`) are written back; on an error
the notebook file is left untouched and the command exits non-zero.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from . import checks, provenance
from .config import PROFILES

_PROBE_TAG = "DPBOOK_PROBE:"
_PROBE = f"""\
import json as _json, sys as _sys
import dpbook.config as _cfg, torch as _torch
_files = sorted({{_m.__file__ for _n, _m in list(_sys.modules.items())
                 if (_n == "dpbook" or _n.startswith("dpbook.")) and getattr(_m, "__file__", None)}})
print("{_PROBE_TAG}" + _json.dumps({{"files": _files, "presets": sorted(_cfg.USED_PRESETS),
                                   "device": _cfg.device_description(), "torch": _torch.__version__}}))
"""


def execute(path: str | Path, *, profile: str, timeout: int | None = None) -> dict:
    """Run notebook ``path`` under ``profile``, write its outputs and stamp; return the stamp."""
    from nbclient import NotebookClient

    from . import __version__

    checks.one_of(profile, PROFILES, "profile", "execute()")
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    env_before = {k: os.environ.get(k) for k in ("DPBOOK_PROFILE", "DPBOOK_EXECUTING")}
    os.environ.update(DPBOOK_PROFILE=profile, DPBOOK_EXECUTING="1")
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    probe_cell = nb.cells.pop()
    text = "".join(o.get("text", "") for o in probe_cell.outputs if o.get("output_type") == "stream")
    probe = json.loads(text.split(_PROBE_TAG, 1)[1])
    files = sorted(str(Path(f).resolve().relative_to(provenance.REPO_ROOT)) for f in probe["files"]
                   if Path(f).resolve().is_relative_to(provenance.PACKAGE_DIR))
    files = [f for f in files if f != provenance.PRESETS_FILE]  # hashed per preset instead
    stamp = {
        "profile": profile, "code_hash": provenance.code_hash(nb), "package_files": files,
        "package_hash": provenance.package_hash(files),
        "presets": provenance.preset_hashes(probe["presets"]), "device": probe["device"], "torch": probe["torch"],
        "seconds": round(seconds, 1), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dpbook": __version__,
    }
    nb.metadata["dpbook"] = stamp
    nbformat.write(nb, path)
    return stamp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpbook.execute", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to execute (default with --check: _toc.yml's)")
    parser.add_argument("--profile", choices=PROFILES, help="profile to run under (required unless --check)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: none)")
    parser.add_argument("--check", action="store_true", help="only report stale or missing stamps")
    args = parser.parse_args(argv)
    if args.check:
        paths = [Path(p) for p in args.notebooks] or provenance.toc_notebooks()
        stale = {p: provenance.problems(p) for p in paths}
        for p, why in stale.items():
            print(f"{'STALE' if why else 'ok   '} {p}" + "".join(f"\n      - {w}" for w in why))
        return 1 if any(stale.values()) else 0
    if not args.profile or not args.notebooks:
        parser.error("give --profile and at least one notebook (or --check)")
    for p in args.notebooks:
        print(f"executing {p} under {args.profile} ...", flush=True)
        stamp = execute(p, profile=args.profile, timeout=args.timeout)
        print(f"  done in {stamp['seconds']} s on {stamp['device']}; stamped {stamp['code_hash'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
