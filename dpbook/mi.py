"""Mutual information (MI) and entropy from samples: k-nearest-neighbour estimators in PyTorch.

All estimates are in **nats**. Inputs are samples ``x`` of shape ``(n, d_x)`` and ``y`` of shape
``(n, d_y)`` (numpy arrays or tensors; 1-D inputs are read as one column), row ``i`` of both being one draw
of the pair (X, Y).

Estimators (``method=`` of :func:`mutual_information`):

``"ksg"`` (KSG estimator 1, Kraskov, Stoegbauer & Grassberger 2004, eq. 8)
    The joint distance is the max-norm over the two blocks, ``||z_i - z_j|| = max(||x_i - x_j||, ||y_i - y_j||)``.
    With eps_i the distance from z_i to its k-th nearest neighbour and n_x(i), n_y(i) the numbers of points
    *strictly* closer than eps_i in each marginal (self excluded):
    ``I = psi(k) + psi(n) - < psi(n_x + 1) + psi(n_y + 1) >``.
``"ksg2"`` (KSG estimator 2, eq. 9)
    With eps_x(i), eps_y(i) the largest marginal distances among the k neighbours and non-strict counts:
    ``I = psi(k) - 1/k + psi(n) - < psi(n_x) + psi(n_y) >``.
``"ite_dkl"`` (the estimator Shredder's notebooks call: ITE's ``MIShannon_DKL`` with ``BDKL_KnnK``)
    I = KL(joint || product of marginals), estimated with the kNN divergence estimator of Wang, Kulkarni &
    Verdu (2009) with Euclidean distances: the first half of the rows is the joint sample P, the second
    half with each block's rows independently permuted is the product sample Q (m = n/2 rows each), and
    ``I = d/m * sum_i log(nu_k(i) / rho_k(i)) + log(m / (m - 1))`` with rho_k(i) the distance from P_i to
    its k-th neighbour in P (self excluded) and nu_k(i) to its k-th neighbour in Q.
``"gaussian"``
    The parametric MI of Gaussians with the sample covariance, ``0.5 log(|S_x| |S_y| / |S|)``: exact for
    Gaussian data with n >> d, a cheap baseline otherwise.

The marginal norm of the KSG estimators (``metric=``) is Euclidean by default, which lets distances come
from one matrix product; ``metric="chebyshev"`` uses the max-norm inside each block too, as NPEET and
scikit-learn do. Both are valid KSG estimators (the derivation needs only the max over the two blocks).

Nearest neighbours are exact: distances are computed block by block of query rows (``block_size`` rows
at a time, each block a ``(block_size, n)`` matrix on the tensor device) and reduced with ``topk``, so
memory stays bounded and there is no Python loop over points. Euclidean comparisons use squared distances
from one fused matrix product.

Known limits, shown in the book's MI chapter: kNN estimators are accurate in low dimension and biased low,
badly, when the dimension or the MI is large; they are not invariant to rescaling a block (true MI is),
which ``standardize`` removes; duplicate points make distances zero and the estimators undefined, which
raises unless ``jitter`` is set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import checks

METHODS = ("ksg", "ksg2", "ite_dkl", "gaussian")
METRICS = ("euclidean", "chebyshev")
STANDARDIZE = (True, False, "dim", "block")


# ---------------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------------
def _as_2d(a, name: str, where: str, device, dtype) -> torch.Tensor:
    """Argument ``name`` of ``where`` as a 2-D tensor of ``dtype`` on ``device`` (1-D: one column)."""
    t = a.detach() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))
    if t.ndim == 1:
        t = t[:, None]
    checks.check(t.ndim == 2, name, where, "of shape (n_samples, n_features)", tuple(t.shape),
                 f"Flatten each sample first, e.g. {name}.reshape(len({name}), -1).")
    checks.check(t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                       torch.uint8, torch.bool),
                 name, where, "of real numbers", t.dtype)
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute those rows first")
    return t


def _standardize(t: torch.Tensor, how) -> torch.Tensor:
    """Per-column z-scores (``True``/``"dim"``) or the block divided by its overall std (``"block"``).

    Constant columns (e.g. dead ReLU units) are centred but not divided, so they stay constant.
    """
    if how is False:
        return t
    centred = t - t.mean(0, keepdim=True)
    if how == "block":
        scale = centred.pow(2).mean().sqrt()
        return centred / scale if scale > 0 else centred
    std = centred.std(0, keepdim=True)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def _jitter(t: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    if amount <= 0:
        return t
    scale = t.std(0, keepdim=True).clamp_min(1.0) * amount
    noise = torch.randn(t.shape, generator=generator, dtype=t.dtype, device="cpu").to(t.device)
    return t + scale * noise


def _default_block_size(n: int, device: torch.device, n_matrices: int, dtype: torch.dtype) -> int:
    """Rows per block. On a CPU, ``n_matrices`` blocks of shape (rows, n) should stay within about 64 MB,
    so that they live in cache (measured: 4x faster than 512 MB blocks); on a GPU, a quarter of free memory."""
    budget = 64 * 2**20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 4
    bytes_per_row = n * n_matrices * torch.finfo(dtype).bits // 8
    return int(max(1, min(n, budget // max(bytes_per_row, 1))))


# ---------------------------------------------------------------------------------------------------
# Distances and nearest neighbours, block by block
# ---------------------------------------------------------------------------------------------------
def _reference(b: torch.Tensor, metric: str) -> torch.Tensor:
    """``b`` (n, d) prepared for :func:`_distance_key`: for Euclidean, the (d + 2, n) matrix
    ``[-2 b, 1, |b|^2]^T``, so that one matrix product gives squared distances."""
    if metric == "euclidean":
        ones = torch.ones(len(b), 1, dtype=b.dtype, device=b.device)
        return torch.cat([-2.0 * b, ones, (b * b).sum(1, keepdim=True)], dim=1).T.contiguous()
    return b  # chebyshev: the points themselves


def _distance_key(a: torch.Tensor, ref: torch.Tensor, metric: str) -> torch.Tensor:
    """A (m, n) matrix increasing in the distance between the rows of ``a`` (m, d) and the reference points
    ``ref`` (from :func:`_reference`): the *squared* Euclidean distance, or the Chebyshev distance.

    Squared Euclidean distances are ``|a|^2 + |b|^2 - 2 a b^T`` computed as one matrix product
    ``[a, |a|^2, 1] @ [-2 b, 1, |b|^2]^T`` and clamped at 0 (no square root, no temporaries); in float64
    the rounding error is about 1e-16 of the squared norms.
    """
    if metric == "euclidean":
        ones = torch.ones(len(a), 1, dtype=a.dtype, device=a.device)
        return torch.cat([a, (a * a).sum(1, keepdim=True), ones], dim=1).mm(ref).clamp_min_(0.0)
    return torch.cdist(a, ref, p=float("inf"))


def _key_to_distance(key: torch.Tensor, metric: str) -> torch.Tensor:
    return key.sqrt() if metric == "euclidean" else key


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of ``a`` (m, d) and ``b`` (n, d): shape (m, n)."""
    checks.one_of(metric, METRICS, "metric", "pairwise_distances()")
    return _key_to_distance(_distance_key(a, _reference(b, metric), metric), metric)


