"""The dpbook command line.

    python -m dpbook list                          experiments and their settings under a profile
    python -m dpbook run NAME [--profile P] [--resume] [--SETTING VALUE ...]
    python -m dpbook fetch NAME                    download a dataset with torchvision (needs network)

Any setting of an experiment can be changed on the command line, e.g.
``python -m dpbook run baseline --dataset fashion-mnist --epochs 5``; an unknown setting is an error that
lists the valid ones. Results go to ``results/<experiment>/<config-hash>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import config


def _parse_value(text: str, default):
    """Convert a command-line string to the type of the setting's default."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        number = float(text)
        return int(number) if isinstance(default, int) and number.is_integer() else number
    if isinstance(default, (tuple, list)):
        return tuple(_parse_value(t, default[0]) if default else t for t in text.split(","))
    return text


def _overrides(name: str, profile: str | None, extra: list[str]) -> dict:
    defaults = config.settings(name, profile_name=profile)
    out, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise SystemExit(f"unexpected argument {token!r}; settings are given as --name value")
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not value:
            if i + 1 >= len(extra):
                raise SystemExit(f"--{key} needs a value")
            value, i = extra[i + 1], i + 1
        if key not in defaults:
            raise SystemExit(f"unknown setting --{key} for {name!r}; valid: "
                             + ", ".join(f"--{k.replace('_', '-')}" for k in sorted(defaults) if k != "minutes"))
        try:
            out[key] = _parse_value(value, defaults[key])
        except ValueError as err:
            raise SystemExit(f"--{key}: {err}") from None
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    from . import experiments

    parser = argparse.ArgumentParser(prog="dpbook", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the experiments and their settings")
    p_list.add_argument("--profile", choices=config.PROFILES)
    p_run = sub.add_parser("run", help="run a named experiment",
                           description="Run a named experiment; extra --SETTING VALUE pairs override settings.")
    p_run.add_argument("name", choices=sorted(experiments.EXPERIMENTS))
    p_run.add_argument("--profile", choices=config.PROFILES, help="settings profile (default: DPBOOK_PROFILE)")
    p_run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p_run.add_argument("--results", help="results folder (default: $DPBOOK_RESULTS or ./results)")
    p_fetch = sub.add_parser("fetch", help="download a dataset with torchvision into $DPBOOK_DATA")
    p_fetch.add_argument("name")
    p_fetch.add_argument("--root", help="data folder (default: $DPBOOK_DATA or ~/.cache/dpbook)")
    args, extra = parser.parse_known_args(argv)

    if args.command == "list":
        for name in sorted(experiments.EXPERIMENTS):
            print(f"{name}: {json.dumps(dict(config.settings(name, profile_name=args.profile)))}")
        return 0
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "fetch":
        from . import data

        print(f"fetched {args.name} into {data.fetch(args.name, root=args.root)}")
        return 0
    if args.profile:
        os.environ["DPBOOK_PROFILE"] = args.profile  # the profile also reaches describe_run and children
    overrides = _overrides(args.name, args.profile, extra)
    config.describe_run(args.name)
    try:
        result = experiments.run(args.name, profile=args.profile, resume=args.resume, results=args.results,
                                 **overrides)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished epoch is checkpointed; add --resume to the same command to go on",
              file=sys.stderr)
        return 130
    metrics = {k: v for k, v in result["metrics"].items() if not isinstance(v, (list, dict))}
    print(json.dumps({"metrics": metrics, "train_seconds": result["timings"].get("train_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
