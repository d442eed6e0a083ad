"""Conventional and certified accuracy under attack, the two metrics of StoBatch (Phan et al., ICML 2020), for
any deployed model (``notebooks/42_stobatch_experiments.ipynb``).

A :class:`Deployed` model bundles what an evaluation needs:

* ``predict(x)``: logits ``(n, K)`` with the model's noise drawn afresh on every call, so that each call is
  one Monte-Carlo vote (a network without noise is deterministic and votes once);
* ``attack_target``: what the attacker differentiates (by default ``predict`` itself, attacked with
  expectation over ``eot`` noise draws);
* ``certify(bounds, mu_a)``: which predictions are certified against l_inf attacks of size ``mu_a``, from
  the vote bounds of :func:`dpbook.robustness.vote_bounds` (None: nothing is certified).

For an input set and an attack of size mu_a:

    conventional accuracy = mean 1[argmax votes == y]
    certified accuracy    = mean 1[argmax votes == y and certified(mu_a)]

(the certified accuracy is the product ``robust_acc`` x ``robust_utility`` that the original code's testing
scripts log, e.g. ``StoBatchCIFAR10/StoBatch_cifar10_testing.py`` of ``haiphanNJIT/StoBatch``).

:func:`evaluate` computes both on the clean inputs and under each attack at each size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import attacks, robustness
from .progress import progress


@dataclass
class Deployed:
    """A model as it is queried and attacked. See the module docstring."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    n_classes: int
    certify: Callable[[robustness.Bounds, float], np.ndarray] | None = None
    attack_target: Callable[[torch.Tensor], torch.Tensor] | None = None
    deterministic: bool = False


def votes(deployed: Deployed, x: torch.Tensor, *, n_draws: int) -> torch.Tensor:
    """Monte-Carlo vote counts ``(n, K)``: ``n_draws`` noisy forwards (one if the model is deterministic)."""
    return robustness.monte_carlo_counts(deployed.predict, x, n_draws=1 if deployed.deterministic else n_draws,
                                         n_classes=deployed.n_classes)


def _rows(deployed: Deployed, x: torch.Tensor, y: torch.Tensor, attack: str, sizes, *, n_draws: int,
          eta: float) -> list[dict]:
    """One vote on ``x``, certified at each of ``sizes``."""
    bounds = robustness.vote_bounds(votes(deployed, x, n_draws=n_draws), eta=eta)
    correct = bounds.prediction == y.cpu().numpy()
    return [{"attack": attack, "mu_a": float(mu), "conventional": float(correct.mean()),
             "certified": None if deployed.certify is None else float((correct & deployed.certify(bounds, mu)).mean())}
            for mu in sizes]


def evaluate(deployed: Deployed, x: torch.Tensor, y: torch.Tensor, *, attack_names=("fgsm", "ifgsm", "mim", "pgd"),
             sizes=(0.1,), steps: int = 10, eot: int = 1, n_draws: int = 500, eta: float = 0.05,
             clip: tuple[float, float] | None = (-1.0, 1.0), max_batch: int = 500) -> list[dict]:
    """Rows ``{"attack", "mu_a", "conventional", "certified"}``: first the clean inputs, certified at every
    size (``attack = "none"``), then each attack of ``attack_names`` at each size of ``sizes``.

    Attacks are white-box l_inf attacks on ``attack_target`` with the model's own predictions as labels
    (:mod:`dpbook.attacks`), ``steps`` iterations (FGSM: one) and ``eot`` noise draws per gradient; ``x`` is
    attacked ``max_batch`` examples at a time. ``certified`` is None for a model that certifies nothing.
    """
    target = deployed.attack_target or deployed.predict
    rows = _rows(deployed, x, y, "none", sizes, n_draws=n_draws, eta=eta)
    grid = [(name, float(mu)) for name in attack_names for mu in sizes]
    for name, mu in progress(grid, desc="attacks x sizes", every=1):
        kw = {} if name == "fgsm" else {"steps": steps}
        x_adv = torch.cat([attacks.ATTACKS[name](target, chunk, mu=mu, clip=clip, eot=eot, **kw)
                           for chunk in x.split(max_batch)])
        rows += _rows(deployed, x_adv, y, name, [mu], n_draws=n_draws, eta=eta)
    return rows


def average_over_attacks(rows: list[dict]) -> dict[float, dict]:
    """Per attack size, the mean conventional and certified accuracy over the attacks (the paper's average)."""
    out = {}
    for mu in sorted({r["mu_a"] for r in rows if r["attack"] != "none"}):
        sel = [r for r in rows if r["attack"] != "none" and r["mu_a"] == mu]
        cert = [r["certified"] for r in sel]
        out[mu] = {"conventional": float(np.mean([r["conventional"] for r in sel])),
                   "certified": None if None in cert else float(np.mean(cert))}
    return out
