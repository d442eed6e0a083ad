"""Stochastic batching: the one fixed partition into disjoint batches, each epoch's schedule of benign and
adversarial batches, and the table of every batch's DP noise.

Batches are index tensors ``(n_batches, m)`` into the training set; the schedule gives batch *ids*
``(steps, trainers)``. The noise of a batch (:class:`BatchNoise`) is drawn once, before training, and shared by
the batch's examples: x ``(1, C, H, W)`` and h ``(1, C', H', W')`` broadcast over the batch, chi
``(hidden, K)``, at the Laplace scales of :class:`dpbook.stobatch.Budget`. In the original code
(``DataSetParallel`` in ``StoBatchCIFAR10/cifar10_read.py`` and ``StoBatchTinyImageNet/tinyimagenet_read.py``
of ``haiphanNJIT/StoBatch``) one draw serves every batch; here each disjoint batch has its own unless
``noise_reuse="global_once"``. ``notebooks/41_stobatch_algorithm.ipynb`` (section 5) draws the schedule.

Example:
    >>> partition(10, 3, seed=0).shape
    torch.Size([3, 3])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks, privacy
from .budget import Budget


@dataclass
class BatchNoise:
    """One batch's noise: x ``(1, C, H, W)``, h ``(1, C', H', W')`` (broadcast over the batch), chi ``(hidden, K)``."""

    x: torch.Tensor
    h: torch.Tensor
    chi: torch.Tensor


@dataclass
class NoiseTable:
    """Noise of every batch (``n_tables`` = number of batches) or one global draw (``n_tables`` = 1)."""

    x: torch.Tensor      # (n_tables, C, H, W)
    h: torch.Tensor      # (n_tables, C', H', W')
    chi: torch.Tensor    # (n_tables, hidden, K)

    def __getitem__(self, batch_id: int) -> BatchNoise:
        i = int(batch_id) if len(self.x) > 1 else 0
        return BatchNoise(self.x[i:i + 1], self.h[i:i + 1], self.chi[i])


def draw_noise(n_tables: int, *, budget: Budget, input_shape: tuple[int, ...], latent_shape: tuple[int, ...],
               n_classes: int, channel_shared: bool = False, generator: torch.Generator | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> NoiseTable:
    """Laplace noise at the budget's scales b_x, b_h, b_out from a DP generator (OS-seeded by default).

    ``channel_shared``: one input value per pixel position copied to every channel (the code).
    """
    c, height, width = input_shape
    kw = dict(generator=generator, device=device, dtype=dtype)
    x = privacy.laplace_noise((n_tables, 1 if channel_shared else c, height, width), scale=budget.input_scale, **kw)
    h = privacy.laplace_noise((n_tables, *latent_shape), scale=budget.latent_scale, **kw)
    chi = privacy.laplace_noise((n_tables, budget.hidden, n_classes), scale=budget.output_scale, **kw)
    return NoiseTable(x=x.expand(n_tables, c, height, width).contiguous(), h=h, chi=chi)


def zero_noise(model) -> NoiseTable:
    """A one-entry table of zeros (per-example releases carry their noise in the released examples)."""
    w = model.first.weight
    kw = dict(device=w.device, dtype=w.dtype)
    return NoiseTable(x=torch.zeros(1, *model.first.input_shape, **kw), h=torch.zeros(1, *model.first.latent_shape, **kw),
                      chi=torch.zeros(1, model.hidden, model.n_classes, **kw))


def partition(n_examples: int, batch_size: int, *, seed: int = 1024,
              device: str | torch.device | None = None) -> torch.Tensor:
    """One fixed partition into floor(N / m) disjoint batches: indices ``(n_batches, m)``; the remainder is
    dropped. The shuffle is public (independent of the data), so an ordinary seed is fine (the code's 1024)."""
    checks.check(1 <= batch_size <= n_examples, "batch_size", "partition()", f"in [1, {n_examples}]", batch_size)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed))
    n_batches = n_examples // batch_size
    return order[:n_batches * batch_size].view(n_batches, batch_size).to(device)


def epoch_schedule(n_batches: int, *, trainers: int = 1,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch *ids* for one epoch: benign ``(steps, trainers)`` and adversarial sources ``(steps, trainers)``.

    Each step draws 2 x ``trainers`` ids without replacement from the batches not used yet this epoch, so a
    batch serves at most once per epoch (exactly once when 2 x trainers divides the number of batches; the
    rest wait for the next epoch), and the benign and adversarial batches of a step differ. The original Tiny
    ImageNet code appended the *position* in the shrinking list instead of the id (``next_super_batch`` in
    ``tinyimagenet_read.py``; ``book/stobatch.md``); here ids are taken from a permutation, which cannot repeat.
    """
    checks.check(n_batches >= 2 * trainers, "n_batches", "epoch_schedule()", f"at least 2 x trainers = {2 * trainers}",
                 n_batches, "Use a smaller batch_size or fewer trainers.")
    steps = n_batches // (2 * trainers)
    ids = torch.randperm(n_batches, generator=generator)[:steps * 2 * trainers].view(steps, 2, trainers)
    return ids[:, 0], ids[:, 1]