def _blocks(n: int, block_size: int):
    for start in range(0, n, block_size):  # a loop over blocks of rows, not over points
        yield start, min(start + block_size, n)


def _mask_self(dist: torch.Tensor, start: int) -> torch.Tensor:
    rows = torch.arange(dist.shape[0], device=dist.device)
    dist[rows, rows + start] = float("inf")
    return dist


def knn_distances(query: torch.Tensor, reference: torch.Tensor, k: int, *, exclude_self: bool = False,
                  metric: str = "euclidean", block_size: int | None = None) -> torch.Tensor:
    """Distances from each query row to its ``k`` nearest reference rows, ascending: shape ``(n_query, k)``.

    With ``exclude_self=True``, ``query`` must be ``reference`` and each point is not its own neighbour
    (duplicates of it still are, at distance 0).
    """
    checks.check(not exclude_self or query.shape == reference.shape, "exclude_self", "knn_distances()",
                 "False unless query and reference are the same points", exclude_self)
    checks.one_of(metric, METRICS, "metric", "knn_distances()")
    block = block_size or _default_block_size(len(reference), reference.device, 1, reference.dtype)
    ref = _reference(reference, metric)
    out = []
    for start, stop in _blocks(len(query), block):
        key = _distance_key(query[start:stop], ref, metric)
        if exclude_self:
            _mask_self(key, start)
        out.append(torch.topk(key, k, dim=1, largest=False).values)
    return _key_to_distance(torch.cat(out), metric)


def _check_no_zero(dist: torch.Tensor, what: str) -> None:
    if bool((dist <= 0).any()):
        raise ValueError(
            f"{int((dist <= 0).sum())} {what} are 0: the sample has duplicate points (integer pixels, dead "
            "units), for which kNN estimators are undefined. Pass jitter=1e-6 to break ties with tiny noise, "
            "or remove the duplicates.")


