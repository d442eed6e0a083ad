"""dpbook.privacy against closed forms, numerical integration and independent implementations."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dpbook import privacy


# ---------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------
def test_laplace_noise_has_the_laplace_distribution():
    with pytest.warns(privacy.UnsafeSeedWarning):
        gen = privacy.noise_generator(seed=1)
    z = privacy.laplace_noise((20_000,), scale=2.5, generator=gen).double().numpy()
    assert stats.kstest(z, stats.laplace(scale=2.5).cdf).pvalue > 1e-3
    assert stats.kstest(z, stats.laplace(scale=3.0).cdf).pvalue < 1e-6  # the test can fail


def test_gaussian_noise_has_the_normal_distribution():
    with pytest.warns(privacy.UnsafeSeedWarning):
        gen = privacy.noise_generator(seed=2)
    z = privacy.gaussian_noise((20_000,), noise_std=0.7, generator=gen).double().numpy()
    assert stats.kstest(z, stats.norm(scale=0.7).cdf).pvalue > 1e-3
    assert stats.kstest(z, stats.norm(scale=0.8).cdf).pvalue < 1e-6


def test_os_seeded_generators_differ_and_fixed_seeds_repeat():
    a = privacy.gaussian_noise((8,), noise_std=1.0, generator=privacy.noise_generator())
    b = privacy.gaussian_noise((8,), noise_std=1.0, generator=privacy.noise_generator())
    assert not torch.equal(a, b)
    with pytest.warns(privacy.UnsafeSeedWarning, match="never for real data"):
        c = privacy.laplace_noise((8,), scale=1.0, generator=privacy.noise_generator(seed=5))
        d = privacy.laplace_noise((8,), scale=1.0, generator=privacy.noise_generator(seed=5))
    assert torch.equal(c, d)


def test_global_seed_does_not_fix_dp_noise():
    torch.manual_seed(0)
    a = privacy.laplace_mechanism(torch.zeros(16), sensitivity=1.0, epsilon=1.0)
    torch.manual_seed(0)
    b = privacy.laplace_mechanism(torch.zeros(16), sensitivity=1.0, epsilon=1.0)
    assert not torch.equal(a, b)


def test_mechanisms_keep_shape_dtype_and_scale():
    x = torch.zeros(50_000, dtype=torch.float64)
    y = privacy.laplace_mechanism(x, sensitivity=2.0, epsilon=0.5)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert abs(float(y.abs().mean()) - 4.0) < 0.1  # E|Lap(b)| = b = 2 / 0.5
    g = privacy.gaussian_mechanism(x, sensitivity=1.0, noise_std=3.0)
    assert abs(float(g.std()) - 3.0) < 0.05


# ---------------------------------------------------------------------------------------------------
# One Gaussian release
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma,eps", [(0.5, 0.1), (1.0, 1.0), (2.0, 0.5), (4.0, 3.0)])
def test_analytic_delta_matches_the_formula_with_scipy(sigma, eps):
    a, b = 1 / (2 * sigma), eps * sigma
    expected = stats.norm.cdf(a - b) - math.exp(eps) * stats.norm.cdf(-a - b)
    assert privacy.analytic_gaussian_delta(epsilon=eps, sigma=sigma) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_analytic_epsilon_agrees_with_dp_accounting(sigma, delta):
    import dp_accounting

    ours = privacy.analytic_gaussian_epsilon(sigma=sigma, delta=delta)
    assert ours == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma, delta), rel=1e-8)


def test_analytic_sigma_inverts_delta_and_beats_classical():
    for eps in (0.1, 0.5, 0.9):
        s = privacy.analytic_gaussian_sigma(epsilon=eps, delta=1e-5, sensitivity=3.0)
        assert privacy.analytic_gaussian_delta(epsilon=eps, sigma=s, sensitivity=3.0) == pytest.approx(1e-5, rel=1e-6)
        classical = privacy.classical_gaussian_sigma(epsilon=eps, delta=1e-5, sensitivity=3.0)
        assert classical == pytest.approx(3.0 * math.sqrt(2 * math.log(1.25e5)) / eps)
        assert s < classical
        assert privacy.analytic_gaussian_delta(epsilon=eps, sigma=classical, sensitivity=3.0) <= 1e-5


def test_classical_bound_refuses_epsilon_at_least_one():
    with pytest.raises(ValueError, match="analytic_gaussian_sigma"):
        privacy.classical_gaussian_sigma(epsilon=1.0, delta=1e-5)


def test_extended_gaussian_closed_form_and_validity():
    s = math.log(math.sqrt(2 / math.pi) / 1e-5)
    expected = math.sqrt(2) * 0.2 * (math.sqrt(s) + math.sqrt(s + 4.0)) / 8.0
    assert privacy.extended_gaussian_sigma(epsilon=4.0, delta=1e-5, sensitivity=0.2) == pytest.approx(expected)
    # EGM must be a valid mechanism: its exact (analytic) delta never exceeds the target
    for eps in (0.05, 0.5, 1.0, 4.0, 20.0):
        for delta in (1e-8, 1e-5, 0.05):
            sigma = privacy.extended_gaussian_sigma(epsilon=eps, delta=delta, sensitivity=1.0)
            assert privacy.analytic_gaussian_delta(epsilon=eps, sigma=sigma) <= delta


# ---------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------
def test_basic_parallel_and_advanced_composition():
    assert privacy.compose_basic([0.1, 0.2, 0.3], [1e-6, 0, 1e-6]) == pytest.approx((0.6, 2e-6))
    assert privacy.compose_parallel([0.1, 0.7, 0.3]) == (0.7, 0.0)
    eps, delta = privacy.compose_advanced(epsilon=0.01, delta=1e-7, steps=1000, delta_slack=1e-6)
    assert eps == pytest.approx(0.01 * math.sqrt(2000 * math.log(1e6)) + 1000 * 0.01 * math.expm1(0.01))
    assert delta == pytest.approx(1000 * 1e-7 + 1e-6)
    with pytest.raises(ValueError, match="deltas"):
        privacy.compose_basic([0.1, 0.2], [0.0])


def test_joint_noise_multiplier():
    assert privacy.joint_noise_multiplier(2.0, 2.0) == pytest.approx(2.0 / math.sqrt(2))
    assert privacy.joint_noise_multiplier(1.0, 1e9) == pytest.approx(1.0)
    assert privacy.joint_noise_multiplier(3.0, 4.0) == pytest.approx((1 / 9 + 1 / 16) ** -0.5)


# ---------------------------------------------------------------------------------------------------
# Accounting of the subsampled Gaussian
# ---------------------------------------------------------------------------------------------------
def test_rdp_of_the_gaussian_is_alpha_over_two_sigma_squared():
    orders = np.array([1.5, 2, 3, 10, 64])
    curve = privacy.rdp(noise_multiplier=1.7, sample_rate=1.0, steps=7, orders=orders)
    np.testing.assert_allclose(curve, 7 * orders / (2 * 1.7**2), rtol=1e-12)


@pytest.mark.parametrize("q,sigma", [(0.1, 1.5), (0.02, 0.8), (0.5, 2.0)])
def test_subsampled_rdp_matches_numerical_integration(q, sigma):
    """RDP of the sampled Gaussian (Mironov, Talwar & Zhang 2019): at integer alpha it is
    log E_{z~N(0,s^2)}[((1-q) + q exp((2z-1)/(2 s^2)))^alpha] / (alpha-1); integrate it with scipy."""
    orders = [2, 3, 5, 8]
    curve = privacy.rdp(noise_multiplier=sigma, sample_rate=q, steps=1, orders=orders)
    for alpha, value in zip(orders, curve):
        def integrand(z):  # in log space: the mixture ratio overflows far in the tail
            log_ratio = np.logaddexp(math.log(1 - q), math.log(q) + (2 * z - 1) / (2 * sigma**2))
            return math.exp(stats.norm.logpdf(z, scale=sigma) + alpha * log_ratio)
        span = 40 * sigma + 10 * alpha
        a_alpha = integrate.quad(integrand, -span, span, points=[0.0, 0.5], epsabs=0, epsrel=1e-12,
                                 limit=500)[0]
        assert value == pytest.approx(math.log(a_alpha) / (alpha - 1), rel=1e-6)


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 10), (5.0, 400)])
def test_pld_of_full_batch_gaussian_is_tight(sigma, steps):
    """T full-batch Gaussian steps are one Gaussian release with noise sigma / sqrt(T): PLD must recover it."""
    exact = privacy.analytic_gaussian_epsilon(sigma=sigma / math.sqrt(steps), delta=1e-5)
    pld = privacy.epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=1e-5, accountant="pld",
                          pld_discretization=1e-4)
    assert exact - 1e-6 <= pld <= exact + 0.01
    rdp = privacy.epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=1e-5)
    assert rdp >= exact  # RDP is an upper bound


def test_reference_points_of_the_gep_code():
    """Values of the GEP code's accountant (TF-Privacy 2018 RDP, legacy conversion, orders 2..31.9), as the
    authors' utils.get_sigma and rdp_accountant.py compute them."""
    orders = np.arange(2, 32, 0.1)
    eps = privacy.rdp_to_epsilon(orders, privacy.rdp(noise_multiplier=1.56, sample_rate=0.02, steps=10_000,
                                                     orders=orders), 1e-5, conversion="legacy")[0]
    assert eps == pytest.approx(7.978, abs=5e-4)
    doubled = 2 * privacy.rdp(noise_multiplier=2.09, sample_rate=0.02, steps=10_000, orders=orders)
    assert privacy.rdp_to_epsilon(orders, doubled, 1e-5, conversion="legacy")[0] == pytest.approx(7.970, abs=5e-4)
    # the same run accounted as one joint mechanism, tight PLD: 7.18-7.38 (an independent PLD accountant)
    joint = privacy.epsilon(noise_multiplier=privacy.joint_noise_multiplier(2.09, 2.09), sample_rate=0.02,
                            steps=10_000, delta=1e-5, accountant="pld")
    assert 7.18 <= joint <= 7.38


