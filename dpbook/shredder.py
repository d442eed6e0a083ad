"""Shredder (Mireshghallah et al., ASPLOS 2020; the v2 "self-supervised" code release): learned noise on the
activation an edge device sends to the cloud.

A frozen classifier f = g o h is cut in two (:func:`split`): the edge runs h and sends the activation
a = h(x) (``(n, 120, 1, 1)`` for :class:`dpbook.models.LeNet5`); the cloud runs g. Shredder learns one *noise
sample*, a multiplicative tensor w and an additive tensor n of the activation's shape, and sends

    a_noisy = w * a + n

(:class:`NoisyActivation`). n starts as Laplace(0, b) noise (b = 20 in the code), w from Xavier-normal.
Only w and n are trained, with the public task's cross-entropy plus a pairing term on the noisy
activations of two batches (:func:`pairing_term`). Independent runs give a *pool* of samples
(:class:`NoisePool`); at inference every query draws one (:meth:`NoisePool.draw`). The original is
``mireshghallah/shredder-v2-self-supervised`` on GitHub: training in
``train-LeNet-param-controlled-self-super-std20-ep27.py``, inference and MI in
``mutual_info_std20_self_lenet_nonsen.py``; ``notebooks/31_shredder_algorithm.ipynb`` walks through it.

What the book adds to the original (the table "differences from the original code" of ``book/shredder.md``):
samples are accepted on a validation split, not on the test set; the pairing term is shown to leave n
untouched (the additive noise cancels in a_noisy - a_noisy'); SNR is computed on the batch at hand
(:func:`snr`); privacy is tested with adversaries *trained* on what the cloud receives, including one that
knows the pool (:mod:`dpbook.leakage`), a reconstruction attack (:mod:`dpbook.reconstruction`), and MI with
standardised blocks, controls that a lossless transform cannot fool, and the MI given the pool draw.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checks, privacy
from .models import LeNet5  # noqa: F401  (the network lives in dpbook.models; re-exported for dpbook.shredder.LeNet5)

PAIRINGS = ("difference", "ratio", "none")
SAMPLERS = ("exact", "resample_w")


# ---------------------------------------------------------------------------------------------------
# The network and the cut
# ---------------------------------------------------------------------------------------------------
def to_32(x: torch.Tensor) -> torch.Tensor:
    """Resize images ``(n, C, H, W)`` to 32x32 (bilinear), as the code's ``Resize((32, 32))`` for MNIST."""
    if x.shape[-2:] == (32, 32):
        return x
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)


def cut_points(model: nn.Sequential) -> list[str]:
    """Names of the layers after which the original code may cut: the layer just before every Conv2d but
    the first, and the last layer before the first Linear (for LeNet-5: ``s2``, ``s4``, ``relu5``)."""
    names = list(model._modules)
    convs = [i for i, name in enumerate(names) if isinstance(model._modules[name], nn.Conv2d)]
    end = next((i for i, name in enumerate(names)
                if isinstance(model._modules[name], (nn.Flatten, nn.Linear))), len(names))
    return [names[i - 1] for i in convs[1:]] + [names[end - 1]]


