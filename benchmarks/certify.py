"""Monte-Carlo certification throughput: batched draws vs one draw at a time, in one process.

    python benchmarks/certify.py            # CPU, and CUDA when available; saves benchmarks/results/
    python benchmarks/certify.py --cases 100x1000,1000x1000 --skip-cpu   # the paper's 1,000 x 1,000, GPU only

The model is the book's small CNN on 28x28 inputs with Laplace noise at the input and after the first
convolution (dpbook.robustness.NoisyNetwork). "batched" is dpbook.robustness.monte_carlo_counts, which
repeats the inputs along the batch for many draws per forward; "loop" calls the noisy model once per draw
on the batch of inputs, as the original code does. Both draw fresh noise for every vote.
"""
from __future__ import annotations

import argparse

import torch
from common import best_time, save_results

from dpbook import models, robustness


def loop_counts(model, x, n_draws, n_classes):
    counts = torch.zeros(len(x), n_classes, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for _ in range(n_draws):  # the slow reference: one forward per draw
            counts += torch.nn.functional.one_hot(model(x).argmax(1), n_classes)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="1x2000,100x500",
                        help="comma-separated INPUTSxDRAWS: certify INPUTS points with DRAWS votes each")
    parser.add_argument("--skip-cpu", action="store_true", help="with CUDA, time the GPU only; ignored without")
    args = parser.parse_args(argv)
    cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    cuda = [torch.device("cuda")] if torch.cuda.is_available() else []
    devices = ([] if args.skip_cpu and cuda else [torch.device("cpu")]) + cuda
    rows = []
    for device in devices:
        model = robustness.NoisyNetwork.from_sequential(models.SmallCNN(1, 10, 28), noise="laplace",
                                                        input_scale=0.3, latent_scale=1.0).to(device).eval()
        for inputs, draws in cases:
            x = torch.rand(inputs, 1, 28, 28, device=device)
            robustness.monte_carlo_counts(model, x, n_draws=8, n_classes=10)  # warm-up
            for name, fn in {
                "batched (monte_carlo_counts)": lambda: robustness.monte_carlo_counts(model, x, n_draws=draws,
                                                                                     n_classes=10),
                "one draw at a time": lambda: loop_counts(model, x, draws, 10),
            }.items():
                _, seconds = best_time(fn)
                rows.append(dict(device=str(device), implementation=name, inputs=inputs, draws=draws,
                                 seconds=seconds, draws_per_second=inputs * draws / seconds))
                print(f"{device.type:<5} {inputs:>4} inputs x {draws} draws  {name:<30} {seconds:8.2f} s "
                      f"{rows[-1]['draws_per_second']:10,.0f} draws/s", flush=True)
            print(f"{device.type:<5} {inputs:>4} inputs: batched is "
                  f"{rows[-1]['seconds'] / rows[-2]['seconds']:.1f}x faster than the loop")
    save_results("certify", rows)


if __name__ == "__main__":
    main()
