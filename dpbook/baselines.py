"""The networks StoBatch is compared with (Phan et al., ICML 2020), built on the same architecture
(:class:`dpbook.models.StoBatchNet`), for ``notebooks/42_stobatch_experiments.ipynb``.

* **Non-private**: cross-entropy with Adam, no noise (:func:`plain_network`).
* **PixelDP** (Lecuyer et al., S&P 2019): not private; fresh Laplace noise at the input (b_x) and after the
  first layer (b_h) in training and at inference, certified like StoBatch (:func:`pixeldp_network`). PixelDP
  sets b = Delta L / eps_r from a construction bound L; fixing b directly is the same up to the sensitivity
  Delta, which the certificate measures on the final weights.
* **SecureSGD** (Phan et al., IJCAI 2019): DP-SGD (Abadi et al. 2016, run by :class:`dpbook.gep.GEP` in
  ``mode="dpsgd"``, accounted by :mod:`dpbook.privacy`) on a network with Gaussian noise after the first
  layer: the extended Gaussian mechanism's sigma for (eps_r, delta_r) at construction bound L, redistributed
  over coordinates by a vector r (heterogeneous Gaussian mechanism, HGM). The original code
  (``StoBatchTinyImageNet/SecureSGD_resnet_pretrain.py`` of ``haiphanNJIT/StoBatch``) computes r from private
  batches with their true labels without accounting for it (``book/stobatch.md``); here r comes from held-out
  public examples (:func:`redistribution`). theta_1 is kept at sigma_max <= 1 so the certificate's
  sensitivity holds.

All three use networks without BatchNorm when ``norm="group"``: DP-SGD needs per-example gradients.
Noise: ``input_scale`` and ``latent_scale`` are absolute Laplace scales b, ``noise_std`` the absolute standard
deviation sigma of the Gaussian (not a multiplier of a sensitivity).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checks, privacy, robustness, stobatch
from .evaluation import Deployed
from .models import AutoEncoderLayer, StoBatchNet


def plain_network(model: StoBatchNet) -> robustness.NoisyNetwork:
    """The network without any noise, as one module ``rest(first(x))`` (for :func:`dpbook.training.fit`)."""
    return robustness.NoisyNetwork(model.first, model.rest)


def pixeldp_network(model: StoBatchNet, *, input_scale: float, latent_scale: float,
                    generator: torch.Generator | None = None) -> robustness.NoisyNetwork:
    """``rest(first(x + n_x) + n_h)`` with fresh Laplace noise of scales b_x, b_h on every forward."""
    return robustness.NoisyNetwork(model.first, model.rest, noise="laplace", input_scale=input_scale,
                                   latent_scale=latent_scale, generator=generator)


def pixeldp_deployed(model: StoBatchNet, *, input_scale: float, latent_scale: float,
                     mode: str = "safe_max") -> Deployed:
    """PixelDP at inference: fresh noise per forward, certified by :func:`dpbook.stobatch.certifier`."""
    net = pixeldp_network(model, input_scale=input_scale, latent_scale=latent_scale).eval()
    return Deployed(predict=net, n_classes=model.n_classes,
                    certify=stobatch.certifier(model, input_scale=input_scale, latent_scale=latent_scale, mode=mode))


# ---------------------------------------------------------------------------------------------------
# SecureSGD
# ---------------------------------------------------------------------------------------------------
def conv_l2_sensitivity(first: AutoEncoderLayer) -> float:
    """Bound of the l2 operator norm of theta_1 as a convolution: ceil(k / stride) sigma_max(kernel matrix)
    (each input coordinate feeds at most ceil(k / stride)^2 output positions per channel)."""
    return math.ceil(first.kernel_size / first.stride) * stobatch.spectral_norm(first.weight)


def hgm_sigma(*, epsilon_r: float, delta_r: float, bound: float, sensitivity: float) -> float:
    """sigma of the extended Gaussian mechanism (Phan et al. 2019) making the latent layer (eps_r, delta_r)-DP
    for l2 input changes of size ``bound``: EGM with l2 sensitivity ``sensitivity * bound``. An absolute
    noise std (the ``noise_std`` of :func:`pack` and :func:`securesgd_deployed`)."""
    return privacy.extended_gaussian_sigma(epsilon=epsilon_r, delta=delta_r, sensitivity=sensitivity * bound)


@torch.no_grad()
def _first_gradients(model: StoBatchNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        h = model.first(x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model.rest(h), y, reduction="sum"), h)
    return g


def redistribution(model: StoBatchNet, x_public: torch.Tensor, y_public: torch.Tensor, *,
                   floor: float = 0.1) -> torch.Tensor:
    """HGM's r ``latent_shape``: |mean sign(dL/dh)|^2 over public examples (the code's formula), mixed with
    ``floor`` of the uniform vector and normalised to sum r = dim(h). The floor bounds min r, on which the
    certificate's sensitivity Delta / sqrt(min r) depends."""
    r = _first_gradients(model, x_public, y_public).sign().mean(0).square()
    r = r / r.mean().clamp_min(1e-12)
    r = (1 - floor) * r + floor
    return r / r.mean()


