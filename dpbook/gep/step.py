"""Steps E-H of a GEP step: embed, clip, add noise, reconstruct (:func:`privatize`).

W_g = G_g L_g and R_g = G_g - W_g L_g^T; each row of W is clipped to ``clip_embedding`` (S_0) and each row of
R to ``clip_residual`` (S_1); each sum gets Gaussian noise and is divided by the expected batch size; the
gradient is rebuilt as [w_g L_g^T]_g + r. The original code does this in ``GEP.forward`` and
``get_approx_grad`` (``models/basis_matching.py``) and adds the noise in ``main.py``'s ``train``; notebook
``20_gep_algorithm``, sections 5-7, shows each step.

:func:`privatize` never forms the n x p residual R: it needs only R's clipped sum, which it accumulates
over chunks of rows (:func:`clipped_residual_sum`), so the per-sample gradients G are the only n x p matrix.

Precision policy (what may be rounded, and why privacy does not depend on it): everything *before* clipping
(per-sample gradients, the anchor products of :func:`~dpbook.gep.anchor_subspace`, the projections W = G L and
R = G - W L^T) may use TF32 matrix products on a GPU (:func:`tf32_products`), because each row is clipped by the
norm of the row that is then summed: rounding there changes what is released, not how much one example can
move it (up to the usual floating-point caveat: kernels and chunks depend on the batch size, so one example
more or less can change the rounding of the others' rows, at float32 accumulation level). The norms, the clipping factors and the clipped sums are full float32 (no TF32), so each example adds
at most S (up to float32 rounding) to each sum; the noise is float32, drawn on the gradients' device.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .. import checks, privacy

MODES = ("gep", "biased", "dpsgd")


@contextlib.contextmanager
def tf32_products(allowed: bool):
    """Whether float32 matrix products on CUDA may use TF32 inside the block (the setting is restored after); no
    effect on a CPU, so CPU results are those of full float32. The precision policy above says where."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if allowed else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def embedding_of(grads: torch.Tensor, bases: list[torch.Tensor], groups: list[slice]) -> torch.Tensor:
    """The embedding W = [G_g L_g]_g ``(n, k)`` of per-sample gradients G ``(n, p)`` (step E)."""
    if not bases:
        return grads.new_zeros(len(grads), 0)
    return torch.cat([grads[:, group] @ basis for basis, group in zip(bases, groups)], dim=1)


def residual_rows(grads: torch.Tensor, embedding: torch.Tensor, bases: list[torch.Tensor],
                  groups: list[slice]) -> torch.Tensor:
    """R_g = G_g - W_g L_g^T for the rows given ``(n, p)`` (a copy of G with the projections subtracted)."""
    residual, start = grads.clone(), 0
    for basis, group in zip(bases, groups):
        residual[:, group] -= embedding[:, start:start + basis.shape[1]] @ basis.T
        start += basis.shape[1]
    return residual


