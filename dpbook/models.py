"""Every network of the book, built by name or by input shape.

* GEP (Yu et al., ICLR 2021): :class:`SmallCNN` and :class:`ResNet20GN`, by name (:data:`MODELS`, :func:`build`).
  Only layers whose per-example gradients are well defined: no BatchNorm (it mixes the examples of a batch,
  so a per-example gradient means nothing and DP-SGD's sensitivity argument fails).
* Shredder (Mireshghallah et al., ASPLOS 2020): :class:`LeNet5`, the network ``dpbook.shredder`` cuts.
* StoBatch (Phan et al., ICML 2020): :class:`StoBatchNet` = the DP auto-encoder layer theta_1
  (:class:`AutoEncoderLayer`) and the rest theta_2, by input shape (:func:`network_for`). ``norm="batch"``
  keeps the original code's BatchNorm, which couples the examples of a batch and voids the per-example
  sensitivity (it warns, :mod:`dpbook.guarantees`); ``norm="group"`` normalises each example on its own.

Shapes are ``(batch, C, H, W)`` in, logits ``(batch, n_classes)`` out.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, guarantees


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
        checks.check(image_size % 4 == 0, "image_size", "SmallCNN", "divisible by 4", image_size)
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
    Linear(64 -> n_classes). Convolutions have no bias and He fan-out initialisation, as
    ``models/resnet_cifar.py`` of the GEP code (``dayu11/Gradient-Embedding-Perturbation``). 268,346 trainable
    parameters in 21 tensors, all in Conv2d and Linear layers, so BackPACK's BatchGrad covers them. The
    top-level modules ``conv``, ``stage1``, ``stage2``, ``stage3`` and ``fc`` are the paper's five parameter
    groups (432, 13,824, 50,688, 202,752 and 650 parameters; :func:`dpbook.gep.layer_groups`).
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
    checks.one_of(name, MODELS, "name", "build()")
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


# ---------------------------------------------------------------------------------------------------
# Shredder's network
# ---------------------------------------------------------------------------------------------------
class LeNet5(nn.Sequential):
    """The LeNet-5 of the Shredder v2 code (``mireshghallah/shredder-v2-self-supervised``) on 32x32 inputs:
    ReLU and max-pooling (not tanh, whatever its docstring says).

    ======  =======================  ================
    name    layer                    output
    ======  =======================  ================
    c1      Conv2d(C, 6, 5)          (6, 28, 28)
    s2      ReLU, MaxPool2d(2)       (6, 14, 14)
    c3      Conv2d(6, 16, 5)         (16, 10, 10)
    s4      ReLU, MaxPool2d(2)       (16, 5, 5)
    c5      Conv2d(16, 120, 5)       (120, 1, 1)
    relu5   ReLU                     (120, 1, 1)   <- Shredder's cut: the activation a
    f6      Flatten, Linear(120, 84) (84,)
    f7      ReLU, Linear(84, K)      (K,) logits
    ======  =======================  ================
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10):
        super().__init__(OrderedDict([
            ("c1", nn.Conv2d(in_channels, 6, 5)), ("relu1", nn.ReLU()), ("s2", nn.MaxPool2d(2)),
            ("c3", nn.Conv2d(6, 16, 5)), ("relu3", nn.ReLU()), ("s4", nn.MaxPool2d(2)),
            ("c5", nn.Conv2d(16, 120, 5)), ("relu5", nn.ReLU()),
            ("flatten", nn.Flatten()), ("f6", nn.Linear(120, 84)), ("relu6", nn.ReLU()),
            ("f7", nn.Linear(84, n_classes)),
        ]))


# ---------------------------------------------------------------------------------------------------
# StoBatch's networks: theta_1 (the DP auto-encoder layer), then theta_2
# ---------------------------------------------------------------------------------------------------
class AutoEncoderLayer(nn.Module):
    """theta_1: a bias-free convolution used as a tied-weight auto-encoder on inputs ``input_shape`` (C, H, W).

    ``encode(x) = clip(conv(x), -1, 1)``: h in [-1, 1]^beta, as the sensitivity Delta_R assumes.
    ``decode(h) = conv_transpose(h)``: the adjoint map theta_1 h, giving the reconstruction logits r of
    shape ``input_shape``. The bias b_1 is added after the latent noise (as in the code), so only the
    classifier trains it; it lives in theta_2 (:class:`LatentBias`). Xavier initialisation, as the code.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
                 input_size: tuple[int, int]):
        super().__init__()
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.xavier_uniform_(self.weight)
        self.input_shape = (in_channels, *input_size)
        out = [(s + 2 * padding - kernel_size) // stride + 1 for s in input_size]
        self.latent_shape = (out_channels, *out)
        self.output_padding = tuple(s - ((o - 1) * stride - 2 * padding + kernel_size) for s, o in zip(input_size, out))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """h = clip(theta_1^T x, -1, 1), ``(n, C_out, H', W')``."""
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding).clamp(-1.0, 1.0)

    forward = encode

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """r = theta_1 h, ``(n, C, H, W)``: the reconstruction logits of every input coordinate."""
        return F.conv_transpose2d(h, self.weight, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding)

    def delta_R(self, beta_includes_channels: bool = False) -> int:
        """Delta_R of this layer's geometry (:func:`dpbook.stobatch.delta_R`)."""
        from .stobatch.budget import delta_R  # imported here: dpbook.stobatch imports this module

        c_out, h_out, w_out = self.latent_shape
        return delta_R(in_channels=self.input_shape[0], kernel_size=self.kernel_size, out_height=h_out,
                       out_width=w_out, out_channels=c_out, beta_includes_channels=beta_includes_channels)

    def latent_sensitivity(self) -> float:
        """H' W' sum |W|: bound of ||theta_1||_{inf->1}, the l1 change of h per unit l_inf change of x
        (as :meth:`dpbook.robustness.NoisyNetwork.latent_sensitivity`), from the current weights."""
        return float(self.weight.detach().abs().sum()) * math.prod(self.latent_shape[1:])


