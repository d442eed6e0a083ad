"""What the cloud can learn from Shredder's noisy activations: attackers under four threat models.

Shredder (Mireshghallah et al., ASPLOS 2020; the v2 code ``mireshghallah/shredder-v2-self-supervised``) sends
``a_noisy = w_J * a + n_J`` for a clean activation ``a`` (``(D,)`` once flattened, D = 120 for LeNet-5 cut after
c5) and a noise sample J drawn from a finite pool ``(w_j, n_j)``, j < M. The private attribute (the 10-class
label) is read back from what is sent by an attacker who holds labelled data of its own (the attacker's
*training* data, never the victims' test queries). The threat models, weakest to strongest:

``non_adaptive``
    The original's check: a classifier of the private label trained on *clean* activations, applied to the
    noisy ones as received. It never sees noise.
``adaptive``
    Black box: the attacker sends its own labelled inputs through the device and trains on what comes back.
    The pool's offsets n_j dominate the scale of ``a_noisy`` (|n| ~ 20 against |a| ~ 0.3), which cripples a
    probe that standardises globally (``global``, kept as a reference); this attacker clusters what it
    receives (k-means; the draws form M far-apart clusters), standardises within each cluster and aligns the
    channels' signs across clusters with its labels, then trains a probe (:func:`adaptive_view`).
``blind``
    No pool knowledge and no noisy labelled data: k-means on the queries it receives, per-cluster
    standardisation, channels oriented like the clean activations (a ReLU's zeros arrive as one repeated
    value, n_j), moments mapped back to those of clean activations, then the clean classifier
    (:func:`blind_view`).
``kerckhoffs``
    Knows the mechanism (Kerckhoffs's principle): the pool and the sampler. It identifies the draw J of each
    query by likelihood, inverts ``w * a + n`` (exactly for the ``exact`` sampler; by linear minimum-mean-square
    error with the expected order statistics of the redrawn w for ``resample_w``), and applies a classifier
    trained on its own data inverted the same way: the clean classifier, for the exact sampler
    (:func:`kerckhoffs_view`).

Each ``*_view`` returns ``(train_features, test_features)``: what the attacker's model is trained on and
what it reads at attack time, both ``(N, D)``; the same views feed the probes here and the image decoder of
:mod:`dpbook.reconstruction`. :func:`attack_accuracies` runs all of them; :mod:`dpbook.mi_controls` measures
mutual information with controls that a lossless transform cannot fool. Tensors stay on the device of their
inputs; every random choice comes from a local :class:`torch.Generator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import checks
from .data import ArrayDataset
from .training import fit

THREAT_MODELS = ("non_adaptive", "adaptive", "blind", "kerckhoffs")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float()


def _generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Probes: an MLP classifier trained by the shared loop (dpbook.training.fit)
# ---------------------------------------------------------------------------------------------------
def mlp(d_in: int, hidden: int, d_out: int, *, generator: torch.Generator, layers: int = 2) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``, initialised as :class:`torch.nn.Linear` does
    (Kaiming-uniform weights, uniform biases) but from ``generator`` instead of the global seed."""
    sizes = [d_in] + [hidden] * layers + [d_out]
    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = torch.nn.utils.skip_init(nn.Linear, n_in, n_out)  # no draw from the global generator
        with torch.no_grad():
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            nn.init.uniform_(linear.bias, -1 / math.sqrt(n_in), 1 / math.sqrt(n_in), generator=generator)
        modules += [linear] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*modules)


@dataclass
class Probe:
    """A trained classifier of features ``(N, ...)``: standardised with the training set's per-feature mean
    and std, then the MLP."""

    model: nn.Module
    mean: torch.Tensor   # (D,)
    std: torch.Tensor    # (D,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model((_flat(x) - self.mean) / self.std)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.logits(x).argmax(1) == y.to(self.mean.device)).float().mean())


