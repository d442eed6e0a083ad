"""StoBatch's trainers as processes, on ``torch.distributed`` (gloo on a CPU, NCCL on GPUs).

StoBatch's scalability claim (Phan et al. 2020) is that several trainers work on disjoint batches at once.
:func:`dpbook.stobatch.train_step` simulates T trainers in one process; here each trainer is a process:

1. rank 0 builds the run (:func:`dpbook.stobatch.prepare`: partition, budget, the noise of every batch from
   the OS-seeded generator) and the initial weights, and broadcasts them (:func:`broadcast_run`), so every
   batch keeps *one* noise draw, shared by whichever rank uses it: the privacy analysis is the single
   process's;
2. every epoch rank 0 draws the schedule and broadcasts it; trainer r takes benign batch ``benign[step, r]``
   and adversarial source ``adversarial[step, r]``, distinct from every other trainer's;
3. each rank backpropagates its share (loss / T) and the gradients are summed across ranks
   (:func:`average_gradients`), which is the single process's average over trainers; every rank then takes
   the same optimiser step.

With the same seeds, T processes reach the parameters of the one-process simulation of T trainers
(``tests/test_distributed.py``). BatchNorm's running statistics are averaged over ranks after every step, as
the one-process simulation averages them over trainers. Launch::

    torchrun --standalone --nproc_per_node 2 -m dpbook.distributed selftest --out /tmp/st
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

from . import stobatch


def setup(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); gloo without CUDA, and with it NCCL for CUDA tensors and gloo for CPU ones.
    Returns (rank, world size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("not launched by torchrun: run `torchrun --standalone --nproc_per_node N ...`")
        dist.init_process_group(backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    for t in tensors:
        dist.broadcast(t, src)


def broadcast_run(model: stobatch.StoBatchNet, run: stobatch.StoBatchRun, src: int = 0) -> None:
    """Make every rank's weights, partition and noise table rank ``src``'s, and its released training set
    (per-example designs: each example's noise drawn once, by rank ``src``, whichever rank trains on it)."""
    released = [run.release.x, run.release.y] if run.release is not None else []
    broadcast_tensors(list(model.state_dict().values()) + [run.partition, run.noise.x, run.noise.h, run.noise.chi]
                      + released, src)


def released_problem(train, model, options, generator=None) -> tuple[stobatch.StoBatchRun, torch.Tensor, torch.Tensor]:
    """A per-example StoBatch run on ``train`` (its first 100 images standing in as public data: a test and a
    benchmark, not a release): the run and the released inputs and labels to train on."""
    release = stobatch.release_for(options, train.x, train.y, train.x[:100], n_classes=len(train.classes),
                                   generator=generator)
    return stobatch.prepare(model, len(train), options, release=release), release.x, release.y


def average_gradients(model: torch.nn.Module) -> None:
    """Sum ``p.grad`` over ranks. Each rank's loss is already divided by the number of trainers, so the sum is
    the average over trainers, as :func:`dpbook.stobatch.train_step` computes it in one process."""
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # every rank must take part in every all_reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def average_buffers(model: torch.nn.Module, world: int) -> None:
    """Average BatchNorm's running statistics over ranks (:func:`dpbook.stobatch.running_buffers`)."""
    for b in stobatch.running_buffers(model):
        dist.all_reduce(b, op=dist.ReduceOp.SUM)
        b /= world


def train_step(model: stobatch.StoBatchNet, optimizers, run: stobatch.StoBatchRun, x: torch.Tensor,
               y: torch.Tensor, benign_ids: torch.Tensor, adversarial_ids: torch.Tensor, *, rank: int, world: int,
               attack_generator: torch.Generator | None = None) -> dict:
    """This rank's trainer for one step: its batch pair (``benign_ids[rank]``, ``adversarial_ids[rank]``),
    gradients summed across ranks, then the same optimiser step everywhere. Returns this rank's stats."""
    if len(benign_ids) != world:
        raise ValueError(f"a step needs one batch pair per rank: {len(benign_ids)} pairs for {world} ranks")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    stats = stobatch.accumulate_trainer(model, run, x, y, int(benign_ids[rank]), int(adversarial_ids[rank]),
                                        trainers=world, attack_generator=attack_generator)
    average_gradients(model)
    average_buffers(model, world)
    stobatch.finish_step(model, optimizers, run)
    return stobatch.mean_stats(stats)


def epoch_schedule(run: stobatch.StoBatchRun, *, world: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0's :func:`dpbook.stobatch.epoch_schedule` for ``world`` trainers, broadcast to every rank."""
    benign, adversarial = stobatch.epoch_schedule(len(run.partition), trainers=world, generator=generator)
    broadcast_tensors([benign, adversarial])
    return benign, adversarial


def train_epoch(model: stobatch.StoBatchNet, optimizers, run: stobatch.StoBatchRun, x: torch.Tensor,
                y: torch.Tensor, *, rank: int, world: int, schedule_generator: torch.Generator | None = None,
                attack_generator: torch.Generator | None = None) -> dict:
    """One epoch of this rank's trainer (:func:`epoch_schedule`, then :func:`train_step` per step); returns
    :func:`dpbook.stobatch.epoch_report` of this rank's stats, as :func:`dpbook.stobatch.train_epoch` does."""
    model.train()
    benign, adversarial = epoch_schedule(run, world=world, generator=schedule_generator)
    stats = [train_step(model, optimizers, run, x, y, b, a, rank=rank, world=world, attack_generator=attack_generator)
             for b, a in zip(benign, adversarial)]
    return stobatch.epoch_report(stats, run)


# ---------------------------------------------------------------------------------------------------
# A small fixed problem, shared by the self-test and the single-process reference in the tests
# ---------------------------------------------------------------------------------------------------
def selftest_problem(seed: int, trainers: int, *, os_noise: bool = False):
    """Digits scaled to [-1, 1], the digits network, seeded noise (a public seed: a test, not a release), or
    OS-seeded noise (``os_noise``: different on every rank until :func:`broadcast_run`)."""
    import warnings

    from . import data, privacy

    train = data.load("digits", "train", scale="symmetric")
    torch.manual_seed(seed)
    model = stobatch.digits_network()
    options = stobatch.StoBatchOptions(batch_size=100, trainers=trainers, attack_steps=2, input_dims=16,
                                       epsilon_autoencoder=6.0, epsilon2=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", privacy.UnsafeSeedWarning)
        gen = privacy.noise_generator() if os_noise else privacy.noise_generator(seed=seed)
        run, x, y = released_problem(train, model, options, gen)
    return model, stobatch.make_optimizers(model, options), run, x, y


def selftest_generators(seed: int, trainers: int) -> tuple[torch.Generator, list[torch.Generator]]:
    """The schedule generator and one attack generator per trainer."""
    return (torch.Generator().manual_seed(seed + 1),
            [torch.Generator().manual_seed(seed + 100 + t) for t in range(trainers)])


def throughput(*, rank: int, world: int, dataset: str, batch_size: int, steps: int, attack_steps: int) -> dict:
    """Examples per second of ``world`` trainers (each a benign and an adversarial batch per step), timed
    on rank 0 over ``steps`` steps after one warm-up step."""
    import time

    from . import data

    train = data.load(dataset, "train", scale="symmetric")
    torch.manual_seed(0)
    model = stobatch.network_for(tuple(train.x.shape[1:]), len(train.classes))
    options = stobatch.StoBatchOptions(batch_size=batch_size, trainers=world, attack_steps=attack_steps,
                                       epsilon_autoencoder=6.0, epsilon2=2.0)
    run, x, y = released_problem(train, model, options)
    broadcast_run(model, run)
    optimizers = stobatch.make_optimizers(model, options)
    schedule_gen = torch.Generator().manual_seed(0)
    model.train()
    done, t0 = -1, None
    while done < steps:
        benign, adversarial = epoch_schedule(run, world=world, generator=schedule_gen)
        for b, a in zip(benign, adversarial):
            if done == 0:
                dist.barrier()
                t0 = time.perf_counter()
            train_step(model, optimizers, run, x, y, b, a, rank=rank, world=world)
            done += 1
            if done == steps:
                break
    dist.barrier()
    seconds = time.perf_counter() - t0
    return {"processes": world, "steps": steps, "seconds": seconds,
            "examples_per_second": 2 * world * batch_size * steps / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Distributed StoBatch trainers")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("throughput", help="time StoBatch steps; rank 0 prints one JSON line")
    bench.add_argument("--dataset", default="fashion-mnist")
    bench.add_argument("--batch-size", type=int, default=500)
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--attack-steps", type=int, default=2)
    st = sub.add_parser("selftest", help="a few steps on digits; each rank saves its parameters")
    st.add_argument("--out", required=True)
    st.add_argument("--steps", type=int, default=2)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--os-noise", action="store_true", help="OS-seeded noise, made common by the broadcast")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = setup("gloo")
    if args.command == "throughput":
        import json

        result = throughput(rank=rank, world=world, dataset=args.dataset, batch_size=args.batch_size,
                            steps=args.steps, attack_steps=args.attack_steps)
        if rank == 0:
            print("THROUGHPUT " + json.dumps(result), flush=True)
        dist.destroy_process_group()
        return 0
    model, optimizers, run, x, y = selftest_problem(args.seed, world, os_noise=args.os_noise)
    broadcast_run(model, run)
    schedule_gen, attack_gens = selftest_generators(args.seed, world)
    benign, adversarial = epoch_schedule(run, world=world, generator=schedule_gen)
    model.train()
    for step in range(args.steps):
        train_step(model, optimizers, run, x, y, benign[step], adversarial[step], rank=rank, world=world,
                   attack_generator=attack_gens[rank])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"parameters": {n: p.detach() for n, p in model.named_parameters()},
                "noise": [run.noise.x, run.noise.h, run.noise.chi, run.release.x, run.release.y]},
               Path(args.out) / f"rank{rank}.pt")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
