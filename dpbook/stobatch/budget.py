"""StoBatch's privacy arithmetic: sensitivities, the gammas, the budget split and the noise scales it implies.

Pure functions of numbers (and of theta_1's kernel for sigma_max), after Phan et al. (ICML 2020), in the
constants of the original code's training scripts (``haiphanNJIT/StoBatch``, e.g.
``StoBatchCIFAR10/StoBatch_cifar10.py``: ``Delta2``, ``_gamma_x``, ``gamma`` and ``epsilon2_update``;
``StoBatchTinyImageNet/parameter_settings.txt`` gives Delta2 = 3 (h^2 + 2) k^2). Epsilons are in nats, pure
epsilon-DP (delta = 0); scales are Laplace scales b (absolute, in input units), per example: the batch sum of
m examples gets m b.

One batch of m examples releases four Laplace mechanisms (:class:`Budget`):

=====================  ==============================  ===========================================
release                epsilon                         noise scale per example
=====================  ==============================  ===========================================
auto-encoder coeffs    eps1                            b_x and b_h (the same draws)
x_bar = x + n_x        eps1 / gamma_x                  b_x = Delta_R / (m eps1)
h_bar = h + n_h        eps1 / gamma                    b_h = 2 Delta_R / (m eps1)
output-layer coeffs    eps2                            b_out = Delta_L2 / (m eps2), Delta_L2 = 2 |h_pi|
=====================  ==============================  ===========================================

with Delta_R = d (beta + 2) (:func:`delta_R`), gamma_x = Delta_R / (m Delta_x) and gamma = 2 Delta_R /
(m sigma_max(theta_1)). ``notebooks/41_stobatch_algorithm.ipynb`` (sections 1, 3 and 4) derives them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import checks, privacy
from .options import DELTA_X_CONVENTIONS


def delta_R(*, in_channels: int, kernel_size: int, out_height: int, out_width: int, out_channels: int = 1,
            beta_includes_channels: bool = False) -> int:
    """Sensitivity of the auto-encoder's coefficients, Delta_R = d (beta + 2).

    d = C_in k^2 (the receptive field) and beta = H' W' (output positions; times C_out when
    ``beta_includes_channels``), as the code's ``Delta2``. CIFAR-10: 48 (196 + 2) = 9,504; MNIST 4,950;
    Tiny ImageNet 150,822.
    """
    d = in_channels * kernel_size ** 2
    beta = out_height * out_width * (out_channels if beta_includes_channels else 1)
    return d * (beta + 2)


def delta_L2(hidden: int) -> int:
    """Sensitivity of the output layer's label coefficient sum_i y_i h_pi,i: 2 |h_pi| (h_pi in [-1, 1],
    y one-hot)."""
    return 2 * hidden


def input_sensitivity(input_shape: tuple[int, ...], convention: str = "l1") -> float:
    """Delta_x of gamma_x: ``"l1"``: 2 d_in, the l1 change of one example x in [-1, 1]^d_in when it is
    replaced; ``"unit"``: 1, the original code's convention (``_gamma_x = Delta2 / L``)."""
    checks.check(convention in DELTA_X_CONVENTIONS, "convention", "input_sensitivity()",
                 "one of " + ", ".join(map(repr, DELTA_X_CONVENTIONS)), convention,
                 "It is the delta_x_convention of StoBatchOptions.")
    return 2.0 * math.prod(input_shape) if convention == "l1" else 1.0


def spectral_norm(weight: torch.Tensor) -> float:
    """sigma_max(theta_1): largest singular value of the kernel reshaped to (C_out, C_in k^2), Delta_h of gamma."""
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
    """gamma_x = Delta_R / (m Delta_x): releasing x_bar costs eps1 / gamma_x."""
    return delta_R / (batch_size * delta_x)


def gamma(*, delta_R: float, batch_size: int, sigma_max: float) -> float:
    """gamma = 2 Delta_R / (m Delta_h), Delta_h = sigma_max(theta_1): releasing h_bar costs eps1 / gamma."""
    return 2.0 * delta_R / (batch_size * sigma_max)


@dataclass(frozen=True)
class Budget:
    """The four Laplace mechanisms of one batch and their noise; all epsilons in nats, delta = 0.

    Example (the CIFAR-10 code's constants):
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
        checks.positive(v, n, "solve_budget()")
    g_x = gamma_x(delta_R=delta_R, batch_size=batch_size, delta_x=delta_x)
    g = gamma(delta_R=delta_R, batch_size=batch_size, sigma_max=sigma_max)
    eps1 = epsilon_autoencoder / (1.0 + 1.0 / g_x + 1.0 / g)
    return Budget(epsilon1=eps1, epsilon2=epsilon2, delta_R=delta_R, batch_size=batch_size, delta_x=delta_x,
                  sigma_max=sigma_max, hidden=hidden)
