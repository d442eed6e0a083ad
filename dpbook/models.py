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


class _BasicBlockGN(nn.Module):
    """conv3x3-GN-ReLU-conv3x3-GN plus the shortcut, then ReLU (He et al. 2016, with GroupNorm)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(4, c_out, affine=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, c_out, affine=False)
        self.downsample = stride != 1 or c_in != c_out
        if self.downsample:  # "option A": subsample, normalise, pad the new channels with zeros
            self.pool = nn.AvgPool2d(1, stride=stride)
            self.gn_short = nn.GroupNorm(4, c_in, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        if self.downsample:
            short = self.gn_short(self.pool(x))
            x = torch.cat([short, torch.zeros_like(short)], dim=1)
        return torch.relu(out + x)


class ResNet20GN(nn.Module):
    """The CIFAR ResNet20 of the GEP code: BatchNorm replaced by GroupNorm(4, C, affine=False).

    Input ``(batch, 3, 32, 32)``; stem conv3x3(3->16)-GN-ReLU, three stages of three basic blocks (widths
    16, 32, 64; the first block of stages 2 and 3 halves the resolution), global average pooling and
    Linear(64 -> n_classes). Convolutions have no bias and He fan-out initialisation. 268,346 trainable
    parameters in 21 tensors (spec gep.md, section 3.2), all in Conv2d and Linear layers, so BackPACK's
    BatchGrad covers them. The top-level modules ``conv``, ``stage1``, ``stage2``, ``stage3`` and ``fc`` are
    the paper's five parameter groups (432, 13,824, 50,688, 202,752 and 650 parameters;
    :func:`dpbook.gep.layer_groups`).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(4, 16, affine=False)
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*(_BasicBlockGN(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1)
                                          for b in range(3))))
            c_in = c_out
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn(self.conv(x)))
        x = self.pool(self.stage3(self.stage2(self.stage1(x)))).flatten(1)
        return self.fc(x)


MODELS = {"small-cnn": SmallCNN, "resnet20-gn": ResNet20GN}


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