class PackedNoise(nn.Module):
    """``rest(first(x) + sqrt(r) n)`` where each example carries its own draw n with it: the input is
    ``[x.flatten(), n.flatten()]`` ``(B, d_in + d_h)``. Drawing the noise before the per-example gradients
    (:mod:`dpbook.persample`) keeps them a function of one example each."""

    def __init__(self, model: StoBatchNet, r: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("sqrt_r", r.sqrt())
        self.d_in = math.prod(model.first.input_shape)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x = packed[:, :self.d_in].view(-1, *self.model.first.input_shape)
        n = packed[:, self.d_in:].view(-1, *self.model.first.latent_shape)
        return self.model.rest(self.model.first(x) + self.sqrt_r * n)


def pack(x: torch.Tensor, latent_shape: tuple[int, ...], noise_std: float | None = None,
         generator: torch.Generator | None = None, *, sigma: float | None = None) -> torch.Tensor:
    """``[x, n]`` with n ~ N(0, noise_std^2) of ``latent_shape`` per example (robustness noise, not DP noise).
    ``sigma`` is the former name of ``noise_std``."""
    noise_std = checks.renamed(noise_std, sigma, "noise_std", "sigma", "pack()")
    checks.non_negative(noise_std, "noise_std", "pack()")
    n = torch.randn((len(x), math.prod(latent_shape)), generator=generator, device=x.device, dtype=x.dtype)
    return torch.cat([x.flatten(1), noise_std * n], 1)


def securesgd_deployed(model: StoBatchNet, r: torch.Tensor, noise_std: float | None = None, *,
                       sigma: float | None = None) -> Deployed:
    """SecureSGD at inference: fresh HGM noise of std ``noise_std`` (:func:`hgm_sigma`) per forward; certified
    with Gaussian PixelDP (l2) of sensitivity Delta_2 / sqrt(min r), an l_inf ball of size mu_a lying in the l2
    ball of mu_a sqrt(d_in). ``sigma`` is the former name of ``noise_std``."""
    noise_std = checks.renamed(noise_std, sigma, "noise_std", "sigma", "securesgd_deployed()")
    checks.non_negative(noise_std, "noise_std", "securesgd_deployed()")
    packed = PackedNoise(model, r).eval()
    d_in = packed.d_in
    sensitivity = conv_l2_sensitivity(model.first) / math.sqrt(float(r.min()))

    def predict(x: torch.Tensor) -> torch.Tensor:
        return packed(pack(x, model.first.latent_shape, noise_std))

    def certify(bounds: robustness.Bounds, mu_a: float) -> np.ndarray:
        radius = robustness.pixeldp_gaussian_radius(bounds, sigma=noise_std, sensitivity=sensitivity)
        return radius >= mu_a * d_in ** 0.5

    return Deployed(predict=predict, n_classes=model.n_classes, certify=certify)