def train_probe(x: torch.Tensor, y: torch.Tensor, *, n_classes: int, hidden: int = 256, epochs: int = 20,
                lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> Probe:
    """Train an MLP probe (two hidden layers) to predict ``y`` ``(N,)`` from features ``x`` ``(N, ...)``,
    flattened and standardised per feature with the training set's moments, with Adam through
    :func:`dpbook.training.fit`. Initialisation and batch order come from ``seed`` through local generators
    (the global RNG is not touched)."""
    tx = _flat(x)
    mean, std = tx.mean(0), tx.std(0).clamp_min(1e-6)
    model = mlp(tx.shape[1], hidden, n_classes, generator=torch.Generator().manual_seed(seed)).to(tx.device)
    train = ArrayDataset((tx - mean) / std, y.to(tx.device), name="features", split="train",
                         classes=[""] * n_classes)
    fit(model, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, log=False)
    return Probe(model.eval(), mean, std)


# ---------------------------------------------------------------------------------------------------
# Clustering what is sent (the pool's draws are far-apart clusters)
# ---------------------------------------------------------------------------------------------------
def kmeans(x: torch.Tensor, k: int, *, generator: torch.Generator,
           iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007) on ``x`` ``(N, D)``.

    Returns ``(centroids (k, D), labels (N,))``. The seeding loops over the k centres, never over points."""
    x = _flat(x)
    checks.check(1 <= k <= len(x), "k", "kmeans()", f"in [1, {len(x)}]", k)
    centres = x[torch.randint(len(x), (1,), generator=generator, device=generator.device).to(x.device)]
    closest = torch.cdist(x, centres).squeeze(1).pow(2)
    for _ in range(1, k):  # k-means++: next centre with probability proportional to the squared distance
        pick = torch.multinomial((closest + 1e-30).to(generator.device), 1, generator=generator).to(x.device)
        centres = torch.cat([centres, x[pick]])
        closest = torch.minimum(closest, torch.cdist(x, x[pick]).squeeze(1).pow(2))
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1).to(x.dtype)
        centres = torch.zeros_like(centres).index_add_(0, labels, x) / counts
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return centres, labels


def silhouette(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987) of a clustering of ``x`` ``(N, D)``: for each point, (b - a) / max(a, b)
    with a the mean distance to its own cluster and b to the nearest other cluster; in [-1, 1]."""
    k = int(labels.max()) + 1
    if k < 2:
        return -1.0
    dist = torch.cdist(_flat(x), _flat(x))                                        # (N, N)
    onehot = torch.nn.functional.one_hot(labels, k).to(dist.dtype)               # (N, k)
    counts = onehot.sum(0)
    mean_to = dist @ onehot                                                       # (N, k) sums
    own = onehot.bool()
    a = (mean_to[own] / (counts[labels] - 1).clamp_min(1))
    other = (mean_to / counts.clamp_min(1)).masked_fill(own | (counts == 0), float("inf"))
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-30)
    return float(torch.where(counts[labels] > 1, s, torch.zeros_like(s)).mean())


def cluster(x: torch.Tensor, *, k_max: int, generator: torch.Generator,
            n_score: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with the number of clusters chosen blindly, k in [2, k_max] maximising the silhouette of (at
    most) ``n_score`` points. Returns ``(centroids (k, D), labels (N,))``."""
    x = _flat(x)
    sub = x[torch.randperm(len(x), generator=generator, device=generator.device)[:n_score].to(x.device)]
    best = None
    for k in range(2, min(k_max, len(sub) - 1) + 1):  # a loop over candidate k, each fully vectorised
        centres, _ = kmeans(sub, k, generator=generator)
        score = silhouette(sub, torch.cdist(sub, centres).argmin(1))
        if best is None or score > best[0]:
            best = (score, centres)
    centres, labels = kmeans(x, len(best[1]), generator=generator)
    return centres, labels


def cluster_moments(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster mean and std (population) of every column of ``x`` ``(N, D)``: each ``(k, D)``."""
    x = _flat(x)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1).to(x.dtype)
    mean = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x) / counts
    var = torch.zeros_like(mean).index_add_(0, labels, (x - mean[labels]).pow(2)) / counts
    return mean, var.sqrt()


