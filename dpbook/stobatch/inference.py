"""A trained StoBatch model as it is queried and certified: fresh-noise inference (the principled
protocol), the original code's inference, and the glue to :mod:`dpbook.robustness`'s certificates.

Principled protocol (PixelDP-style, Lecuyer et al. 2019): every Monte-Carlo vote is one forward with fresh
Laplace noise at the full training scales b_x (input) and b_h (latent), drawn per example, BatchNorm in eval
mode (:func:`noisy_network`). The original code's protocol (``StoBatchCIFAR10/StoBatch_cifar10_testing.py``
of ``haiphanNJIT/StoBatch``) keeps the training noise and adds fresh noise at a tenth of the scales, one
source per softmax, with BatchNorm on the test batch's statistics (:func:`original_predictor`;
``book/stobatch.md`` lists why its certificates do not hold). Predictors map ``(n, C, H, W)`` to logits or
log-probabilities ``(n, K)``; certificates are against l_inf attacks of size mu_a
(``notebooks/40_certified_robustness.ipynb``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import checks, privacy, robustness
from ..evaluation import Deployed
from ..models import StoBatchNet
from .budget import Budget, spectral_norm
from .step import StoBatchRun

INFERENCE = ("fresh", "original")


class Smoothed(nn.Module):
    """A per-example StoBatch model as it is queried: ``model(decode(encode(x) + n))`` with n fresh for every
    example and forward, N(0, std^2) (``mechanism="gaussian"``) or Laplace(std) per coordinate of the public
    code (:class:`dpbook.stobatch.release.InputCoder`); without a coder, ``model(x + n)`` on the pixels."""

    def __init__(self, model: StoBatchNet, *, std: float, coder=None, mechanism: str = "gaussian",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.model, self.std, self.coder, self.mechanism, self.generator = model, float(std), coder, mechanism, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.coder.encode(x) if self.coder is not None else x.flatten(1)
        gen = self.generator
        if gen is None or gen.device != x.device:
            gen = self.generator = privacy.noise_generator(x.device)
        draw = privacy.gaussian_noise if self.mechanism == "gaussian" else privacy.laplace_noise
        n = draw(z.shape, generator=gen, device=x.device, dtype=x.dtype,
                 **{"noise_std" if self.mechanism == "gaussian" else "scale": self.std})
        x_noisy = self.coder.decode(z + n) if self.coder is not None else (z + n).view_as(x)
        return self.model(x_noisy)


def l2_radius(bounds: robustness.Bounds, std: float) -> np.ndarray:
    """Randomized smoothing's certified l2 radius (Cohen et al. 2019) for Gaussian noise ``std`` on the code;
    the encoder (centre, orthonormal projection, clip to a ball) is 1-Lipschitz, so it holds for the image."""
    return robustness.smoothing_radius(bounds.p_lower, bounds.p_upper, sigma=std)


def radius_cap(std: float, *, n_draws: int, eta: float, n_classes: int) -> float:
    """The largest l2 radius ``n_draws`` votes can certify: all votes for one class give p_lower =
    (eta / K)^(1 / n) (Clopper-Pearson at :func:`dpbook.robustness.vote_bounds`' level), so R <= std
    Phi^-1((eta / K)^(1 / n))."""
    from scipy import stats

    return float(std * stats.norm.ppf((eta / n_classes) ** (1.0 / n_draws)))


def radii(noise: str, std: float, d: int) -> dict:
    """Certified radii of a model smoothed by ``noise`` of ``std`` on d input coordinates: name ->
    ``fn(bounds) -> (l2 radii, l_inf radii)``. Gaussian: randomized smoothing (Cohen et al. 2019) and PixelDP's
    Gaussian bound (Lecuyer et al. 2019), l_inf = l2 / sqrt(d); Laplace (PixelDP, input noise alone, l1
    sensitivity 1): the l1 radius R_1, so l2 = R_1 / sqrt(d) and l_inf = R_1 / d."""
    if noise == "gaussian":
        def cohen(bounds):
            r = l2_radius(bounds, std)
            return r, r / math.sqrt(d)

        def pixeldp(bounds):
            r = robustness.pixeldp_gaussian_radius(bounds, sigma=std)
            return r, r / math.sqrt(d)

        return {"randomized smoothing (l2)": cohen, "PixelDP Gaussian (l2)": pixeldp}

    def laplace(bounds):
        r1 = robustness.pixeldp_laplace_radius(bounds, scale=std, sensitivity=1.0)
        return r1 / math.sqrt(d), r1 / d

    return {"PixelDP Laplace (l1)": laplace}


def per_example_deployed(model: StoBatchNet, *, std: float, coder=None, mechanism: str = "gaussian",
                         generator: torch.Generator | None = None) -> tuple[Deployed, object]:
    """A per-example design as it is queried (:class:`Smoothed`) and, for Gaussian noise, certified against
    l_inf attacks of size mu_a through the l2 radius: ||delta||_2 <= sqrt(d) ||delta||_inf, so the l_inf radius is
    R_2 / sqrt(d) for d input coordinates. Returns ``(deployed, radii)`` (:func:`radii`; empty for Laplace
    noise on a code: the clipped projection is 1-Lipschitz in l2, not in l1, so no certificate is claimed)."""
    model.eval()
    d = math.prod(model.first.input_shape)
    smoothed = Smoothed(model, std=std, coder=coder, mechanism=mechanism, generator=generator)
    if mechanism != "gaussian":
        return Deployed(predict=smoothed, n_classes=model.n_classes), {}
    certificates = radii("gaussian", std, d)
    cohen = certificates["randomized smoothing (l2)"]
    return (Deployed(predict=smoothed, n_classes=model.n_classes,
                     certify=lambda bounds, mu_a: cohen(bounds)[1] >= mu_a), certificates)


def noisy_network(model: StoBatchNet, budget: Budget, *,
                  generator: torch.Generator | None = None) -> robustness.NoisyNetwork:
    """The trained model with *fresh* Laplace noise at the full training scales b_x and b_h, drawn per example
    and per forward (the principled protocol), for :func:`dpbook.robustness.monte_carlo_counts`."""
    return robustness.NoisyNetwork(model.first, model.rest, noise="laplace", input_scale=budget.input_scale,
                                   latent_scale=budget.latent_scale, generator=generator)


def laplace_composition(model: StoBatchNet, *, input_scale: float,
                        latent_scale: float) -> robustness.LaplaceComposition:
    """The noise description :func:`dpbook.robustness.composed_radius` needs: D_x = d_in, D_h = the l_inf->l1
    bound of theta_1 from the current weights, and the original code's H W and sigma_max H' W'."""
    c, height, width = model.first.input_shape
    return robustness.LaplaceComposition(
        input_scale=input_scale, input_sensitivity=float(c * height * width),
        latent_scale=latent_scale, latent_sensitivity=model.first.latent_sensitivity(),
        image_area=float(height * width),
        latent_sensitivity_original=spectral_norm(model.first.weight) * math.prod(model.first.latent_shape[1:]))


def certifier(model: StoBatchNet, *, input_scale: float, latent_scale: float, mode: str = "safe_max"):
    """``certify(bounds, mu_a)`` (:class:`dpbook.evaluation.Deployed`): :func:`dpbook.robustness.is_certified`
    with the noise of :func:`laplace_composition`, measured on the weights as they are now."""
    noise = laplace_composition(model, input_scale=input_scale, latent_scale=latent_scale)
    return lambda bounds, mu_a: robustness.is_certified(bounds, mu_a, noise, mode=mode)


def original_predictor(model: StoBatchNet, run: StoBatchRun, *, fraction: float = 0.1,
                       generator: torch.Generator | None = None):
    """The code's inference: the training noise N (batch 0's; the one global draw in the original) stays in;
    on top, fresh noise at ``fraction`` of the training scales (the code's /10), one source re-randomised per
    forward, and the vote is the argmax of the product of the two softmaxes. BatchNorm runs in training mode
    on the test batch (its running statistics are left as they are). Returns ``predict(x) -> log(p_1 p_2)``
    ``(n, K)``."""
    fixed, budget = run.noise[0], run.budget
    gen = generator or privacy.noise_generator(model.first.weight.device)

    def predict(x: torch.Tensor) -> torch.Tensor:
        kw = dict(generator=gen, device=x.device, dtype=x.dtype)
        n_x = privacy.laplace_noise(x.shape, scale=fraction * budget.input_scale, **kw)
        n_h = privacy.laplace_noise((len(x), *model.first.latent_shape), scale=fraction * budget.latent_scale, **kw)
        with _batch_statistics(model):
            p_x = model(x, noise_x=fixed.x + n_x, noise_h=fixed.h).log_softmax(-1)
            p_h = model(x, noise_x=fixed.x, noise_h=fixed.h + n_h).log_softmax(-1)
        return p_x + p_h

    return predict


class _batch_statistics:
    """Context: BatchNorm normalises with the current batch's statistics and leaves its running statistics
    alone (the code's test-time BatchNorm in training mode); other layers stay in eval mode."""

    def __init__(self, model: nn.Module):
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        for m in self.norms:
            m.train(), setattr(m, "track_running_stats", False)

    def __exit__(self, *exc):
        for m in self.norms:
            m.eval(), setattr(m, "track_running_stats", True)


def deployed(model: StoBatchNet, run: StoBatchRun, *, inference: str = "fresh", mode: str = "safe_max",
             generator: torch.Generator | None = None):
    """A run of the paper's mechanism (``release="batch_shared"``) as it is queried
    (:class:`dpbook.evaluation.Deployed`): ``"fresh"`` Laplace noise at the full training scales per example
    and forward, BatchNorm in eval mode (:func:`noisy_network`), certified with ``mode``; or the code's
    protocol (:func:`original_predictor`), which keeps the training noise in every forward: no certificate
    applies to it (PixelDP's argument needs noise drawn afresh), so it certifies nothing ("n/a")."""
    checks.one_of(inference, INFERENCE, "inference", "deployed()")
    model.eval()
    if inference == "original":
        return Deployed(predict=original_predictor(model, run, generator=generator), n_classes=model.n_classes)
    return Deployed(predict=noisy_network(model, run.budget, generator=generator), n_classes=model.n_classes,
                    certify=certifier(model, input_scale=run.budget.input_scale,
                                      latent_scale=run.budget.latent_scale, mode=mode))