# ---------------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------------
def log_unit_ball_volume(d: int, metric: str = "euclidean") -> float:
    """log of the volume of the unit ball in R^d: pi^(d/2) / Gamma(d/2 + 1) (Euclidean) or 2^d (max-norm)."""
    if metric == "euclidean":
        return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
    return d * math.log(2.0)


def entropy(x, *, k: int = 3, metric: str = "euclidean", device=None, block_size: int | None = None,
            jitter: float = 0.0, seed: int | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Kozachenko-Leonenko kNN estimate of the differential entropy of ``x`` (n, d), in nats.

    ``H = psi(n) - psi(k) + log V_d + d/n * sum_i log eps_k(i)``, eps_k(i) the distance from x_i to its k-th
    nearest neighbour and V_d the volume of the unit ball of the metric (Kozachenko & Leonenko 1987;
    Kraskov et al. 2004, eq. 20).
    """
    checks.one_of(metric, METRICS, "metric", "entropy()")
    dev = torch.device(device) if device is not None else _auto_device()
    t = _as_2d(x, "x", "entropy()", dev, dtype)
    _check_k(k, len(t), "entropy()")
    t = _jitter(t, jitter, _generator(seed))
    eps = knn_distances(t, t, k, exclude_self=True, metric=metric, block_size=block_size)[:, -1]
    _check_no_zero(eps, "k-th neighbour distances")
    n, d = t.shape
    psi = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return float(psi[0] - psi[1] + log_unit_ball_volume(d, metric) + d * eps.log().mean().double().cpu())


# ---------------------------------------------------------------------------------------------------
# Mutual information
# ---------------------------------------------------------------------------------------------------
def _auto_device() -> torch.device:
    from .config import device

    return device()


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _check_k(k: int, n: int, where: str) -> None:
    """``k`` neighbours are possible among ``n`` samples: an integer in [1, n)."""
    checks.check(isinstance(k, (int, np.integer)) and k >= 1, "k", where, "an integer >= 1", k)
    checks.check(k < n, "k", where, f"smaller than the number of samples n = {n}", k)


def _ksg(x: torch.Tensor, y: torch.Tensor, k: int, variant: int, metric: str, block_size: int | None) -> float:
    """KSG estimators 1 and 2. Joint and marginal distances of a block come from the same two matrices, so
    ties between the k-th neighbour's distance and the marginal counts are decided consistently."""
    n = len(x)
    block = block_size or _default_block_size(n, x.device, 3, x.dtype)
    x_ref, y_ref = _reference(x, metric), _reference(y, metric)
    nx_all, ny_all = [], []
    for start, stop in _blocks(n, block):
        dx = _mask_self(_distance_key(x[start:stop], x_ref, metric), start)  # (b, n), squared if Euclidean
        dy = _mask_self(_distance_key(y[start:stop], y_ref, metric), start)
        dz = torch.maximum(dx, dy)                                 # max-norm over the two blocks
        eps, idx = torch.topk(dz, k, dim=1, largest=False)         # (b, k) joint neighbours
        if variant == 1:
            radius = eps[:, -1:]                                   # (b, 1)
            _check_no_zero(radius, "k-th neighbour distances in the joint space")
            nx_all.append((dx < radius).sum(1, dtype=torch.int32))  # strict; self is at +inf
            ny_all.append((dy < radius).sum(1, dtype=torch.int32))
        else:
            eps_x = dx.gather(1, idx).amax(1, keepdim=True)        # marginal extents of the k neighbours
            eps_y = dy.gather(1, idx).amax(1, keepdim=True)
            _check_no_zero(torch.minimum(eps_x, eps_y), "marginal neighbour extents")
            nx_all.append((dx <= eps_x).sum(1, dtype=torch.int32))  # non-strict
            ny_all.append((dy <= eps_y).sum(1, dtype=torch.int32))
    nx = torch.cat(nx_all).double().cpu()
    ny = torch.cat(ny_all).double().cpu()
    psi = torch.special.digamma
    k_t, n_t = torch.tensor(float(k), dtype=torch.float64), torch.tensor(float(n), dtype=torch.float64)
    if variant == 1:
        return float(psi(k_t) + psi(n_t) - (psi(nx + 1) + psi(ny + 1)).mean())
    return float(psi(k_t) - 1.0 / k + psi(n_t) - (psi(nx) + psi(ny)).mean())


def _ite_dkl(x: torch.Tensor, y: torch.Tensor, k: int, generator: torch.Generator,
             block_size: int | None) -> float:
    """ITE's ``MIShannon_DKL`` with ``BDKL_KnnK`` (Szabo's ITE toolbox, ``ite/cost/meta_i.py`` and
    ``ite/cost/base_d.py``), Euclidean distances: the algorithm of the module docstring."""
    m = len(x) // 2
    checks.check(k < m, "k", "mutual_information(method='ite_dkl')",
                 f"< n // 2 = {m}, the size of the joint sample (half the rows)", k)
    p = torch.cat([x[:m], y[:m]], dim=1)                            # joint sample: first half in order
    perm_x = torch.randperm(m, generator=generator).to(x.device)    # product sample: second half, each
    perm_y = torch.randperm(m, generator=generator).to(x.device)    # block permuted independently
    q = torch.cat([x[m:2 * m][perm_x], y[m:2 * m][perm_y]], dim=1)
    rho = knn_distances(p, p, k, exclude_self=True, block_size=block_size)[:, -1]
    nu = knn_distances(p, q, k, block_size=block_size)[:, -1]
    _check_no_zero(rho, "joint-sample neighbour distances")
    _check_no_zero(nu, "product-sample neighbour distances")
    d = p.shape[1]
    return float(d * (nu.log() - rho.log()).mean().double().cpu() + math.log(m / (m - 1)))


def _gaussian(x: torch.Tensor, y: torch.Tensor) -> float:
    z = torch.cat([x, y], dim=1).double()
    cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    dx = x.shape[1]
    logdet = lambda c: torch.linalg.slogdet(c)[1]  # noqa: E731
    return float(0.5 * (logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov)).cpu())


