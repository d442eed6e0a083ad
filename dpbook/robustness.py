"""Certified robustness of noisy networks: Monte-Carlo prediction, confidence bounds, certified radii.

A network that adds noise inside its forward pass is a randomised function A(x). PixelDP (Lecuyer et al.
2019) observes that if A is (epsilon, delta)-DP with respect to changes of its input of size L, then the
expected class scores move by a factor of at most e^epsilon (plus delta), so a large enough gap between the
top two classes cannot be closed by any attack of size L. The recipe:

1. :func:`monte_carlo_counts`: draw the noise ``n`` times at its full scale, one forward each, and count
   the argmax votes per class;
2. :func:`clopper_pearson`: bound the top class's probability from below and the runner-up's from above,
   each at failure probability eta / K (Bonferroni over K classes);
3. a radius from the bounds: :func:`pixeldp_laplace_radius`, :func:`pixeldp_gaussian_radius`, or
   randomized smoothing's :func:`smoothing_radius` (Cohen et al. 2019) for Gaussian input noise;
4. for noise at both the input and the first hidden layer (StoBatch), :func:`composed_radius` and
   :func:`is_certified` implement the four modes discussed in the book:

   ``safe_max`` (default, sound)
       r = L * max(b_x / D_x, b_h / D_h): each noise source alone gives a valid certificate (the input noise
       by post-processing, the latent noise for every fixed input-noise draw), so the better one holds.
   ``paper_sum``
       r = L * (b_x / D_x + b_h / D_h), the paper's "kappa + phi". Not a valid PixelDP statement: the sum of
       two Laplace(b) noises has a worst-case privacy loss s / b for a shift s, not s / (2b).
   ``original_jun2020`` and ``original_sep2020``
       the two formulas of the original code, which depend on mu_a (:func:`is_certified`; the book's chapter
       ``notebooks/40_certified_robustness`` compares all four).

   Here L = ln(p_lb / p_ub) / 2, b_x and b_h are the Laplace scales, D_x the l1 sensitivity of the input to a
   unit l_inf attack (the number of input coordinates) and D_h an upper bound of ||theta_1||_{inf->1}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import special, stats
from torch import nn

from . import checks, privacy

MODES = ("safe_max", "paper_sum", "original_jun2020", "original_sep2020")
NOISES = ("laplace", "gaussian")


# ---------------------------------------------------------------------------------------------------
# A network with noise at its input and after its first layer
# ---------------------------------------------------------------------------------------------------
class NoisyNetwork(nn.Module):
    """``rest(first(x + n_x) + n_h)``: noise at the input (``input_scale``) and after the first layer
    (``latent_scale``), drawn fresh for every example of every forward pass from a DP noise generator.

    Args:
        first: the first layer (theta_1), e.g. a convolution.
        rest: the rest of the network, returning logits.
        noise: ``"laplace"`` (scale b: density exp(-|z|/b)/2b) or ``"gaussian"`` (standard deviation).
        input_scale, latent_scale: noise scales; 0 disables a source.

    ``noisy = False`` turns all noise off (the noiseless surrogate that the original attacks).
    """

    def __init__(self, first: nn.Module, rest: nn.Module, *, noise: str = "laplace", input_scale: float = 0.0,
                 latent_scale: float = 0.0, generator: torch.Generator | None = None):
        super().__init__()
        checks.one_of(noise, NOISES, "noise", "NoisyNetwork()")
        checks.check(input_scale >= 0, "input_scale", "NoisyNetwork()", ">= 0 (0: no input noise)", input_scale)
        checks.check(latent_scale >= 0, "latent_scale", "NoisyNetwork()", ">= 0 (0: no latent noise)", latent_scale)
        self.first, self.rest = first, rest
        self.noise, self.input_scale, self.latent_scale = noise, float(input_scale), float(latent_scale)
        self.generator = generator
        self.noisy = True

    @classmethod
    def from_sequential(cls, net: nn.Sequential, **options) -> "NoisyNetwork":
        """Split a sequential network after its first layer: ``first = net[0]``, ``rest = net[1:]``."""
        layers = list(net)
        return cls(layers[0], nn.Sequential(*layers[1:]), **options)

    def _draw(self, like: torch.Tensor, scale: float) -> torch.Tensor:
        if not self.noisy or scale == 0:
            return torch.zeros_like(like)
        gen = self.generator
        if gen is None or gen.device != like.device:
            gen = self.generator = privacy.noise_generator(like.device)
        draw = privacy.laplace_noise if self.noise == "laplace" else privacy.gaussian_noise
        key = "scale" if self.noise == "laplace" else "noise_std"
        return draw(like.shape, generator=gen, device=like.device, dtype=like.dtype, **{key: scale})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x + self._draw(x, self.input_scale))
        return self.rest(h + self._draw(h, self.latent_scale))

    def latent_sensitivity(self, input_shape: tuple[int, ...]) -> float:
        """Upper bound of ||theta_1||_{inf -> 1}: the l1 change of the first layer's output per unit l_inf
        change of its input, sum over output units of the l1 norm of their weights (for a convolution
        H' W' sum |W|, an over-estimate near the padded border). Computed from the current weights."""
        w = self.first.weight.detach()
        if isinstance(self.first, nn.Conv2d):
            with torch.no_grad():
                h, w_out = self.first(torch.zeros(1, *input_shape, device=w.device)).shape[-2:]
            return float(w.abs().sum() * h * w_out)
        if isinstance(self.first, nn.Linear):
            return float(w.abs().sum())
        raise TypeError(f"latent_sensitivity() knows Conv2d and Linear first layers; got {type(self.first)}")


# ---------------------------------------------------------------------------------------------------
# Monte-Carlo prediction
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def monte_carlo_counts(model: Callable, x: torch.Tensor, *, n_draws: int, n_classes: int,
                       max_batch: int | None = None) -> torch.Tensor:
    """Votes of ``n_draws`` noisy forward passes per input: an int64 tensor ``(len(x), n_classes)``.

    Every draw is a fresh sample of the model's noise at its full scale (one forward per vote, nothing
    reused). Draws are batched: ``x`` is repeated ``chunk`` times along the batch, with
    ``chunk * len(x) <= max_batch`` (default 256 on a CPU, where larger batches fall out of cache and run
    slower (benchmarks/certify.py), and 8192 on a GPU).
    """
    checks.check(n_draws >= 1, "n_draws", "monte_carlo_counts()", ">= 1", n_draws)
    if max_batch is None:
        max_batch = 8192 if x.device.type == "cuda" else 256
    if len(x) == 0:
        return torch.zeros(0, n_classes, dtype=torch.int64, device=x.device)
    chunk = max(1, min(n_draws, max_batch // max(len(x), 1)))
    counts = torch.zeros(len(x), n_classes, dtype=torch.int64, device=x.device)
    done = 0
    while done < n_draws:  # a loop over chunks of draws, each one batched forward
        c = min(chunk, n_draws - done)
        votes = model(x.repeat(c, *[1] * (x.ndim - 1))).argmax(1).reshape(c, len(x))  # (c, batch)
        counts += torch.nn.functional.one_hot(votes, n_classes).sum(0)
        done += c
    return counts


# ---------------------------------------------------------------------------------------------------
# Confidence bounds
# ---------------------------------------------------------------------------------------------------
def clopper_pearson(successes, trials, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds, each holding with probability >= 1 - alpha.

    lower = Beta(alpha; k, n - k + 1) (0 when k = 0), upper = Beta(1 - alpha; k + 1, n - k) (1 when k = n).
    """
    checks.check(0 < alpha < 1, "alpha", "clopper_pearson()", "in (0, 1)", alpha)
    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    checks.check(not (np.any(k < 0) or np.any(k > n)), "successes", "clopper_pearson()", "in [0, trials]",
                 successes)
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, special.betaincinv(k, n - k + 1, alpha), 0.0)
        upper = np.where(k < n, special.betaincinv(k + 1, n - k, 1 - alpha), 1.0)
    return lower, upper