def orientation(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which way each column of each cluster points, +1 or -1 ``(k, D)``, without labels, and whether that is
    read from ties (``(k, D)`` bool) rather than guessed from the skewness.

    A ReLU output is 0 for a large share of inputs, and 0 reaches the cloud as the exact value n_j: the
    extreme of the column that many queries share exactly. +1 when more queries tie at the cluster's minimum
    than at its maximum (w_j > 0), -1 when more tie at the maximum; where fewer than two queries make the
    difference, the sign of the skewness (ReLU outputs are skewed to the right)."""
    x = _flat(x)
    index = labels[:, None].expand_as(x)
    inf = torch.full((k, x.shape[1]), float("inf"), dtype=x.dtype, device=x.device)
    low, high = inf.scatter_reduce(0, index, x, "amin"), (-inf).scatter_reduce(0, index, x, "amax")
    ties = lambda at: torch.zeros_like(low).index_add_(0, labels, (x == at[labels]).to(x.dtype))  # noqa: E731
    tie_balance = ties(low) - ties(high)
    mean, _ = cluster_moments(x, labels, k)
    third = torch.zeros_like(mean).index_add_(0, labels, (x - mean[labels]).pow(3))
    sure = tie_balance.abs() >= 2
    return torch.where(sure, torch.sign(tie_balance), torch.where(third < 0, -1.0, 1.0)), sure


def _correlation(z: torch.Tensor) -> torch.Tensor:
    """Correlation matrix ``(D, D)`` of standardised columns ``z`` ``(N, D)`` (constant columns: 0)."""
    return z.T @ z / max(len(z), 1)


# ---------------------------------------------------------------------------------------------------
# The threat models' views
# ---------------------------------------------------------------------------------------------------
@dataclass
class AttackData:
    """What an attacker holds, flattened: ``clean_train`` ``(N_a, D)``, the edge's activations of its own
    inputs; ``sent_train`` ``(N_a, D)``, what the device sends for those inputs (one fresh draw each);
    ``y_train`` ``(N_a,)``, their private labels; ``sent`` ``(N, D)``, the victims' queries it attacks."""

    clean_train: torch.Tensor
    sent_train: torch.Tensor
    y_train: torch.Tensor
    sent: torch.Tensor

    def __post_init__(self):
        self.clean_train, self.sent_train, self.sent = map(_flat, (self.clean_train, self.sent_train, self.sent))


def non_adaptive_view(data: AttackData) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained on clean activations, applied to the noisy ones as they arrive."""
    return data.clean_train, data.sent


def global_view(data: AttackData) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained on noisy activations, standardised globally (the probe's own per-feature moments, dominated by
    the pool's offsets): the chapter-32 adversary, kept as a reference."""
    return data.sent_train, data.sent


def _standardise(x, centres, mean, std):
    labels = torch.cdist(x, centres).argmin(1)
    return (x - mean[labels]) / std[labels].clamp_min(1e-12), labels


def _clustered(x: torch.Tensor, k_max: int, generator: torch.Generator, facts: dict | None, fact: str):
    """k-means on ``x`` (N, D) with k chosen blindly (:func:`cluster`), recorded as ``facts[fact]``; returns the
    centres, labels, per-cluster channel means and stds (k, D), and ``x`` standardised within its cluster."""
    centres, labels = cluster(x, k_max=k_max, generator=generator)
    if facts is not None:
        facts[fact] = len(centres)
    mean, std = cluster_moments(x, labels, len(centres))
    return centres, labels, mean, std, (x - mean[labels]) / std[labels].clamp_min(1e-12)


def adaptive_view(data: AttackData, *, k_max: int, generator: torch.Generator, n_classes: int | None = None,
                  facts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster normalisation learned from the attacker's own noisy, labelled data.

    k-means (:func:`cluster`) on ``sent_train``; every point is standardised with its cluster's per-channel
    moments; a channel's sign in cluster c is flipped when its class means disagree with those of the largest
    cluster (w_j < 0 flips a channel). Test queries go to the nearest centroid and are treated alike."""
    centres, labels, mean, std, z = _clustered(data.sent_train, k_max, generator, facts, "clusters_adaptive")
    k = len(centres)
    n_classes = n_classes or int(data.y_train.max()) + 1
    key = labels * n_classes + data.y_train.to(labels.device)                     # (cluster, class) cell
    cells = torch.zeros(k * n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, key, z)
    sizes = torch.bincount(key, minlength=k * n_classes).clamp_min(1).unsqueeze(1)
    class_means = (cells / sizes).view(k, n_classes, -1)                          # (k, C, D)
    ref = int(torch.bincount(labels, minlength=k).argmax())
    sign = torch.where((class_means * class_means[ref]).sum(1) < 0, -1.0, 1.0)    # (k, D)
    z_test, labels_test = _standardise(data.sent, centres, mean, std)
    return z * sign[labels], z_test * sign[labels_test]


def blind_view(data: AttackData, *, k_max: int, generator: torch.Generator,
               facts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """No pool, no noisy labels: cluster the queries themselves, standardise each cluster's channels, orient
    them like the clean activations and give them the clean activations' mean and std. The estimate of
    ``a`` goes to the classifier trained on clean activations.

    Orientation: from ties where a channel has them (:func:`orientation`); a channel without them takes the
    sign that its correlations with the tie-oriented channels vote for (a gain w_jc changes a correlation
    only in sign, so corr_j[c, c'] corr_clean[c, c'] s_c' has the sign s_c), and the skewness if none."""
    clean = data.clean_train
    c_mean, c_std = clean.mean(0), clean.std(0, correction=0)
    ones = torch.zeros(len(clean), dtype=torch.long, device=clean.device)
    reference, reference_sure = orientation(clean, ones, 1)                         # (1, D)
    c_corr = _correlation((clean - c_mean) / c_std.clamp_min(1e-12))
    centres, labels, mean, std, z = _clustered(data.sent, k_max, generator, facts, "clusters_blind")
    k = len(centres)
    z = torch.where(std[labels] > 0, z, torch.zeros_like(z))
    sign, sure = orientation(data.sent, labels, k)
    sign, sure = sign * reference, sure & reference_sure
    for c in range(k):  # a loop over clusters; each step is (D, D) matrix work
        vote = (_correlation(z[labels == c]) * c_corr) @ (sign[c] * sure[c])
        sign[c] = torch.where(sure[c] | (vote == 0), sign[c], torch.sign(vote))
    return clean, c_mean + c_std * sign[labels] * z


# Kerckhoffs: knows the pool (w_j, n_j) and the sampler ----------------------------------------------
def expected_w(pool_w: torch.Tensor, sampler: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance ``(M, D)`` of the multiplicative noise a query gets from pool sample j.

    ``exact``: w_j itself, variance 0. ``resample_w`` (the v2 code's sampler: D values drawn from N(mu_j,
    sigma_j^2) fitted to w_j, placed in the rank order of w_j): the entry of rank r is the r-th order
    statistic of D normals, with mean mu + sigma Phi^-1(p), p = (r + 1 - 0.375) / (D + 0.25) (Blom 1958), and
    variance sigma^2 p (1 - p) / ((D + 2) phi(Phi^-1(p))^2) (the asymptotic variance of a sample quantile)."""
    w = _flat(pool_w)
    if sampler == "exact":
        return w, torch.zeros_like(w)
    checks.one_of(sampler, ("exact", "resample_w"), "sampler", "expected_w()")
    d = w.shape[1]
    mu, sigma = w.mean(1, keepdim=True), w.std(1, correction=0, keepdim=True)
    rank = torch.argsort(torch.argsort(w, dim=1), dim=1).to(w.dtype)
    p = (rank + 1 - 0.375) / (d + 0.25)
    q = torch.special.ndtri(p)
    density = torch.exp(-0.5 * q * q) / math.sqrt(2 * math.pi)
    return mu + sigma * q, sigma.pow(2) * p * (1 - p) / ((d + 2) * density.pow(2))


def identify_draw(sent: torch.Tensor, pool_n: torch.Tensor, w_mean: torch.Tensor, w_var: torch.Tensor,
                  a_mean: torch.Tensor, a_var: torch.Tensor, *, block: int = 1024) -> torch.Tensor:
    """The most likely pool sample ``(N,)`` of each query ``sent`` ``(N, D)``: a Gaussian approximation of
    sent - n_j = w * a per channel, with mean w_mean_j a_mean and variance w_mean_j^2 a_var + w_var_j (a_var +
    a_mean^2), summed over channels. Queries are scored against the M samples by blocks of ``block`` rows."""
    n = _flat(pool_n).to(sent.device)
    floor = (1e-5 * float(n.abs().max()) + 1e-8) ** 2                       # float32 resolution of the offsets
    mu = w_mean * a_mean                                                    # (M, D)
    var = w_mean.pow(2) * a_var + w_var * (a_var + a_mean.pow(2)) + floor
    out = []
    for start in range(0, len(sent), block):                                # blocks of queries, not a loop over them
        r = sent[start:start + block, None, :] - n[None] - mu[None]         # (B, M, D)
        out.append((r.pow(2) / var + var.log()).sum(-1).argmin(1))
    return torch.cat(out)


def invert(sent: torch.Tensor, pool_w: torch.Tensor, pool_n: torch.Tensor, clean: torch.Tensor, *,
           sampler: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate the clean activations behind ``sent`` ``(N, D)`` knowing the pool and the sampler.

    Identify each query's draw j (:func:`identify_draw`), then estimate ``a`` by linear MMSE,

        a_hat = a_mean + w_hat a_var (s - n_j - w_hat a_mean) / (w_hat^2 a_var + w_var (a_var + a_mean^2)),

    which is exactly (s - n_j) / w_j for the ``exact`` sampler, clipped to the range of the clean activations
    ``clean`` ``(N_a, D)`` (which also give a_mean and a_var). Returns ``(a_hat (N, D), j (N,))``."""
    sent, clean = _flat(sent), _flat(clean)
    a_mean, a_var = clean.mean(0), clean.var(0, correction=0)
    w_mean, w_var = (t.to(sent.device) for t in expected_w(pool_w, sampler))
    j = identify_draw(sent, pool_n, w_mean, w_var, a_mean, a_var)
    wm, wv, n = w_mean[j], w_var[j], _flat(pool_n).to(sent.device)[j]
    denominator = wm.pow(2) * a_var + wv * (a_var + a_mean.pow(2))
    gain = torch.where(denominator > 0, wm * a_var / denominator.clamp_min(1e-30), torch.zeros_like(wm))
    a_hat = a_mean + gain * (sent - n - wm * a_mean)
    return torch.minimum(torch.maximum(a_hat, clean.min(0).values), clean.max(0).values), j


def kerckhoffs_view(data: AttackData, pool_w: torch.Tensor, pool_n: torch.Tensor, *, sampler: str,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invert (:func:`invert`) the victims' queries and the attacker's own noisy data alike; the attacker's
    model is trained on its own inverted activations (with the exact sampler they equal the clean ones, so
    this is the clean classifier). Returns ``(train, test, identified draws (N,))``."""
    train, _ = invert(data.sent_train, pool_w, pool_n, data.clean_train, sampler=sampler)
    test, j = invert(data.sent, pool_w, pool_n, data.clean_train, sampler=sampler)
    return train, test, j


# ---------------------------------------------------------------------------------------------------
# All attackers at once
# ---------------------------------------------------------------------------------------------------
def views(data: AttackData, *, pool_w: torch.Tensor, pool_n: torch.Tensor, sampler: str, k_max: int,
          seed: int = 0) -> tuple[dict, dict]:
    """Every threat model's ``(train_features, test_features)`` plus the ``global`` reference, and facts about
    them: ``draws_identified`` (the Kerckhoffs attacker's draw of each query, ``(N,)``), ``clusters_blind``
    and ``clusters_adaptive`` (the numbers of clusters chosen without knowing M)."""
    gen = _generator(seed, data.sent.device)
    facts: dict = {}
    out = {"non_adaptive": non_adaptive_view(data), "global": global_view(data)}
    out["adaptive"] = adaptive_view(data, k_max=k_max, generator=gen, facts=facts)
    out["blind"] = blind_view(data, k_max=k_max, generator=gen, facts=facts)
    train, test, facts["draws_identified"] = kerckhoffs_view(data, pool_w, pool_n, sampler=sampler)
    out["kerckhoffs"] = (train, test)
    return out, facts


def attack_accuracies(data: AttackData, y_test: torch.Tensor, *, pool_w: torch.Tensor, pool_n: torch.Tensor,
                      sampler: str, n_classes: int, k_max: int, clean_probe: Probe | None = None, seed: int = 0,
                      **probe_options) -> tuple[dict, dict, dict]:
    """Private-label accuracy of every threat model (and the ``global`` reference) on ``data.sent``.

    One probe is trained per distinct training view (the clean probe, given or trained here, serves
    ``non_adaptive`` and ``blind``). Returns ``(accuracies, views, facts)``: accuracies by name, and the
    views and facts of :func:`views` (the views also feed a reconstruction attack on the same features).
    """
    v, facts = views(data, pool_w=pool_w, pool_n=pool_n, sampler=sampler, k_max=k_max, seed=seed)
    if clean_probe is None:
        clean_probe = train_probe(data.clean_train, data.y_train, n_classes=n_classes, seed=seed, **probe_options)
    out = {}
    for name, (train, test) in v.items():
        probe = clean_probe if train is data.clean_train else train_probe(
            train, data.y_train, n_classes=n_classes, seed=seed, **probe_options)
        out[name] = probe.accuracy(test, y_test)
    return out, v, facts