def test_improved_conversion_is_never_worse():
    curve = privacy.rdp(noise_multiplier=1.1, sample_rate=0.01, steps=3000)
    improved = privacy.rdp_to_epsilon(privacy.DEFAULT_ORDERS, curve, 1e-5)[0]
    legacy = privacy.rdp_to_epsilon(privacy.DEFAULT_ORDERS, curve, 1e-5, conversion="legacy")[0]
    assert improved < legacy


def test_epsilon_is_monotone_and_pld_tighter():
    common = dict(sample_rate=0.01, delta=1e-5)
    e = [privacy.epsilon(noise_multiplier=1.0, steps=t, **common) for t in (10, 100, 1000, 5000)]
    assert all(a < b for a, b in zip(e, e[1:]))
    s = [privacy.epsilon(noise_multiplier=sig, steps=1000, **common) for sig in (0.7, 1.0, 2.0)]
    assert all(a > b for a, b in zip(s, s[1:]))
    pld = privacy.epsilon(noise_multiplier=1.0, steps=1000, accountant="pld", **common)
    assert pld <= e[2]
    assert privacy.epsilon(noise_multiplier=1.0, steps=0, **common) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrate_sigma_meets_the_target_tightly(accountant):
    kw = dict(delta=1e-5, sample_rate=0.01, steps=2000, accountant=accountant)
    options = {"pld_discretization": 1e-3} if accountant == "pld" else {}
    sigma = privacy.calibrate_sigma(target_epsilon=2.0, rtol=1e-4, **kw, **options)
    eps_at = privacy.epsilon(noise_multiplier=sigma, **kw, **options)
    assert eps_at <= 2.0
    assert privacy.epsilon(noise_multiplier=sigma * (1 - 3e-4), **kw, **options) > 2.0 - 1e-3


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="impossible"):
        privacy.calibrate_sigma(target_epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=10_000)