def mutual_information(x, y, *, k: int = 3, method: str = "ksg", standardize=True, metric: str = "euclidean",
                       device=None, block_size: int | None = None, jitter: float = 0.0,
                       seed: int | None = None, dtype: torch.dtype = torch.float64) -> float:
    """Estimate the mutual information I(X; Y) in nats from paired samples.

    Args:
        x: array or tensor ``(n, d_x)`` (or ``(n,)``), one sample per row.
        y: array or tensor ``(n, d_y)`` (or ``(n,)``), paired with ``x`` row by row.
        k: neighbours, default 3. Smaller k: less bias, more variance.
        method: ``"ksg"`` (default), ``"ksg2"``, ``"ite_dkl"`` (the Shredder/ITE original) or
            ``"gaussian"``; see the module docstring.
        standardize: ``True`` or ``"dim"``: z-score every column first; ``"block"``: divide each of x and y
            by its overall standard deviation; ``False``: use the raw values (the original's behaviour,
            which makes the estimate depend on the scale of each block).
        metric: marginal norm of the KSG estimators, ``"euclidean"`` (default, fast) or ``"chebyshev"``.
            ``"ite_dkl"`` is always Euclidean.
        device: tensor device; default :func:`dpbook.device`.
        block_size: query rows per distance block; default: about 64 MB of distance matrices on a CPU
            (cache-sized), a quarter of free memory on a GPU.
        jitter: if > 0, add ``jitter * max(std, 1)`` Gaussian noise to every column to break ties between
            duplicate points. Off by default: ties raise instead. Use at least 1e-6: distances from the
            matrix product resolve about 1e-8 of a column's scale in float64 (NPEET and scikit-learn use
            1e-10 with exact tree distances).
        seed: seed of the jitter and of ``ite_dkl``'s permutations (default: fresh randomness).
        dtype: float64 by default; float32 is faster on GPUs but its distances are less exact.

    Returns:
        float: the estimate in nats. It can be slightly negative for independent variables.

    Raises:
        ValueError: mismatched numbers of rows, k >= n, NaN or inf, inputs not 2-D, duplicate points.
    """
    where = "mutual_information()"
    checks.one_of(method, METHODS, "method", where)
    checks.one_of(metric, METRICS, "metric", where)
    checks.one_of(standardize, STANDARDIZE, "standardize", where)
    dev = torch.device(device) if device is not None else _auto_device()
    xt, yt = _as_2d(x, "x", where, dev, dtype), _as_2d(y, "y", where, dev, dtype)
    checks.check(len(xt) == len(yt), "y", where, f"of the same number of rows as x ({len(xt)}; paired samples)",
                 len(yt))
    _check_k(k, len(xt), where)
    gen = _generator(seed)
    xt, yt = _standardize(xt, standardize), _standardize(yt, standardize)
    xt, yt = _jitter(xt, jitter, gen), _jitter(yt, jitter, gen)
    if method == "gaussian":
        return _gaussian(xt, yt)
    if method == "ite_dkl":
        return _ite_dkl(xt, yt, k, gen, block_size)
    return _ksg(xt, yt, k, 1 if method == "ksg" else 2, metric, block_size)


