"""The auditing statistics: sound on mechanisms of known epsilon, tight where they should be."""
import math

import numpy as np
import pytest
from scipy import stats

from dpbook import audit


def randomized_response(m, epsilon, rng):
    """m canaries in with probability 1/2; the output reveals each bit with probability e^eps / (1 + e^eps):
    exactly eps-DP, and the best possible guesses for it."""
    included = rng.random(m) < 0.5
    q = 1 / (1 + math.exp(-epsilon))
    flipped = rng.random(m) >= q
    scores = np.where(included ^ flipped, 1.0, -1.0) + 1e-3 * rng.random(m)  # tiny jitter breaks ties
    return scores, included


def test_p_value_is_the_binomial_tail_without_delta_and_grows_with_delta_and_epsilon():
    assert audit.one_run_p_value(100, 50, 40, epsilon=1.0) == pytest.approx(
        stats.binom.sf(39, 50, 1 / (1 + math.exp(-1.0))))
    p = [audit.one_run_p_value(100, 50, 40, epsilon=e) for e in (0.5, 1.0, 2.0)]
    assert p[0] < p[1] < p[2]
    assert audit.one_run_p_value(100, 50, 40, epsilon=1.0, delta=1e-4) > p[1]
    with pytest.raises(ValueError, match="v <= guesses r"):
        audit.one_run_p_value(10, 5, 6, epsilon=1.0)


def test_one_run_bound_is_sound_on_randomized_response():
    rng = np.random.default_rng(0)
    epsilon, trials = 1.0, 200
    exceed = 0
    for _ in range(trials):
        scores, included = randomized_response(400, epsilon, rng)
        g = audit.guess(scores, included, k_plus=200, k_minus=200)
        exceed += audit.one_run_epsilon(g.m, g.r, g.v, confidence=0.95) > epsilon
    # at most 5% of audits may overshoot a true claim; 200 trials: allow the binomial's upper 99.9% quantile
    assert exceed <= stats.binom.ppf(0.999, trials, 0.05)


def test_one_run_bound_is_tight_with_many_canaries_and_catches_a_false_claim():
    rng = np.random.default_rng(1)
    scores, included = randomized_response(100_000, 2.0, rng)
    g = audit.guess(scores, included, k_plus=50_000, k_minus=50_000)
    low = audit.one_run_epsilon(g.m, g.r, g.v, confidence=0.95)
    assert 1.9 < low <= 2.0 + 0.05
    assert low > 1.0  # a claim of eps = 1 for this eps = 2 mechanism is refuted


def test_delta_weakens_the_bound():
    eps0 = audit.one_run_epsilon(1000, 1000, 700, confidence=0.95)
    eps1 = audit.one_run_epsilon(1000, 1000, 700, delta=1e-5, confidence=0.95)
    assert 0 < eps1 < eps0


def test_guess_counts_correct_guesses_on_both_ends():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, False, True])
    g = audit.guess(scores, included, k_plus=2, k_minus=2)
    assert (g.r, g.v) == (4, 2)  # "in" for 5 (right) and 4 (wrong); "out" for 1 (right) and 0 (wrong)
    eps, best = audit.best_one_run_epsilon(scores, included, ks=(1, 2))
    assert eps == 0.0 and best.r in (2, 4)