@pytest.mark.parametrize("kwargs,param", [
    (dict(noise_multiplier=0.0, sample_rate=0.1, steps=10, delta=1e-5), "noise_multiplier"),
    (dict(noise_multiplier=1.0, sample_rate=1.5, steps=10, delta=1e-5), "sample_rate"),
    (dict(noise_multiplier=1.0, sample_rate=0.1, steps=-1, delta=1e-5), "steps"),
    (dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1.0), "delta"),
    (dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5, accountant="moments"), "accountant"),
])
def test_bad_arguments_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        privacy.epsilon(**kwargs)


def test_accountant_records_steps_and_round_trips():
    acc = privacy.Accountant(delta=1e-5)
    for _ in range(3):
        acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    assert acc.steps == 300 and len(acc.history) == 1
    assert acc.epsilon() == pytest.approx(
        privacy.epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=300, delta=1e-5))
    acc.step(noise_multiplier=2.0, sample_rate=0.02, steps=50)
    mixed = acc.epsilon()
    assert mixed > privacy.epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=300, delta=1e-5)
    # RDP of a composition is the sum of the curves
    curve = (privacy.rdp(noise_multiplier=1.0, sample_rate=0.01, steps=300)
             + privacy.rdp(noise_multiplier=2.0, sample_rate=0.02, steps=50))
    assert mixed == pytest.approx(privacy.rdp_to_epsilon(privacy.DEFAULT_ORDERS, curve, 1e-5)[0], rel=1e-9)
    restored = privacy.Accountant(delta=0.5)
    restored.load_state_dict(acc.state_dict())
    assert restored.epsilon() == mixed


