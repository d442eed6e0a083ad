"""``torchrun ... -m dpbook.gep selftest|throughput``: data-parallel GEP's self-test and throughput
(:mod:`dpbook.gep.parallel`; tests/test_gep_parallel.py, benchmarks/gep_scaling.py)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .parallel import rank_and_world, run_steps, selftest_engine, selftest_problem


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="data-parallel GEP under torchrun: self-test or throughput")
    parser.add_argument("command", choices=["selftest", "throughput"])
    parser.add_argument("--out", type=Path, help="selftest: folder for each rank's parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", default="gep")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--examples", type=int, default=64, help="private examples n")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--public", type=int, default=12)
    parser.add_argument("--bases", type=int, default=8)
    parser.add_argument("--size", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = rank_and_world()
    model, x, y, public_x = selftest_problem(args.seed, model_name=args.model, n=args.examples, public=args.public,
                                             size=args.size)
    engine = selftest_engine(model, public_x, args.examples, mode=args.mode, seed=args.seed, distributed=True,
                             batch_size=args.batch_size, n_bases=args.bases, rank=rank)
    t0 = time.perf_counter()
    used = run_steps(model, engine, x, y, args.steps, args.batch_size)
    seconds = time.perf_counter() - t0
    if args.command == "selftest":
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({"parameters": {k: v.detach() for k, v in model.named_parameters()}, "batches": used,
                    "bases": engine.bases, "epsilon": engine.epsilon()}, args.out / f"rank{rank}.pt")
    elif rank == 0:
        examples = sum(len(b) for b in used)
        print("THROUGHPUT " + json.dumps(dict(processes=world, steps=args.steps, seconds=seconds,
                                              examples_per_second=examples / seconds, mode=args.mode,
                                              model=args.model)), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
