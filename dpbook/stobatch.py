"""StoBatch (Phan et al., ICML 2020): DP auto-encoder, functional-mechanism output loss, adversarial objective
and stochastic batching. Section numbers refer to the spec ``specs/stobatch.md``.

The network is split at its first convolution theta_1 (spec 1.2). For a batch B of m examples, with noise
drawn *once per batch* and shared by its examples (spec 1.3, 1.5):

1. **Input and latent noise** (:func:`dp_layers`): x_bar = x + n_x, n_x ~ Lap(Delta_R / (m eps1)) per input
   coordinate; h = clip(theta_1^T x_bar, -1, 1) and h_bar = h + n_h, n_h ~ Lap(2 Delta_R / (m eps1)).
2. **Auto-encoder loss** (:func:`autoencoder_loss`, trains theta_1): the Taylor-expanded reconstruction
   cross-entropy  R_bar = sum_j [log 2 + 1/2 r_bar_j - x_bar_j r_j + 1/8 r_j^2], r = theta_1 h, r_bar = theta_1 h_bar.
3. **Output loss** (:func:`output_loss`, trains theta_2): L_tilde(z, y) = sum_k [log 2 + (1/2 - y_k) z_k + z_k^2 / 8]
   on the logits z = W h_pi (h_pi clipped to [-1, 1]), plus the functional-mechanism term -sum chi * W with
   chi ~ Lap(Delta_L2 / (m eps2)), Delta_L2 = 2 |h_pi|.
4. **Adversarial objective** (:func:`mix`): (L_benign + xi L_adv) / (1 + xi); the adversarial examples come from
   a *different* disjoint batch, crafted by I-FGSM, MIM and PGD (a third each) against the DP model with its
   own predictions (:func:`craft_adversarial`).
5. **Stochastic batching** (:func:`partition`, :func:`epoch_schedule`): one fixed partition into
   floor(N / m) disjoint batches; each batch serves once per epoch, as benign or as adversarial source.

Claimed privacy (spec 1.8): eps = eps1 + eps1/gamma_x + eps1/gamma + eps2 per batch, and the same for the whole
run by parallel composition over the disjoint batches (:class:`Budget`, :func:`privacy_report`).

Defaults are the principled choices of spec 5.3; :meth:`StoBatchOptions.original` switches every one back
to the original code's behaviour (noise drawn once from the public seed 1024 and reused for all batches,
input noise copied over colour channels, adversarial inputs without input noise, ...).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import attacks, privacy, robustness

LOG2 = math.log(2.0)
NOISE_REUSE = ("per_batch", "global_once")
FM_NOISE_FORMS = ("linear", "abs_mean")
TAYLOR_ON = ("logits", "probs")
AE_LOSSES = ("paper_second_order", "paper_first_order", "code_abs")
ADV_INPUTS = ("noisy_source", "clean_no_noise")
DELTA_X_CONVENTIONS = ("l1", "unit")
THETA1_CONSTRAINTS = ("project", "none")
ATTACK_ENSEMBLE = ("ifgsm", "mim", "pgd")


def _choice(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} of StoBatchOptions must be one of {', '.join(allowed)}; got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Options (spec 5.3) and the original code's settings (spec 2.2)
# ---------------------------------------------------------------------------------------------------
@dataclass
class StoBatchOptions:
    """Hyperparameters and switches. Defaults: the principled variant and the digits toy setting (spec 5.1,
    with Adam at 1e-2: at 1e-3 the 3 steps per epoch of 7 batches learn too slowly).

    Budgets (spec 1.8): ``epsilon_autoencoder`` = eps1 (1 + 1/gamma_x + 1/gamma) (the code's ``epsilon2``) and
    ``epsilon2`` (the code's ``epsilon3``). ``batch_size`` is m, ``xi`` the adversarial weight, ``trainers``
    the batch pairs per step (gradients averaged), ``mu_max`` the largest training attack size (mu ~ U(0, mu_max)).

    Switches, principled default first, the original's second:

    * ``noise_reuse``: ``"per_batch"`` (independent noise per disjoint batch, fixed across epochs) or
      ``"global_once"`` (one draw for every batch; spec 4 item 1);
    * ``noise_seed``: None (OS entropy) or a public seed (the code's 1024; spec 4 item 7b);
    * ``channel_shared_input_noise``: False or True (one value per pixel copied to all channels; item 2);
    * ``fm_noise_form``: ``"linear"`` (-sum chi * W, the functional mechanism) or ``"abs_mean"``
      (+mean|chi * W|, the CIFAR/TIN code; item 8);
    * ``taylor_on``: ``"logits"`` or ``"probs"`` (the TIN code's softmax-probability bug; item 9);
    * ``ae_loss``: ``"paper_second_order"``, ``"paper_first_order"`` or ``"code_abs"`` (item 10);
    * ``adv_input``: ``"noisy_source"`` (x_adv crafted from x_bar, as the paper says: post-processing) or
      ``"clean_no_noise"`` (crafted from clean x against a noisy surrogate, fed with zero input noise; item 5);
    * ``delta_x_convention``: ``"l1"`` (Delta_x = 2 d_in, replace-one l1 sensitivity of x in [-1, 1]^d_in) or
      ``"unit"`` (Delta_x = 1, the code; item 4);
    * ``beta_includes_channels``: False (beta = H' W', the code) or True (beta = H' W' C_out);
    * ``theta1_constraint``: ``"project"`` (keep sigma_max(theta_1) <= the value gamma uses) or ``"none"``
      (the code: sigma_max at initialisation only; :func:`privacy_report` re-checks it);
    * ``train_theta1_with_cls_loss``: False or True (TIN code).
    """

    epsilon_autoencoder: float = 1.0
    epsilon2: float = 1.0
    batch_size: int = 200
    xi: float = 1.5
    trainers: int = 1
    micro_batches: int = 1   # gradient accumulation inside a batch (TIN: 4,500 = 20 x 225)
    mu_max: float = 0.3
    attack_steps: int = 5
    clip: tuple[float, float] = (-1.0, 1.0)
    lr_theta1: float = 1e-2
    lr_theta2: float = 1e-2
    theta2_optimizer: str = "adam"
    partition_seed: int = 1024
    noise_reuse: str = "per_batch"
    noise_seed: int | None = None
    channel_shared_input_noise: bool = False
    fm_noise_form: str = "linear"
    taylor_on: str = "logits"
    ae_loss: str = "paper_second_order"
    adv_input: str = "noisy_source"
    delta_x_convention: str = "l1"
    beta_includes_channels: bool = False
    theta1_constraint: str = "project"
    sigma_max_bound: float | None = None   # None: sigma_max(theta_1) of the weights at prepare()
    train_theta1_with_cls_loss: bool = False

    def __post_init__(self):
        for name, allowed in (("noise_reuse", NOISE_REUSE), ("fm_noise_form", FM_NOISE_FORMS),
                              ("taylor_on", TAYLOR_ON), ("ae_loss", AE_LOSSES), ("adv_input", ADV_INPUTS),
                              ("delta_x_convention", DELTA_X_CONVENTIONS),
                              ("theta1_constraint", THETA1_CONSTRAINTS), ("theta2_optimizer", ("adam", "sgd"))):
            _choice(getattr(self, name), allowed, name)
        privacy._check_positive(self.epsilon_autoencoder, "epsilon_autoencoder", "StoBatchOptions")
        privacy._check_positive(self.epsilon2, "epsilon2", "StoBatchOptions")
        privacy._check(min(self.batch_size, self.trainers, self.micro_batches) >= 1 and self.xi >= 0,
                       "batch_size, trainers, micro_batches, xi", "StoBatchOptions", ">= 1, >= 1, >= 1, >= 0",
                       (self.batch_size, self.trainers, self.micro_batches, self.xi))

    @classmethod
    def original(cls, **overrides) -> "StoBatchOptions":
        """The original CIFAR-10 code's behaviour (spec section 4). For Tiny ImageNet's add
        ``taylor_on="probs", train_theta1_with_cls_loss=True``; for MNIST's ``fm_noise_form="linear"``."""
        code = dict(noise_reuse="global_once", noise_seed=1024, channel_shared_input_noise=True,
                    fm_noise_form="abs_mean", ae_loss="code_abs", adv_input="clean_no_noise",
                    delta_x_convention="unit", theta1_constraint="none")
        return cls(**{**code, **overrides})


#: The code's settings per dataset (spec 2.2), as :class:`StoBatchOptions` keywords; digits is spec 5.1.
PAPER_SETTINGS = {
    "digits": dict(batch_size=200, xi=1.5, mu_max=0.3, attack_steps=5, lr_theta1=1e-2, lr_theta2=1e-2),
    "mnist": dict(batch_size=2499, xi=1.0, mu_max=1.0, attack_steps=100, lr_theta1=1e-4, lr_theta2=1e-4,
                  epsilon_autoencoder=0.1, epsilon2=0.1),
    "cifar10": dict(batch_size=1851, xi=1.5, mu_max=0.5, attack_steps=3, lr_theta1=5e-2, lr_theta2=5e-2,
                    theta2_optimizer="sgd", epsilon_autoencoder=1.0, epsilon2=1.0),
    "tinyimagenet": dict(batch_size=4500, xi=1.5, mu_max=0.1, attack_steps=10, lr_theta1=1e-2, lr_theta2=1e-2,
                         epsilon_autoencoder=4.0, epsilon2=1.0, micro_batches=20),
}
PAPER_EPOCHS = {"digits": 40, "mnist": 200, "cifar10": 600, "tinyimagenet": 350}


# ---------------------------------------------------------------------------------------------------
# Privacy arithmetic (spec 1.3, 1.5, 1.8): pure functions of numbers
# ---------------------------------------------------------------------------------------------------
def delta_R(*, in_channels: int, kernel_size: int, out_height: int, out_width: int, out_channels: int = 1,
            beta_includes_channels: bool = False) -> int:
    """Sensitivity of the auto-encoder's coefficients, Delta_R = d (beta + 2) (spec 1.3).

    d = C_in k^2 (the receptive field) and beta = H' W' (output positions; times C_out when
    ``beta_includes_channels``). CIFAR-10: 48 (196 + 2) = 9,504; MNIST 4,950; Tiny ImageNet 150,822.
    """
    d = in_channels * kernel_size ** 2
    beta = out_height * out_width * (out_channels if beta_includes_channels else 1)
    return d * (beta + 2)


def delta_L2(hidden: int) -> int:
    """Sensitivity of the output layer's label coefficient sum_i y_i h_pi,i: 2 |h_pi| (spec 1.5)."""
    return 2 * hidden


def input_sensitivity(input_shape: tuple[int, ...], convention: str = "l1") -> float:
    """Delta_x of gamma_x: ``"l1"``: 2 d_in, the l1 change of one example x in [-1, 1]^d_in when it is
    replaced; ``"unit"``: 1, the original code's convention (spec 4 item 4)."""
    _choice(convention, DELTA_X_CONVENTIONS, "delta_x_convention")
    return 2.0 * math.prod(input_shape) if convention == "l1" else 1.0


def spectral_norm(weight: torch.Tensor) -> float:
    """sigma_max(theta_1): largest singular value of the kernel reshaped to (C_out, C_in k^2) (spec 1.3)."""
    return float(torch.linalg.matrix_norm(weight.detach().reshape(len(weight), -1), ord=2))


@torch.no_grad()
def project_spectral_norm_(weight: torch.Tensor, bound: float) -> torch.Tensor:
    """Clip the singular values of the reshaped kernel at ``bound`` in place (the Euclidean projection onto
    {sigma_max <= bound}), so that the gamma computed with ``bound`` stays valid after every step."""
    w = weight.reshape(len(weight), -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    if float(s[0]) > bound:
        weight.copy_(((u * s.clamp(max=bound)) @ vh).reshape(weight.shape))
    return weight


def gamma_x(*, delta_R: float, batch_size: int, delta_x: float) -> float:
    """gamma_x = Delta_R / (m Delta_x): releasing x_bar costs eps1 / gamma_x (spec 1.3)."""
    return delta_R / (batch_size * delta_x)


def gamma(*, delta_R: float, batch_size: int, sigma_max: float) -> float:
    """gamma = 2 Delta_R / (m Delta_h), Delta_h = sigma_max(theta_1): releasing h_bar costs eps1 / gamma."""
    return 2.0 * delta_R / (batch_size * sigma_max)


@dataclass(frozen=True)
class Budget:
    """The four Laplace mechanisms of one batch and their noise (spec 1.8); all epsilons in nats, delta = 0.

    Example (CIFAR-10 code constants, spec 5.2 item 1):
        >>> b = solve_budget(epsilon_autoencoder=1.0, epsilon2=1.0, delta_R=9504, batch_size=1851,
        ...                  sigma_max=0.545, delta_x=1.0, hidden=256)
        >>> round(b.gamma_x, 4), round(b.gamma, 2), round(b.epsilon1, 4), round(b.total, 6)
        (5.1345, 18.84, 0.8014, 2.0)
    """

    epsilon1: float
    epsilon2: float
    delta_R: float
    batch_size: int
    delta_x: float
    sigma_max: float
    hidden: int

    @property
    def gamma_x(self) -> float:
        return gamma_x(delta_R=self.delta_R, batch_size=self.batch_size, delta_x=self.delta_x)

    @property
    def gamma(self) -> float:
        return gamma(delta_R=self.delta_R, batch_size=self.batch_size, sigma_max=self.sigma_max)

    @property
    def terms(self) -> dict[str, float]:
        """eps1 (auto-encoder coefficients), eps1/gamma_x (x_bar), eps1/gamma (h_bar), eps2 (output layer)."""
        return {"epsilon1": self.epsilon1, "epsilon1/gamma_x": self.epsilon1 / self.gamma_x,
                "epsilon1/gamma": self.epsilon1 / self.gamma, "epsilon2": self.epsilon2}

    @property
    def total(self) -> float:
        """eps = eps1 + eps1/gamma_x + eps1/gamma + eps2: sequential composition on one batch."""
        return privacy.compose_basic(self.terms.values())[0]

    @property
    def input_scale(self) -> float:
        """b_x = Delta_R / (m eps1), per example (the batch sum gets Lap(Delta_R / eps1))."""
        return self.delta_R / (self.batch_size * self.epsilon1)

    @property
    def latent_scale(self) -> float:
        """b_h = 2 Delta_R / (m eps1)."""
        return 2.0 * self.delta_R / (self.batch_size * self.epsilon1)

    @property
    def output_scale(self) -> float:
        """b_out = Delta_L2 / (m eps2) = 2 |h_pi| / (m eps2)."""
        return delta_L2(self.hidden) / (self.batch_size * self.epsilon2)


def solve_budget(*, epsilon_autoencoder: float, epsilon2: float, delta_R: float, batch_size: int,
                 sigma_max: float, delta_x: float, hidden: int) -> Budget:
    """Split the auto-encoder budget: eps1 = eps_AE / (1 + 1/gamma_x + 1/gamma) (the code's ``epsilon2_update``)."""
    for v, n in ((epsilon_autoencoder, "epsilon_autoencoder"), (epsilon2, "epsilon2"), (sigma_max, "sigma_max"),
                 (delta_x, "delta_x")):
        privacy._check_positive(v, n, "solve_budget()")
    g_x = gamma_x(delta_R=delta_R, batch_size=batch_size, delta_x=delta_x)
    g = gamma(delta_R=delta_R, batch_size=batch_size, sigma_max=sigma_max)
    eps1 = epsilon_autoencoder / (1.0 + 1.0 / g_x + 1.0 / g)
    return Budget(epsilon1=eps1, epsilon2=epsilon2, delta_R=delta_R, batch_size=batch_size, delta_x=delta_x,
                  sigma_max=sigma_max, hidden=hidden)


# ---------------------------------------------------------------------------------------------------
# The DP auto-encoder layer theta_1 (spec 1.2-1.4)
# ---------------------------------------------------------------------------------------------------
class AutoEncoderLayer(nn.Module):
    """theta_1: a bias-free convolution used as a tied-weight auto-encoder on inputs ``input_shape`` (C, H, W).

    ``encode(x) = clip(conv(x), -1, 1)``: h in [-1, 1]^beta, as the sensitivity Delta_R assumes.
    ``decode(h) = conv_transpose(h)``: the adjoint map theta_1 h, giving the reconstruction logits r of
    shape ``input_shape``. The bias b_1 is added after the latent noise (as in the code), so only the
    classifier trains it; it lives in theta_2 (:class:`LatentBias`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, padding: int,
                 input_size: tuple[int, int]):
        super().__init__()
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.xavier_uniform_(self.weight)  # the code's Xavier initialisation
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


def _clip() -> nn.Module:
    return nn.Hardtanh(-1.0, 1.0)  # clip h_pi to [-1, 1]: the bound behind Delta_L2


NORMS = ("batch", "group")


def _norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """The networks' normalisation layer: ``"batch"`` (the code's BatchNorm, whose statistics couple the
    examples of a batch, outside the per-example sensitivity analysis) or ``"group"`` (GroupNorm with 8
    groups: each example normalised on its own, so Delta_L2 and the per-example gradients stay valid)."""
    _choice(kind, NORMS, "norm")
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def digits_network(n_classes: int = 10, hidden: int = 32, norm: str = "batch") -> StoBatchNet:
    """The toy network of spec 5.1 for 1x8x8 digits: AE conv 3x3 1->16 stride 2 (-> 16x4x4, Delta_R = 162),
    then bias, ReLU, conv 3x3 16->32, ReLU, FC 512->hidden, BN, clip, FC hidden->K. Two changes to spec 5.1,
    both for trainability under the Taylor loss: no global pooling of the 4x4 map before the FC, and a BN
    before the clip (as in the MNIST and CIFAR networks), without which most of h_pi sits at +-1."""
    first = AutoEncoderLayer(1, 16, 3, stride=2, padding=1, input_size=(8, 8))
    body = nn.Sequential(LatentBias(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


def mnist_network(n_classes: int = 10, hidden: int = 256, norm: str = "batch") -> StoBatchNet:
    """The MNIST network (spec 2.1): AE conv 5x5 1->32 stride 2 (-> 32x14x14, Delta_R = 4,950), bias, ReLU,
    BN, avgpool 2 (-> 7x7), conv 5x5 32->64 stride 2 (-> 4x4), ReLU, FC 1024->hidden, BN, clip, FC hidden->K."""
    first = AutoEncoderLayer(1, 32, 5, stride=2, padding=2, input_size=(28, 28))
    body = nn.Sequential(LatentBias(32), nn.ReLU(), _norm(norm, 32), nn.AvgPool2d(2),
                         nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(1024, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


class _ConcatBlock(nn.Module):
    """CIFAR body after BN1: conv2 5x5 128->128, ReLU, concat with its input (256 ch), BN."""

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(channels, channels, 5, padding=2), _norm(norm, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([torch.relu(self.conv(x)), x], dim=1))


def cifar10_network(n_classes: int = 10, hidden: int = 256, norm: str = "batch") -> StoBatchNet:
    """The CIFAR-10 network (spec 2.1) on 3x28x28 crops: AE conv 4x4 3->128 stride 2 (-> 128x14x14,
    Delta_R = 9,504), bias, ReLU, BN1, [conv 5x5 128->128, ReLU, concat, BN], conv 5x5 256->256, ReLU, BN,
    avgpool 2 (-> 7x7), FC 12,544->hidden, BN, clip, FC hidden->K."""
    first = AutoEncoderLayer(3, 128, 4, stride=2, padding=1, input_size=(28, 28))
    body = nn.Sequential(LatentBias(128), nn.ReLU(), _norm(norm, 128), _ConcatBlock(128, norm),
                         nn.Conv2d(256, 256, 5, padding=2), nn.ReLU(), _norm(norm, 256), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(256 * 7 * 7, hidden), _norm(norm, hidden, 1), _clip())
    return StoBatchNet(first, body, hidden, n_classes)


def resnet18_network(n_classes: int = 30, hidden: int = 256, *, resnet: nn.Module | None = None,
                     dropout: float = 0.5) -> StoBatchNet:
    """The Tiny ImageNet network (spec 2.1): ResNet-18 surgery for 3x64x64 inputs.

    ``resnet``: a torchvision ``resnet18`` (default ``resnet18(weights=None)``: nothing is downloaded; load
    pretrained weights into it first to reproduce the paper). Its conv1 (7x7, stride 2, padding 3) becomes
    the auto-encoder layer (-> 64x32x32, Delta_R = 150,822) with the weights copied; the max-pool is removed;
    layer2 is not downsampled (block strides 1, 1, 2, 2); BN momentum 0.5; then global average pool,
    dropout, FC 512->hidden, dropout, clip, FC hidden->K (uniform +-1/sqrt(hidden)). torchvision's ResNet is
    v1 (post-activation), the code's is v2: its bn1 and ReLU stay after the first layer.
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
    return model


NETWORKS = {(1, 8, 8): digits_network, (1, 28, 28): mnist_network, (3, 28, 28): cifar10_network,
            (3, 64, 64): resnet18_network}


def network_for(input_shape: tuple[int, ...], n_classes: int, *, norm: str = "batch",
                pretrained: bool = False) -> StoBatchNet:
    """The spec's network for inputs of ``input_shape``: digits 1x8x8, MNIST-sized 1x28x28, CIFAR-10 crops
    3x28x28, Tiny ImageNet 3x64x64 (ResNet-18 with torchvision's BatchNorm). ``pretrained``: the ResNet-18
    starts from torchvision's ImageNet weights, as the paper's (downloaded by torchvision on first use, into its
    cache; nothing in the tests asks for them); without it the weights are random."""
    build = NETWORKS.get(tuple(input_shape))
    if build is None:
        raise ValueError(f"no StoBatch network for inputs {tuple(input_shape)}; known: {', '.join(map(str, NETWORKS))}"
                         " (CIFAR-10's 3x32x32 images are cropped to 28x28 first)")
    if build is resnet18_network:
        if norm != "batch":
            raise ValueError("the ResNet-18 network keeps torchvision's BatchNorm; use norm='batch'")
        if pretrained:
            import torchvision

            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            return build(n_classes, resnet=torchvision.models.resnet18(weights=weights))
        return build(n_classes)
    return build(n_classes, norm=norm)


# ---------------------------------------------------------------------------------------------------
# Losses (spec 1.3, 1.5)
# ---------------------------------------------------------------------------------------------------
def exact_bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum over all but the first dimension of y log(1 + e^-z) + (1 - y) log(1 + e^z); ``(n,)``."""
    return (y * F.softplus(-z) + (1 - y) * F.softplus(z)).flatten(1).sum(1)


def taylor_bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Second-order Taylor expansion of :func:`exact_bce` at z = 0: sum [log 2 + (1/2 - y) z + z^2 / 8], ``(n,)``.

    The third derivative vanishes at 0 and |d^4/dz^4| <= 1/8, so for y in [0, 1] the error is at most
    sum z^4 / 192 (Lagrange remainder).
    """
    return (LOG2 + (0.5 - y) * z + z.square() / 8).flatten(1).sum(1)


def autoencoder_loss(x_bar: torch.Tensor, h: torch.Tensor, h_bar: torch.Tensor, first: AutoEncoderLayer, *,
                     form: str = "paper_second_order") -> torch.Tensor:
    """The perturbed reconstruction loss R_bar of spec 1.3, mean over the batch (a scalar).

    With r = theta_1 h and r_bar = theta_1 h_bar (:meth:`AutoEncoderLayer.decode`), per example

        R_bar = sum_j [ log 2 + 1/2 r_bar_j - x_bar_j r_j + 1/8 r_j^2 ]

    i.e. the Taylor loss of R_B whose data coefficients 1/2 h and x carry the noise. ``"paper_first_order"``
    drops the 1/8 r^2 term; ``"code_abs"`` is the code's |log 2 + 1/2 r_c - x_bar r_c| with r_c =
    relu(theta_1 h_bar) (on our tied decoder, not the code's upsample-and-convolve one).
    """
    _choice(form, AE_LOSSES, "ae_loss")
    r, r_bar = first.decode(h), first.decode(h_bar)
    if form == "code_abs":
        r_c = torch.relu(r_bar)
        return (LOG2 + 0.5 * r_c - x_bar * r_c).abs().flatten(1).sum(1).mean()
    per_coordinate = LOG2 + 0.5 * r_bar - x_bar * r
    if form == "paper_second_order":
        per_coordinate = per_coordinate + r.square() / 8
    return per_coordinate.flatten(1).sum(1).mean()


def fm_term(weight: torch.Tensor, chi: torch.Tensor, *, form: str = "linear") -> torch.Tensor:
    """The functional mechanism's noise term for the head W ``(K, hidden)`` and chi ``(hidden, K)``.

    ``"linear"``: -sum_jk chi_jk W_kj: adding chi to the coefficient (1/m) sum_i y_ik h_ij of -y_k z_k; its
    gradient in W is exactly -chi^T. ``"abs_mean"``: +mean|chi * W^T|, the CIFAR/TIN code's random L1 penalty.
    """
    _choice(form, FM_NOISE_FORMS, "fm_noise_form")
    product = chi * weight.T
    return -product.sum() if form == "linear" else product.abs().mean()


def output_loss(logits: torch.Tensor, y_onehot: torch.Tensor, weight: torch.Tensor, chi: torch.Tensor, *,
                fm_noise_form: str = "linear", taylor_on: str = "logits") -> torch.Tensor:
    """L_bar = mean_i taylor_bce(z_i, y_i) + fm_term(W, chi) (spec 1.5): a scalar. ``taylor_on="probs"``
    expands around the softmax probabilities instead of the logits (the TIN code)."""
    _choice(taylor_on, TAYLOR_ON, "taylor_on")
    z = logits if taylor_on == "logits" else logits.softmax(-1)
    return taylor_bce(z, y_onehot).mean() + fm_term(weight, chi, form=fm_noise_form)


def mix(benign: torch.Tensor, adversarial: torch.Tensor, xi: float) -> torch.Tensor:
    """The adversarial objective (spec 1.5): (L_benign + xi L_adv) / (1 + xi), both batch means."""
    return (benign + xi * adversarial) / (1.0 + xi)


# ---------------------------------------------------------------------------------------------------
# Noise tables (spec 1.7 step 2)
# ---------------------------------------------------------------------------------------------------
@dataclass
class BatchNoise:
    """One batch's noise: x ``(1, C, H, W)``, h ``(1, C', H', W')`` (broadcast over the batch), chi ``(hidden, K)``."""

    x: torch.Tensor
    h: torch.Tensor
    chi: torch.Tensor


@dataclass
class NoiseTable:
    """Noise of every batch (``n_tables`` = number of batches) or one global draw (``n_tables`` = 1)."""

    x: torch.Tensor      # (n_tables, C, H, W)
    h: torch.Tensor      # (n_tables, C', H', W')
    chi: torch.Tensor    # (n_tables, hidden, K)

    def __getitem__(self, batch_id: int) -> BatchNoise:
        i = int(batch_id) if len(self.x) > 1 else 0
        return BatchNoise(self.x[i:i + 1], self.h[i:i + 1], self.chi[i])


def draw_noise(n_tables: int, *, budget: Budget, input_shape: tuple[int, ...], latent_shape: tuple[int, ...],
               n_classes: int, channel_shared: bool = False, generator: torch.Generator | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> NoiseTable:
    """Laplace noise at the budget's scales b_x, b_h, b_out from a DP generator (OS-seeded by default).

    ``channel_shared``: one input value per pixel position copied to every channel (the code).
    """
    c, height, width = input_shape
    kw = dict(generator=generator, device=device, dtype=dtype)
    x = privacy.laplace_noise((n_tables, 1 if channel_shared else c, height, width), scale=budget.input_scale, **kw)
    h = privacy.laplace_noise((n_tables, *latent_shape), scale=budget.latent_scale, **kw)
    chi = privacy.laplace_noise((n_tables, budget.hidden, n_classes), scale=budget.output_scale, **kw)
    return NoiseTable(x=x.expand(n_tables, c, height, width).contiguous(), h=h, chi=chi)


# ---------------------------------------------------------------------------------------------------
# Stochastic batching (spec 1.7)
# ---------------------------------------------------------------------------------------------------
def partition(n_examples: int, batch_size: int, *, seed: int = 1024,
              device: str | torch.device | None = None) -> torch.Tensor:
    """One fixed partition into floor(N / m) disjoint batches: indices ``(n_batches, m)``; the remainder is
    dropped. The shuffle is public (independent of the data), so an ordinary seed is fine."""
    if not 1 <= batch_size <= n_examples:
        raise ValueError(f"batch_size of partition() must be in [1, {n_examples}]; got {batch_size}")
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed))
    n_batches = n_examples // batch_size
    return order[:n_batches * batch_size].view(n_batches, batch_size).to(device)


def epoch_schedule(n_batches: int, *, trainers: int = 1,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch *ids* for one epoch: benign ``(steps, trainers)`` and adversarial sources ``(steps, trainers)``.

    Each step draws 2 x ``trainers`` ids without replacement from the batches not used yet this epoch, so a
    batch serves at most once per epoch (exactly once when 2 x trainers divides the number of batches; the
    rest wait for the next epoch), and the benign and adversarial batches of a step differ. The original TIN
    code appended the *position* in the shrinking list instead of the id (spec 4 item 18); here ids are
    taken from a permutation, which cannot repeat.
    """
    if n_batches < 2 * trainers:
        raise ValueError(f"epoch_schedule() needs at least 2 x trainers = {2 * trainers} batches; got {n_batches}. "
                         "Use a smaller batch_size or fewer trainers.")
    steps = n_batches // (2 * trainers)
    ids = torch.randperm(n_batches, generator=generator)[:steps * 2 * trainers].view(steps, 2, trainers)
    return ids[:, 0], ids[:, 1]


# ---------------------------------------------------------------------------------------------------
# Adversarial examples (spec 1.6)
# ---------------------------------------------------------------------------------------------------
def craft_adversarial(target, x: torch.Tensor, *, mu_max: float, steps: int, clip: tuple[float, float] | None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """I-FGSM, MIM (decay 1) and PGD on a third of ``x`` each, at one attack size mu ~ U(0, ``mu_max``).

    ``target`` maps inputs to logits (the DP model); no labels are passed, so each attack uses the
    model's own predictions and the true labels never reach it. Returns (x_adv, mu).
    """
    u = torch.rand((), generator=generator, device="cpu" if generator is None else generator.device)
    mu = float(mu_max * u)
    parts = [p for p in torch.tensor_split(x, len(ATTACK_ENSEMBLE)) if len(p)]
    return torch.cat([attacks.ATTACKS[name](target, part, mu=mu, steps=steps, clip=clip, generator=generator)
                      for name, part in zip(ATTACK_ENSEMBLE, parts)]), mu


# ---------------------------------------------------------------------------------------------------
# One batch pair's loss; steps and epochs
# ---------------------------------------------------------------------------------------------------
def dp_layers(model: StoBatchNet, x: torch.Tensor, noise: BatchNoise, *,
              input_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_bar = x + n_x, h = clip(theta_1^T x_bar, -1, 1), h_bar = h + n_h (spec 1.3): (x_bar, h, h_bar)."""
    x_bar = x + noise.x if input_noise else x
    h = model.first(x_bar)
    return x_bar, h, h + noise.h


def batch_pair_loss(model: StoBatchNet, x: torch.Tensor, y: torch.Tensor, x_source: torch.Tensor,
                    y_source: torch.Tensor, noise: BatchNoise, noise_source: BatchNoise, options: StoBatchOptions,
                    *, attack_generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The StoBatch loss of one trainer: benign batch (x, y) and adversarial source batch (x_source, y_source),
    each with its own noise. Returns (auto-encoder loss + classifier loss, stats). Backward and the
    optimiser step are the caller's (:func:`train_step`; a distributed wrapper averages the gradients).
    """
    n_classes = model.n_classes
    # 1. benign batch through the DP layers
    x_bar, h, h_bar = dp_layers(model, x, noise)
    # 2. adversarial examples from the other batch, crafted against the DP model (eval mode) with its own labels
    was_training = model.training
    model.eval()
    try:
        if options.adv_input == "noisy_source":   # from x_bar: post-processing of the released input
            x_adv, mu = craft_adversarial(model, x_source + noise_source.x, mu_max=options.mu_max,
                                          steps=options.attack_steps, clip=None, generator=attack_generator)
        else:                                      # the code: clean x against a surrogate with input noise
            x_adv, mu = craft_adversarial(lambda z: model(z, noise_x=noise_source.x), x_source,
                                          mu_max=options.mu_max, steps=options.attack_steps, clip=options.clip,
                                          generator=attack_generator)
    finally:
        model.train(was_training)
    x_adv_bar, h_adv, h_adv_bar = dp_layers(model, x_adv, noise_source, input_noise=False)
    # 3. auto-encoder loss (theta_1)
    ae = mix(autoencoder_loss(x_bar, h, h_bar, model.first, form=options.ae_loss),
             autoencoder_loss(x_adv_bar, h_adv, h_adv_bar, model.first, form=options.ae_loss), options.xi)
    # 4. classifier loss (theta_2) on h_bar; theta_1 only through the auto-encoder loss unless asked
    if not options.train_theta1_with_cls_loss:
        h_bar, h_adv_bar = h_bar.detach(), h_adv_bar.detach()
    logits, logits_adv = model.rest(h_bar), model.rest(h_adv_bar)
    kw = dict(fm_noise_form=options.fm_noise_form, taylor_on=options.taylor_on)
    w = model.head.weight
    out = mix(output_loss(logits, F.one_hot(y, n_classes).to(logits.dtype), w, noise.chi, **kw),
              output_loss(logits_adv, F.one_hot(y_source, n_classes).to(logits.dtype), w, noise_source.chi, **kw),
              options.xi)
    stats = {"ae_loss": ae.detach(), "output_loss": out.detach(), "mu": torch.tensor(mu, device=logits.device),
             "train_accuracy": (logits.argmax(1) == y).float().mean(),
             "adv_accuracy": (logits_adv.argmax(1) == y_source).float().mean()}
    return ae + out, stats


@dataclass
class StoBatchRun:
    """State of a training run made by :func:`prepare`: partition, budget, noise, the sigma_max bound."""

    partition: torch.Tensor     # (n_batches, m) example indices
    budget: Budget
    noise: NoiseTable
    sigma_bound: float          # sigma_max(theta_1) that gamma uses
    sigma_max_seen: float       # largest sigma_max(theta_1) observed after a step
    options: StoBatchOptions
    steps: int = 0


def prepare(model: StoBatchNet, n_examples: int, options: StoBatchOptions, *,
            generator: torch.Generator | None = None) -> StoBatchRun:
    """Partition, budget (gamma from the *current* theta_1, e.g. after loading pretrained weights) and noise.

    ``generator``: DP noise generator; default OS-seeded on the model's device, or the public
    ``options.noise_seed`` (warns :class:`dpbook.privacy.UnsafeSeedWarning`).
    """
    w = model.first.weight
    if generator is None:
        generator = privacy.noise_generator(w.device, seed=options.noise_seed)
    sigma = options.sigma_max_bound or spectral_norm(w)
    if options.theta1_constraint == "project":
        project_spectral_norm_(w, sigma)
    budget = solve_budget(epsilon_autoencoder=options.epsilon_autoencoder, epsilon2=options.epsilon2,
                          delta_R=model.first.delta_R(options.beta_includes_channels), batch_size=options.batch_size,
                          sigma_max=sigma, hidden=model.hidden,
                          delta_x=input_sensitivity(model.first.input_shape, options.delta_x_convention))
    parts = partition(n_examples, options.batch_size, seed=options.partition_seed, device=w.device)
    n_tables = len(parts) if options.noise_reuse == "per_batch" else 1
    noise = draw_noise(n_tables, budget=budget, input_shape=model.first.input_shape,
                       latent_shape=model.first.latent_shape, n_classes=model.n_classes,
                       channel_shared=options.channel_shared_input_noise, generator=generator,
                       device=w.device, dtype=w.dtype)
    return StoBatchRun(parts, budget, noise, sigma, spectral_norm(w), options)


def make_optimizers(model: StoBatchNet, options: StoBatchOptions) -> list[torch.optim.Optimizer]:
    """Adam on theta_1; Adam or SGD on theta_2 (the CIFAR code uses SGD)."""
    theta2 = (torch.optim.Adam if options.theta2_optimizer == "adam" else torch.optim.SGD)
    return [torch.optim.Adam(model.first.parameters(), lr=options.lr_theta1),
            theta2(model.rest.parameters(), lr=options.lr_theta2)]


def accumulate_trainer(model: StoBatchNet, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor, benign_id: int,
                       adversarial_id: int, *, trainers: int,
                       attack_generator: torch.Generator | None = None) -> list[dict]:
    """One trainer's share of a step: :func:`batch_pair_loss` on benign batch ``benign_id`` and adversarial
    source ``adversarial_id`` with their noise, divided by the number of ``trainers``, backward into
    ``p.grad`` (which accumulates). With ``micro_batches`` = k both batches are cut into k chunks whose
    losses, weighted by their share of the batch, accumulate to the full batch's gradient (up to BatchNorm's
    statistics and one attack size per chunk). Returns the chunks' stats."""
    opts, stats = run.options, []
    ib, ia = run.partition[benign_id], run.partition[adversarial_id]
    for cb, ca in zip(ib.tensor_split(opts.micro_batches), ia.tensor_split(opts.micro_batches)):
        loss, s = batch_pair_loss(model, x[cb], y[cb], x[ca], y[ca], run.noise[benign_id],
                                  run.noise[adversarial_id], opts, attack_generator=attack_generator)
        (loss * len(cb) / (len(ib) * trainers)).backward()
        stats.append({"loss": loss.detach(), **s})
    return stats


def finish_step(model: StoBatchNet, optimizers, run: StoBatchRun) -> None:
    """The optimisers step; theta_1 is projected to sigma_max <= ``run.sigma_bound``
    (``theta1_constraint="project"``), or its sigma_max is recorded for :func:`privacy_report` (``"none"``)."""
    for opt in optimizers:
        opt.step()
    if run.options.theta1_constraint == "project":
        project_spectral_norm_(model.first.weight, run.sigma_bound)
    run.sigma_max_seen = max(run.sigma_max_seen, spectral_norm(model.first.weight))
    run.steps += 1


def mean_stats(stats: list[dict]) -> dict:
    """Mean of each statistic over chunks and trainers, with one host sync."""
    means = torch.stack([torch.stack([s[k].float() for s in stats]).mean() for k in stats[0]])
    return dict(zip(stats[0], means.tolist()))


def train_step(model: StoBatchNet, optimizers, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor,
               benign_ids: torch.Tensor, adversarial_ids: torch.Tensor, *,
               attack_generator: torch.Generator | None = None,
               attack_generators: list[torch.Generator] | None = None) -> dict:
    """One StoBatch step with the trainers simulated in this process. Trainer t takes benign batch
    ``benign_ids[t]`` and adversarial source ``adversarial_ids[t]`` (:func:`accumulate_trainer`), so the
    gradients are averaged over trainers; then :func:`finish_step`. ``attack_generators`` gives each trainer
    its own attack randomness (what :mod:`dpbook.distributed` reproduces with one process per trainer);
    otherwise all trainers share ``attack_generator``. Each trainer starts from the step's BatchNorm running
    statistics, and the step ends with their average over trainers (:func:`running_buffers`), so that no
    trainer sees another's batches through them.
    """
    trainers = len(benign_ids)
    gens = attack_generators if attack_generators is not None else [attack_generator] * trainers
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    buffers = running_buffers(model)
    start = [b.clone() for b in buffers]
    total = [torch.zeros_like(b) for b in buffers]
    stats = []
    for t, (b, a) in enumerate(zip(benign_ids.tolist(), adversarial_ids.tolist())):  # one turn per trainer
        for buf, s0 in zip(buffers, start):  # every trainer starts the step from the same statistics
            buf.copy_(s0)
        stats += accumulate_trainer(model, run, x, y, b, a, trainers=trainers, attack_generator=gens[t])
        for acc, buf in zip(total, buffers):
            acc += buf
    for buf, acc in zip(buffers, total):  # then they are averaged, as the distributed trainers do
        buf.copy_(acc / trainers)
    finish_step(model, optimizers, run)
    return mean_stats(stats)


def running_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """BatchNorm's running means and variances (floating-point buffers; the step counters are the same for
    every trainer). Trainers of one step start from the same values and end with their average."""
    return [b for name, b in model.named_buffers() if b.is_floating_point()]


def train_epoch(model: StoBatchNet, optimizers, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor, *,
                schedule_generator: torch.Generator | None = None,
                attack_generator: torch.Generator | None = None) -> dict:
    """One epoch: :func:`epoch_schedule`, then :func:`train_step` per step. Returns the mean stats, the
    step count and the privacy numbers of :func:`privacy_report`."""
    model.train()
    benign, adversarial = epoch_schedule(len(run.partition), trainers=run.options.trainers,
                                         generator=schedule_generator)
    stats = [train_step(model, optimizers, run, x, y, b, a, attack_generator=attack_generator)
             for b, a in zip(benign, adversarial)]
    return epoch_report(stats, run)


def epoch_report(stats: list[dict], run: StoBatchRun) -> dict:
    """The mean of the steps' stats, the step count and :func:`privacy_report` (what an epoch returns)."""
    mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    return {**mean, "steps": len(stats), **privacy_report(run)}


def privacy_report(run: StoBatchRun) -> dict:
    """The claimed budget from :mod:`dpbook.privacy` arithmetic, never a constant (spec 1.8).

    ``epsilon``: the paper's claim, eps1 + eps1/gamma_x + eps1/gamma + eps2 per batch, composed in parallel over
    the disjoint batches. ``epsilon_recheck``: the same with the largest sigma_max(theta_1) seen (the noise
    stays calibrated to ``sigma_bound``, so only eps1/gamma changes; equal to ``epsilon`` under projection).
    With ``noise_reuse="global_once"`` the batches share one noise draw, and parallel composition does not
    obviously hold (spec 4 item 1): the number is the paper's claim, not a proof.
    """
    n_batches = len(run.partition)
    recheck = dataclasses.replace(run.budget, sigma_max=max(run.sigma_max_seen, run.sigma_bound))
    return {"epsilon": privacy.compose_parallel([run.budget.total] * n_batches)[0],
            "epsilon_recheck": privacy.compose_parallel([recheck.total] * n_batches)[0],
            **run.budget.terms, "sigma_bound": run.sigma_bound,
            "sigma_max_seen": run.sigma_max_seen, "input_scale": run.budget.input_scale,
            "latent_scale": run.budget.latent_scale, "output_scale": run.budget.output_scale}


# ---------------------------------------------------------------------------------------------------
# Inference with fresh noise (certification lives in dpbook.robustness)
# ---------------------------------------------------------------------------------------------------
def noisy_network(model: StoBatchNet, budget: Budget, *,
                  generator: torch.Generator | None = None) -> robustness.NoisyNetwork:
    """The trained model with *fresh* Laplace noise at the full training scales b_x and b_h, drawn per example
    and per forward (spec 1.9.4, principled protocol), for :func:`dpbook.robustness.monte_carlo_counts`."""
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


INFERENCE = ("fresh", "original")


def original_predictor(model: StoBatchNet, run: StoBatchRun, *, fraction: float = 0.1,
                       generator: torch.Generator | None = None):
    """The code's inference (spec 1.9.4): the training noise N (batch 0's; the one global draw in the original)
    stays in; on top, fresh noise at ``fraction`` of the training scales (the code's /10), one source
    re-randomised per forward, and the vote is the argmax of the product of the two softmaxes. BatchNorm runs
    in training mode on the test batch (its running statistics are left as they are). Returns
    ``predict(x) -> log(p_1 p_2)`` ``(n, K)``."""
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
    """The trained model as it is queried (:class:`dpbook.evaluation.Deployed`): ``"fresh"`` Laplace noise at
    the full training scales per example and forward, BatchNorm in eval mode (:func:`noisy_network`; the
    principled protocol), or the code's protocol (:func:`original_predictor`). Certified with ``mode``."""
    from .evaluation import Deployed

    _choice(inference, INFERENCE, "inference")
    model.eval()
    predict = (noisy_network(model, run.budget, generator=generator) if inference == "fresh"
               else original_predictor(model, run, generator=generator))
    return Deployed(predict=predict, n_classes=model.n_classes,
                    certify=certifier(model, input_scale=run.budget.input_scale,
                                      latent_scale=run.budget.latent_scale, mode=mode))