def test_noise_std_keeps_its_former_name_sigma():
    with pytest.warns(privacy.UnsafeSeedWarning):
        new = privacy.gaussian_noise((8,), noise_std=0.7, generator=privacy.noise_generator(seed=3))
        old = privacy.gaussian_noise((8,), sigma=0.7, generator=privacy.noise_generator(seed=3))
    assert torch.equal(new, old)
    assert privacy.analytic_gaussian_delta(epsilon=1.0, noise_std=2.0) == \
        privacy.analytic_gaussian_delta(epsilon=1.0, sigma=2.0)
    with pytest.raises(ValueError, match="noise_std of gaussian_mechanism"):
        privacy.gaussian_mechanism(torch.zeros(3), sensitivity=1.0, noise_std=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="noise_std of analytic_gaussian_epsilon"):
        privacy.analytic_gaussian_epsilon(delta=1e-5)
    for kw in ({"max_sigma": 10.0}, {"max_noise_multiplier": 10.0}):
        with pytest.raises(ValueError, match="noise_multiplier=10.0 gives"):
            privacy.calibrate_sigma(target_epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=10_000, **kw)


def test_steps_per_epoch_is_the_count_the_experiments_use():
    for n, b in [(60_000, 256), (50_000, 1000), (1437, 64), (604_388, 1000), (100, 100), (49, 2)]:
        q = b / n
        assert privacy.steps_per_epoch(n, b) == max(1, round(1 / q))  # as the experiments compute it
        assert privacy.steps_per_epoch(sample_rate=q) == max(1, round(1 / q))
        assert privacy.steps_per_epoch(n, b, sampling="shuffle") == n // b
    assert privacy.steps_per_epoch(sample_rate=0.9) == 1
    with pytest.raises(ValueError, match="batch_size of steps_per_epoch"):
        privacy.steps_per_epoch(10, 20)
    with pytest.raises(ValueError, match="sample_rate of steps_per_epoch"):
        privacy.steps_per_epoch(10, 2, sample_rate=0.2)
    with pytest.raises(ValueError, match="sampling of steps_per_epoch"):
        privacy.steps_per_epoch(10, 2, sampling="fixed")
