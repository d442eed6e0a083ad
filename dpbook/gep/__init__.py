"""GEP: gradient embedding perturbation (Yu et al., ICLR 2021), with Biased-GEP and DP-SGD as special cases.

One step on a private batch with per-sample gradients G (n x p), given public anchor gradients G_a (m x p),
following the paper's Algorithm 1 and the original code (``models/basis_matching.py`` and ``main.py`` of
github.com/dayu11/Gradient-Embedding-Perturbation):

A/C. **Anchor subspace** (:func:`anchor_subspace`): the p coordinates are cut into groups; in group g, a
     k_g-dimensional basis L_g (p_g x k_g, orthonormal columns) of the top right-singular subspace of the
     anchor block A_g is found by power iteration, L <- orth(A_g^T A_g L) from a Gaussian L.
E.   **Embedding and residual** (:func:`embed`): W_g = G_g L_g (n x k_g), R_g = G_g - W_g L_g^T (a training
     step needs only R's clipped sum, :func:`clipped_residual_sum`, and never forms R).
F.   **Clipping**: each row of W = [W_1 .. W_G] to l2 norm ``clip_embedding`` (S_0), each row of R to
     ``clip_residual`` (S_1).
G.   **Noise**: w = (sum_i w_i + N(0, (sigma_0 S_0)^2 I_k)) / B and r = (sum_i r_i + N(0, (sigma_1 S_1)^2 I_p)) / B,
     B the *expected* batch size under Poisson sampling.
H.   **Reconstruction**: v = [w_g L_g^T]_g + r (GEP); Biased-GEP drops r; DP-SGD is GEP with no subspace
     (k = 0, so R = G).

Privacy: (w, r) are computed on the same Poisson sample, so one step is *one* Gaussian mechanism on the
rescaled concatenation, with noise multiplier (sigma_0^-2 + sigma_1^-2)^(-1/2)
(:func:`effective_noise_multiplier`), not two independent ones as the original code accounts
(``book/gep.md``; notebook ``20_gep_algorithm``, section 7; notebook ``21_gep_experiments``, section 2).

=============================  =========================================================================
module                         what it holds
=============================  =========================================================================
:mod:`~dpbook.gep.subspace`    groups, basis budget, Gram-Schmidt, the anchor subspace (steps A-C)
:mod:`~dpbook.gep.step`        embed, clip, add noise, reconstruct: :func:`privatize` (steps E-H)
:mod:`~dpbook.gep.accounting`  the joint accounting (:func:`calibrate`) and the original code's
                               (:func:`original_sigma`, :func:`accounting_audit`)
:mod:`~dpbook.gep.engine`      the :class:`GEP` engine for a training loop, :func:`epoch_batches`
:mod:`~dpbook.gep.parallel`    the engine on several processes (``torchrun``): shares, sums, rank 0's noise
:mod:`~dpbook.gep.paper`       the paper's schedules, setups and Table 1
=============================  =========================================================================

Everything is importable from ``dpbook.gep`` itself; :func:`poisson_batch` lives in :mod:`dpbook.privacy`.

Example:
    >>> group_slices(10, 3)
    [slice(0, 3, None), slice(3, 6, None), slice(6, 10, None)]
    >>> basis_budget([100, 400], n_bases=30, n_anchors=50)   # proportional to sqrt(p_g)
    [10, 20]
"""
from __future__ import annotations

from ..privacy.sampling import SAMPLINGS, poisson_batch
from .accounting import (ORIGINAL_ORDERS, accounting_audit, calibrate, effective_noise_multiplier, original_sigma,
                         original_steps)
from .engine import GEP, PUBLIC_LABELS, epoch_batches
from .paper import PAPER_EPOCHS, PAPER_EPSILONS, PAPER_NONPRIVATE, PAPER_SETUPS, PAPER_TABLE1, paper_epochs
from . import parallel
from .step import (MODES, PrivateGradient, add_noise, clip_rows, clip_scales, clipped_residual_sum, clipped_sum,
                   clipped_sums, embed, embedding_of, privatize, reconstruct, residual_rows, tf32_products)
from .subspace import (GROUPINGS, ORTHOGONALIZE, anchor_subspace, basis_budget, gram_schmidt, group_slices,
                       groups_for, layer_groups)

__all__ = [
    # subspace
    "ORTHOGONALIZE", "GROUPINGS", "group_slices", "layer_groups", "groups_for", "basis_budget", "gram_schmidt",
    "anchor_subspace",
    # step
    "MODES", "embedding_of", "residual_rows", "embed", "clip_scales", "clipped_sum", "clipped_residual_sum",
    "clip_rows", "clipped_sums", "add_noise", "reconstruct", "PrivateGradient", "privatize", "tf32_products",
    # accounting
    "ORIGINAL_ORDERS", "effective_noise_multiplier", "calibrate", "original_steps", "original_sigma",
    "accounting_audit",
    # engine
    "PUBLIC_LABELS", "SAMPLINGS", "epoch_batches", "poisson_batch", "GEP", "parallel",
    # paper
    "PAPER_EPOCHS", "PAPER_SETUPS", "PAPER_TABLE1", "PAPER_EPSILONS", "PAPER_NONPRIVATE", "paper_epochs",
]