class LatentBias(nn.Module):
    """Adds the first layer's bias b_1 ``(C,)`` to h_bar (after the noise, as the code does); init 1e-4."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.full((channels,), 1e-4))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.bias.view(1, -1, *[1] * (h.ndim - 2))


class StoBatchNet(nn.Module):
    """``rest(first(x + n_x) + n_h)``: theta_1 = ``first`` (:class:`AutoEncoderLayer`), theta_2 = ``rest``
    ending in the bias-free output layer ``head`` = W ``(K, hidden)`` on h_pi in [-1, 1].

    The split matches :class:`dpbook.robustness.NoisyNetwork` (``NoisyNetwork(net.first, net.rest, ...)``
    certifies it). The head has no bias: a bias would add the label counts sum_i y_ik, a data-dependent
    coefficient that Delta_L2 = 2 |h_pi| does not cover.
    """

    def __init__(self, first: AutoEncoderLayer, body: nn.Module, hidden: int, n_classes: int):
        super().__init__()
        self.first = first
        self.rest = nn.Sequential(body, nn.Linear(hidden, n_classes, bias=False))
        self.hidden, self.n_classes = hidden, n_classes

    @property
    def head(self) -> nn.Linear:
        return self.rest[-1]

    def forward(self, x: torch.Tensor, noise_x: torch.Tensor | None = None,
                noise_h: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(n, K)``; the noises broadcast over the batch (None: no noise)."""
        h = self.first(x if noise_x is None else x + noise_x)
        return self.rest(h if noise_h is None else h + noise_h)


NORMS = ("batch", "group")


def _clip() -> nn.Module:
    return nn.Hardtanh(-1.0, 1.0)  # clip h_pi to [-1, 1]: the bound behind Delta_L2


