"""Steps E-H of a GEP step: embed, clip, add noise, reconstruct (:func:`privatize`).

W_g = G_g L_g and R_g = G_g - W_g L_g^T; each row of W is clipped to ``clip_embedding`` (S_0) and each row of
R to ``clip_residual`` (S_1); each sum gets Gaussian noise and is divided by the expected batch size; the
gradient is rebuilt as [w_g L_g^T]_g + r. The original code does this in ``GEP.forward`` and
``get_approx_grad`` (``models/basis_matching.py``) and adds the noise in ``main.py``'s ``train``; notebook
``20_gep_algorithm``, sections 5-7, shows each step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks, privacy

MODES = ("gep", "biased", "dpsgd")


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
        bases, groups: from :func:`~dpbook.gep.anchor_subspace` and :func:`~dpbook.gep.group_slices`; ignored
            when ``mode="dpsgd"``.
        mode: ``"gep"``, ``"biased"`` (embedding only) or ``"dpsgd"`` (no subspace: clip g_i to
            ``clip_residual`` and add N(0, (sigma_1 S_1)^2)).
        clip_embedding, clip_residual: S_0 and S_1.
        noise_multiplier: sigma_0; ``residual_noise_multiplier``: sigma_1 (default sigma_0, as in the paper).
            The noise standard deviations are sigma_0 S_0 and sigma_1 S_1.
        expected_batch_size: B = q N; dividing by the realised batch size instead would leak it.
        generator: DP noise generator (default: OS-seeded, :func:`dpbook.privacy.noise_generator`).
    """
    checks.one_of(mode, MODES, "mode", "privatize()")
    checks.positive(expected_batch_size, "expected_batch_size", "privatize()")
    sigma0 = noise_multiplier
    sigma1 = noise_multiplier if residual_noise_multiplier is None else residual_noise_multiplier
    if mode == "dpsgd":
        bases, groups = [], []
    n_params, dev, dt = grads.shape[1], grads.device, grads.dtype
    w, r = embed(grads, bases, groups)
    w_sum = clipped_sum(w, clip_embedding)                                   # sum_i clip(w_i, S_0), (k,)
    w_noisy = (w_sum + privacy.gaussian_noise(w_sum.shape, noise_std=sigma0 * clip_embedding, generator=generator,
                                              device=dev, dtype=dt)) / expected_batch_size
    gradient = reconstruct(w_noisy, bases, groups, n_params)
    r_noisy = torch.zeros(n_params, device=dev, dtype=dt)
    if mode != "biased":
        r_sum = clipped_sum(r, clip_residual)                                # sum_i clip(r_i, S_1), (p,)
        r_noisy = (r_sum + privacy.gaussian_noise(r_sum.shape, noise_std=sigma1 * clip_residual,
                                                  generator=generator, device=dev, dtype=dt)) / expected_batch_size
        gradient = gradient + r_noisy
    return PrivateGradient(gradient=gradient, embedding=w_noisy, residual=r_noisy)
