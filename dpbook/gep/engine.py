"""GEP in a training loop: the :class:`GEP` engine (fills ``p.grad`` and accounts) and an epoch's batches."""
from __future__ import annotations

import functools

import torch

from .. import checks, guarantees, privacy
from ..privacy.sampling import SAMPLINGS, poisson_batch, steps_per_epoch
from . import parallel
from .accounting import effective_noise_multiplier
from .step import MODES, PrivateGradient, add_noise, clipped_sums, tf32_products
from .subspace import anchor_subspace, basis_budget, groups_for

PUBLIC_LABELS = ("random", "redraw", "real")


def epoch_batches(n: int, batch_size: int, *, sampling: str = "poisson",
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The index batches of one epoch: :func:`~dpbook.privacy.steps_per_epoch` Poisson samples with
    q = B / n (default), or the original code's fixed-size batches of a random permutation
    (``sampling="shuffle"``, n // B of them, as ``main.py``'s ``train`` draws them).

    Only Poisson sampling is what the accountant analyses. Fixed-size batches are a different mechanism: under
    replace-one neighbours their sensitivity doubles, and the subsampling amplification the accountant grants
    is not proven for them (``book/gep.md``, differences from the original). ``"shuffle"`` therefore warns
    (:class:`dpbook.guarantees.UnsoundModeWarning`): use it to reproduce the original, not for a privacy claim.
    """
    checks.one_of(sampling, SAMPLINGS, "sampling", "epoch_batches()")
    checks.check(1 <= batch_size <= n, "batch_size", "epoch_batches()", f"in [1, {n}]", batch_size)
    if sampling == "shuffle":
        guarantees.warn_unsound("sampling='shuffle'")
    gen = generator if generator is not None else privacy.noise_generator()
    if sampling == "poisson":
        return [poisson_batch(n, batch_size / n, generator=gen) for _ in range(steps_per_epoch(n, batch_size))]
    order = torch.randperm(n, generator=gen, device=gen.device).cpu()
    return list(order[:steps_per_epoch(n, batch_size, sampling="shuffle") * batch_size].view(-1, batch_size))


class GEP:
    """Fills ``p.grad`` of a model with GEP's (or Biased-GEP's, or DP-SGD's) private gradient, and accounts.

    Example::

        engine = GEP(model, public_x, n_classes=10, mode="gep", n_bases=512, noise_multiplier=2.0,
                     sample_rate=256 / 60_000, dataset_size=60_000, delta=1e-5)
        for _ in range(steps):
            idx = poisson_batch(60_000, engine.sample_rate)
            engine.step(x[idx], y[idx])    # per-sample gradients, subspace, clip, noise -> p.grad
            optimizer.step()
        engine.epsilon()

    Args:
        model: the network (no BatchNorm).
        public_x: public (auxiliary) inputs ``(m, ...)`` whose gradients span the anchor subspace.
        n_classes: number of classes, for the random public labels.
        public_y: the public labels ``(m,)``, needed when ``public_labels="real"``.
        public_labels: ``"random"`` (drawn once, as the code), ``"redraw"`` (fresh random labels at every
            subspace refresh, as the paper) or ``"real"`` (``public_y``; the paper's Fig. 4 ablation).
        mode: ``"gep"``, ``"biased"`` or ``"dpsgd"``.
        n_bases: total basis size k.
        grouping, n_groups: ``"equal"`` contiguous chunks, ``n_groups`` of them (3 in the code), or
            ``"layers"``, one group per top-level module (the paper's 5 for ResNet20); :func:`groups_for`.
        clip_embedding, clip_residual: S_0 and S_1 (5 and 2 in the code; DP-SGD clips at ``clip_residual``).
        noise_multiplier, residual_noise_multiplier: sigma_0 and sigma_1 (sigma_1 defaults to sigma_0).
        sample_rate, dataset_size: Poisson rate q and N; B = q N normalises the sums.
        delta: for :meth:`epsilon`; ``accountant``: ``"rdp"`` or ``"pld"``.
        power_iters, orthogonalize: of :func:`anchor_subspace`.
        refresh_every: recompute the subspace every this many steps (1 = every step, as in the paper).
        backend: per-sample gradient backend of :mod:`dpbook.persample`.
        generator: DP noise generator, on the model's device (default OS-seeded); it also draws the batches
            (:meth:`epoch_batches`).
        public_seed: seeds the public randomness (random public labels, the subspace's Gaussian start), drawn
            on the model's device.
        warm_start: start each power iteration from the previous bases instead of a fresh Gaussian matrix
            (not in the paper; no random draw at all).
        tf32: allow TF32 matrix products in the subspace and the projections on a GPU (the precision policy of
            :mod:`dpbook.gep.step`: never in the norms, clipping or noise).
        chunk_size: examples per vectorised per-sample chunk (:func:`dpbook.persample.flat_per_sample_gradients`).
        distributed: one process of a data-parallel run under ``torchrun`` (:mod:`dpbook.gep.parallel`): pass
            every process the same batch; each computes its share, and rank 0's release reaches them all.

    Memory: the per-sample gradients of the private batch and of the public samples are written into two
    buffers ``(n, p)`` and ``(m, p)`` kept across steps; nothing else of that size is formed.
    """

    def __init__(self, model, public_x: torch.Tensor, *, n_classes: int, public_y: torch.Tensor | None = None,
                 public_labels: str = "random", mode: str = "gep", n_bases: int = 512,
                 grouping: str = "equal", n_groups: int = 3, clip_embedding: float = 5.0, clip_residual: float = 2.0,
                 noise_multiplier: float, residual_noise_multiplier: float | None = None, sample_rate: float,
                 dataset_size: int, delta: float = 1e-5, accountant: str = "rdp", power_iters: int = 1,
                 orthogonalize: str = "qr", refresh_every: int = 1, backend: str = "func",
                 generator: torch.Generator | None = None, public_seed: int = 0, warm_start: bool = False,
                 tf32: bool = True, chunk_size: int | None = -1, distributed: bool = False):
        from .. import persample

        checks.one_of(mode, MODES, "mode", "GEP()")
        checks.sample_rate(sample_rate, "GEP()")
        checks.check(refresh_every >= 1, "refresh_every", "GEP()", ">= 1", refresh_every)
        checks.one_of(public_labels, PUBLIC_LABELS, "public_labels", "GEP()")
        checks.check((public_labels == "real") == (public_y is not None), "public_y", "GEP()",
                     "given exactly when public_labels='real'", "a tensor" if public_y is not None else None)
        persample.check_no_batchnorm(model)
        self.model, self.mode, self.backend = model, mode, backend
        self.params = persample.trainable(model)
        self.n_params = sum(p.numel() for p in self.params.values())
        device = self.device = next(model.parameters()).device
        if generator is not None and torch.device(generator.device) != device:
            raise ValueError(f"the DP generator is on {generator.device} but the model on {device}: make it "
                             f"with dpbook.privacy.noise_generator({str(device)!r}) so the noise is drawn where "
                             "it is used")
        public_gen = torch.Generator(device).manual_seed(public_seed)  # public data: an ordinary seed is fine
        self.public_x, self.n_classes, self.public_labels = public_x.to(device), n_classes, public_labels
        self.public_y = (public_y.to(device) if public_y is not None else
                         torch.randint(0, n_classes, (len(public_x),), generator=public_gen, device=device))
        self.groups = groups_for(self.params, grouping, n_groups)
        self.budgets = basis_budget([g.stop - g.start for g in self.groups], n_bases, len(public_x))
        self.clip_embedding, self.clip_residual = clip_embedding, clip_residual
        self.noise_multiplier, self.residual_noise_multiplier = noise_multiplier, residual_noise_multiplier
        self.sample_rate, self.expected_batch_size = sample_rate, sample_rate * dataset_size
        self.power_iters, self.orthogonalize, self.refresh_every = power_iters, orthogonalize, refresh_every
        self.generator, self.public_gen = generator, public_gen
        self.warm_start, self.tf32, self.chunk_size = warm_start, tf32, chunk_size
        self.rank, self.world = parallel.rank_and_world() if distributed else (0, 1)
        self.accountant = privacy.Accountant(delta=delta, accountant=accountant)
        self.bases: list[torch.Tensor] = []
        self.steps = 0
        self._buffers: dict[str, torch.Tensor] = {}

    def _flat_grads(self, x, y, buffer: str = "private") -> torch.Tensor:
        """Per-sample gradients ``(n, p)`` written into the engine's ``buffer`` (grown when a batch is larger)."""
        from .. import persample

        out = self._buffers.get(buffer)
        if out is None or len(out) < len(x):
            self._buffers.pop(buffer, None)  # free the old buffer before allocating the larger one
            rows = len(x) if buffer == "public" else max(len(x), int(1.2 * self.expected_batch_size / self.world) + 1)
            dtype = next(iter(self.params.values())).dtype
            out = self._buffers[buffer] = torch.empty(rows, self.n_params, device=self.device, dtype=dtype)
        return persample.flat_per_sample_gradients(self.model, x, y, backend=self.backend,
                                                   chunk_size=self.chunk_size, out=out)

    def refresh_subspace(self) -> None:
        """Recompute the anchor subspace at the current parameters (public data only: no privacy cost)."""
        if self.public_labels == "redraw":
            self.public_y = torch.randint(0, self.n_classes, (len(self.public_x),), generator=self.public_gen,
                                          device=self.device)
        mine = slice(self.rank, None, self.world)  # this process's share of the public samples
        anchors = self._flat_grads(self.public_x[mine], self.public_y[mine], "public")
        start = self.bases if self.warm_start and self.bases else None
        with tf32_products(self.tf32):
            if self.world == 1:
                self.bases = anchor_subspace(anchors, self.groups, self.budgets, power_iters=self.power_iters,
                                             orthogonalize=self.orthogonalize, generator=self.public_gen,
                                             start=start)
            else:
                self.bases = parallel.anchor_subspace(anchors, self.groups, self.budgets,
                                                      power_iters=self.power_iters, orthogonalize=self.orthogonalize,
                                                      generator=self.public_gen, start=start)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> PrivateGradient:
        """One private gradient from the Poisson batch ``(x, y)``, written into ``p.grad``; records the step.

        Steps E-H of :func:`dpbook.gep.privatize`; with ``distributed=True`` this process computes the clipped sums
        of its share of the batch, the sums are added over processes, and rank 0 adds the noise.
        """
        from .. import persample

        if self.mode != "dpsgd" and self.steps % self.refresh_every == 0:
            self.refresh_subspace()
        mine = slice(self.rank, None, self.world)  # this process's share of the batch (all of it alone)
        grads = self._flat_grads(x[mine], y[mine])  # (0, p) for an empty batch: it still releases noise
        bases, groups = (self.bases, self.groups) if self.mode != "dpsgd" else ([], [])
        w_sum, r_sum = clipped_sums(grads, bases, groups, mode=self.mode, clip_embedding=self.clip_embedding,
                                    clip_residual=self.clip_residual, tf32=self.tf32)
        release = functools.partial(
            add_noise, bases=bases, groups=groups, n_params=self.n_params, clip_embedding=self.clip_embedding,
            clip_residual=self.clip_residual, noise_multiplier=self.noise_multiplier,
            residual_noise_multiplier=self.residual_noise_multiplier,
            expected_batch_size=self.expected_batch_size, generator=self.generator)
        out = (release(w_sum, r_sum) if self.world == 1 else
               parallel.release_from_rank0(w_sum, r_sum, release, rank=self.rank, n_params=self.n_params))
        for p, g in zip(self.params.values(), persample.unflatten(out.gradient, self.params).values()):
            p.grad = g.to(p.dtype).clone()
        self.accountant.step(noise_multiplier=self.effective_noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        return out

    @property
    def effective_noise_multiplier(self) -> float:
        """The noise multiplier the accountant records per step (:func:`effective_noise_multiplier`)."""
        return effective_noise_multiplier(self.mode, self.noise_multiplier, self.residual_noise_multiplier)

    def epsilon(self) -> float:
        """Epsilon spent so far, from the accountant (joint mechanism for GEP)."""
        return self.accountant.epsilon()

    def epoch_batches(self, n: int, batch_size: int, *, sampling: str = "poisson") -> list[torch.Tensor]:
        """The index batches of one epoch (:func:`epoch_batches`) from the engine's generator; in a
        data-parallel run rank 0's, broadcast, so every process steps through the same batches."""
        batches = epoch_batches(n, batch_size, sampling=sampling, generator=self.generator)
        return batches if self.world == 1 else parallel.broadcast_batches(batches, rank=self.rank)
