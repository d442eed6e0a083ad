"""Steps A-C of a GEP step: parameter groups, the basis budget, and the anchor subspace of public gradients.

The flat parameter vector is cut into groups; group g gets k_g basis vectors, and its basis L_g
``(p_g, k_g)`` (orthonormal columns) spans the top right-singular subspace of the public anchor gradients'
block A_g, found by power iteration: the paper's Algorithm 1, and in the original code ``group_params``
(``main.py``) and ``get_anchor_space``, ``get_bases`` and ``orthogonalize`` (``models/basis_matching.py``).
Notebook ``20_gep_algorithm``, sections 3 and 4, shows each step.
"""
from __future__ import annotations

import math

import torch

from .. import checks

ORTHOGONALIZE = ("qr", "gram_schmidt")
GROUPINGS = ("equal", "layers")


# ---------------------------------------------------------------------------------------------------
# Groups and basis budget
# ---------------------------------------------------------------------------------------------------
def group_slices(n_params: int, n_groups: int) -> list[slice]:
    """Contiguous, equal-size groups of the flat parameter vector; the last takes the remainder (the code's
    ``group_params``). For ResNet20-GN (268,346 parameters) and 3 groups: 89,448, 89,448 and 89,450."""
    checks.check(1 <= n_groups <= n_params, "n_groups", "group_slices()", f"in [1, {n_params}]", n_groups)
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
    checks.one_of(grouping, GROUPINGS, "grouping", "groups_for()")
    if grouping == "equal":
        return group_slices(sum(p.numel() for p in params.values()), n_groups)
    return layer_groups(params)


def basis_budget(group_sizes: list[int], n_bases: int, n_anchors: int) -> list[int]:
    """Bases per group, proportional to sqrt(p_g): k_g = floor(k sqrt(p_g) / sum_j sqrt(p_j)), then capped
    at min(p_g, m): beyond the rank of the m x p_g anchor block, more columns would be rounding noise."""
    roots = [math.sqrt(p) for p in group_sizes]
    return [min(int(n_bases * r / sum(roots)), p, n_anchors) for r, p in zip(roots, group_sizes)]


# ---------------------------------------------------------------------------------------------------
# The anchor subspace
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


def gaussian_starts(groups: list[slice], budgets: list[int], *, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The power iteration's standard Gaussian start matrices ``(p_g, k_g)``, one per group, drawn in group order
    on ``generator``'s device (default: the global generator, on ``device``), then moved to ``device``."""
    draw_on = device if generator is None else generator.device
    return [torch.randn(g.stop - g.start, k, generator=generator, dtype=dtype, device=draw_on).to(device)
            for g, k in zip(groups, budgets)]


def anchor_subspace(anchor_grads: torch.Tensor, groups: list[slice], budgets: list[int], *,
                    power_iters: int = 1, orthogonalize: str = "qr", generator: torch.Generator | None = None,
                    start: list[torch.Tensor] | None = None, products=None) -> list[torch.Tensor]:
    """Per-group orthonormal bases L_g ``(p_g, k_g)`` of the anchor gradients' top right-singular subspaces.

    ``power_iters`` rounds of L <- orth(A_g^T (A_g L)) from a standard Gaussian L (a randomised range finder,
    one round in the paper). The anchors are public, so their randomness needs no DP generator.

    Args:
        anchor_grads: the anchor gradients A ``(m, p)``.
        groups, budgets: :func:`groups_for` and :func:`basis_budget`.
        power_iters, orthogonalize: rounds, and ``"qr"`` or the original's ``"gram_schmidt"``.
        generator: draws the Gaussian start on *its* device (the engine keeps one on the model's device, so no
            p_g x k_g matrix crosses from the CPU); default: the global generator, on the anchors' device.
        start: warm start, e.g. the previous step's bases (no random draw at all; not in the paper).
        products: ``f(a, basis) -> a^T (a basis)``; default the local product. Data-parallel training sums it over
            the processes' shares of the anchors (:mod:`dpbook.gep.parallel`).
    """
    checks.one_of(orthogonalize, ORTHOGONALIZE, "orthogonalize", "anchor_subspace()")
    checks.check(power_iters >= 1, "power_iters", "anchor_subspace()", ">= 1", power_iters)
    orth = (lambda m: torch.linalg.qr(m, mode="reduced").Q) if orthogonalize == "qr" else gram_schmidt
    products = products or (lambda a, basis: a.T @ (a @ basis))
    if start is None:
        start = gaussian_starts(groups, budgets, generator=generator, device=anchor_grads.device,
                                dtype=anchor_grads.dtype)
    bases = []
    for group, basis in zip(groups, start):  # a loop over the few parameter groups
        a = anchor_grads[:, group]                                            # (m, p_g)
        for _ in range(power_iters):
            basis = orth(products(a, basis))                                  # (p_g, k_g)
        bases.append(basis)
    return bases
