"""Attacks and certificates: closed forms and scipy references."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from dpbook import attacks, robustness
from dpbook.robustness import Bounds, LaplaceComposition


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))


# ---------------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(attacks.ATTACKS))
@pytest.mark.parametrize("clip", [(-1.0, 1.0), (0.0, 1.0)])
def test_attacks_stay_in_the_ball_and_the_clip_range(name, clip):
    model = small_model()
    x = torch.rand(32, 3, 4) * (clip[1] - clip[0]) + clip[0]
    mu = 0.1
    x_adv = attacks.ATTACKS[name](model, x, mu=mu, clip=clip)
    assert (x_adv - x).abs().max() <= mu + 1e-6
    assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1]
    assert not torch.equal(x_adv, x)


def test_attacks_increase_the_loss():
    model = small_model(1)
    x = torch.rand(64, 3, 4) * 2 - 1
    y = model(x).argmax(1)
    clean = nn.functional.cross_entropy(model(x), y)
    for name in ("ifgsm", "mim", "pgd"):
        adv = nn.functional.cross_entropy(model(attacks.ATTACKS[name](model, x, mu=0.3, steps=20)), y)
        assert adv > clean + 0.1, name


def test_pgd_with_zero_size_returns_the_input():
    model = small_model()
    x = torch.rand(8, 3, 4) * 2 - 1
    assert torch.equal(attacks.pgd(model, x, mu=0.0), x)


def test_per_input_attack_sizes():
    model = small_model()
    x = torch.rand(8, 3, 4) * 2 - 1
    mu = torch.linspace(0, 0.2, 8)
    x_adv = attacks.pgd(model, x, mu=mu, clip=None)
    assert torch.all((x_adv - x).abs().flatten(1).amax(1) <= mu + 1e-6)
    assert torch.equal(x_adv[0], x[0])


def test_mim_matches_a_hand_computed_two_step_case():
    """Scalar model f(x) = w . x and loss 0.5 (f(x) - c)^2, whose gradient (w . x - c) w changes with x."""
    w = torch.tensor([[1.0, -2.0, 0.5]])
    model = nn.Linear(3, 1, bias=False)
    model.weight.data = w.clone()
    x0 = torch.tensor([[0.2, 0.1, -0.4]])
    c, mu, alpha = 1.0, 0.5, 0.25

    def loss_fn(out, y):
        return 0.5 * ((out[:, 0] - c) ** 2).sum()

    # by hand: f(x0) = 0.2 - 0.2 - 0.2 = -0.2; g1 = (f - c) w = -1.2 w = (-1.2, 2.4, -0.6), |g1|_1 = 4.2
    g1 = torch.tensor([[-1.2, 2.4, -0.6]])
    m1 = g1 / 4.2
    x1 = x0 + alpha * m1.sign()                     # (-0.05, 0.35, -0.65)
    f1 = float(w @ x1[0])                           # -0.05 - 0.7 - 0.325 = -1.075
    g2 = (f1 - c) * w                               # (-2.075, 4.15, -1.0375), |g2|_1 = 7.2625
    m2 = 1.0 * m1 + g2 / g2.abs().sum()
    x2 = torch.max(torch.min(x1 + alpha * m2.sign(), x0 + mu), x0 - mu)
    ours = attacks.mim(model, x0, mu=mu, steps=2, step_size=alpha, decay=1.0, clip=None, loss_fn=loss_fn,
                       y=torch.zeros(1, dtype=torch.long))
    assert torch.allclose(ours, x2, atol=1e-7)
    assert torch.allclose(x2, torch.tensor([[-0.3, 0.6, -0.9]]), atol=1e-7)  # on the ball's boundary


def test_true_labels_never_reach_the_attack():
    model = small_model(2)
    x = torch.rand(16, 3, 4) * 2 - 1
    seen = []

    def spy(logits, y):
        seen.append(y.clone())
        return nn.functional.cross_entropy(logits, y)

    attacks.pgd(model, x, mu=0.1, steps=3, loss_fn=spy)
    predicted = model(x).argmax(1)
    assert len(seen) == 3 and all(torch.equal(y, predicted) for y in seen)


def test_eot_attacks_a_noisy_model_in_one_batched_forward():
    calls = []
    base = small_model(3)

    def noisy(x):
        calls.append(len(x))
        return base(x + 0.1 * torch.randn_like(x))

    x = torch.rand(10, 3, 4) * 2 - 1
    attacks.pgd(noisy, x, mu=0.1, steps=2, eot=7)
    assert calls == [70, 70, 70]  # labels (one batched forward), then one forward per step


# ---------------------------------------------------------------------------------------------------
# Monte-Carlo counts
# ---------------------------------------------------------------------------------------------------
class SignOfNoise(nn.Module):
    """Class 1 iff x + n > 0 with n ~ Laplace(b): P(class 1) = 1 - exp(-x/b)/2 for x >= 0."""

    def __init__(self, b):
        super().__init__()
        self.net = robustness.NoisyNetwork(nn.Identity(), nn.Identity(), noise="laplace", input_scale=b)

    def forward(self, x):
        z = self.net(x)
        return torch.cat([-z, z], dim=1)


@pytest.mark.parametrize("max_batch", [8192, 7])
def test_monte_carlo_draws_fresh_noise_every_vote(max_batch):
    model = SignOfNoise(1.0)
    x = torch.tensor([[0.0], [0.5], [3.0]])
    counts = robustness.monte_carlo_counts(model, x, n_draws=4000, n_classes=2, max_batch=max_batch)
    assert counts.shape == (3, 2) and (counts.sum(1) == 4000).all()
    p1 = 1 - 0.5 * np.exp(-x[:, 0].numpy())
    observed = counts[:, 1].numpy() / 4000
    assert np.all(np.abs(observed - p1) < 4 * np.sqrt(p1 * (1 - p1) / 4000) + 1e-9)


# ---------------------------------------------------------------------------------------------------
# Clopper-Pearson and Bonferroni
# ---------------------------------------------------------------------------------------------------
def test_clopper_pearson_equals_beta_quantiles():
    k, n, alpha = np.array([0, 3, 50, 99, 100]), 100, 0.01
    lower, upper = robustness.clopper_pearson(k, n, alpha)
    for i, ki in enumerate(k):
        expected_lower = 0.0 if ki == 0 else stats.beta.ppf(alpha, ki, n - ki + 1)
        expected_upper = 1.0 if ki == n else stats.beta.ppf(1 - alpha, ki + 1, n - ki)
        assert lower[i] == pytest.approx(expected_lower, abs=1e-12)
        assert upper[i] == pytest.approx(expected_upper, abs=1e-12)


# L = ln(p_lb / p_ub) / 2 when all n votes agree, K = 10 classes, Clopper-Pearson at eta / K = 0.005
@pytest.mark.parametrize("n,expected", [(100, 1.4556), (1000, 2.6189), (2000, 2.9661)])
def test_all_votes_agree_margins(n, expected):
    counts = np.zeros((1, 10), dtype=int)
    counts[0, 4] = n
    bounds = robustness.vote_bounds(counts, eta=0.05)
    assert bounds.prediction[0] == 4
    assert bounds.margin[0] == pytest.approx(expected, abs=1e-4)


def test_eta_is_used():
    counts = np.array([[900, 60, 40]])
    loose, tight = robustness.vote_bounds(counts, eta=0.2), robustness.vote_bounds(counts, eta=0.001)
    assert loose.margin[0] > tight.margin[0]


# ---------------------------------------------------------------------------------------------------
# Soundness in closed form
# ---------------------------------------------------------------------------------------------------
def exact_bounds(p1):
    p1 = np.atleast_1d(p1)
    return Bounds(prediction=np.ones(len(p1), int), p_lower=p1, p_upper=1 - p1)


def test_laplace_threshold_classifier_radius_never_exceeds_the_flip_distance():
    b = 1.0
    xs = np.linspace(0.01, 20, 400)
    p1 = 1 - 0.5 * np.exp(-xs / b)                          # exact P(class 1) at x
    r = robustness.pixeldp_laplace_radius(exact_bounds(p1), scale=b, sensitivity=1.0)
    assert np.all(r <= xs + 1e-12)
    for x, radius in zip(xs[::40], r[::40]):                 # and the prediction holds on the whole ball
        shifted = x - np.linspace(-radius, radius, 101)
        p1_shifted = np.where(shifted >= 0, 1 - 0.5 * np.exp(-shifted / b), 0.5 * np.exp(shifted / b))
        assert np.all(p1_shifted > 0.5)


def test_two_noise_classifier_safe_max_is_sound():
    b = 1.0
    xs = np.linspace(0.05, 30, 300)
    p0 = 0.5 * np.exp(-xs / b) * (1 + xs / (2 * b))          # P(n_x + n_h <= -x), closed form
    noise = LaplaceComposition(input_scale=b, input_sensitivity=1.0, latent_scale=b, latent_sensitivity=1.0)
    r_safe = robustness.composed_radius(exact_bounds(1 - p0), noise, mode="safe_max")
    r_sum = robustness.composed_radius(exact_bounds(1 - p0), noise, mode="paper_sum")
    assert np.all(r_safe <= xs) and np.allclose(r_sum, 2 * r_safe)


def test_the_sum_of_two_laplace_noises_leaks_twice_what_paper_sum_claims():
    b, s = 1.0, 0.5
    t = np.linspace(-5, 5, 11)                               # the density of the sum, against numerical convolution
    z = np.linspace(-60, 60, 600_001)
    conv = [np.trapezoid(np.exp(-np.abs(z) / b) * np.exp(-np.abs(ti - z) / b), z) / (4 * b * b) for ti in t]
    assert np.allclose(np.exp(robustness.laplace_sum_log_density(t, b)), conv, rtol=1e-6)
    loss = robustness.laplace_sum_privacy_loss(s, b)
    claimed = s / (2 * b)                                    # kappa + phi: each noise source contributes s/(2b)
    assert loss > 1.9 * claimed and loss <= s / b + 1e-12


def test_pixeldp_gaussian_radius_matches_a_brute_force_search():
    p_lower, p_upper = np.array([0.99, 0.9, 0.7, 0.55]), np.array([0.005, 0.05, 0.2, 0.4])
    bounds = Bounds(prediction=np.zeros(4, int), p_lower=p_lower, p_upper=p_upper)
    ours = robustness.pixeldp_gaussian_radius(bounds, sigma=0.5, n_deltas=2000)
    eps = np.linspace(1e-4, 1.0, 4000)[:, None, None]
    deltas = np.geomspace(1e-8, 0.5, 400)[None, :, None]
    ok = p_lower > np.exp(2 * eps) * p_upper + (1 + np.exp(eps)) * deltas
    s = 0.5 * eps / np.sqrt(2 * np.log(1.25 / deltas))
    brute = np.where(ok, s, 0.0).max(axis=(0, 1))
    assert np.allclose(ours, brute, rtol=2e-3, atol=1e-6)
    assert np.all(robustness.smoothing_radius(p_lower, p_upper, sigma=0.5) >= ours)  # smoothing certifies more


def test_smoothing_radius_closed_form():
    p = np.array([0.4, 0.5, 0.9, 0.999])
    r = robustness.smoothing_radius(p, sigma=0.25)
    assert r[0] == 0 and r[1] == 0
    assert r[2:] == pytest.approx(0.25 * stats.norm.ppf(p[2:]))
    two = robustness.smoothing_radius(p, 1 - p, sigma=0.25)  # p_B = 1 - p_A gives the same radius
    assert two == pytest.approx(r)
    assert robustness.smoothing_radius(np.array([0.4]), np.array([0.1]), sigma=1.0)[0] == pytest.approx(
        0.5 * (stats.norm.ppf(0.4) - stats.norm.ppf(0.1)))


# ---------------------------------------------------------------------------------------------------
# Monotonicity in the attack size, and the original formulas
# ---------------------------------------------------------------------------------------------------
def test_sound_modes_do_not_depend_on_mu_a_and_original_jun2020_inverts():
    rng = np.random.default_rng(0)
    counts = rng.multinomial(1000, [0.8, 0.1, 0.05, 0.05], size=200)
    counts[:, 0] += rng.integers(0, 300, size=200)
    bounds = robustness.vote_bounds(counts)
    noise = LaplaceComposition(input_scale=0.5, input_sensitivity=784.0, latent_scale=2.0, latent_sensitivity=5000.0,
                               image_area=784, latent_sensitivity_original=50.0)
    correct = rng.random(200) < 0.9
    mus = np.linspace(0, 0.01, 21)
    for mode in ("safe_max", "paper_sum"):  # a sound certificate is a radius: certified at mu, certified below it
        certified = np.array([robustness.is_certified(bounds, mu, noise, mode=mode) for mu in mus])
        assert np.all(certified[1:] <= certified[:-1])
    jun = np.array([robustness.is_certified(bounds, mu, noise, mode="original_jun2020").mean() for mu in mus[1:]])
    assert jun[-1] > jun[0]  # the June 2020 formula certifies *more* points against larger attacks


def test_latent_sensitivity_bounds_the_first_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    net = robustness.NoisyNetwork(conv, nn.Identity())
    bound = net.latent_sensitivity((1, 8, 8))
    x = torch.randn(256, 1, 8, 8)
    delta = torch.sign(torch.randn_like(x))                   # corners of the unit l_inf ball
    change = (conv(x + delta) - conv(x)).abs().flatten(1).sum(1)
    assert change.max() <= bound + 1e-4
    assert change.max() > 0.3 * bound                         # and it is not vacuous


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        robustness.is_certified(exact_bounds(0.9), 0.1, LaplaceComposition(1, 1), mode="kappa_phi")
    with pytest.raises(ValueError, match="original"):
        robustness.composed_radius(exact_bounds(0.9), LaplaceComposition(1, 1), mode="original_sep2020")
    with pytest.raises(ValueError, match="counts"):
        robustness.vote_bounds(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="mu"):
        attacks.pgd(small_model(), torch.zeros(1, 3, 4), mu=-0.1)
    with pytest.raises(ValueError, match="noise"):
        robustness.NoisyNetwork(nn.Identity(), nn.Identity(), noise="uniform")
    assert math.isinf(robustness.Bounds(np.zeros(1), np.zeros(1), np.ones(1)).margin[0])
