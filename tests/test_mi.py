"""dpbook.mi against closed forms and against straightforward scipy implementations written here."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from scipy.special import digamma

from dpbook import mi

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def correlated(n, rho, pairs=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, pairs))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, pairs))
    return x, y


# ---------------------------------------------------------------------------------------------------
# Reference implementations: the textbook formulas with scipy's kd-tree or brute-force distances
# ---------------------------------------------------------------------------------------------------
def ksg1_ckdtree(x, y, k):
    """KSG estimator 1 with the max-norm everywhere (as NPEET), neighbours from cKDTree."""
    n = len(x)
    z = np.hstack([x, y])
    eps = cKDTree(z).query(z, k + 1, p=np.inf)[0][:, k]
    radius = np.nextafter(eps, 0)  # strictly closer than eps
    nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True) - 1
    return digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))


def ksg_bruteforce(x, y, k, variant):
    """KSG estimators 1 and 2 with Euclidean marginals and the max over the blocks, all distances in numpy."""
    n = len(x)
    dx, dy = cdist(x, x), cdist(y, y)
    np.fill_diagonal(dx, np.inf)
    np.fill_diagonal(dy, np.inf)
    dz = np.maximum(dx, dy)
    idx = np.argsort(dz, axis=1)[:, :k]
    if variant == 1:
        eps = np.take_along_axis(dz, idx, 1)[:, -1:]
        nx, ny = (dx < eps).sum(1), (dy < eps).sum(1)
        return digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))
    ex = np.take_along_axis(dx, idx, 1).max(1, keepdims=True)
    ey = np.take_along_axis(dy, idx, 1).max(1, keepdims=True)
    nx, ny = (dx <= ex).sum(1), (dy <= ey).sum(1)
    return digamma(k) - 1 / k + digamma(n) - np.mean(digamma(nx) + digamma(ny))


def ite_dkl_ckdtree(x, y, k, perm_x, perm_y):
    """ITE's MIShannon_DKL with BDKL_KnnK, given the permutations of the product sample."""
    m = len(x) // 2
    p = np.hstack([x[:m], y[:m]])
    q = np.hstack([x[m:2 * m][perm_x], y[m:2 * m][perm_y]])
    rho = cKDTree(p).query(p, k + 1)[0][:, k]
    nu = cKDTree(q).query(p, k)[0][:, k - 1]
    return p.shape[1] * np.mean(np.log(nu / rho)) + np.log(m / (m - 1))


# ---------------------------------------------------------------------------------------------------
# Agreement with the references (same data, same k)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pairs,k", [(1, 3), (3, 5), (8, 2)])
def test_ksg1_chebyshev_matches_ckdtree(pairs, k):
    x, y = correlated(800, 0.6, pairs, seed=pairs)
    ours = mi.mutual_information(x, y, k=k, metric="chebyshev", standardize=False, device="cpu")
    assert ours == pytest.approx(ksg1_ckdtree(x, y, k), abs=1e-6)


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("pairs", [1, 4])
def test_ksg_euclidean_matches_bruteforce(variant, pairs):
    x, y = correlated(600, 0.8, pairs, seed=10 + pairs)
    method = "ksg" if variant == 1 else "ksg2"
    ours = mi.mutual_information(x, y, k=4, method=method, standardize=False, device="cpu", block_size=97)
    assert ours == pytest.approx(ksg_bruteforce(x, y, 4, variant), abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ite_dkl_matches_ckdtree_with_the_same_permutations(device):
    x, y = correlated(1001, 0.9, 3, seed=4)  # odd n: the last row is dropped, as in ITE
    ours = mi.mutual_information(x, y, method="ite_dkl", standardize=False, seed=123, device=device)
    gen = torch.Generator().manual_seed(123)
    m = len(x) // 2
    perm_x, perm_y = torch.randperm(m, generator=gen).numpy(), torch.randperm(m, generator=gen).numpy()
    assert ours == pytest.approx(ite_dkl_ckdtree(x, y, 3, perm_x, perm_y), abs=1e-6)


def test_entropy_matches_ckdtree_and_the_gaussian_closed_form():
    rng = np.random.default_rng(5)
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    x = rng.multivariate_normal([0, 0], cov, size=5000)
    eps = cKDTree(x).query(x, 4)[0][:, 3]
    reference = digamma(5000) - digamma(3) + math.log(math.pi) + 2 * np.mean(np.log(eps))
    assert mi.entropy(x, k=3, device="cpu") == pytest.approx(reference, abs=1e-6)
    closed = 0.5 * math.log((2 * math.pi * math.e) ** 2 * np.linalg.det(cov))
    assert mi.entropy(x, k=3, device="cpu") == pytest.approx(closed, abs=0.05)


@pytest.mark.parametrize("block_size", [1, 13, 500, 5000])
def test_block_size_does_not_change_the_answer(block_size):
    x, y = correlated(500, 0.7, 2, seed=6)
    reference = mi.mutual_information(x, y, device="cpu")
    assert mi.mutual_information(x, y, device="cpu", block_size=block_size) == pytest.approx(reference, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Closed forms and properties
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_correlated_gaussians_within_005_nats(device):
    x, y = correlated(5000, 0.9, seed=7)
    truth = mi.gaussian_mi(0.9)
    assert truth == pytest.approx(-0.5 * math.log(1 - 0.81))
    for method in ("ksg", "ksg2", "gaussian"):
        assert abs(mi.mutual_information(x, y, method=method, device=device) - truth) < 0.05, method


def test_independence_gives_about_zero():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((3000, 2)), rng.standard_normal((3000, 3))
    for method in ("ksg", "ksg2", "ite_dkl"):
        assert abs(mi.mutual_information(x, y, method=method, seed=0, device="cpu")) < 0.05, method


def test_symmetry_in_x_and_y():
    x, y = correlated(1500, 0.5, 2, seed=9)
    y = np.hstack([y, np.random.default_rng(0).standard_normal((1500, 1))])  # different widths
    assert mi.mutual_information(x, y, device="cpu") == pytest.approx(mi.mutual_information(y, x, device="cpu"),
                                                                         abs=1e-12)


def test_standardize_makes_scaling_irrelevant_and_raw_scale_matters():
    x, y = correlated(2000, 0.9, 5, seed=11)
    base = mi.mutual_information(x, y, device="cpu")
    for sx, sy in ((1000.0, 1e-3), (0.01, 7.0)):
        assert mi.mutual_information(sx * x, sy * y, device="cpu") == pytest.approx(base, abs=1e-9)
        assert mi.mutual_information(sx * x, sy * y, standardize="block", device="cpu") == pytest.approx(
            mi.mutual_information(x, y, standardize="block", device="cpu"), abs=1e-9)
    # without standardisation the original's estimator moves with a pure rescale of one block
    raw = mi.mutual_information(x, y, method="ite_dkl", standardize=False, seed=0, device="cpu")
    scaled = mi.mutual_information(x, 10 * y, method="ite_dkl", standardize=False, seed=0, device="cpu")
    assert raw - scaled > 1.0


def test_estimates_grow_with_snr_of_a_gaussian_channel():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3000, 2))
    estimates = [mi.mutual_information(x, x + noise * rng.standard_normal((3000, 2)), device="cpu")
                 for noise in (3.0, 1.0, 0.3)]
    truths = [2 / 2 * math.log(1 + 1 / noise**2) for noise in (3.0, 1.0, 0.3)]
    assert estimates[0] < estimates[1] < estimates[2]
    assert abs(estimates[0] - truths[0]) < 0.05 and abs(estimates[1] - truths[1]) < 0.1


