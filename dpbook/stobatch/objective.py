"""One trainer's StoBatch loss on a pair of batches: the noisy forward through theta_1, adversarial examples
crafted from a second batch, and the auto-encoder and output losses mixed with weight xi.

For a benign batch (x, y) and an adversarial source batch (x_s, y_s), each of m examples with its own
:class:`dpbook.stobatch.BatchNoise` (Phan et al., ICML 2020; ``notebooks/41_stobatch_algorithm.ipynb``,
section 6):

1. x_bar = x + n_x, h = clip(theta_1^T x_bar, -1, 1), h_bar = h + n_h (:func:`dp_layers`);
2. x_adv from x_s by I-FGSM, MIM and PGD, a third each, at one size mu ~ U(0, mu_max), against the DP model
   with its own predictions (:func:`craft_adversarial`; the true labels never reach the attack, as
   cleverhans is called without labels in the original code);
3. auto-encoder loss (theta_1) and output loss (theta_2, on h_bar) on both, each mixed as
   (L_benign + xi L_adv) / (1 + xi) (:func:`batch_pair_loss`).

Inputs are ``(m, C, H, W)`` in [-1, 1], labels ``(m,)`` class indices; losses are scalars.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import attacks
from ..models import StoBatchNet
from .batching import BatchNoise
from .losses import autoencoder_loss, mix, output_loss
from .options import StoBatchOptions

ATTACK_ENSEMBLE = ("ifgsm", "mim", "pgd")


def dp_layers(model: StoBatchNet, x: torch.Tensor, noise: BatchNoise, *,
              input_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_bar = x + n_x, h = clip(theta_1^T x_bar, -1, 1), h_bar = h + n_h: (x_bar, h, h_bar)."""
    x_bar = x + noise.x if input_noise else x
    h = model.first(x_bar)
    return x_bar, h, h + noise.h


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


def batch_pair_loss(model: StoBatchNet, x: torch.Tensor, y: torch.Tensor, x_source: torch.Tensor,
                    y_source: torch.Tensor, noise: BatchNoise, noise_source: BatchNoise, options: StoBatchOptions,
                    *, attack_generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The StoBatch loss of one trainer: benign batch (x, y) and adversarial source batch (x_source, y_source),
    each with its own noise. Returns (auto-encoder loss + classifier loss, stats). Backward and the
    optimiser step are the caller's (:func:`dpbook.stobatch.train_step`; a distributed wrapper averages the
    gradients).
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
