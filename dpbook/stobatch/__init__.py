"""StoBatch (Phan et al., ICML 2020): DP auto-encoder, functional-mechanism output loss, adversarial objective
and stochastic batching, with certified robustness at inference; and a sound StoBatch, the default.

**Sound by default** (``StoBatchOptions().release == "per_example"``, :mod:`.release`, :mod:`.accounting`,
:mod:`.above`): every example's input and label released once with noise of its own (or theta_1 learnt on public
images and DP-SGD on every layer above it), one RDP accountant under replace-one, everything else
post-processing. ``notebooks/41_stobatch_algorithm.ipynb`` (section 7) sketches the proof;
``notebooks/42_stobatch_experiments.ipynb`` searches the designs. **The paper's mechanism**
(``release="batch_shared"``, below) shares its noise within a batch and leaves the hidden layers' labels
unprotected, so it voids the guarantee; it stays available, loud, to reproduce the paper.

The paper's network (:func:`dpbook.models.network_for`) is split at its first convolution theta_1. For a batch B of
m examples, with noise drawn *once per batch* and shared by its examples:

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

Claimed privacy: eps = eps1 + eps1/gamma_x + eps1/gamma + eps2 per batch, and the same for the whole run by
parallel composition over the disjoint batches (:class:`Budget`, :func:`privacy_report`).

Its switches default to the principled choices; :meth:`StoBatchOptions.original` switches every one back to the original
code's behaviour (``haiphanNJIT/StoBatch`` on GitHub: noise drawn once from the public seed 1024 and reused for
all batches, input noise copied over colour channels, adversarial inputs without input noise, ...). The table
"differences from the original code" of ``book/stobatch.md`` lists them; ``notebooks/41_stobatch_algorithm.ipynb``
walks through the algorithm and ``notebooks/42_stobatch_experiments.ipynb`` measures it.

The modules, in the order of the algorithm:

==================  =============================================================================
:mod:`.options`     :class:`StoBatchOptions`, the original code's settings, :func:`unsound_modes`
:mod:`.release`     the sound per-example release: public coder, input noise, randomized response
:mod:`.accounting`  one RDP accountant (replace-one) for the release, the labels and DP-SGD
:mod:`.above`       DP-SGD above the DP layer, with adversarial examples and smoothing noise
:mod:`.budget`      Delta_R, Delta_L2, Delta_x, gamma_x, gamma, sigma_max; :class:`Budget` and its noise scales
:mod:`.batching`    the partition, each epoch's schedule, the per-batch noise table
:mod:`.losses`      auto-encoder loss, Taylor output loss, the functional mechanism's term, the mix
:mod:`.objective`   the noisy forward, adversarial examples, one trainer's loss on a batch pair
:mod:`.step`        :func:`prepare`, steps and epochs with T trainers, :func:`privacy_report`
:mod:`.inference`   fresh-noise and original inference, smoothing, certification and radii
==================  =============================================================================

The networks (:class:`dpbook.models.StoBatchNet` and its builders) live in :mod:`dpbook.models` and are
re-exported here.
"""
from __future__ import annotations

from .. import privacy  # noqa: F401  (``sb.privacy`` in the chapters)
from ..models import (NETWORKS, NORMS, AutoEncoderLayer, LatentBias, StoBatchNet, cifar10_network,  # noqa: F401
                      digits_network, mnist_network, network_for, resnet18_network)
from .batching import BatchNoise, NoiseTable, draw_noise, epoch_schedule, partition, zero_noise
from .budget import (Budget, delta_L2, delta_R, gamma, gamma_x, input_sensitivity, project_spectral_norm_,
                     solve_budget, spectral_norm)
from . import above, accounting  # noqa: F401
from .accounting import Parts
from .inference import (INFERENCE, Smoothed, certifier, deployed, l2_radius, laplace_composition, noisy_network,
                        original_predictor, per_example_deployed, radius_cap)
from .losses import LOG2, autoencoder_loss, exact_bce, fm_term, mix, output_loss, taylor_bce
from .objective import ATTACK_ENSEMBLE, batch_pair_loss, craft_adversarial, dp_layers
from .release import (INPUT_BASES, INPUT_MECHANISMS, InputCoder, Release, keep_probability, public_coder,
                      randomized_response, release_for, release_inputs, release_plan)
from .options import (INPUTS, LABELS, RELEASES, ADV_INPUTS, AE_LOSSES, DELTA_X_CONVENTIONS, FM_NOISE_FORMS, NOISE_REUSE, PAPER_EPOCHS,
                      PAPER_SETTINGS, TAYLOR_ON, THETA1_CONSTRAINTS, THETA2_OPTIMIZERS, StoBatchOptions,
                      unsound_modes)
from .step import (StoBatchRun, accumulate_trainer, epoch_report, finish_step, make_optimizers, mean_stats,
                   prepare, privacy_report, running_buffers, train_epoch, train_step)

__all__ = [
    # options
    "StoBatchOptions", "RELEASES", "INPUTS", "LABELS", "PAPER_SETTINGS", "PAPER_EPOCHS", "unsound_modes", "NOISE_REUSE", "FM_NOISE_FORMS",
    "TAYLOR_ON", "AE_LOSSES", "ADV_INPUTS", "DELTA_X_CONVENTIONS", "THETA1_CONSTRAINTS", "THETA2_OPTIMIZERS",
    # the sound per-example release and its accountant
    "INPUT_BASES", "INPUT_MECHANISMS", "InputCoder", "Release", "public_coder", "release_inputs", "keep_probability",
    "randomized_response", "release_plan", "release_for", "Parts",
    # budget
    "delta_R", "delta_L2", "input_sensitivity", "spectral_norm", "project_spectral_norm_", "gamma_x", "gamma",
    "Budget", "solve_budget",
    # networks (dpbook.models)
    "AutoEncoderLayer", "LatentBias", "StoBatchNet", "NORMS", "NETWORKS", "digits_network", "mnist_network",
    "cifar10_network", "resnet18_network", "network_for",
    # batching
    "BatchNoise", "NoiseTable", "draw_noise", "zero_noise", "partition", "epoch_schedule",
    # losses
    "LOG2", "exact_bce", "taylor_bce", "autoencoder_loss", "fm_term", "output_loss", "mix",
    # objective
    "ATTACK_ENSEMBLE", "dp_layers", "craft_adversarial", "batch_pair_loss",
    # step
    "StoBatchRun", "prepare", "make_optimizers", "accumulate_trainer", "finish_step", "mean_stats",
    "running_buffers", "train_step", "train_epoch", "epoch_report", "privacy_report",
    # inference
    "INFERENCE", "Smoothed", "l2_radius", "radius_cap", "per_example_deployed", "noisy_network", "laplace_composition", "certifier", "original_predictor", "deployed",
]