def split(model: nn.Sequential, at: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut ``model`` after the layer named ``at``: (edge, cloud), sharing the model's modules, so that
    ``cloud(edge(x)) == model(x)``."""
    names = list(model._modules)
    checks.check(at in names, "at", "split()", "the name of a layer of model", at,
                 f"There is no layer named {at!r}; layers: {', '.join(names)}.")
    i = names.index(at) + 1
    edge = nn.Sequential(OrderedDict((n, model._modules[n]) for n in names[:i]))
    cloud = nn.Sequential(OrderedDict((n, model._modules[n]) for n in names[i:]))
    return edge, cloud


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter and switch to eval mode; the base network is never changed."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# The noise layer and the loss
# ---------------------------------------------------------------------------------------------------
class NoisyActivation(nn.Module):
    """One learnable noise sample: ``forward(a) = w * a + n`` with w, n of shape ``shape`` (one activation,
    e.g. (120, 1, 1)), broadcast over the batch: every input of a batch gets the same (w, n).

    Args:
        shape: the activation's shape without the batch dimension.
        laplace_scale: b of the Laplace(0, b) initialisation of n (20 in the code; 3 converges faster).
        multiplicative: learn w (v2); ``False`` keeps w = 1 fixed (v1 and the ASPLOS paper: additive only).
        generator: seeds the initialisation; independent runs need independent generators.
    """

    def __init__(self, shape: tuple[int, ...], *, laplace_scale: float = 20.0, multiplicative: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        checks.positive(laplace_scale, "laplace_scale", "NoisyActivation")
        self.shape, self.laplace_scale = tuple(shape), laplace_scale
        self.n = nn.Parameter(privacy.laplace_noise(self.shape, scale=laplace_scale, generator=generator))
        w = torch.ones(self.shape)
        if multiplicative:  # xavier_normal_ on (C, H, W): std sqrt(2 / (fan_in + fan_out)), 0.129 for (120, 1, 1)
            nn.init.xavier_normal_(w, generator=generator)
        self.w = nn.Parameter(w, requires_grad=multiplicative)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if tuple(a.shape[1:]) != self.shape:
            raise ValueError(f"activation of shape {tuple(a.shape[1:])} does not match the noise {self.shape}")
        return self.w * a + self.n


def pairing_term(z: torch.Tensor, z_partner: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, *,
                 variant: str = "difference") -> torch.Tensor:
    """The v2 code's pairing ("self-supervised") term on noisy activations of a batch and a partner batch.

    D_i = sum_c |z_i - z'_i| (L1 over the activation), S_pos = sum of D_i over pairs with the same public
    label, S_neg over pairs with different labels. ``"difference"``: S_pos - S_neg (the code at HEAD, used
    with weight 0.01); ``"ratio"``: (S_pos - S_neg) / (S_pos + S_neg), in [-1, 1] (the commit that produced
    the released pool, weight 1.01). Minimising it pulls same-label pairs together and pushes others apart.

    Note z - z' = w * (a - a'): the additive noise n cancels, so this term has zero gradient in n.
    """
    checks.one_of(variant, PAIRINGS[:2], "variant", "pairing_term()")
    distance = (z - z_partner).abs().flatten(1).sum(1)                       # D_i, (B,)
    same = (y == y_partner).to(distance.dtype)
    s_pos, s_neg = (distance * same).sum(), (distance * (1 - same)).sum()
    return s_pos - s_neg if variant == "difference" else (s_pos - s_neg) / (s_pos + s_neg).clamp_min(1e-12)


def snr(a: torch.Tensor, a_noisy: torch.Tensor) -> float:
    """The code's privacy proxy on *this* batch: mean(a^2) / Var(a - a_noisy), over all elements (population
    variance). Lower means noisier. (The original's ``validate_above_5`` evaluates it on one stale global
    batch, the same for every call; ``book/shredder.md``.)"""
    return float(a.pow(2).mean() / (a - a_noisy).var(correction=0))


def decibels(ratio: float) -> float:
    return 10.0 * math.log10(ratio)


# ---------------------------------------------------------------------------------------------------
# Training one noise sample
# ---------------------------------------------------------------------------------------------------
@dataclass
class NoiseSample:
    """A trained (w, n), and whether and when it was accepted."""

    w: torch.Tensor
    n: torch.Tensor
    epoch: int                 # epochs trained (at acceptance, or all of them)
    val_accuracy: float        # public-task accuracy on the validation split at that epoch
    accepted: bool = True
    history: list = field(default_factory=list)  # per epoch: validation accuracy and SNR


def train_noise(cloud: nn.Module, a_train: torch.Tensor, y_train: torch.Tensor, a_val: torch.Tensor,
                y_val: torch.Tensor, *, laplace_scale: float = 20.0, multiplicative: bool = True,
                pairing: str = "ratio", pairing_weight: float = 1.01, lr: float = 1e-3,
                batch_size: int = 256, epochs: int = 40, min_epochs: int = 28, accept_accuracy: float,
                reset_optimizer_each_epoch: bool = False, seed: int = 0) -> NoiseSample:
    """Learn one noise sample on precomputed edge activations (the edge is frozen, so a = h(x) is fixed).

    Loss per batch: cross-entropy of ``cloud(w * a + n)`` on the public labels, plus ``pairing_weight`` times
    :func:`pairing_term` against a partner batch (a second permutation of the training set). Adam on (w, n)
    only. After each epoch the public accuracy on the validation split is measured; the sample is accepted
    at the first epoch >= ``min_epochs`` whose accuracy is >= ``accept_accuracy`` (the code: > 0.95 on the
    *test* set after 28 epochs); otherwise the run is rejected: the returned sample has ``accepted=False``
    and belongs in no pool.

    Args:
        cloud: the frozen cloud part g.
        a_train, a_val: activations ``(N, *shape)`` from the frozen edge; y_train, y_val: public labels.
        reset_optimizer_each_epoch: re-create Adam every epoch, as the code does (resets its moments).
        seed: initialisation of (w, n) and batch order of this run.
    """
    checks.one_of(pairing, PAIRINGS, "pairing", "train_noise()")
    checks.check(1 <= min_epochs <= epochs, "min_epochs", "train_noise()", f"in [1, epochs = {epochs}]", min_epochs)
    device = a_train.device
    gen = torch.Generator().manual_seed(seed)
    noise = NoisyActivation(tuple(a_train.shape[1:]), laplace_scale=laplace_scale, multiplicative=multiplicative,
                            generator=gen).to(device)
    trainable = [p for p in noise.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    history = []
    for epoch in range(1, epochs + 1):
        if reset_optimizer_each_epoch:
            optimizer = torch.optim.Adam(trainable, lr=lr)
        order = torch.randperm(len(a_train), generator=gen).to(device)
        partner = torch.randperm(len(a_train), generator=gen).to(device)
        for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches, as the code
            idx, idx2 = order[start:start + batch_size], partner[start:start + batch_size]
            z = noise(a_train[idx])
            loss = F.cross_entropy(cloud(z), y_train[idx])
            if pairing != "none":
                z2 = noise(a_train[idx2])
                loss = loss + pairing_weight * pairing_term(z, z2, y_train[idx], y_train[idx2], variant=pairing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = float((cloud(noise(a_val)).argmax(1) == y_val).float().mean())
        history.append({"epoch": epoch, "val_accuracy": accuracy, "snr": snr(a_val, noise(a_val).detach())})
        accepted = epoch >= min_epochs and accuracy >= accept_accuracy
        if accepted or epoch == epochs:
            break
    return NoiseSample(w=noise.w.detach().clone(), n=noise.n.detach().clone(), epoch=epoch, val_accuracy=accuracy,
                       accepted=accepted, history=history)


# ---------------------------------------------------------------------------------------------------
# The pool and inference
# ---------------------------------------------------------------------------------------------------
@dataclass
class NoisePool:
    """Noise samples from independent runs: ``w`` and ``n`` of shape ``(M, *shape)``."""

    w: torch.Tensor
    n: torch.Tensor
    val_accuracy: list
    epochs: list

    @classmethod
    def from_samples(cls, samples: list[NoiseSample]) -> "NoisePool":
        if not samples:
            raise ValueError("no accepted noise samples: lower accept_accuracy or train longer")
        if not all(s.accepted for s in samples):
            raise ValueError("a rejected sample cannot enter the pool")
        return cls(w=torch.stack([s.w for s in samples]).cpu(), n=torch.stack([s.n for s in samples]).cpu(),
                   val_accuracy=[s.val_accuracy for s in samples], epochs=[s.epoch for s in samples])

    def __len__(self) -> int:
        return len(self.w)

    def save(self, path: str | Path) -> None:
        torch.save({"w": self.w, "n": self.n, "val_accuracy": self.val_accuracy, "epochs": self.epochs}, path)

    @classmethod
    def load(cls, path: str | Path) -> "NoisePool":
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(w=state["w"], n=state["n"], val_accuracy=list(state["val_accuracy"]),
                   epochs=list(state["epochs"]))

    def draw(self, n_queries: int, *, sampler: str = "exact",
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One noise sample per query: (w, n), each ``(n_queries, *shape)``, on the generator's device.

        ``"exact"``: a pool sample j, uniformly, used as trained. ``"resample_w"`` (the v2 code's "memory"
        sampler, ``mutual_info_std20_self_lenet_nonsen.py``): n = n_j, and w is redrawn from a Normal fitted to
        the entries of w_j, the sorted draws placed in the rank order of w_j (for any activation shape, not
        only (C, 1, 1)). :meth:`indices` then :meth:`sample` do the same in two steps (to give several
        samplers the same draws j).
        """
        checks.one_of(sampler, SAMPLERS, "sampler", "NoisePool.draw()")
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # fresh randomness for every call
        return self.sample(self.indices(n_queries, generator=generator), sampler=sampler, generator=generator)

    def indices(self, n_queries: int, *, generator: torch.Generator) -> torch.Tensor:
        """Which pool sample each query gets: ``(n_queries,)``, uniform, on the generator's device."""
        return torch.randint(0, len(self), (n_queries,), generator=generator, device=generator.device)

    def sample(self, j: torch.Tensor, *, sampler: str = "exact",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise ``(w, n)`` of pool samples ``j`` ``(Q,)`` under ``sampler`` (see :meth:`draw`), each
        ``(Q, *shape)`` on ``j``'s device; ``resample_w`` draws its Normal values from ``generator``."""
        checks.one_of(sampler, SAMPLERS, "sampler", "NoisePool.sample()")
        w, n = self.w.to(j.device)[j], self.n.to(j.device)[j]
        if sampler == "resample_w":
            checks.check(generator is not None, "generator", "NoisePool.sample()",
                         "a torch.Generator for the resample_w sampler", generator)
            flat = w.flatten(1)                                                 # (Q, D)
            mean, std = flat.mean(1, keepdim=True), flat.std(1, correction=0, keepdim=True)  # Normal MLE
            normal = torch.randn(flat.shape, generator=generator, device=generator.device).to(flat.device)
            draws = torch.sort(mean + std * normal, dim=1).values
            ranks = torch.argsort(torch.argsort(flat, dim=1), dim=1)            # rank of each entry of w_j
            w = draws.gather(1, ranks).view_as(w)
        return w, n


def apply_noise(a: torch.Tensor, w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """a_noisy = w * a + n with one noise sample per row (w, n of shape ``(B, *shape)`` like ``a``)."""
    return w.to(a.device) * a + n.to(a.device)


# ---------------------------------------------------------------------------------------------------
# The adversary
# ---------------------------------------------------------------------------------------------------
def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                   n_classes: int, hidden: int = 256, epochs: int = 20, lr: float = 1e-3, batch_size: int = 256,
                   seed: int = 0) -> float:
    """Test accuracy of an MLP adversary trained to predict ``train_y`` from features ``train_x``.

    Features ``(N, ...)`` are flattened and standardised per feature with the training set's mean and std
    (:func:`dpbook.leakage.train_probe`: the shared training loop, a local generator). On Shredder's noisy
    activations that standardisation is dominated by the pool's offsets n_j, which hides the signal from the
    probe: a lower bound on leakage, not a measure of it. The attackers of :mod:`dpbook.leakage` (per-cluster
    normalisation, blind clustering, the attacker who knows the pool) are the ones to quote.
    """
    from .leakage import train_probe

    probe = train_probe(train_x, train_y, n_classes=n_classes, hidden=hidden, epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed)
    return probe.accuracy(test_x.to(probe.mean.device), test_y)


def chance_accuracy(y: torch.Tensor) -> float:
    """Accuracy of always guessing the most frequent class of ``y``."""
    return float(torch.bincount(y).max() / len(y))


# What the paper and the v2 artefacts claim, for the experiments chapter and the audit report: the ASPLOS
# abstract (arXiv 1905.11814 v3), and the v2 release's CSV logs and notebooks
# (``mutual_info_ITE--self-super-memory-std20-experimental.ipynb``, ``Average-SNRs-LeNet-mutual-info-std20.ipynb``).
# Accuracies are fractions; MI in nats, ITE's MIShannon_DKL on raw blocks.
PAPER_CLAIMS = {
    "asplos_mi_reduction": 0.7470,        # average over six networks (abstract, arXiv v3)
    "asplos_accuracy_loss": 0.0158,       # average accuracy loss for that reduction
    "v2_mi_clean": 284.14,                # MI(image; clean activation), LeNet-5 / MNIST
    "v2_mi_noisy": 106.92,                # MI(image; noisy activation): -62.4 %
    "v2_pool_accuracy": 0.965,            # public accuracy of the accepted samples (selected on the test set)
    "v2_inference_accuracy": 0.939,       # with the resampled w, one draw per query
    "v2_adversary_accuracy": 0.141,       # the non-adaptive 10-class LeNet with the same noise (chance 0.10)
    "v2_snr": 2.6e-4,
}
