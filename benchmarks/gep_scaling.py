"""Throughput of data-parallel GEP and DP-SGD with 1 and 2 processes (torch.distributed, gloo on a CPU).

    python benchmarks/gep_scaling.py                      # the small CNN on 1x28x28, batch 256, k = 256
    python benchmarks/gep_scaling.py --processes 1 2 4    # on a machine with more cores (or GPUs: NCCL)

Each configuration is launched with ``torchrun --standalone --nproc_per_node P -m dpbook.gep throughput``:
every process has one thread and computes the per-sample gradients of its share of each Poisson batch and of
the public samples; the clipped sums and the power iteration's products are all-reduced and rank 0's noisy
gradient is broadcast (:mod:`dpbook.gep.parallel`). Prints private examples per second and the speed-up over
the first configuration.
"""
from __future__ import annotations

import argparse

from common import add_speedups, save_results, torchrun_throughput


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["dpsgd", "gep"])
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--size", type=int, default=28, help="image side (1 channel)")
    parser.add_argument("--examples", type=int, default=10_000, help="private examples n (q = batch / n)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--public", type=int, default=256)
    parser.add_argument("--bases", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    rows = []
    for mode in args.modes:
        of_mode = []
        for p in args.processes:
            row = torchrun_throughput(p, "dpbook.gep", [
                "--mode", mode, "--model", args.model, "--size", str(args.size), "--examples", str(args.examples),
                "--batch-size", str(args.batch_size), "--public", str(args.public), "--bases", str(args.bases),
                "--steps", str(args.steps)])
            row.update(batch_size=args.batch_size, public=args.public, bases=args.bases, size=args.size)
            of_mode.append(row)
            print(f"{mode:<6} {p} process(es): {row['examples_per_second']:8.1f} private examples/s "
                  f"({row['seconds']:.1f} s for {row['steps']} steps)", flush=True)
        add_speedups(of_mode)
        rows += of_mode
    save_results("gep_scaling", rows, cpu_only=True)


if __name__ == "__main__":
    main()
