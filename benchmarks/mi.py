"""Time the KSG estimator: dpbook.mi (CPU, and GPU when present) vs scipy cKDTree vs brute-force numpy.

    python benchmarks/mi.py                 # n = 10,000, d in {1, 10, 100}; saves benchmarks/results/
    python benchmarks/mi.py --n 2000 --dims 1 10 --skip-slow

x ~ N(0, I_d) and y = x / 2 + N(0, I_d), d dimensions each, so the true MI is d/2 log(1.25) nats.
The reference implementations are the ones the tests check dpbook.mi against (tests/test_mi.py):
``ksg1_ckdtree`` (max-norm everywhere, scipy cKDTree, the same estimator as ``metric="chebyshev"``) and
``ksg_bruteforce`` (Euclidean marginals, full numpy distance matrices, the same estimator as the default).
Each timing is the best of ``--repeat`` runs, all in this one process; ratios are reference / ours.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from common import best_time, save_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mi import ksg1_ckdtree, ksg_bruteforce  # noqa: E402

from dpbook import mi  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="skip cKDTree and brute force")
    args = parser.parse_args(argv)

    rows = []
    rng = np.random.default_rng(0)
    for d in args.dims:
        x = rng.standard_normal((args.n, d))
        y = 0.5 * x + rng.standard_normal((args.n, d))
        truth = d / 2 * math.log(1.25)
        entries = {
            "dpbook cpu (euclidean)": lambda: mi.mutual_information(x, y, standardize=False, device="cpu"),
            "dpbook cpu (chebyshev)": lambda: mi.mutual_information(x, y, standardize=False, device="cpu",
                                                                    metric="chebyshev"),
        }
        if torch.cuda.is_available():
            entries["dpbook cuda (euclidean)"] = lambda: mi.mutual_information(x, y, standardize=False,
                                                                               device="cuda")
            entries["dpbook cuda float32"] = lambda: mi.mutual_information(x, y, standardize=False,
                                                                           device="cuda", dtype=torch.float32)
        if not args.skip_slow:
            entries["scipy cKDTree (chebyshev)"] = lambda: ksg1_ckdtree(x, y, 3)
            entries["numpy brute force (euclidean)"] = lambda: ksg_bruteforce(x, y, 3, 1)
        results = {}
        for name, fn in entries.items():
            repeat = 1 if name.startswith(("scipy", "numpy")) else args.repeat
            value, seconds = best_time(fn, repeat)
            results[name] = (value, seconds)
            print(f"n={args.n} d={d:<4} {name:<32} {seconds:9.3f} s   estimate {value:7.4f} (true {truth:.4f})",
                  flush=True)
        ours = {"euclidean": results["dpbook cpu (euclidean)"][1], "chebyshev": results["dpbook cpu (chebyshev)"][1]}
        for name, (value, seconds) in results.items():
            like = "chebyshev" if "chebyshev" in name else "euclidean"
            rows.append(dict(n=args.n, d=d, implementation=name, seconds=seconds, estimate=value, truth=truth,
                             speedup_of_dpbook_cpu=seconds / ours[like]))
        for name, (value, seconds) in results.items():
            if not name.startswith("dpbook cpu"):
                like = "chebyshev" if "chebyshev" in name else "euclidean"
                print(f"    ratio {name} / dpbook cpu ({like}): {seconds / ours[like]:.1f}x")
    save_results("mi", rows)


if __name__ == "__main__":
    main()
