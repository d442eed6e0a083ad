"""The networks of the book, built by name.

Only layers whose per-example gradients are well defined are used: no BatchNorm (it mixes the examples
of a batch, so a per-example gradient means nothing and DP-SGD's sensitivity argument fails). Later
chapters add the papers' networks (LeNet-5, ResNet20 with GroupNorm, the StoBatch networks) here.
"""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Sequential):
    """Two 5x5 convolutions with max-pooling and one linear layer: the MNIST network of the GEP paper.

    Input ``(batch, in_channels, H, W)`` with H and W divisible by 4; output logits ``(batch, n_classes)``.

    =====================================  ==========================
    layer                                  output shape
    =====================================  ==========================
    Conv2d(in_channels, 16, 5, padding=2)  (batch, 16, H, W)
    ReLU, MaxPool2d(2)                     (batch, 16, H/2, W/2)
    Conv2d(16, 32, 5, padding=2)           (batch, 32, H/2, W/2)
    ReLU, MaxPool2d(2)                     (batch, 32, H/4, W/4)
    Flatten, Linear(32 H W / 16, classes)  (batch, n_classes)
    =====================================  ==========================
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 28, width: int = 16):
        if image_size % 4:
            raise ValueError(f"image_size of SmallCNN must be divisible by 4; got {image_size}")
        super().__init__(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, n_classes),
        )


MODELS = {"small-cnn": SmallCNN}


def build(name: str, *, in_channels: int, image_size: int, n_classes: int) -> nn.Module:
    """Build the network ``name`` (a key of :data:`MODELS`) for images ``(in_channels, image_size, image_size)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](in_channels=in_channels, n_classes=n_classes, image_size=image_size)


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of ``x`` (``(n, C, H, W)``) that ``model`` classifies as ``y``, evaluated in batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(x[i:i + batch_size].to(device)).argmax(1) == y[i:i + batch_size].to(device)).sum())
                  for i in range(0, len(x), batch_size))
    model.train(was_training)
    return correct / max(len(x), 1)
