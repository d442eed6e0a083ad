"""DP-SGD above the DP layer: theta_1 learns without private labels, theta_2 by DP-SGD with adversarial examples.

The per-example StoBatch designs with ``labels="dpsgd"`` (:class:`dpbook.stobatch.StoBatchOptions`):

1. **theta_1** (the auto-encoder layer) learns the StoBatch reconstruction loss
   (:func:`dpbook.stobatch.autoencoder_loss`, no labels) on images that are public or already released
   (:func:`pretrain_autoencoder`), then stays fixed: it costs nothing.
2. **theta_2** (every layer above) takes ``steps`` DP-SGD steps (:func:`dpsgd_step`). Each step draws m of the
   N examples uniformly without replacement; each drawn example is replaced by its adversarial example with
   probability xi / (1 + xi) (a coin independent of the data), crafted against the current model by the
   StoBatch ensemble (I-FGSM, MIM, PGD) with the model's own predictions; the inputs get Gaussian smoothing
   noise; the cross-entropy gradient of each example with respect to theta_2 is clipped to C; their sum gets
   N(0, (z 2C)^2 I) and is divided by m.

Why it is private (replace-one): everything an example contributes to a step (its input, its adversarial
example, its label) enters only through its own clipped gradient, so replacing it moves the sum by at most 2C;
the batch is a uniformly random m-subset. :mod:`.accounting` composes the T steps (sampling without
replacement, Wang, Balle & Kasiviswanathan 2019) with the input release if there is one.

Shapes: images ``(n, C, H, W)`` in [-1, 1], labels ``(n,)``.
"""
from __future__ import annotations

import torch

from .. import persample, privacy
from ..gep.step import privatize
from ..models import StoBatchNet
from .losses import autoencoder_loss
from .objective import craft_adversarial
from .options import StoBatchOptions


def pretrain_autoencoder(model: StoBatchNet, images: torch.Tensor, *, epochs: int, lr: float, batch_size: int = 128,
                         generator: torch.Generator | None = None) -> list[float]:
    """Train theta_1 on ``images`` (public or released: no privacy cost) with the auto-encoder loss and Adam,
    then freeze it. Returns the mean loss of each epoch."""
    opt = torch.optim.Adam(model.first.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(images), generator=generator).split(batch_size):
            x = images[idx.to(images.device)]
            h = model.first(x)
            loss = autoencoder_loss(x, h, h, model.first)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(images))
    model.first.requires_grad_(False)
    return losses


def adversarial_inputs(model: StoBatchNet, x: torch.Tensor, options: StoBatchOptions, *,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Replace each example of ``x`` by its adversarial example with probability xi / (1 + xi); returns the
    inputs and how many were replaced."""
    coin = torch.rand(len(x), generator=generator, device="cpu" if generator is None else generator.device)
    chosen = (coin < options.xi / (1.0 + options.xi)).nonzero().flatten().to(x.device)
    if len(chosen) == 0 or options.mu_max == 0:
        return x, 0
    was_training = model.training
    model.eval()
    try:
        x_adv, _ = craft_adversarial(model, x[chosen], mu_max=options.mu_max, steps=options.attack_steps,
                                     clip=options.clip, generator=generator)
    finally:
        model.train(was_training)
    out = x.clone()
    out[chosen] = x_adv.detach()
    return out, len(chosen)


def dpsgd_step(model: StoBatchNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               options: StoBatchOptions, *, multiplier: float, smoothing_std: float,
               noise_generator: torch.Generator | None = None,
               attack_generator: torch.Generator | None = None) -> dict:
    """One DP-SGD step on theta_2 for the drawn batch ``(x, y)`` of m examples (see the module docstring):
    adversarial coin, smoothing noise, per-example gradients of theta_2, clip to C, noise z 2C, divide by m.
    Returns only what the public coin decided (no accuracy or gradient norm of the private batch: they would be
    releases the accountant does not cover)."""
    inputs, n_adv = adversarial_inputs(model, x, options, generator=attack_generator)
    if smoothing_std > 0:
        inputs = inputs + smoothing_std * torch.randn(inputs.shape, generator=attack_generator,
                                                      device=inputs.device)
    with torch.no_grad():
        h = model.first(inputs)
    grads = persample.flatten(persample.per_sample_gradients(model.rest, h, y))
    out = privatize(grads, [], [], mode="dpsgd", clip_embedding=1.0, clip_residual=options.clip_gradient,
                    noise_multiplier=2.0 * multiplier, expected_batch_size=float(len(x)),
                    generator=noise_generator)
    params = persample.trainable(model.rest)
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(params.values(), persample.unflatten(out.gradient, params).values()):
        p.grad = g.to(p.dtype).clone()
    optimizer.step()
    # nothing computed from the private batch leaves the step except through the noisy gradient: the share of
    # adversarial inputs comes from the public coin alone
    return {"adversarial_share": n_adv / len(x)}


def draw_batch(n: int, m: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """m of n example indices, uniformly without replacement (the accountant's sampling), from a DP generator."""
    gen = generator if generator is not None else privacy.noise_generator()
    return torch.randperm(n, generator=gen, device=gen.device)[:m]

