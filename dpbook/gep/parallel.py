"""GEP and DP-SGD on several processes (data parallel), on ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

With ``GEP(..., distributed=True)`` in each of W processes launched by ``torchrun``, one step is:

1. **The batch.** Rank 0 draws the Poisson batch from its DP generator and broadcasts it
   (:func:`broadcast_batches`); process r takes examples r, r + W, r + 2W, ... of it.
2. **The anchor subspace.** Process r computes the anchor gradients A_r of its share of the public samples.
   Since A^T A = sum_r A_r^T A_r, each power-iteration product A_g^T (A_g L) is the all-reduced sum of the
   processes' products, from rank 0's start L; rank 0 orthonormalises and broadcasts the bases
   (:func:`anchor_subspace`), so every process holds the same subspace.
3. **The clipped sums.** Each process clips the embeddings and residuals of its own examples and sums them
   (:func:`dpbook.gep.step.clipped_sums`); the sums are added over processes (one all-reduce of k + p numbers).
4. **The noise.** Rank 0 adds the noise and rebuilds the gradient (:func:`dpbook.gep.step.add_noise`) and
   broadcasts it (:func:`release_from_rank0`); every process writes it into ``p.grad`` and takes the same
   optimiser step.

The released gradient is the single process's function of the same batch plus one noise draw, so the
privacy analysis (one accountant, stepped identically in every process) is the single process's. With the
same seeds, W processes reach the single process's parameters up to the rounding of the summation order
(``tests/test_gep_parallel.py``). Launch the self-test::

    torchrun --standalone --nproc_per_node 2 -m dpbook.gep selftest --out /tmp/gep-parallel
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .step import PrivateGradient


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group ``torchrun`` set up, joined if needed
    (:func:`dpbook.distributed.setup`: gloo for CPU tensors, NCCL for CUDA tensors)."""
    from ..distributed import setup  # imported here: dpbook.distributed imports dpbook.stobatch, which uses gep

    return setup()


def broadcast_module(model: torch.nn.Module) -> None:
    """Give every process rank 0's parameters and buffers (in place): the processes start, or resume, alike."""
    from ..distributed import broadcast_tensors

    broadcast_tensors([t.data for t in list(model.parameters()) + list(model.buffers())])


def broadcast_object(value):
    """Rank 0's ``value`` (any picklable object) on every process."""
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def broadcast_batches(batches: list[torch.Tensor], *, rank: int) -> list[torch.Tensor]:
    """Rank 0's index batches on every process (their sizes first, then the indices in one tensor)."""
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.long)
    dist.broadcast(sizes, 0)
    flat = torch.cat(batches) if rank == 0 else torch.empty(int(sizes.sum()), dtype=torch.long)
    dist.broadcast(flat, 0)
    return list(torch.split(flat, sizes.tolist()))


def summed_products(a: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """sum_r A_r^T (A_r L) over the processes: A^T (A L) for the anchors A stacked from every share."""
    product = a.T @ (a @ basis)
    dist.all_reduce(product, op=dist.ReduceOp.SUM)
    return product


def anchor_subspace(anchor_share: torch.Tensor, groups, budgets, *, generator=None, start=None,
                    **kwargs) -> list[torch.Tensor]:
    """:func:`dpbook.gep.anchor_subspace` of the anchors spread over the processes (``anchor_share``: this
    process's rows), from rank 0's start matrices; rank 0's bases are broadcast, so all processes agree."""
    from ..distributed import broadcast_tensors
    from .subspace import anchor_subspace as local
    from .subspace import gaussian_starts

    if start is None:  # every process draws (its public generator stays in step), rank 0's draw is used
        start = gaussian_starts(groups, budgets, generator=generator, device=anchor_share.device,
                                dtype=anchor_share.dtype)
    broadcast_tensors(start)
    bases = local(anchor_share, groups, budgets, start=start, products=summed_products, **kwargs)
    broadcast_tensors(bases)
    return bases


def release_from_rank0(w_sum: torch.Tensor, r_sum: torch.Tensor | None, release, *, rank: int,
                       n_params: int) -> PrivateGradient:
    """Add the clipped sums over processes; rank 0 calls ``release(w_sum, r_sum)`` (noise, reconstruction) and
    broadcasts the result, so the noise is drawn once, by rank 0."""
    sums = torch.cat([w_sum] + ([r_sum] if r_sum is not None else []))
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    w_sum, r_sum = sums[:len(w_sum)], (sums[len(w_sum):] if r_sum is not None else None)
    out = (release(w_sum, r_sum) if rank == 0 else
           PrivateGradient(gradient=w_sum.new_empty(n_params), embedding=torch.empty_like(w_sum),
                           residual=w_sum.new_empty(n_params)))
    for t in (out.gradient, out.embedding, out.residual):
        if t.numel():
            dist.broadcast(t, 0)
    return out


# ---------------------------------------------------------------------------------------------------
# Self-test and throughput (tests/test_gep_parallel.py, benchmarks/gep_scaling.py)
# ---------------------------------------------------------------------------------------------------
def selftest_problem(seed: int, *, model_name: str = "small-cnn", n: int = 64, public: int = 12, size: int = 12):
    """A small GEP problem every process builds identically: model, private data, public inputs."""
    from .. import models

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = models.build(model_name, in_channels=1, image_size=size, n_classes=10)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    public_x = torch.randn(public, 1, size, size, generator=g)
    return model, x, y, public_x


def selftest_engine(model, public_x, n: int, *, mode: str, seed: int, distributed: bool, batch_size: int = 16,
                    n_bases: int = 8, rank: int = 0):
    """The engine of the self-test, with a fixed-seed noise generator (reproducible; never for real data). Each
    rank's generator has a seed of its own, so only rank 0's draws can make the processes agree with one."""
    import warnings

    from .. import privacy
    from .engine import GEP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", privacy.UnsafeSeedWarning)
        generator = privacy.noise_generator(seed=seed + 1 + 1000 * rank)
    return GEP(model, public_x, n_classes=10, mode=mode, n_bases=n_bases, noise_multiplier=1.0,
               sample_rate=batch_size / n, dataset_size=n, generator=generator, public_seed=seed,
               public_labels="redraw", distributed=distributed)


def run_steps(model, engine, x, y, steps: int, batch_size: int) -> list[torch.Tensor]:
    """``steps`` SGD steps on the engine's Poisson batches; returns the batches used."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    used = []
    while len(used) < steps:
        for idx in engine.epoch_batches(len(x), batch_size)[:steps - len(used)]:
            engine.step(x[idx], y[idx])
            optimizer.step()
            used.append(idx)
    return used
