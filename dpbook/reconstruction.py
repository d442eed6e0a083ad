"""Reconstruction attacks: a learned decoder from what a device sends back to the input image, and the
image-quality scores that judge it (MSE, PSNR, SSIM).

A split-inference defence such as Shredder (Mireshghallah et al., ASPLOS 2020) should keep the cloud from
seeing the input. The attacker here trains a decoder on its own images (training or validation data, never
the victims' test images) from the features its threat model gives it (:mod:`dpbook.leakage`: the raw noisy
activations, a per-cluster normalisation, an inversion of the noise), then decodes the victims' queries.
The reference without any activation is the *prior*: the best constant guess under squared error, the mean
training image (:func:`prior_scores`). A decoder that does no better than the prior learned nothing.

Scores, per image ``(N,)``, for images ``(N, C, H, W)`` with pixels in ``[0, data_range]``:

* ``mse``: mean squared error over pixels;
* ``psnr``: ``10 log10(data_range^2 / mse)`` in dB (capped at 100 dB for a perfect copy);
* ``ssim``: the structural similarity of Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 13(4), 2004), eq. 13,
  with their 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, averaged over the valid part of the map
  (no padding) and over channels;
* ``explained_variance``: ``1 - mse / mse_prior``, the share of the pixel variance around the mean training
  image that the decoder recovers (0: no better than the prior; 1: perfect).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .leakage import mlp


# ---------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------
def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian ``(size,)``; its outer product with itself is the 2-D window."""
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-r * r / (2 * sigma * sigma))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of each image pair, ``(N,)``, for images ``(N, C, H, W)`` (Wang et al. 2004, eq. 13).

    With Gaussian-weighted local means mu, variances s^2 and covariance s_xy (one separable convolution per
    moment, all images and channels at once), C1 = (K1 L)^2 and C2 = (K2 L)^2:
    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``, averaged over the
    valid positions (H - window + 1 by W - window + 1) and the channels."""
    checks.check(x.shape == y.shape and x.ndim == 4, "y", "ssim()", "of the shape of x, (N, C, H, W)",
                 tuple(y.shape))
    checks.check(min(x.shape[-2:]) >= window, "window", "ssim()", f"at most the image size {tuple(x.shape[-2:])}",
                 window)
    n, c = x.shape[:2]
    g = gaussian_window(window, sigma, dtype=x.dtype, device=x.device)
    rows, cols = g.view(1, 1, -1, 1).repeat(5 * c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(5 * c, 1, 1, 1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)                     # (N, 5C, H, W)
    moments = F.conv2d(F.conv2d(stack, rows, groups=5 * c), cols, groups=5 * c)
    mx, my, xx, yy, xy = moments.split(c, dim=1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.flatten(1).mean(1)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image pair ``(N,)``."""
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each pair, ``10 log10(L^2 / mse)`` in dB ``(N,)``, at most 100 dB."""
    return 10 * torch.log10(data_range ** 2 / mse(x, y).clamp_min(data_range ** 2 * 1e-10))


def scores(reconstructed: torch.Tensor, original: torch.Tensor, *, prior_mse: float | None = None,
           data_range: float = 1.0) -> dict:
    """Mean MSE, PSNR and SSIM over the images (and ``explained_variance`` when ``prior_mse`` is given)."""
    out = {"mse": float(mse(reconstructed, original).mean()),
           "psnr": float(psnr(reconstructed, original, data_range=data_range).mean()),
           "ssim": float(ssim(reconstructed, original, data_range=data_range).mean())}
    if prior_mse is not None:
        out["explained_variance"] = 1 - out["mse"] / prior_mse
    return out


def prior_scores(train_images: torch.Tensor, test_images: torch.Tensor, *, data_range: float = 1.0) -> dict:
    """Scores of the best guess without any activation: the mean training image, for every test image."""
    guess = train_images.mean(0, keepdim=True).expand_as(test_images)
    return scores(guess, test_images, data_range=data_range) | {"explained_variance": 0.0}


# ---------------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------------
@dataclass
class Decoder:
    """Features ``(N, D)`` to images ``(N, *shape)``: standardised with the training moments, an MLP, a sigmoid
    (pixels in [0, 1])."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    shape: tuple

    def __call__(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        z = (features.flatten(1).float() - self.mean) / self.std
        with torch.no_grad():
            out = torch.cat([self.model(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])
        return torch.sigmoid(out).view(len(z), *self.shape)


def train_decoder(features: torch.Tensor, images: torch.Tensor, *, hidden: int = 512, epochs: int = 20,
                  lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> Decoder:
    """Train a decoder (MLP with two hidden layers) from features ``(N, D)`` to images ``(N, C, H, W)`` in
    [0, 1], by Adam on the mean squared error. Initialisation and batch order come from ``seed`` through
    local generators."""
    checks.check(len(features) == len(images), "images", "train_decoder()",
                 f"one per row of features ({len(features)})", len(images))
    gen = torch.Generator().manual_seed(seed)
    z = features.flatten(1).float()
    mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
    z, target = (z - mean) / std, images.flatten(1).to(z.device)
    model = mlp(z.shape[1], hidden, target.shape[1], generator=gen).to(z.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(z), generator=gen).to(z.device)
        for start in range(0, len(z), batch_size):
            idx = order[start:start + batch_size]
            loss = F.mse_loss(torch.sigmoid(model(z[idx])), target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return Decoder(model.eval(), mean, std, tuple(images.shape[1:]))


def as_levels(images: torch.Tensor) -> list[str]:
    """Images ``(N, C, H, W)`` in [0, 1] as a list of N strings, each the hexadecimal grey levels 0..255 of one
    image in C, H, W order (two characters a pixel: small enough for a results file); :func:`from_levels`
    reads them back."""
    levels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return [bytes(image.flatten().tolist()).hex() for image in levels]


def from_levels(levels: list[str], shape) -> torch.Tensor:
    """The images ``(N, *shape)`` in [0, 1] written by :func:`as_levels` (to 1/255)."""
    data = torch.tensor([list(bytes.fromhex(text)) for text in levels], dtype=torch.uint8)
    return data.view(len(levels), *shape).float() / 255

