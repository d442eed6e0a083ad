"""Time the KSG estimator: dpbook.mi (CPU, and GPU when present) vs scipy cKDTree vs brute-force numpy.

    python benchmarks/mi.py                 # n = 10,000, d in {1, 10, 100}, one thread; saves benchmarks/results/
    python benchmarks/mi.py --n 2000 --dims 1 10 --skip-slow
    python benchmarks/mi.py --threads 2     # every CPU implementation on two threads
    python benchmarks/mi.py --n 100000 --dims 100 --skip-slow --skip-cpu   # the GPU check's size, GPU only

Like for like: every CPU implementation runs on the same number of threads (``--threads``, default 1):
torch's intra-op threads, cKDTree's ``workers``, and the BLAS/OpenMP pools of numpy (set before numpy loads).

x ~ N(0, I_d) and y = x / 2 + N(0, I_d), d dimensions each, so the true MI is d/2 log(1.25) nats.
The reference implementations are the ones the tests check dpbook.mi against (tests/test_mi.py):
``ksg1_ckdtree`` (max-norm everywhere, scipy cKDTree, the same estimator as ``metric="chebyshev"``) and
``ksg_bruteforce`` (Euclidean marginals, full numpy distance matrices, the same estimator as the default).
Each timing is the best of ``--repeat`` runs, all in this one process; ratios are reference / ours.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


def _threads(argv) -> int:
    """``--threads`` from the command line, read before numpy and torch start their thread pools."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(argv):
        if token.startswith("--threads"):
            return int(token.split("=", 1)[1] if "=" in token else argv[i + 1])
    return 1


THREADS = _threads(None)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import best_time, save_results  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from scipy.special import digamma  # noqa: E402

from dpbook import mi  # noqa: E402


def ksg_bruteforce(x, y, k, seed):
    """The brute-force reference of ``tests/test_mi.py``, imported only when it runs (it needs pytest)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_mi import ksg_bruteforce as reference

    return reference(x, y, k, seed)


def ksg1_ckdtree(x, y, k, workers=1):
    """KSG estimator 1 with the max-norm everywhere (NPEET's), neighbours from cKDTree on ``workers`` threads
    (the reference ``tests/test_mi.py`` checks dpbook.mi against, with its thread count exposed)."""
    n = len(x)
    z = np.hstack([x, y])
    eps = cKDTree(z).query(z, k + 1, p=np.inf, workers=workers)[0][:, k]
    radius = np.nextafter(eps, 0)  # strictly closer than eps
    nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True, workers=workers) - 1
    ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True, workers=workers) - 1
    return digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="skip cKDTree and brute force")
    parser.add_argument("--skip-cpu", action="store_true",
                        help="with CUDA, time dpbook on the GPU only (at n = 100,000 one CPU thread takes many "
                             "minutes); ignored without CUDA")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every implementation (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"every CPU implementation on {args.threads} thread(s): torch {torch.get_num_threads()}, cKDTree "
          f"workers={args.threads}, numpy's BLAS/OpenMP pools {os.environ['OMP_NUM_THREADS']}", flush=True)

    rows = []
    rng = np.random.default_rng(0)
    for d in args.dims:
        x = rng.standard_normal((args.n, d))
        y = 0.5 * x + rng.standard_normal((args.n, d))
        truth = d / 2 * math.log(1.25)
        entries = {} if args.skip_cpu and torch.cuda.is_available() else {
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
            entries["scipy cKDTree (chebyshev)"] = lambda: ksg1_ckdtree(x, y, 3, workers=args.threads)
            entries["numpy brute force (euclidean)"] = lambda: ksg_bruteforce(x, y, 3, 1)
        results = {}
        for name, fn in entries.items():
            repeat = 1 if name.startswith(("scipy", "numpy")) else args.repeat
            value, seconds = best_time(fn, repeat)
            results[name] = (value, seconds)
            print(f"n={args.n} d={d:<4} {name:<32} {seconds:9.3f} s   estimate {value:7.4f} (true {truth:.4f})",
                  flush=True)
        ours = {like: results[f"dpbook cpu ({like})"][1] for like in ("euclidean", "chebyshev")
                if f"dpbook cpu ({like})" in results}  # none with --skip-cpu: no ratios then
        for name, (value, seconds) in results.items():
            like = "chebyshev" if "chebyshev" in name else "euclidean"
            rows.append(dict(n=args.n, d=d, implementation=name, seconds=seconds, estimate=value, truth=truth,
                             cpu_threads=args.threads,
                             # NaN without a CPU reference (--skip-cpu): notebooks/30 formats it as a number
                             speedup_of_dpbook_cpu=seconds / ours[like] if like in ours else math.nan))
        for name, (value, seconds) in results.items():
            like = "chebyshev" if "chebyshev" in name else "euclidean"
            if not name.startswith("dpbook cpu") and like in ours:
                print(f"    ratio {name} / dpbook cpu ({like}), {args.threads} thread(s) each: "
                      f"{seconds / ours[like]:.1f}x")
    save_results("mi", rows)


if __name__ == "__main__":
    main()
