"""GEP: gradient embedding perturbation (Yu et al., ICLR 2021), with Biased-GEP and DP-SGD as special cases.

One step on a private batch with per-sample gradients G (n x p), given public anchor gradients G_a (m x p),
following the paper's Algorithm 1 and the original code (spec gep.md, section 1.2):

A/C. **Anchor subspace** (:func:`anchor_subspace`): the p coordinates are cut into groups; in group g, a
     k_g-dimensional basis L_g (p_g x k_g, orthonormal columns) of the top right-singular subspace of the
     anchor block A_g is found by power iteration, L <- orth(A_g^T A_g L) from a Gaussian L.
E.   **Embedding and residual** (:func:`embed`): W_g = G_g L_g (n x k_g), R_g = G_g - W_g L_g^T.
F.   **Clipping**: each row of W = [W_1 .. W_G] to l2 norm ``clip_embedding`` (S_0), each row of R to
     ``clip_residual`` (S_1).
G.   **Noise**: w = (sum_i w_i + N(0, (sigma_0 S_0)^2 I_k)) / B and r = (sum_i r_i + N(0, (sigma_1 S_1)^2 I_p)) / B,
     B the *expected* batch size under Poisson sampling.
H.   **Reconstruction**: v = [w_g L_g^T]_g + r (GEP); Biased-GEP drops r; DP-SGD is GEP with no subspace
     (k = 0, so R = G).

Privacy: (w, r) are computed on the same Poisson sample, so one step is *one* Gaussian mechanism on the
rescaled concatenation, with noise multiplier (sigma_0^-2 + sigma_1^-2)^(-1/2)
(:func:`effective_noise_multiplier`), not two independent ones as the original code accounts
(spec gep.md, section 2.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import privacy

MODES = ("gep", "biased", "dpsgd")
ORTHOGONALIZE = ("qr", "gram_schmidt")
GROUPINGS = ("equal", "layers")
PUBLIC_LABELS = ("random", "redraw", "real")


# ---------------------------------------------------------------------------------------------------
# Groups and basis budget
# ---------------------------------------------------------------------------------------------------
def group_slices(n_params: int, n_groups: int) -> list[slice]:
    """Contiguous, equal-size groups of the flat parameter vector; the last takes the remainder (the code's
    ``group_params``). For ResNet20-GN (268,346 parameters) and 3 groups: 89,448, 89,448 and 89,450."""
    if not 1 <= n_groups <= n_params:
        raise ValueError(f"n_groups must be in [1, {n_params}]; got {n_groups}")
    size = n_params // n_groups
    bounds = [g * size for g in range(n_groups)] + [n_params]
    return [slice(bounds[g], bounds[g + 1]) for g in range(n_groups)]


def layer_groups(params: dict[str, torch.Tensor]) -> list[slice]:
    """Groups by top-level module (the paper's grouping): the flat ranges of the parameters whose names share
    the first component, in the order of ``params`` (``{name: tensor}``, as :func:`dpbook.persample.trainable`
    returns). For :class:`dpbook.models.ResNet20GN` these are the input convolution, the three stages and the
    output layer: 432, 13,824, 50,688, 202,752 and 650 parameters.

    Raises:
        ValueError: when a module's parameters are not contiguous in ``params``.
    """
    bounds: dict[str, list[int]] = {}
    start = 0
    for name, p in params.items():
        top = name.split(".")[0]
        if top in bounds and bounds[top][1] != start:
            raise ValueError(f"parameters of module {top!r} are not contiguous; use grouping='equal'")
        bounds.setdefault(top, [start, start])[1] = start + p.numel()
        start += p.numel()
    return [slice(a, b) for a, b in bounds.values()]


def groups_for(params: dict[str, torch.Tensor], grouping: str = "equal", n_groups: int = 3) -> list[slice]:
    """``grouping="equal"``: :func:`group_slices` into ``n_groups`` chunks (the code); ``"layers"``:
    :func:`layer_groups` (the paper; ``n_groups`` is ignored)."""
    if grouping == "equal":
        return group_slices(sum(p.numel() for p in params.values()), n_groups)
    if grouping == "layers":
        return layer_groups(params)
    raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}; got {grouping!r}")


def basis_budget(group_sizes: list[int], n_bases: int, n_anchors: int) -> list[int]:
    """Bases per group, proportional to sqrt(p_g): k_g = floor(k sqrt(p_g) / sum_j sqrt(p_j)), then capped
    at min(p_g, m): beyond the rank of the m x p_g anchor block, more columns would be rounding noise."""
    roots = [math.sqrt(p) for p in group_sizes]
    return [min(int(n_bases * r / sum(roots)), p, n_anchors) for r, p in zip(roots, group_sizes)]


# ---------------------------------------------------------------------------------------------------
# Step A/C: the anchor subspace
# ---------------------------------------------------------------------------------------------------
def gram_schmidt(columns: torch.Tensor) -> torch.Tensor:
    """Modified Gram-Schmidt on the columns, as the original code does it (a loop over the k columns).

    Kept to reproduce the original; :func:`torch.linalg.qr` (the default) spans the same space, is
    numerically stabler and runs as one LAPACK/cuSOLVER call.
    """
    q = columns.clone()
    for i in range(q.shape[1]):  # the original's sequential loop, only in orthogonalize="gram_schmidt"
        q[:, i] /= q[:, i].norm()
        if i + 1 < q.shape[1]:
            q[:, i + 1:] -= torch.outer(q[:, i], q[:, i] @ q[:, i + 1:])
    return q


def anchor_subspace(anchor_grads: torch.Tensor, groups: list[slice], budgets: list[int], *,
                    power_iters: int = 1, orthogonalize: str = "qr",
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per-group orthonormal bases L_g ``(p_g, k_g)`` of the anchor gradients' top right-singular subspaces.

    ``power_iters`` rounds of L <- orth(A_g^T (A_g L)) from a standard Gaussian L (a randomised range finder,
    one round in the paper). The anchors are public, so their randomness needs no DP generator.
    """
    if orthogonalize not in ORTHOGONALIZE:
        raise ValueError(f"orthogonalize must be one of {', '.join(ORTHOGONALIZE)}; got {orthogonalize!r}")
    if power_iters < 1:
        raise ValueError(f"power_iters must be >= 1; got {power_iters}")
    orth = (lambda m: torch.linalg.qr(m, mode="reduced").Q) if orthogonalize == "qr" else gram_schmidt
    bases = []
    for group, k in zip(groups, budgets):  # a loop over the few parameter groups
        a = anchor_grads[:, group]                                            # (m, p_g)
        basis = torch.randn(a.shape[1], k, generator=generator, dtype=a.dtype,
                            device="cpu" if generator is None else generator.device).to(a.device)
        for _ in range(power_iters):
            basis = orth(a.T @ (a @ basis))                                   # (p_g, k_g)
        bases.append(basis)
    return bases


# ---------------------------------------------------------------------------------------------------
# Steps E-H
# ---------------------------------------------------------------------------------------------------
def embed(grads: torch.Tensor, bases: list[torch.Tensor], groups: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding W ``(n, k)`` and residual R ``(n, p)`` of per-sample gradients G ``(n, p)``.

    Computed group by group, R_g = G_g - (G_g L_g) L_g^T, never forming the n x p reconstruction. With no
    bases, W has no columns and R *is* G (the same tensor, not a copy: DP-SGD needs no second n x p matrix).
    G = [W_g L_g^T]_g + R holds exactly for any L.
    """
    if not bases:
        return grads.new_zeros(len(grads), 0), grads
    residual = grads.clone()
    embedding = []
    for basis, group in zip(bases, groups):
        w = grads[:, group] @ basis                                           # (n, k_g)
        residual[:, group] -= w @ basis.T
        embedding.append(w)
    w_all = torch.cat(embedding, dim=1) if embedding else grads.new_zeros(len(grads), 0)
    return w_all, residual


def clip_scales(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The clipping factors min(1, max_norm / ||row||) of the rows, ``(n,)``."""
    return (max_norm / matrix.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)


def clipped_sum(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """sum_i clip(row_i, max_norm), ``(d,)``, as one matrix-vector product: no clipped copy of the matrix."""
    return clip_scales(matrix, max_norm) @ matrix


def clip_rows(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row to l2 norm at most ``max_norm``: row * min(1, max_norm / ||row||)."""
    return matrix * clip_scales(matrix, max_norm)[:, None]


def reconstruct(embedding: torch.Tensor, bases: list[torch.Tensor], groups: list[slice], n_params: int) -> torch.Tensor:
    """[w_g L_g^T]_g for a vector ``w`` (k,): the flat gradient (p,) the embedding stands for."""
    out = embedding.new_zeros(n_params)
    start = 0
    for basis, group in zip(bases, groups):
        out[group] = basis @ embedding[start:start + basis.shape[1]]
        start += basis.shape[1]
    return out


@dataclass
class PrivateGradient:
    """The released gradient and its parts (all already divided by the expected batch size)."""

    gradient: torch.Tensor       # (p,) what goes into p.grad
    embedding: torch.Tensor      # (k,) noisy mean embedding w
    residual: torch.Tensor       # (p,) noisy mean residual r (zeros in Biased-GEP)


def privatize(grads: torch.Tensor, bases: list[torch.Tensor], groups: list[slice], *, mode: str = "gep",
              clip_embedding: float, clip_residual: float, noise_multiplier: float,
              residual_noise_multiplier: float | None = None, expected_batch_size: float,
              generator: torch.Generator | None = None) -> PrivateGradient:
    """Steps E-H: embed, clip, add noise, reconstruct. See the module docstring.

    Args:
        grads: per-sample gradients G ``(n, p)`` of the Poisson-sampled batch.
        bases, groups: from :func:`anchor_subspace` and :func:`group_slices`; ignored when ``mode="dpsgd"``.
        mode: ``"gep"``, ``"biased"`` (embedding only) or ``"dpsgd"`` (no subspace: clip g_i to
            ``clip_residual`` and add N(0, (sigma_1 S_1)^2)).
        clip_embedding, clip_residual: S_0 and S_1.
        noise_multiplier: sigma_0; ``residual_noise_multiplier``: sigma_1 (default sigma_0, as in the paper).
        expected_batch_size: B = q N; dividing by the realised batch size instead would leak it.
        generator: DP noise generator (default: OS-seeded, :func:`dpbook.privacy.noise_generator`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if expected_batch_size <= 0:
        raise ValueError(f"expected_batch_size must be > 0; got {expected_batch_size}")
    sigma0 = noise_multiplier
    sigma1 = noise_multiplier if residual_noise_multiplier is None else residual_noise_multiplier
    if mode == "dpsgd":
        bases, groups = [], []
    n_params, dev, dt = grads.shape[1], grads.device, grads.dtype
    w, r = embed(grads, bases, groups)
    w_sum = clipped_sum(w, clip_embedding)                                   # sum_i clip(w_i, S_0), (k,)
    w_noisy = (w_sum + privacy.gaussian_noise(w_sum.shape, sigma=sigma0 * clip_embedding, generator=generator,
                                              device=dev, dtype=dt)) / expected_batch_size
    gradient = reconstruct(w_noisy, bases, groups, n_params)
    r_noisy = torch.zeros(n_params, device=dev, dtype=dt)
    if mode != "biased":
        r_sum = clipped_sum(r, clip_residual)                                # sum_i clip(r_i, S_1), (p,)
        r_noisy = (r_sum + privacy.gaussian_noise(r_sum.shape, sigma=sigma1 * clip_residual, generator=generator,
                                                  device=dev, dtype=dt)) / expected_batch_size
        gradient = gradient + r_noisy
    return PrivateGradient(gradient=gradient, embedding=w_noisy, residual=r_noisy)


def effective_noise_multiplier(mode: str, noise_multiplier: float,
                               residual_noise_multiplier: float | None = None) -> float:
    """Noise multiplier of the single Gaussian mechanism one step is: joint for GEP, sigma_0 for Biased-GEP,
    sigma_1 for DP-SGD (pass it to :mod:`dpbook.privacy`'s accountant)."""
    sigma1 = noise_multiplier if residual_noise_multiplier is None else residual_noise_multiplier
    if mode == "gep":
        return privacy.joint_noise_multiplier(noise_multiplier, sigma1)
    if mode == "biased":
        return noise_multiplier
    if mode == "dpsgd":
        return sigma1
    raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


ORIGINAL_ORDERS = tuple(np.arange(2, 32, 0.1).tolist())  # the orders of the GEP code's accountant


def original_sigma(*, target_epsilon: float, delta: float, sample_rate: float, epochs: float,
                   residual: bool = True) -> tuple[float, float]:
    """The noise multiplier the original code picks (``utils.get_sigma``), and the epsilon it claims.

    It accounts T = int(epochs / q) steps with TF-Privacy's 2018 RDP accountant on the orders 2.0, 2.1, ...,
    31.9, *doubles* the RDP when the residual is released (two independent mechanisms, which they are not),
    converts with the legacy formula, and searches sigma downwards from 10 in steps of 1, 0.1 and 0.01,
    returning the smallest grid value with epsilon < target (spec gep.md, section 2.2).
    Use it to reproduce the paper; :func:`calibrate` is the sound calibration.

    Raises:
        ValueError: when even sigma = 10 exceeds the target (the original crashes with UnboundLocalError).
    """
    steps = int(epochs / sample_rate)

    def eps(sigma: float) -> float:
        curve = privacy.rdp(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, orders=ORIGINAL_ORDERS)
        return privacy.rdp_to_epsilon(ORIGINAL_ORDERS, (2.0 if residual else 1.0) * curve, delta,
                                      conversion="legacy")[0]

    sigma = 10.0
    if eps(sigma) >= target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon} needs sigma > 10, where the original search starts")
    for step in (1.0, 0.1, 0.01):  # the original's three passes over a shrinking grid
        while sigma - step > 0 and eps(round(sigma - step, 2)) < target_epsilon:
            sigma = round(sigma - step, 2)
    return sigma, eps(sigma)


# Epochs of the paper's Table 1 for epsilon = 2, 5, 8 (spec gep.md, section 3.1); Fashion-MNIST, not in the
# paper, follows MNIST. The ``paper`` profile's ``epochs=0`` means "look it up here".
PAPER_EPOCHS = {
    "mnist": {2.0: 50, 5.0: 100, 8.0: 200},
    "fashion-mnist": {2.0: 50, 5.0: 100, 8.0: 200},
    "cifar10": {2.0: 50, 5.0: 100, 8.0: 200},
    "svhn": {2.0: 5, 5.0: 10, 8.0: 20},
}


# The paper's setups (spec gep.md, sections 3.1 and 3.3): private training-set size N, batch B, delta.
PAPER_SETUPS = {
    "mnist": dict(dataset_size=60_000, batch_size=1000, delta=1e-5),
    "cifar10": dict(dataset_size=50_000, batch_size=1000, delta=1e-5),
    "svhn": dict(dataset_size=604_388, batch_size=1000, delta=1e-6),  # train + extra; the code's README: 1e-5
}

# Table 1 of the paper (submission text), test accuracy in % at epsilon 2, 5, 8 ("best accuracy with given
# epsilon"), and the non-private accuracy. These are the paper's claims, kept here so that notebooks and the
# audit report read them from one place.
PAPER_TABLE1 = {
    "mnist": {"dpsgd": (94.7, 96.8, 97.2), "biased": (93.1, 94.5, 95.9), "gep": (96.3, 97.9, 98.4)},
    "svhn": {"dpsgd": (87.1, 91.3, 91.6), "biased": (88.5, 91.8, 92.3), "gep": (92.3, 94.7, 95.1)},
    "cifar10": {"dpsgd": (43.6, 52.2, 56.4), "biased": (50.3, 59.5, 63.0), "gep": (59.7, 70.1, 74.9)},
}
PAPER_EPSILONS = (2.0, 5.0, 8.0)
PAPER_NONPRIVATE = {"mnist": 99.1, "svhn": 95.9, "cifar10": 90.4}


def accounting_audit(*, dataset_size: int, batch_size: int, epochs: float, target_epsilon: float, delta: float,
                     pld_discretization: float = 1e-4) -> dict:
    """What the original accounting claims for a GEP run, and what the joint mechanism really spends.

    Returns a dict with ``sigma_original`` and ``epsilon_claimed`` (:func:`original_sigma`), the epsilon of
    one subsampled Gaussian with noise multiplier sigma_original / sqrt(2) per step over the same steps:
    ``epsilon_rdp_legacy`` (RDP with the original's conversion), ``epsilon_rdp`` (RDP, improved conversion)
    and ``epsilon_pld`` (PLD, tight up to ``pld_discretization``), and ``sigma_joint``, the sigma the sound
    calibration needs for the target (RDP, improved conversion), with ``steps`` and ``sample_rate``.
    """
    q = batch_size / dataset_size
    steps = int(epochs / q)  # as the original counts them
    sigma_orig, claimed = original_sigma(target_epsilon=target_epsilon, delta=delta, sample_rate=q, epochs=epochs)
    sigma_eff = sigma_orig / math.sqrt(2.0)
    eps = {name: privacy.epsilon(noise_multiplier=sigma_eff, sample_rate=q, steps=steps, delta=delta, **kw)
           for name, kw in [("epsilon_rdp_legacy", dict(conversion="legacy")), ("epsilon_rdp", {}),
                            ("epsilon_pld", dict(accountant="pld", pld_discretization=pld_discretization))]}
    return dict(sample_rate=q, steps=steps, sigma_original=sigma_orig, epsilon_claimed=claimed, **eps,
                sigma_joint=calibrate(target_epsilon=target_epsilon, delta=delta, sample_rate=q, steps=steps))


def paper_epochs(dataset: str, epsilon: float) -> int:
    """Epochs the paper trains ``dataset`` for at target ``epsilon`` (2, 5 or 8)."""
    try:
        return PAPER_EPOCHS[dataset][float(epsilon)]
    except KeyError:
        raise ValueError(f"the paper has no schedule for {dataset} at epsilon {epsilon}; known: "
                         + "; ".join(f"{d} at {sorted(e)}" for d, e in PAPER_EPOCHS.items())
                         + ". Set epochs explicitly.") from None


def calibrate(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, mode: str = "gep",
              **accountant_options) -> float:
    """The noise multiplier sigma (= sigma_0 = sigma_1) that meets (target_epsilon, delta) after ``steps``
    steps, accounting one step as *one* subsampled Gaussian mechanism with the effective noise multiplier
    (sigma / sqrt(2) for GEP). ``accountant_options`` go to :func:`dpbook.privacy.calibrate_sigma`."""
    sigma_eff = privacy.calibrate_sigma(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                                        steps=steps, **accountant_options)
    return sigma_eff * math.sqrt(2.0) if mode == "gep" else sigma_eff


def poisson_batch(n: int, sample_rate: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of a Poisson sample: each of the n examples joins independently with probability q (what
    the accountant assumes). The sample is private, so draw it from a DP generator."""
    gen = generator if generator is not None else privacy.noise_generator()
    return torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten()


SAMPLINGS = ("poisson", "shuffle")


def epoch_batches(n: int, batch_size: int, *, sampling: str = "poisson",
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The index batches of one epoch: round(n / B) Poisson samples with q = B / n (default), or the original
    code's fixed-size batches of a random permutation (``sampling="shuffle"``, n // B of them).

    Only Poisson sampling is what the accountant analyses. Fixed-size batches are a different mechanism: under
    replace-one neighbours their sensitivity doubles, and the subsampling amplification the accountant grants
    is not proven for them (spec gep.md, section 2.4). Use ``"shuffle"`` to reproduce the original, not for a
    privacy claim.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}]; got {batch_size}")
    gen = generator if generator is not None else privacy.noise_generator()
    if sampling == "poisson":
        return [poisson_batch(n, batch_size / n, generator=gen) for _ in range(max(1, round(n / batch_size)))]
    order = torch.randperm(n, generator=gen)
    return list(order[:(n // batch_size) * batch_size].view(-1, batch_size))


# ---------------------------------------------------------------------------------------------------
# A drop-in for a training loop
# ---------------------------------------------------------------------------------------------------
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
        generator: DP noise generator (default OS-seeded).
    """

    def __init__(self, model, public_x: torch.Tensor, *, n_classes: int, public_y: torch.Tensor | None = None,
                 public_labels: str = "random", mode: str = "gep", n_bases: int = 512,
                 grouping: str = "equal", n_groups: int = 3, clip_embedding: float = 5.0, clip_residual: float = 2.0,
                 noise_multiplier: float, residual_noise_multiplier: float | None = None, sample_rate: float,
                 dataset_size: int, delta: float = 1e-5, accountant: str = "rdp", power_iters: int = 1,
                 orthogonalize: str = "qr", refresh_every: int = 1, backend: str = "func",
                 generator: torch.Generator | None = None, public_seed: int = 0):
        from . import persample

        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1; got {refresh_every}")
        if public_labels not in PUBLIC_LABELS:
            raise ValueError(f"public_labels must be one of {', '.join(PUBLIC_LABELS)}; got {public_labels!r}")
        if (public_labels == "real") != (public_y is not None):
            raise ValueError("pass public_y exactly when public_labels='real'")
        persample.check_no_batchnorm(model)
        self.model, self.mode, self.backend = model, mode, backend
        self.params = persample.trainable(model)
        self.n_params = sum(p.numel() for p in self.params.values())
        device = next(model.parameters()).device
        public_gen = torch.Generator().manual_seed(public_seed)  # public data: an ordinary seed is fine
        self.public_x, self.n_classes, self.public_labels = public_x.to(device), n_classes, public_labels
        self.public_y = (public_y if public_y is not None else
                         torch.randint(0, n_classes, (len(public_x),), generator=public_gen)).to(device)
        self.groups = groups_for(self.params, grouping, n_groups)
        self.budgets = basis_budget([g.stop - g.start for g in self.groups], n_bases, len(public_x))
        self.clip_embedding, self.clip_residual = clip_embedding, clip_residual
        self.noise_multiplier, self.residual_noise_multiplier = noise_multiplier, residual_noise_multiplier
        self.sample_rate, self.expected_batch_size = sample_rate, sample_rate * dataset_size
        self.power_iters, self.orthogonalize, self.refresh_every = power_iters, orthogonalize, refresh_every
        self.generator, self.public_gen = generator, public_gen
        self.accountant = privacy.Accountant(delta=delta, accountant=accountant)
        self.bases: list[torch.Tensor] = []
        self.steps = 0

    def _flat_grads(self, x, y) -> torch.Tensor:
        from . import persample

        return persample.flatten(persample.per_sample_gradients(self.model, x, y, backend=self.backend))

    def refresh_subspace(self) -> None:
        """Recompute the anchor subspace at the current parameters (public data only: no privacy cost)."""
        if self.public_labels == "redraw":
            self.public_y = torch.randint(0, self.n_classes, (len(self.public_x),),
                                          generator=self.public_gen).to(self.public_x.device)
        anchors = self._flat_grads(self.public_x, self.public_y)
        self.bases = anchor_subspace(anchors, self.groups, self.budgets, power_iters=self.power_iters,
                                     orthogonalize=self.orthogonalize, generator=self.public_gen)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> PrivateGradient:
        """One private gradient from the Poisson batch ``(x, y)``, written into ``p.grad``; records the step."""
        from . import persample

        if self.mode != "dpsgd" and self.steps % self.refresh_every == 0:
            self.refresh_subspace()
        if len(x):
            grads = self._flat_grads(x, y)
        else:  # an empty Poisson batch still releases noise
            grads = torch.zeros(0, self.n_params, device=self.public_x.device)
        out = privatize(grads, self.bases, self.groups, mode=self.mode, clip_embedding=self.clip_embedding,
                        clip_residual=self.clip_residual, noise_multiplier=self.noise_multiplier,
                        residual_noise_multiplier=self.residual_noise_multiplier,
                        expected_batch_size=self.expected_batch_size, generator=self.generator)
        for p, g in zip(self.params.values(), persample.unflatten(out.gradient, self.params).values()):
            p.grad = g.to(p.dtype).clone()
        self.accountant.step(noise_multiplier=self.effective_noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        return out

    @property
    def effective_noise_multiplier(self) -> float:
        return effective_noise_multiplier(self.mode, self.noise_multiplier, self.residual_noise_multiplier)

    def epsilon(self) -> float:
        """Epsilon spent so far, from the accountant (joint mechanism for GEP)."""
        return self.accountant.epsilon()