@dataclass
class Bounds:
    """Top class and bounds of an input's Monte-Carlo votes (arrays of shape ``(n_inputs,)``)."""

    prediction: np.ndarray  # argmax of the counts
    p_lower: np.ndarray     # lower bound of the top class's probability
    p_upper: np.ndarray     # upper bound of the runner-up's probability

    @property
    def margin(self) -> np.ndarray:
        """L = ln(p_lower / p_upper) / 2, the largest PixelDP epsilon the robustness condition allows
        (with delta = 0); <= 0 where no certificate is possible."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((self.p_lower > 0) & (self.p_upper > 0),
                            0.5 * np.log(self.p_lower / self.p_upper), -np.inf)


def vote_bounds(counts: torch.Tensor | np.ndarray, *, eta: float = 0.05) -> Bounds:
    """Bounds from vote counts ``(n_inputs, K)``: Clopper-Pearson at failure probability ``eta / K`` for the
    top class (lower) and for the runner-up (upper), Bonferroni over the K classes (PixelDP's protocol)."""
    c = counts.cpu().numpy() if torch.is_tensor(counts) else np.asarray(counts)
    checks.check(c.ndim == 2 and c.shape[1] >= 2, "counts", "vote_bounds()", "of shape (n_inputs, n_classes >= 2)",
                 c.shape)
    n_classes, n = c.shape[1], c.sum(1)
    order = np.argsort(-c, axis=1, kind="stable")
    top, second = np.take_along_axis(c, order[:, :1], 1)[:, 0], np.take_along_axis(c, order[:, 1:2], 1)[:, 0]
    alpha = eta / n_classes
    lower, _ = clopper_pearson(top, n, alpha)
    _, upper = clopper_pearson(second, n, alpha)
    return Bounds(prediction=order[:, 0], p_lower=lower, p_upper=upper)


# ---------------------------------------------------------------------------------------------------
# Radii
# ---------------------------------------------------------------------------------------------------
def pixeldp_laplace_radius(bounds: Bounds, *, scale: float, sensitivity: float) -> np.ndarray:
    """PixelDP radius for Laplace noise of ``scale`` b: ``(b / sensitivity) * ln(p_lb / p_ub) / 2``.

    Laplace(b) noise on a map of l1 sensitivity ``sensitivity`` per unit attack gives epsilon = s *
    sensitivity / b for attacks of size s, and the robustness condition p_lb > e^(2 epsilon) p_ub holds for
    epsilon < ln(p_lb / p_ub) / 2 (Lecuyer et al. 2019, Proposition 1 with delta = 0). 0 where not certified.
    """
    return np.maximum(bounds.margin, 0.0) * scale / sensitivity


def pixeldp_gaussian_radius(bounds: Bounds, *, sigma: float, sensitivity: float = 1.0,
                            max_epsilon: float = 1.0, n_deltas: int = 400) -> np.ndarray:
    """PixelDP radius for Gaussian noise (l2 attacks), through the (epsilon, delta) relation PixelDP uses.

    Gaussian noise sigma = sqrt(2 ln(1.25 / delta)) * sensitivity * s / epsilon gives (epsilon, delta)-PixelDP
    for attacks of l2 size s (epsilon <= 1), and the robustness condition is
    p_lb > e^(2 epsilon) p_ub + (1 + e^epsilon) delta. For each delta on a log grid the largest epsilon
    meeting the condition is the root of a quadratic in e^epsilon; the radius is the best s over the grid.
    """
    deltas = np.geomspace(1e-8, 0.5, n_deltas)[None, :]                    # (1, D)
    p_lb, p_ub = bounds.p_lower[:, None], np.maximum(bounds.p_upper[:, None], 1e-300)
    # p_ub u^2 + delta u + (delta - p_lb) < 0, u = e^epsilon > 1
    disc = deltas**2 - 4 * p_ub * (deltas - p_lb)
    u = (-deltas + np.sqrt(np.maximum(disc, 0.0))) / (2 * p_ub)
    eps = np.minimum(np.log(np.maximum(u, 1.0)), max_epsilon)                # (N, D), 0 when impossible
    s = sigma * eps / (sensitivity * np.sqrt(2 * np.log(1.25 / deltas)))
    return np.where(disc > 0, s, 0.0).max(1)


def smoothing_radius(p_lower: np.ndarray, p_upper: np.ndarray | None = None, *, sigma: float) -> np.ndarray:
    """Randomized smoothing's l2 radius for Gaussian input noise ``sigma`` (Cohen et al. 2019, Theorem 1).

    With the runner-up's upper bound: ``sigma / 2 * (Phi^-1(p_lower) - Phi^-1(p_upper))``, 0 unless
    p_lower > p_upper. Without it (p_B = 1 - p_A): ``sigma * Phi^-1(p_lower)``, 0 unless p_lower > 1/2.
    """
    lo = np.clip(np.asarray(p_lower, dtype=float), 1e-300, 1 - 1e-16)
    if p_upper is None:
        return np.where(lo > 0.5, sigma * stats.norm.ppf(lo), 0.0)
    hi = np.clip(np.asarray(p_upper, dtype=float), 1e-300, 1 - 1e-16)
    return np.where(lo > hi, 0.5 * sigma * (stats.norm.ppf(lo) - stats.norm.ppf(hi)), 0.0)


@dataclass
class LaplaceComposition:
    """The noise of a StoBatch-style network, for :func:`composed_radius` and :func:`is_certified`.

    Attributes:
        input_scale: b_x, Laplace scale of the input noise.
        input_sensitivity: D_x, l1 sensitivity of the input to a unit l_inf attack (number of input coords).
        latent_scale: b_h, Laplace scale of the noise after the first layer (0: none).
        latent_sensitivity: D_h, bound of ||theta_1||_{inf->1} (:meth:`NoisyNetwork.latent_sensitivity`).
        epsilon_r: the original code's ``dp_epsilon`` (only the ``original_*`` modes use it).
        image_area: H * W of the input (the original's Delta_r = mu_a * H * W).
        latent_sensitivity_original: the original's Delta_h = sigma_max(theta_1) * H' * W'.
    """

    input_scale: float
    input_sensitivity: float
    latent_scale: float = 0.0
    latent_sensitivity: float = math.inf
    epsilon_r: float = 1.0
    image_area: float | None = None
    latent_sensitivity_original: float | None = None


def composed_radius(bounds: Bounds, noise: LaplaceComposition, *, mode: str = "safe_max") -> np.ndarray:
    """Certified l_inf radius of a network with input and latent Laplace noise (``safe_max`` or
    ``paper_sum``; see the module docstring). Independent of the attack size."""
    checks.check(mode in ("safe_max", "paper_sum"), "mode", "composed_radius()", "'safe_max' or 'paper_sum'", mode,
                 "The original_* modes have no radius (they depend on mu_a): use is_certified().")
    per_unit = (noise.input_scale / noise.input_sensitivity, noise.latent_scale / noise.latent_sensitivity)
    factor = max(per_unit) if mode == "safe_max" else sum(per_unit)
    return np.maximum(bounds.margin, 0.0) * factor


def is_certified(bounds: Bounds, mu_a: float, noise: LaplaceComposition, *, mode: str = "safe_max") -> np.ndarray:
    """Whether each prediction is certified against l_inf attacks of size ``mu_a``, in one of :data:`MODES`.

    ``original_jun2020``: robustness = mu_a L / eps_r, dp_mult = eps_r (b_x / (mu_a HW) + b_h / D_h'),
    certified iff robustness / dp_mult >= mu_a. ``original_sep2020``: robustness = L / eps_r,
    dp_mult = 1 / (mu_a HW / b_x + D_h' / b_h), certified iff robustness * dp_mult >= mu_a
    with D_h' = ``latent_sensitivity_original``. These are the certification test of the authors' code
    (github.com/haiphanNJIT/StoBatch, e.g. ``StoBatchCIFAR10/StoBatch_cifar10_testing.py`` with
    ``robustness.py``, eps_r its ``dp_epsilon``) as first uploaded in June 2020 and as revised in September 2020.
    """
    checks.one_of(mode, MODES, "mode", "is_certified()")
    if mode in ("safe_max", "paper_sum"):
        return composed_radius(bounds, noise, mode=mode) >= mu_a
    checks.check(noise.image_area is not None and noise.latent_sensitivity_original is not None, "noise",
                 f"is_certified(mode={mode!r})", "a LaplaceComposition with image_area and "
                 "latent_sensitivity_original", noise)
    big_l = bounds.margin
    delta_r = mu_a * noise.image_area
    b_x, b_h, eps_r = noise.input_scale, noise.latent_scale, noise.epsilon_r
    d_h = noise.latent_sensitivity_original
    with np.errstate(divide="ignore", invalid="ignore"):
        if mode == "original_jun2020":
            dp_mult = eps_r * (b_x / delta_r + (b_h / d_h if b_h > 0 else 0.0))
            return (mu_a * big_l / eps_r) / dp_mult >= mu_a
        dp_mult = 1.0 / (delta_r / b_x + (d_h / b_h if b_h > 0 else 0.0))
        return (big_l / eps_r) * dp_mult >= mu_a


def certified_accuracy(correct: np.ndarray, radius: np.ndarray, mu_a: float | np.ndarray) -> np.ndarray:
    """Fraction of inputs predicted correctly *and* certified at attack size ``mu_a`` (scalar or array)."""
    correct, radius = np.asarray(correct, bool), np.asarray(radius, float)
    mu = np.atleast_1d(np.asarray(mu_a, float))
    out = ((radius[None, :] >= mu[:, None]) & correct[None, :]).mean(1)
    return out if np.ndim(mu_a) else float(out[0])


# ---------------------------------------------------------------------------------------------------
# Closed-form worst-case privacy loss of the two-noise mechanism (why paper_sum is not a DP statement)
# ---------------------------------------------------------------------------------------------------
def laplace_sum_log_density(t: np.ndarray, b: float) -> np.ndarray:
    """log density of n_x + n_h with n_x, n_h ~ Laplace(b) independent: g(t) = (b + |t|) e^(-|t|/b) / (4 b^2)."""
    t = np.abs(np.asarray(t, dtype=float))
    return np.log(b + t) - t / b - np.log(4 * b * b)


def laplace_sum_privacy_loss(shift: float, b: float, *, t_max: float | None = None, n: int = 200_001) -> float:
    """sup_t ln(g(t) / g(t + shift)) for the density g of :func:`laplace_sum_log_density`, on a fine grid.

    It tends to shift / b as t grows (the tails decay like e^(-|t|/b)), twice the shift / (2 b) that adding
    the two noises' PixelDP guarantees ("kappa + phi") claims.
    """
    t_max = t_max if t_max is not None else 200 * b + 10 * abs(shift)
    t = np.linspace(-t_max, t_max, n)
    return float(np.max(laplace_sum_log_density(t, b) - laplace_sum_log_density(t + shift, b)))