def _norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """``"batch"``: the code's BatchNorm (warns: its statistics couple the examples of a batch, outside the
    per-example sensitivity analysis); ``"group"``: GroupNorm with 8 groups, each example on its own."""
    checks.one_of(kind, NORMS, "norm", "the StoBatch networks")
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    guarantees.warn_unsound("norm='batch'")
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def unsound_modes(model: nn.Module) -> list[str]:
    """``["norm='batch' voids ..."]`` (:func:`dpbook.guarantees.warn_unsound`) if ``model`` normalises with
    batch statistics (any BatchNorm), else ``[]``."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return [guarantees.warn_unsound("norm='batch'")]
    return []


def digits_network(n_classes: int = 10, hidden: int = 32, norm: str = "batch") -> StoBatchNet:
    """A toy network for sklearn's 1x8x8 digits (the tests and the smoke profile): AE conv 3x3 1->16 stride 2
    (-> 16x4x4, Delta_R = 162), then bias, ReLU, conv 3x3 16->32, ReLU, FC 512->hidden, BN, clip, FC hidden->K.
    The 4x4 map is not pooled before the FC, and a BN precedes the clip (as in the MNIST and CIFAR networks):
    without it most of h_pi sits at +-1 under the Taylor loss."""
    first = AutoEncoderLayer(1, 16, 3, stride=2, padding=1, input_size=(8, 8))
    body = nn.Sequential(LatentBias(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


def mnist_network(n_classes: int = 10, hidden: int = 256, norm: str = "batch") -> StoBatchNet:
    """The MNIST network of ``MNIST/StoBatch.py``: AE conv 5x5 1->32 stride 2 (-> 32x14x14, Delta_R = 4,950),
    bias, ReLU, BN, avgpool 2 (-> 7x7), conv 5x5 32->64 stride 2 (-> 4x4), ReLU, FC 1024->hidden, BN, clip,
    FC hidden->K."""
    first = AutoEncoderLayer(1, 32, 5, stride=2, padding=2, input_size=(28, 28))
    body = nn.Sequential(LatentBias(32), nn.ReLU(), _norm(norm, 32), nn.AvgPool2d(2),
                         nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(1024, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


class _ConcatBlock(nn.Module):
    """The CIFAR-10 body after BN1: conv2 5x5 128->128, ReLU, concat with its input (256 ch), BN."""

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(channels, channels, 5, padding=2), _norm(norm, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([torch.relu(self.conv(x)), x], dim=1))


def cifar10_network(n_classes: int = 10, hidden: int = 256, norm: str = "batch") -> StoBatchNet:
    """The CIFAR-10 network of ``StoBatchCIFAR10/StoBatch_cifar10.py`` on 3x28x28 crops: AE conv 4x4 3->128
    stride 2 (-> 128x14x14, Delta_R = 9,504), bias, ReLU, BN1, [conv 5x5 128->128, ReLU, concat, BN], conv 5x5
    256->256, ReLU, BN, avgpool 2 (-> 7x7), FC 12,544->hidden, BN, clip, FC hidden->K."""
    first = AutoEncoderLayer(3, 128, 4, stride=2, padding=1, input_size=(28, 28))
    body = nn.Sequential(LatentBias(128), nn.ReLU(), _norm(norm, 128), _ConcatBlock(128, norm),
                         nn.Conv2d(256, 256, 5, padding=2), nn.ReLU(), _norm(norm, 256), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(256 * 7 * 7, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


def resnet18_network(n_classes: int = 30, hidden: int = 256, *, resnet: nn.Module | None = None,
                     dropout: float = 0.5) -> StoBatchNet:
    """The Tiny ImageNet network of ``StoBatchTinyImageNet/StoBatch_resnet_pretrain.py``: ResNet-18 surgery
    for 3x64x64 inputs.

    ``resnet``: a torchvision ``resnet18`` (default ``resnet18(weights=None)``: nothing is downloaded; load
    pretrained weights into it first to reproduce the paper). Its conv1 (7x7, stride 2, padding 3) becomes
    the auto-encoder layer (-> 64x32x32, Delta_R = 150,822) with the weights copied; the max-pool is removed;
    layer2 is not downsampled (block strides 1, 1, 2, 2); BN momentum 0.5; then global average pool,
    dropout, FC 512->hidden, dropout, clip, FC hidden->K (uniform +-1/sqrt(hidden)). torchvision's ResNet is
    v1 (post-activation), the code's is v2: its bn1 and ReLU stay after the first layer. Its BatchNorm warns
    as ``norm="batch"`` does.
    """
    import torchvision

    net = resnet if resnet is not None else torchvision.models.resnet18(weights=None)
    first = AutoEncoderLayer(3, 64, 7, stride=2, padding=3, input_size=(64, 64))
    with torch.no_grad():
        first.weight.copy_(net.conv1.weight)
    net.layer2[0].conv1.stride = (1, 1)
    net.layer2[0].downsample[0].stride = (1, 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.5
    body = nn.Sequential(LatentBias(64), net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4,
                         net.avgpool, nn.Flatten(), nn.Dropout(dropout), nn.Linear(512, hidden),
                         nn.Dropout(dropout), _clip())
    model = StoBatchNet(first, body, hidden, n_classes)
    nn.init.uniform_(model.head.weight, -hidden ** -0.5, hidden ** -0.5)
    guarantees.warn_unsound("norm='batch'")
    return model


NETWORKS = {(1, 8, 8): digits_network, (1, 28, 28): mnist_network, (3, 28, 28): cifar10_network,
            (3, 64, 64): resnet18_network}


def network_for(input_shape: tuple[int, ...], n_classes: int, *, norm: str = "batch",
                pretrained: bool = False) -> StoBatchNet:
    """The StoBatch network for inputs of ``input_shape``: digits 1x8x8, MNIST-sized 1x28x28, CIFAR-10 crops
    3x28x28, Tiny ImageNet 3x64x64 (ResNet-18 with torchvision's BatchNorm). ``pretrained``: the ResNet-18
    starts from torchvision's ImageNet weights, as the paper's (downloaded by torchvision on first use, into its
    cache; nothing in the tests asks for them); without it the weights are random."""
    build_net = NETWORKS.get(tuple(input_shape))
    checks.check(build_net is not None, "input_shape", "network_for()", "one of " + ", ".join(map(str, NETWORKS)),
                 tuple(input_shape), "There is no StoBatch network for other inputs (CIFAR-10's 3x32x32 images "
                 "are cropped to 28x28 first).")
    if build_net is resnet18_network:
        checks.check(norm == "batch", "norm", "network_for()", "'batch' for 3x64x64 inputs", norm,
                     "The ResNet-18 network keeps torchvision's BatchNorm.")
        if pretrained:
            import torchvision

            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            return build_net(n_classes, resnet=torchvision.models.resnet18(weights=weights))
        return build_net(n_classes)
    return build_net(n_classes, norm=norm)