@dataclass
class PermutationTest:
    """Result of :func:`permutation_test`: the estimate, the null distribution's summary, a p-value (nats)."""

    estimate: float
    null_mean: float
    null_std: float
    null_quantiles: tuple[float, float]  # 2.5% and 97.5%
    p_value: float
    n_permutations: int


def permutation_test(x, y, *, n_permutations: int = 50, seed: int | None = None, **options) -> PermutationTest:
    """The estimate and its null distribution under independence, from rows of ``y`` permuted.

    Permuting y keeps both marginals and destroys the dependence, so the null estimates show the estimator's
    bias and spread at MI = 0 for this sample size and dimension. ``p_value = (1 + #null >= estimate) /
    (1 + n_permutations)``. ``options`` go to :func:`mutual_information`.
    """
    checks.check(n_permutations >= 1, "n_permutations", "permutation_test()", ">= 1", n_permutations)
    y_t = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    gen = _generator(seed)
    estimate = mutual_information(x, y_t, seed=seed, **options)
    null = np.array([mutual_information(x, y_t[torch.randperm(len(y_t), generator=gen)], seed=seed, **options)
                     for _ in range(n_permutations)])  # a loop over permutations, each one fully vectorised
    return PermutationTest(estimate=estimate, null_mean=float(null.mean()), null_std=float(null.std(ddof=1))
                           if n_permutations > 1 else 0.0,
                           null_quantiles=(float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))),
                           p_value=float((1 + (null >= estimate).sum()) / (1 + n_permutations)),
                           n_permutations=n_permutations)


def gaussian_mi(rho: float, pairs: int = 1) -> float:
    """Closed form: MI of ``pairs`` independent bivariate Gaussian pairs with correlation ``rho``,
    ``-pairs/2 * log(1 - rho^2)`` nats."""
    checks.check(-1 < rho < 1, "rho", "gaussian_mi()", "in (-1, 1)", rho)
    return -0.5 * pairs * math.log1p(-rho * rho)


@dataclass
class ConditionalEstimate:
    """Result of :func:`conditional_mutual_information`, in nats."""

    estimate: float      # sum over groups of p(g) I(X; Y | G = g)
    values: dict         # group -> its estimate
    counts: dict         # group -> its number of rows
    left_out: int        # rows of groups too small to estimate (not in p)


def conditional_mutual_information(x, y, groups, *, min_rows: int = 20, seed: int | None = None,
                                   **options) -> ConditionalEstimate:
    """Estimate I(X; Y | G) for a discrete G: ``sum_g p(g) I(X; Y | G = g)``, each term by
    :func:`mutual_information` on the rows with ``G = g`` and p(g) their share of the rows.

    Args:
        x, y: paired samples ``(n, d_x)`` and ``(n, d_y)``.
        groups: ``(n,)`` integer labels of G (for Shredder: which pool sample noised each row).
        min_rows: groups with fewer rows are left out and p renormalised over the others (``left_out`` says
            how many rows that dropped); it must leave room for ``k`` neighbours (``ite_dkl`` halves a group).
        seed: seed of group g's estimate is ``seed + g`` (jitter, ``ite_dkl``'s permutations).
        **options: passed to :func:`mutual_information` (``method``, ``k``, ``standardize``, ...); a
            ``standardize`` option applies within each group, so a per-group offset or scale is removed.

    Within a group the estimator sees fewer rows than the whole sample, so compare conditional estimates
    with conditional estimates on the same groups, not with unconditional ones.
    """
    g = torch.as_tensor(np.asarray(groups.cpu() if torch.is_tensor(groups) else groups)).long().flatten()
    xt = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    yt = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
    checks.check(len(g) == len(xt) == len(yt), "groups", "conditional_mutual_information()",
                 f"one label per row of x and y ({len(xt)})", len(g))
    labels, counts = torch.unique(g, return_counts=True)
    values, sizes, left_out = {}, {}, 0
    for label, count in zip(labels.tolist(), counts.tolist()):  # a loop over groups, each estimate vectorised
        if count < min_rows:
            left_out += count
            continue
        rows = (g == label).nonzero().squeeze(1)
        values[label] = mutual_information(xt[rows.to(xt.device)], yt[rows.to(yt.device)],
                                           seed=None if seed is None else seed + label, **options)
        sizes[label] = count
    checks.check(bool(sizes), "min_rows", "conditional_mutual_information()",
                 f"at most the largest group's size ({int(counts.max())})", min_rows)
    total = sum(sizes.values())
    return ConditionalEstimate(estimate=sum(values[k] * sizes[k] / total for k in sizes), values=values,
                               counts=sizes, left_out=left_out)
