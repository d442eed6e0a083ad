"""StoBatch's losses: the DP auto-encoder's perturbed reconstruction loss (trains theta_1), the
second-order Taylor output loss with the functional mechanism's noise term (trains theta_2), and the
benign/adversarial mix.

All losses are means over the batch (scalars) unless said otherwise; logits z and reconstruction logits r are
pre-sigmoid. The Taylor expansions are Phan et al. (ICML 2020)'s, in the form of the original code
(``haiphanNJIT/StoBatch``: ``EncLayer.get_train_ops2`` in ``StoBatchCIFAR10/mlp.py`` for the auto-encoder,
``StoBatchTinyImageNet/taylor_loss.py`` and the scripts' output losses for the classifier).
``notebooks/41_stobatch_algorithm.ipynb`` (sections 1 and 2) checks them against the exact losses.

Example: with theta_1 = 0 and no noise the auto-encoder loss is d log 2 per example.
    >>> import torch
    >>> from dpbook.models import AutoEncoderLayer
    >>> first = AutoEncoderLayer(1, 4, 3, stride=2, padding=1, input_size=(8, 8))
    >>> _ = torch.nn.init.zeros_(first.weight)
    >>> x = torch.rand(5, 1, 8, 8); h = first(x)
    >>> round(float(autoencoder_loss(x, h, h, first).detach()) / (64 * LOG2), 6)
    1.0
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import checks
from ..models import AutoEncoderLayer
from .options import AE_LOSSES, FM_NOISE_FORMS, TAYLOR_ON

LOG2 = math.log(2.0)


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
    """The perturbed reconstruction loss R_bar of the DP auto-encoder, mean over the batch (a scalar).

    With r = theta_1 h and r_bar = theta_1 h_bar (:meth:`dpbook.models.AutoEncoderLayer.decode`), per example

        R_bar = sum_j [ log 2 + 1/2 r_bar_j - x_bar_j r_j + 1/8 r_j^2 ]

    i.e. the Taylor loss of the reconstruction cross-entropy whose data coefficients 1/2 h and x carry the
    noise. ``"paper_first_order"`` drops the 1/8 r^2 term; ``"code_abs"`` is the code's
    |log 2 + 1/2 r_c - x_bar r_c| with r_c = relu(theta_1 h_bar) (on our tied decoder, not the code's
    upsample-and-convolve one).
    """
    checks.one_of(form, AE_LOSSES, "form", "autoencoder_loss()")
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
    gradient in W is exactly -chi^T (``MNIST/StoBatch.py``). ``"abs_mean"``: +mean|chi * W^T|, the CIFAR-10 and
    Tiny ImageNet code's random L1 penalty.
    """
    checks.one_of(form, FM_NOISE_FORMS, "form", "fm_term()")
    product = chi * weight.T
    return -product.sum() if form == "linear" else product.abs().mean()


def output_loss(logits: torch.Tensor, y_onehot: torch.Tensor, weight: torch.Tensor, chi: torch.Tensor, *,
                fm_noise_form: str = "linear", taylor_on: str = "logits") -> torch.Tensor:
    """L_bar = mean_i taylor_bce(z_i, y_i) + fm_term(W, chi): a scalar. ``taylor_on="probs"`` expands around
    the softmax probabilities instead of the logits (the Tiny ImageNet code)."""
    checks.one_of(taylor_on, TAYLOR_ON, "taylor_on", "output_loss()")
    z = logits if taylor_on == "logits" else logits.softmax(-1)
    return taylor_bce(z, y_onehot).mean() + fm_term(weight, chi, form=fm_noise_form)


def mix(benign: torch.Tensor, adversarial: torch.Tensor, xi: float) -> torch.Tensor:
    """The adversarial objective: (L_benign + xi L_adv) / (1 + xi), both batch means."""
    return (benign + xi * adversarial) / (1.0 + xi)