def test_many_run_bound_is_tight_for_the_laplace_mechanism():
    # Laplace(1/eps) on a count that is 0 without the canary and 1 with it; guess "in" when the output > 1:
    # FPR = e^-eps / 2, FNR = 1/2, so ln((1 - FNR) / FPR) = eps exactly
    rng = np.random.default_rng(2)
    epsilon, runs = 1.0, 200_000
    out = rng.laplace(0.0, 1 / epsilon, runs)
    inn = 1.0 + rng.laplace(0.0, 1 / epsilon, runs)
    fp, fn = int((out > 1).sum()), int((inn <= 1).sum())
    low = audit.many_run_epsilon(fp, runs, fn, runs, confidence=0.95)
    assert 0.95 < low <= epsilon
    assert audit.many_run_epsilon(runs // 2, runs, runs // 2, runs) == 0.0  # a coin flip proves nothing


# ---------------------------------------------------------------------------------------------------
# canaries through the training code paths
# ---------------------------------------------------------------------------------------------------
import warnings  # noqa: E402

import torch  # noqa: E402

from dpbook import experiments  # noqa: E402
from dpbook import stobatch as sb  # noqa: E402


def noise():
    """A seeded DP-noise generator: the tests check one fixed draw, so they cannot fail by chance. Its seed
    differs from the canary coins' (seed 0), whose uniforms would otherwise be correlated with the noise."""
    return torch.Generator().manual_seed(20_231_123)


@pytest.mark.parametrize("mode", ["dpsgd", "gep"])
def test_gradient_canaries_separate_when_the_noise_is_small_and_not_when_it_is_large(mode):
    kw = dict(mode=mode, n_canaries=300, steps=5, sample_rate=1.0, generator=noise())
    s, inc = audit.gradient_canaries(noise_multiplier=0.05, **kw)
    assert s[inc].min() > s[~inc].max()  # tiny noise: every canary is told apart
    s, inc = audit.gradient_canaries(noise_multiplier=50.0, **kw)
    auc = stats.mannwhitneyu(s[inc], s[~inc]).statistic / (inc.sum() * (~inc).sum())
    assert 0.4 < auc < 0.6  # huge noise: a coin flip


def test_gradient_canary_scores_follow_the_gaussian_likelihood_ratio():
    # q = 1, one step, DP-SGD: score = mu x - mu^2 / 2 with x ~ N(mu, 1) in and N(0, 1) out
    sigma = 2.0
    s, inc = audit.gradient_canaries(mode="dpsgd", n_canaries=20_000, steps=1, sample_rate=1.0,
                                     noise_multiplier=sigma, generator=noise())
    mu = 1 / sigma
    x = (s + mu ** 2 / 2) / mu
    assert abs(x[~inc].mean()) < 0.03 and abs(x[inc].mean() - mu) < 0.03
    assert abs(x[~inc].std() - 1) < 0.03


def test_audit_bound_stays_below_a_sound_claim():
    # a Gaussian mechanism (one step, no sampling) with sigma for epsilon = 4 at delta = 1e-5
    from dpbook import privacy

    sigma = privacy.analytic_gaussian_sigma(epsilon=4.0, delta=1e-5)
    s, inc = audit.gradient_canaries(mode="dpsgd", n_canaries=20_000, steps=1, sample_rate=1.0,
                                     noise_multiplier=sigma, generator=noise())
    low = audit.split_threshold_epsilon(s, inc, delta=1e-5)["epsilon_lower"]
    assert 1.0 < low <= 4.0  # detects something, never more than the truth


def test_stobatch_public_seed_is_caught_and_os_noise_is_not():
    torch.manual_seed(0)
    model = sb.digits_network()
    kw = dict(epsilon_autoencoder=1.0, epsilon2=1.0, batch_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = audit.stobatch_output_canaries(model, sb.StoBatchOptions.original(**kw), n_trials=600)
        # the paper's mechanism with OS noise per batch (its output layer's release)
        principled = audit.stobatch_output_canaries(model, sb.StoBatchOptions(release="batch_shared", **kw),
                                                    n_trials=600)
    assert original["knows_noise"] and not principled["knows_noise"]
    low_original = audit.split_threshold_epsilon(original["scores"], original["included"])["epsilon_lower"]
    low_principled = audit.split_threshold_epsilon(principled["scores"], principled["included"])["epsilon_lower"]
    assert low_original > 3.0 > 1.0  # the known noise is subtracted: the claim of epsilon2 = 1 is refuted
    assert low_principled <= 1.0


def test_whole_model_stobatch_audit_separates_the_original_and_reports_bonferroni(tmp_path):
    """The original code is deterministic given its data (public noise seed): through the whole training code,
    the canary's two worlds give two fixed scores. The experiment reports both canary kinds at 1 - 0.05 / 2."""
    from dpbook.config import settings
    from dpbook.experiments.audit_experiment import stobatch_model_canaries

    s = settings("stobatch", profile_name="smoke", variant="original", norm="batch", epochs=1, test=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = stobatch_model_canaries(s, kind="label", n_trials=12, examples=200)
    inside, outside = out["scores"][out["included"]], out["scores"][~out["included"]]
    assert len(inside) and len(outside)
    assert np.ptp(inside) == 0 and np.ptp(outside) == 0 and inside[0] != outside[0]
    r = experiments.run("audit", results=str(tmp_path), target="stobatch", variant="original", epsilon=2.0)
    m = r["metrics"]
    assert set(m["by_kind"]) == {"label", "input"} and m["bonferroni_level"] == pytest.approx(0.975)
    assert m["epsilon_lower_many_runs"] == max(b["epsilon_lower"] for b in m["by_kind"].values())
    assert all(b["confidence"] == pytest.approx(0.975) for b in m["by_kind"].values())
    assert m["guarantee"] == "none" and m["trials"] == 2 * 20


def test_audit_experiment_reports_claim_and_bounds(tmp_path):
    r = experiments.run("audit", results=str(tmp_path), target="gep", accounting="original")
    m = r["metrics"]
    assert m["mechanism"]["epsilon_claimed"] < m["mechanism"]["epsilon_accountant_pld"]  # the original under-counts
    assert 0 <= m["epsilon_lower_many_runs"] and 0 <= m["epsilon_lower_one_run"]
    assert m["trials"] == 2 * 200
    with pytest.raises(experiments.Interrupted):
        experiments.run("audit", results=str(tmp_path / "b"), target="dpsgd", stop_after_epoch=1)
    resumed = experiments.run("audit", results=str(tmp_path / "b"), target="dpsgd", resume=True)
    assert resumed["metrics"]["trials"] == 400
