"""The sound StoBatch release: every training example's input and label released once, each with its own noise.

What is released, to whom, under which relation. Neighbouring datasets differ in one example (x_i, y_i)
*replaced* (the relation StoBatch's fixed partition of m-example batches assumes). For each training example,
once, before training:

1. **Input** (:func:`release_inputs`): a public coder (:class:`InputCoder`, built from public data only:
   :func:`public_coder`) centres the image on the public mean, projects it on k public orthonormal directions
   (``"pixels"``: all of them; ``"pool"``: 2x2 average pooling; ``"pca"``: the public data's top k principal
   directions) and clips the result to norm C (l2 for Gaussian noise, l1 for Laplace noise):
   z_i = clip_C(P (x_i - c)). Then z_bar_i = z_i + n_i with n_i drawn *independently for every example*:
   N(0, s^2 I_k) (l2 sensitivity 2C), or Laplace(s) per coordinate (l1 sensitivity 2C), s calibrated by
   :mod:`.accounting` (:func:`release_for`). Replacing x_i moves z_i by at most 2C and no other example's z_j: the table
   (z_bar_1, ..., z_bar_N) is one Gaussian (or Laplace) mechanism of noise multiplier s / (2C).
2. **Label** (:func:`randomized_response`): y~_i = y_i with probability e^eps_y / (e^eps_y + K - 1), else
   one of the K - 1 other classes uniformly: eps_y-DP per example, hence for the table.

Everything StoBatch does afterwards (the images x_bar_i = c + P^T (w * z_bar_i) that the network sees, w the
public Wiener filter of the noise level (:meth:`InputCoder.denoise_for`); the auto-encoder theta_1 trained on
them, adversarial examples crafted from them,
the classifier trained on them and on y~, inference) reads only (z_bar, y~) and public data: post-processing.
:mod:`.accounting` composes the parts (RDP, replace-one): the whole model is (eps, delta)-DP with the
accountant's eps (:meth:`Release.privacy`); no gamma term and no functional mechanism are needed.
``notebooks/41_stobatch_algorithm.ipynb`` sketches the proof.

Shapes: images ``(n, C, H, W)`` in [-1, 1]; codes ``(n, k)``; labels ``(n,)`` class indices.

Example:
    >>> import torch
    >>> coder = public_coder(torch.rand(50, 1, 4, 4) * 2 - 1, basis="pca", dims=3, mechanism="gaussian")
    >>> coder.encode(torch.zeros(7, 1, 4, 4)).shape, coder.basis.shape
    (torch.Size([7, 3]), torch.Size([3, 16]))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import checks, privacy
from . import accounting
from .accounting import Parts

INPUT_MECHANISMS = ("gaussian", "laplace")
INPUT_BASES = ("pca", "pool", "pixels")


@dataclass
class InputCoder:
    """The public map from an image to the released code and back: centre ``(d,)``, orthonormal rows
    ``basis`` ``(k, d)``, clip norm C (l2 if ``norm`` = 2, l1 if 1), the image shape, and the per-coordinate
    ``shrink`` ``(k,)`` that :meth:`decode` applies (1 by default; :meth:`denoise_for` sets the public Wiener
    filter of a noise level)."""

    centre: torch.Tensor
    basis: torch.Tensor
    clip: float
    norm: int
    shape: tuple[int, ...]
    variance: torch.Tensor | None = None   # (k,) variance of the public codes
    shrink: torch.Tensor | None = None     # (k,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = clip_C(P (x - c)): ``(n, C, H, W)`` -> ``(n, k)``; each row has norm <= C."""
        z = (x.flatten(1) - self.centre) @ self.basis.T
        size = z.norm(p=self.norm, dim=1, keepdim=True)
        return z * (self.clip / size.clamp(min=1e-12)).clamp(max=1.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = c + P^T (shrink * z): ``(n, k)`` -> ``(n, C, H, W)`` (post-processing)."""
        if self.shrink is not None:
            z = z * self.shrink
        return (self.centre + z @ self.basis).view(len(z), *self.shape)

    def denoise_for(self, noise_variance: float) -> "InputCoder":
        """Set ``shrink`` to the public Wiener filter v_j / (v_j + noise_variance), v_j the public codes'
        variance: the linear estimate of a code from its noisy release, with public statistics only."""
        self.shrink = self.variance / (self.variance + noise_variance)
        return self

    def to(self, device) -> "InputCoder":
        move = (lambda t: None if t is None else t.to(device))
        return InputCoder(self.centre.to(device), self.basis.to(device), self.clip, self.norm, self.shape,
                          move(self.variance), move(self.shrink))


def pool_basis(shape: tuple[int, ...]) -> torch.Tensor:
    """2x2 average pooling as orthonormal rows ``(C H/2 W/2, C H W)``: each row holds 1/2 on one 2x2 block, so
    P^T P is the projection on images constant on each block."""
    c, h, w = shape
    checks.check(h % 2 == 0 and w % 2 == 0, "shape", "pool_basis()", "even height and width", shape)
    eye = torch.eye(c * h * w).view(-1, c, h, w)
    return (F.avg_pool2d(eye, 2) * 2).flatten(1).T.contiguous()


def public_coder(x_public: torch.Tensor, *, basis: str = "pca", dims: int = 64, mechanism: str = "gaussian",
                 clip: float = 0.0) -> InputCoder:
    """An :class:`InputCoder` from public images ``(n, C, H, W)`` only: their mean, the ``basis`` (``"pca"``:
    their top ``dims`` principal directions; ``"pool"``; ``"pixels"``), and C = ``clip`` or, if 0, the median
    norm of their codes (l2 for ``"gaussian"``, l1 for ``"laplace"``)."""
    where = "public_coder()"
    checks.one_of(basis, INPUT_BASES, "basis", where)
    checks.one_of(mechanism, INPUT_MECHANISMS, "mechanism", where)
    checks.check(x_public.dim() == 4 and len(x_public) >= 2, "x_public", where, "public images (n >= 2, C, H, W)",
                 tuple(x_public.shape), "Set public > 1 in the settings (public examples held out of training).")
    flat = x_public.flatten(1).double()
    centre = flat.mean(0)
    if basis == "pca":
        checks.check(1 <= dims <= min(flat.shape), "dims", where, f"in [1, {min(flat.shape)}]", dims)
        rows = torch.linalg.svd(flat - centre, full_matrices=False).Vh[:dims]
    elif basis == "pool":
        rows = pool_basis(tuple(x_public.shape[1:])).double()
    else:
        rows = torch.eye(flat.shape[1], dtype=torch.float64)
    norm = 2 if mechanism == "gaussian" else 1
    coder = InputCoder(centre.float(), rows.float().contiguous(), math.inf, norm, tuple(x_public.shape[1:]))
    if not clip:
        clip = float(coder.encode(x_public).norm(p=norm, dim=1).median())
    checks.positive(clip, "clip", where)
    coder.clip = float(clip)
    coder.variance = coder.encode(x_public).var(0)
    return coder.to(x_public.device)


def code_noise(n: int, k: int, *, mechanism: str, scale: float, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
    """Noise ``(n, k)``, independent for every example and coordinate (Gaussian std or Laplace scale ``scale``)."""
    if mechanism == "gaussian":
        return privacy.gaussian_noise((n, k), noise_std=scale, generator=generator, device=device)
    return privacy.laplace_noise((n, k), scale=scale, generator=generator, device=device)


def release_inputs(x: torch.Tensor, coder: InputCoder, *, mechanism: str, scale: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The released images x_bar_i = decode(encode(x_i) + n_i), one independent draw n_i per example:
    ``(n, C, H, W)`` -> ``(n, C, H, W)``."""
    z = coder.encode(x)
    return coder.decode(z + code_noise(*z.shape, mechanism=mechanism, scale=scale, generator=generator,
                                       device=x.device))


def keep_probability(epsilon: float, n_classes: int) -> float:
    """P(y~ = y) of K-ary randomized response: e^eps / (e^eps + K - 1) (each other class: 1 / (e^eps + K - 1))."""
    return math.exp(epsilon) / (math.exp(epsilon) + n_classes - 1)


def randomized_response(y: torch.Tensor, n_classes: int, *, epsilon: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """K-ary randomized response, one independent coin per example: ``(n,)`` -> ``(n,)``, eps-DP per label."""
    checks.positive(epsilon, "epsilon", "randomized_response()")
    dev = y.device
    gen = generator if generator is not None else privacy.noise_generator(dev)
    u = torch.rand(len(y), generator=gen, device=dev)
    other = torch.randint(n_classes - 1, (len(y),), generator=gen, device=dev)
    other = other + (other >= y).long()  # uniform over the K - 1 classes other than y
    return torch.where(u < keep_probability(epsilon, n_classes), y, other)


@dataclass
class Release:
    """The released training set: images ``x`` ``(N, C, H, W)``, labels ``y`` ``(N,)`` (None when the labels
    are not released but protected by DP-SGD), the public coder, the input noise, and the
    :class:`dpbook.stobatch.accounting.Parts` they spend."""

    x: torch.Tensor | None
    y: torch.Tensor | None
    coder: InputCoder
    mechanism: str
    input_scale: float
    parts: Parts
    delta: float

    def privacy(self, parts: Parts | None = None) -> dict:
        """The accountant's (eps, delta) for ``parts`` (default: this release's), replace-one, with the parts."""
        return {**accounting.report(parts or self.parts, delta=self.delta), "input_scale": self.input_scale,
                "input_clip": self.coder.clip, "input_dims": len(self.coder.basis)}


def release_plan(options, x_public: torch.Tensor, *, n_classes: int) -> Release:
    """Everything public about the release a per-example StoBatch run trains on (``options``:
    :class:`dpbook.stobatch.StoBatchOptions`), without drawing it: the coder from ``x_public``
    (:func:`public_coder`) and the noise. With randomized-response labels at eps2 the input noise is calibrated so
    that inputs and labels together spend eps_AE + eps2; with DP-SGD labels the inputs alone spend eps_AE
    (:mod:`.accounting`; DP-SGD is calibrated to the rest by :mod:`.above`). Its ``x`` and ``y`` are None."""
    coder = public_coder(x_public, basis=options.input_basis, dims=options.input_dims,
                         mechanism=options.input_mechanism, clip=options.input_clip)
    rr = options.labels == "randomized_response"
    parts = Parts(input_mechanism=options.input_mechanism, n_classes=n_classes,
                  label_epsilon=options.epsilon2 if rr else None)
    target = options.epsilon_autoencoder + (options.epsilon2 if rr else 0.0)
    parts = accounting.calibrate(parts, "input_multiplier", target_epsilon=target, delta=options.delta)
    scale = parts.input_multiplier * 2 * coder.clip
    coder.denoise_for(scale ** 2 if options.input_mechanism == "gaussian" else 2 * scale ** 2)
    return Release(None, None, coder, options.input_mechanism, scale, parts, options.delta)


def release_for(options, x: torch.Tensor, y: torch.Tensor, x_public: torch.Tensor, *, n_classes: int,
                generator: torch.Generator | None = None) -> Release:
    """The release a per-example StoBatch run trains on: :func:`release_plan`, then every example's input
    (:func:`release_inputs`) and, with randomized-response labels, its label drawn once. ``generator``: the DP
    noise generator (OS-seeded on x's device by default; never a public seed)."""
    where = "release_for()"
    checks.check(len(x) == len(y), "x, y", where, "the same number of examples", (len(x), len(y)))
    release = release_plan(options, x_public, n_classes=n_classes)
    coder = release.coder
    checks.check(tuple(x.shape[1:]) == coder.shape, "x", where, f"images of shape {coder.shape}", tuple(x.shape[1:]))
    gen = generator if generator is not None else privacy.noise_generator(x.device)
    release.x = release_inputs(x, coder, mechanism=release.mechanism, scale=release.input_scale, generator=gen)
    if options.labels == "randomized_response":
        release.y = randomized_response(y, n_classes, epsilon=options.epsilon2, generator=gen)
    return release
