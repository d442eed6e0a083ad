"""l_inf adversarial attacks: FGSM, I-FGSM, MIM and PGD, batched, with expectation over randomness (EOT).

All attacks take a model returning logits ``(batch, n_classes)`` and inputs ``x`` of shape ``(batch, ...)``,
and return ``x_adv`` with ``||x_adv - x||_inf <= mu`` and ``x_adv`` inside ``clip``. One iteration is

    g_t   = grad_x loss(model(x_t), y)                       (averaged over ``eot`` noise draws)
    m_t   = decay * m_{t-1} + g_t / ||g_t||_1                (MIM only; Dong et al. 2018)
    x_t+1 = clip( proj_{||. - x||_inf <= mu}( x_t + step_size * sign(m_t or g_t) ) )

* FGSM (Goodfellow et al. 2015): one step of size ``mu``.
* I-FGSM / BIM (Kurakin et al. 2017): ``steps`` steps of ``step_size`` (default ``mu / steps``).
* MIM (Dong et al. 2018): I-FGSM on the momentum ``m_t``, ``decay`` 1.0 as in StoBatch.
* PGD (Madry et al. 2018): I-FGSM from a uniformly random start in the ball.

Labels: with ``y=None`` the attack uses the model's own predictions on the clean input (as StoBatch's
original code does), so true labels never reach it. ``eot`` > 1 averages the gradient over that many forward
passes of a randomised model (each draws its own noise), done as one batched forward; this is how a noisy
(certified) model must be attacked (Athalye et al. 2018).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import checks

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def predicted_labels(model: Callable, x: torch.Tensor, *, eot: int = 1) -> torch.Tensor:
    """The model's own labels for ``x``: argmax of the logits averaged over ``eot`` noise draws."""
    logits = model(x.repeat(eot, *[1] * (x.ndim - 1))).reshape(eot, len(x), -1).softmax(-1).mean(0)
    return logits.argmax(1)


def _gradient(model: Callable, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, eot: int) -> torch.Tensor:
    """d loss / d x, summed over the batch and averaged over ``eot`` draws of the model's randomness."""
    x = x.detach().requires_grad_(True)
    repeated = x.repeat(eot, *[1] * (x.ndim - 1))  # (eot * batch, ...): one forward for all draws
    loss = loss_fn(model(repeated), y.repeat(eot)) / eot
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def iterative(model: Callable, x: torch.Tensor, *, mu: float, steps: int = 10, step_size: float | None = None,
              y: torch.Tensor | None = None, clip: tuple[float, float] | None = (-1.0, 1.0),
              random_start: bool = False, decay: float | None = None, eot: int = 1,
              loss_fn: Loss = F.cross_entropy, generator: torch.Generator | None = None) -> torch.Tensor:
    """The common l_inf iteration behind :func:`fgsm`, :func:`ifgsm`, :func:`mim` and :func:`pgd`.

    Args:
        model: maps ``(batch, ...)`` to logits; may be random (then use ``eot`` > 1).
        x: clean inputs, ``(batch, ...)``.
        mu: attack size (l_inf radius) in the units of ``x``: a number, or a tensor ``(batch,)`` of one size
            per input (to attack each certified point at its own radius).
        steps: iterations.
        step_size: per-iteration step; default ``mu / steps``.
        y: labels to move away from; default: the model's predictions on ``x``.
        clip: valid input range, e.g. ``(-1, 1)`` for StoBatch, ``(0, 1)`` for unit-scaled images; None: none.
        random_start: start from a uniform point of the ball (PGD).
        decay: momentum decay (MIM); None: no momentum.
        eot: noise draws per gradient (expectation over transformation).
        loss_fn: ``loss_fn(logits, y)`` to *increase*; default cross-entropy (mean over the batch).
        generator: random start's generator.

    Returns:
        ``x_adv`` of the shape of ``x``, detached.
    """
    x = x.detach()
    mu = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
    if mu.ndim == 1:
        mu = mu.view(len(x), *[1] * (x.ndim - 1))            # (batch, 1, ...): broadcasts per input
    smallest = float(mu.min()) if mu.numel() else 0.0
    checks.check(smallest >= 0, "mu", "iterative()", "an attack size >= 0", smallest)
    checks.check(steps >= 1, "steps", "iterative()", ">= 1", steps)
    checks.check(clip is None or clip[0] < clip[1], "clip", "iterative()", "(low, high) with low < high, or None",
                 clip)
    step_size = mu / steps if step_size is None else step_size
    if y is None:
        y = predicted_labels(model, x, eot=eot)
    x_adv = x.clone()
    if random_start and bool((mu > 0).any()):
        u = torch.rand(x.shape, generator=generator, device="cpu" if generator is None else generator.device,
                       dtype=x.dtype).to(x.device)
        x_adv = x + (2 * u - 1) * mu
    momentum = torch.zeros_like(x)
    reduce_dims = tuple(range(1, x.ndim))
    for _ in range(steps):  # a loop over attack iterations; each one is a batched forward and backward
        if clip is not None:
            x_adv = x_adv.clamp(*clip)
        grad = _gradient(model, x_adv, y, loss_fn, eot)
        if decay is not None:
            l1 = grad.abs().sum(dim=reduce_dims, keepdim=True).clamp_min(1e-12)
            momentum = decay * momentum + grad / l1
            grad = momentum
        x_adv = x_adv + step_size * grad.sign()
        x_adv = torch.max(torch.min(x_adv, x + mu), x - mu)  # project onto the l_inf ball around x
    if clip is not None:
        x_adv = x_adv.clamp(*clip)
    return x_adv.detach()


def fgsm(model, x, *, mu, **kw) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``mu``."""
    return iterative(model, x, mu=mu, steps=1, step_size=mu, **kw)


def ifgsm(model, x, *, mu, steps=10, **kw) -> torch.Tensor:
    """Iterative FGSM (basic iterative method), ``steps`` steps of ``mu / steps``."""
    return iterative(model, x, mu=mu, steps=steps, **kw)


def mim(model, x, *, mu, steps=10, decay=1.0, **kw) -> torch.Tensor:
    """Momentum iterative method with momentum ``decay`` (1.0 in StoBatch)."""
    return iterative(model, x, mu=mu, steps=steps, decay=decay, **kw)


def pgd(model, x, *, mu, steps=10, **kw) -> torch.Tensor:
    """Projected gradient descent from a uniformly random start in the l_inf ball."""
    return iterative(model, x, mu=mu, steps=steps, random_start=True, **kw)


ATTACKS = {"fgsm": fgsm, "ifgsm": ifgsm, "mim": mim, "pgd": pgd}