def embed(grads: torch.Tensor, bases: list[torch.Tensor], groups: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding W ``(n, k)`` and residual R ``(n, p)`` of per-sample gradients G ``(n, p)``.

    Computed group by group, R_g = G_g - (G_g L_g) L_g^T. With no bases, W has no columns and R *is* G (the
    same tensor, not a copy). G = [W_g L_g^T]_g + R holds exactly for any L. For teaching and checks:
    :func:`privatize` needs only R's clipped sum, and never forms R (:func:`clipped_residual_sum`).
    """
    w = embedding_of(grads, bases, groups)
    return w, (residual_rows(grads, w, bases, groups) if bases else grads)


def clip_scales(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The clipping factors min(1, max_norm / ||row||) of the rows, ``(n,)``."""
    return scales_for(matrix.norm(dim=1), max_norm)


def scales_for(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, max_norm / norm) for each row norm ``(n,)``."""
    return (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


def clipped_sum(matrix: torch.Tensor, max_norm: float) -> torch.Tensor:
    """sum_i clip(row_i, max_norm), ``(d,)``, as one matrix-vector product: no clipped copy of the matrix.
    Full float32 even where TF32 is allowed (the precision policy above).

    A row with a non-finite norm (a diverged example) counts as zero: left in, its NaN or infinity would spread
    to the whole sum, and whether the release is finite would reveal it (unbounded sensitivity).
    """
    norms = matrix.norm(dim=1)
    finite = torch.isfinite(norms)
    if not bool(finite.all()):  # rare: only then is the matrix copied
        matrix, norms = torch.where(finite[:, None], matrix, 0.0), torch.where(finite, norms, 0.0)
    with tf32_products(False):
        return scales_for(norms, max_norm) @ matrix


def clipped_residual_sum(grads: torch.Tensor, embedding: torch.Tensor, bases: list[torch.Tensor],
                         groups: list[slice], max_norm: float, *, rows: int | None = None) -> torch.Tensor:
    """sum_i clip(r_i, max_norm) ``(p,)`` for r_i = g_i - [L_g w_ig]_g, ``rows`` examples at a time.

    Each chunk's residual rows are formed, clipped by their own norms and summed before the next chunk, so the
    memory beyond G is one chunk (default: rows x p of at most 64 MB on a CPU, 512 MB on a GPU). With no bases
    the residual is G itself and nothing is copied (DP-SGD).
    """
    if not bases:
        return clipped_sum(grads, max_norm)
    budget = 2**29 if grads.is_cuda else 2**26  # bytes of one chunk of residual rows
    rows = rows or max(1, budget // (grads.element_size() * max(1, grads.shape[1])))
    total = grads.new_zeros(grads.shape[1])
    for start in range(0, len(grads), rows):  # a loop over chunks of rows, each one vectorised
        chunk = slice(start, start + rows)
        total += clipped_sum(residual_rows(grads[chunk], embedding[chunk], bases, groups), max_norm)
    return total


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
        bases, groups: from :func:`~dpbook.gep.anchor_subspace` and :func:`~dpbook.gep.group_slices`; ignored
            when ``mode="dpsgd"``.
        mode: ``"gep"``, ``"biased"`` (embedding only) or ``"dpsgd"`` (no subspace: clip g_i to
            ``clip_residual`` and add N(0, (sigma_1 S_1)^2)).
        clip_embedding, clip_residual: S_0 and S_1.
        noise_multiplier: sigma_0; ``residual_noise_multiplier``: sigma_1 (default sigma_0, as in the paper).
            The noise standard deviations are sigma_0 S_0 and sigma_1 S_1.
        expected_batch_size: B = q N; dividing by the realised batch size instead would leak it.
        generator: DP noise generator (default: OS-seeded, :func:`dpbook.privacy.noise_generator`).

    On a GPU the projections may use TF32 (:func:`clipped_sums`, the precision policy above); the norms,
    clipping and noise never do.
    """
    checks.one_of(mode, MODES, "mode", "privatize()")
    checks.positive(expected_batch_size, "expected_batch_size", "privatize()")
    if mode == "dpsgd":
        bases, groups = [], []
    w_sum, r_sum = clipped_sums(grads, bases, groups, mode=mode, clip_embedding=clip_embedding,
                                clip_residual=clip_residual)
    return add_noise(w_sum, r_sum, bases, groups, n_params=grads.shape[1], clip_embedding=clip_embedding,
                     clip_residual=clip_residual, noise_multiplier=noise_multiplier,
                     residual_noise_multiplier=residual_noise_multiplier,
                     expected_batch_size=expected_batch_size, generator=generator)


def clipped_sums(grads: torch.Tensor, bases: list[torch.Tensor], groups: list[slice], *, mode: str,
                 clip_embedding: float, clip_residual: float,
                 tf32: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Steps E-F: sum_i clip(w_i, S_0) ``(k,)`` and sum_i clip(r_i, S_1) ``(p,)`` (None in Biased-GEP).

    These sums are all a step needs from the private batch: data-parallel training adds them across processes
    (:mod:`dpbook.gep.parallel`) before :func:`add_noise`. ``tf32``: allow TF32 in the projections on a GPU.
    """
    with tf32_products(tf32):
        w = embedding_of(grads, bases, groups)                                # (n, k)
        w_sum = clipped_sum(w, clip_embedding)                                # sum_i clip(w_i, S_0), (k,)
        r_sum = None if mode == "biased" else clipped_residual_sum(grads, w, bases, groups, clip_residual)
    return w_sum, r_sum


def add_noise(w_sum: torch.Tensor, r_sum: torch.Tensor | None, bases: list[torch.Tensor], groups: list[slice], *,
              n_params: int, clip_embedding: float, clip_residual: float, noise_multiplier: float,
              residual_noise_multiplier: float | None = None, expected_batch_size: float,
              generator: torch.Generator | None = None) -> PrivateGradient:
    """Steps G-H: Gaussian noise on each clipped sum, divided by B, and the gradient rebuilt from them."""
    sigma0 = noise_multiplier
    sigma1 = noise_multiplier if residual_noise_multiplier is None else residual_noise_multiplier
    dev, dt = w_sum.device, w_sum.dtype
    w_noisy = (w_sum + privacy.gaussian_noise(w_sum.shape, noise_std=sigma0 * clip_embedding, generator=generator,
                                              device=dev, dtype=dt)) / expected_batch_size
    gradient = reconstruct(w_noisy, bases, groups, n_params)
    r_noisy = torch.zeros(n_params, device=dev, dtype=dt)
    if r_sum is not None:
        r_noisy = (r_sum + privacy.gaussian_noise(r_sum.shape, noise_std=sigma1 * clip_residual,
                                                  generator=generator, device=dev, dtype=dt)) / expected_batch_size
        gradient = gradient + r_noisy
    return PrivateGradient(gradient=gradient, embedding=w_noisy, residual=r_noisy)
