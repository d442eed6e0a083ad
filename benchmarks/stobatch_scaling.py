"""Throughput of StoBatch with 1 and 2 trainer processes (torch.distributed, gloo on a CPU).

    python benchmarks/stobatch_scaling.py                     # Fashion-MNIST network, batch 500
    python benchmarks/stobatch_scaling.py --processes 1 2 4   # on a machine with more cores

Each configuration is launched with ``torchrun --standalone --nproc_per_node P -m dpbook.distributed
throughput``: every process is one trainer with one thread, taking its own benign and adversarial batch each
step; gradients are summed across processes. Prints examples per second and the speed-up over one process.
"""
from __future__ import annotations

import argparse

from common import add_speedups, save_results, torchrun_throughput


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attack-steps", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    for p in args.processes:
        row = torchrun_throughput(p, "dpbook.distributed", [
            "--dataset", args.dataset, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--attack-steps", str(args.attack_steps)])
        row.update(dataset=args.dataset, batch_size=args.batch_size, attack_steps=args.attack_steps)
        rows.append(row)
        print(f"{p} process(es): {row['examples_per_second']:8.0f} examples/s "
              f"({row['seconds']:.1f} s for {row['steps']} steps)", flush=True)
    add_speedups(rows)
    save_results("stobatch_scaling", rows, cpu_only=True)


if __name__ == "__main__":
    main()