def test_permutation_test_separates_dependence_from_independence():
    x, y = correlated(800, 0.5, seed=13)
    dep = mi.permutation_test(x, y, n_permutations=19, seed=0, device="cpu")
    assert dep.p_value == pytest.approx(1 / 20) and dep.estimate > dep.null_quantiles[1]
    rng = np.random.default_rng(14)
    ind = mi.permutation_test(x, rng.standard_normal((800, 1)), n_permutations=19, seed=0, device="cpu")
    assert ind.p_value > 0.05 and abs(ind.null_mean) < 0.05


def test_tensors_and_arrays_give_the_same_estimate():
    x, y = correlated(700, 0.7, seed=15)
    assert mi.mutual_information(torch.from_numpy(x), torch.from_numpy(y)[:, 0], device="cpu") == \
        pytest.approx(mi.mutual_information(x, y, device="cpu"), abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
def test_duplicates_raise_and_jitter_fixes_them():
    rng = np.random.default_rng(16)
    x = rng.integers(0, 3, size=(500, 2)).astype(float)  # few distinct values: many duplicates
    y = x + rng.integers(0, 2, size=(500, 2))
    with pytest.raises(ValueError, match="jitter"):
        mi.mutual_information(x, y, device="cpu")
    assert math.isfinite(mi.mutual_information(x, y, jitter=1e-6, seed=0, device="cpu"))


@pytest.mark.parametrize("x,y,k,match", [
    (np.zeros((10, 2)), np.zeros((9, 2)), 3, "same number of rows"),
    (np.ones((10, 2)), np.ones((10, 2)), 10, r"k of mutual_information\(\) must be smaller"),
    (np.ones((10, 2)), np.ones((10, 2)), 0, r"k of mutual_information\(\) must be an integer >= 1"),
    (np.full((10, 2), np.nan), np.ones((10, 2)), 3, "NaN"),
    (np.ones((10, 2)), np.full((10, 2), np.inf), 3, "NaN or infinite"),
    (np.ones((10, 2, 2)), np.ones((10, 2)), 3, r"reshape\(len\(x\), -1\)"),
])
def test_bad_input_is_a_clear_error(x, y, k, match):
    with pytest.raises(ValueError, match=match):
        mi.mutual_information(x, y, k=k, device="cpu")


def test_bad_options():
    x, y = correlated(50, 0.5)
    with pytest.raises(ValueError, match="method"):
        mi.mutual_information(x, y, method="mine")
    with pytest.raises(ValueError, match="standardize"):
        mi.mutual_information(x, y, standardize="zscore")
    with pytest.raises(ValueError, match="n // 2"):
        mi.mutual_information(x[:6], y[:6], k=3, method="ite_dkl")
