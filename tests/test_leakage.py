"""Attacks on Shredder's noisy activations (dpbook.leakage), the reconstruction scores and decoder
(dpbook.reconstruction), and conditional MI (dpbook.mi): closed forms, independent references, and the
controls that must expose an artefact."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dpbook import data, leakage, mi, mi_controls, reconstruction, shredder


# ---------------------------------------------------------------------------------------------------
# A frozen public LeNet-5 on real digits, and a pool with the learned pool's features
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    x_train, x_test = shredder.to_32(train.x), shredder.to_32(test.x)
    torch.manual_seed(0)
    net = shredder.LeNet5(1, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x_train), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(net(x_train[idx]), (train.y[idx] > 5).long()).backward()
        opt.step()
    edge, _ = shredder.split(shredder.freeze(net), "relu5")
    with torch.no_grad():
        a_train, a_test = edge(x_train), edge(x_test)
    return dict(x_train=x_train, x_test=x_test, y_train=train.y, y_test=test.y, a_train=a_train, a_test=a_test)


def synthetic_pool(m=4, seed=0):
    """M samples shaped like the learned pool: Laplace(0, 20) offsets; gains of both signs, 40% of them gated
    to about 1e-4 (what training does to w)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, 120, 1, 1, generator=gen)
    gated = torch.rand(m, 120, 1, 1, generator=gen) < 0.4
    w = torch.where(gated, 1e-4 * torch.sign(w), w)
    n = 20.0 * torch.sign(torch.rand(m, 120, 1, 1, generator=gen) - 0.5) * -torch.log(
        torch.rand(m, 120, 1, 1, generator=gen))  # Laplace(0, 20) from the local generator
    return shredder.NoisePool(w=w, n=n, val_accuracy=[1.0] * m, epochs=[1] * m)


def attack_data(d, pool, sampler, seed=0, offset_only=False):
    gen = torch.Generator().manual_seed(seed)
    j_train, j_test = pool.indices(len(d["a_train"]), generator=gen), pool.indices(len(d["a_test"]), generator=gen)
    (w1, n1), (w2, n2) = pool.sample(j_train, sampler=sampler, generator=gen), pool.sample(j_test, sampler=sampler,
                                                                                          generator=gen)
    if offset_only:
        w1, w2 = torch.ones_like(w1), torch.ones_like(w2)
    sent_train, sent = shredder.apply_noise(d["a_train"], w1, n1), shredder.apply_noise(d["a_test"], w2, n2)
    return leakage.AttackData(d["a_train"], sent_train, d["y_train"], sent), j_test


@pytest.fixture(scope="module")
def clean_probe(digits):
    return leakage.train_probe(digits["a_train"], digits["y_train"], n_classes=10, epochs=30, seed=0)


# ---------------------------------------------------------------------------------------------------
# Threat models
# ---------------------------------------------------------------------------------------------------
def test_kerckhoffs_attacker_reaches_clean_probe_accuracy_on_a_pool_it_knows(digits, clean_probe):
    pool = synthetic_pool()
    attack, j_test = attack_data(digits, pool, "exact")
    clean = clean_probe.accuracy(digits["a_test"], digits["y_test"])
    assert clean > 0.85
    a_hat, j = leakage.invert(attack.sent, pool.w, pool.n, attack.clean_train, sampler="exact")
    assert torch.equal(j, j_test)  # every draw identified
    a = digits["a_test"].flatten(1)
    assert float((a_hat - a).norm() / a.norm()) < 0.02  # float32 rounding on the gated channels only
    assert clean_probe.accuracy(a_hat, digits["y_test"]) >= clean - 0.01
    # what the original checked: the clean classifier on the noisy activations as they arrive
    assert clean_probe.accuracy(attack.sent, digits["y_test"]) < 0.3


def test_resampled_w_draws_are_identified_and_the_expected_gain_matches_the_sampler():
    pool = synthetic_pool(m=3, seed=1)
    mean, var = leakage.expected_w(pool.w, "resample_w")                      # (M, D)
    j = torch.zeros(20_000, dtype=torch.long)
    w, _ = pool.sample(j, sampler="resample_w", generator=torch.Generator().manual_seed(0))
    w = w.flatten(1)
    sd = var[0].sqrt()
    # the empirical mean of each rank's redrawn value: within 4 standard errors plus Blom's approximation error
    assert ((w.mean(0) - mean[0]).abs() <= 4 * sd / math.sqrt(len(w)) + 0.01 * float(pool.w[0].std())).all()
    ratio = w.var(0) / var[0]
    assert 0.7 < float(ratio.median()) < 1.3
    e_mean, e_var = leakage.expected_w(pool.w, "exact")
    assert torch.equal(e_mean, pool.w.flatten(1)) and not e_var.any()


def test_lossless_control_shows_no_reduction_in_what_the_attackers_recover(digits, clean_probe):
    """a + n_J loses nothing (J is read off the offset): every attacker that adapts must recover the private
    label as well as from clean activations. The globally standardised probe does not, which is the artefact
    the control exposes."""
    pool = synthetic_pool(seed=2)
    attack, _ = attack_data(digits, pool, "exact", offset_only=True)
    clean = clean_probe.accuracy(digits["a_test"], digits["y_test"])
    accuracy, views, facts = leakage.attack_accuracies(
        attack, digits["y_test"], pool_w=torch.ones_like(pool.w), pool_n=pool.n, sampler="exact", n_classes=10,
        k_max=8, clean_probe=clean_probe, epochs=30)
    for threat in ("adaptive", "blind", "kerckhoffs"):
        assert accuracy[threat] >= clean - 0.05, threat
    assert accuracy["global"] < clean - 0.15
    assert facts["clusters_blind"] == facts["clusters_adaptive"] == len(pool)
    assert set(views) == set(leakage.THREAT_MODELS) | {"global"}


def test_blind_attacker_orients_channels_without_the_pool(digits):
    """ReLU zeros arrive as one repeated value; a negative gain puts it at the top of the cluster."""
    a = digits["a_test"].flatten(1)
    gains = torch.where(torch.arange(120) % 2 == 0, -0.5, 2.0)
    x = torch.cat([a * gains + 7.0, a * -gains - 30.0])
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(a))]).long()
    sign, sure = leakage.orientation(x, labels, 2)
    share = (a > 0).float().mean(0)
    live = (share > 0.05) & (share < 0.95)  # channels that are neither dead nor always on
    assert sure[:, live].all()
    assert torch.equal(sign[0][live], torch.sign(gains)[live])
    assert torch.equal(sign[1][live], -torch.sign(gains)[live])


def test_kmeans_and_silhouette_find_far_apart_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = 50 * torch.randn(5, 12, generator=gen)
    truth = torch.randint(0, 5, (1000,), generator=gen)
    x = centres[truth] + torch.randn(1000, 12, generator=gen)
    found, labels = leakage.cluster(x, k_max=9, generator=gen)
    assert len(found) == 5
    pairs = torch.unique(truth * 10 + labels)
    assert len(pairs) == 5  # each true cluster is exactly one found cluster
    assert leakage.silhouette(x, truth) > 0.9 > leakage.silhouette(x, torch.randint(0, 5, (1000,), generator=gen))


def test_probes_use_local_generators_only(digits):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    args = (digits["a_train"][:300], digits["y_train"][:300], digits["a_test"], digits["y_test"])
    first = shredder.probe_accuracy(*args, n_classes=10, epochs=3, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is not touched
    assert shredder.probe_accuracy(*args, n_classes=10, epochs=3, seed=5) == first


# ---------------------------------------------------------------------------------------------------
# Reconstruction: scores and decoder
# ---------------------------------------------------------------------------------------------------
def ssim_reference(a, b):
    """Wang et al. (2004) with scipy: Gaussian filter sigma 1.5 truncated to 11 taps, the valid region."""
    f = lambda t: gaussian_filter(t, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx * mx, f(b * b) - my * my, f(a * b) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index[5:-5, 5:-5].mean()


def test_ssim_matches_a_scipy_restatement_and_psnr_by_hand():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = reconstruction.ssim(x, y)
    for i in range(4):
        assert float(ours[i]) == pytest.approx(ssim_reference(x[i, 0].numpy(), y[i, 0].numpy()), abs=1e-10)
    torch.testing.assert_close(reconstruction.ssim(x, x), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(reconstruction.ssim(x, y), reconstruction.ssim(y, x))
    assert float(reconstruction.ssim(x, 1 - x).mean()) < 0  # anti-correlated structure
    shifted = (x * 0.8 + 0.1) + 0.1                            # every pixel off by exactly 0.1 from x * 0.8 + 0.1
    torch.testing.assert_close(reconstruction.psnr(shifted, x * 0.8 + 0.1), torch.full((4,), 20.0, dtype=torch.float64))
    colour = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    assert reconstruction.ssim(colour, colour.flip(1)).shape == (2,)


def test_decoder_beats_the_prior_from_clean_activations_and_not_from_noise(digits):
    x_train, x_test = digits["x_train"], digits["x_test"]
    prior = reconstruction.prior_scores(x_train, x_test)
    assert prior["explained_variance"] == 0.0
    guess = x_train.mean(0, keepdim=True).expand_as(x_test)
    assert prior["mse"] == pytest.approx(float(((guess - x_test) ** 2).mean()), rel=1e-5)
    decoder = reconstruction.train_decoder(digits["a_train"], x_train, hidden=128, epochs=25, seed=0)
    good = reconstruction.scores(decoder(digits["a_test"]), x_test, prior_mse=prior["mse"])
    assert good["explained_variance"] > 0.3 and good["ssim"] > prior["ssim"] and good["psnr"] > prior["psnr"]
    gen = torch.Generator().manual_seed(1)
    noise_train = torch.randn(len(x_train), 120, generator=gen)
    noise_test = torch.randn(len(x_test), 120, generator=gen)
    blind = reconstruction.train_decoder(noise_train, x_train, hidden=128, epochs=25, seed=0)
    assert reconstruction.scores(blind(noise_test), x_test, prior_mse=prior["mse"])["explained_variance"] < 0.1
    levels = reconstruction.as_levels(x_test[:2])
    assert len(levels) == 2 and len(levels[0]) == 2 * 32 * 32
    back = reconstruction.from_levels(levels, (1, 32, 32))
    assert (back - x_test[:2]).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------------------------------
# Mutual information given the draw, and the controls
# ---------------------------------------------------------------------------------------------------
def test_conditional_mi_matches_the_closed_form_and_ignores_per_group_offsets():
    rng = np.random.default_rng(0)
    n = 4000
    g = rng.integers(0, 2, n)
    x = rng.standard_normal(n)
    rho = np.where(g == 0, 0.9, 0.0)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    truth = float(np.mean(g == 0)) * mi.gaussian_mi(0.9)
    est = mi.conditional_mutual_information(x, y, g, method="ksg", device="cpu")
    assert est.estimate == pytest.approx(truth, abs=0.05)
    assert set(est.counts) == {0, 1} and sum(est.counts.values()) == n and est.left_out == 0
    shifted = y + 1000.0 * g  # a per-group offset: it labels the group and hides nothing
    again = mi.conditional_mutual_information(x, shifted, g, method="ksg", device="cpu")
    assert again.estimate == pytest.approx(est.estimate, abs=1e-9)
    with pytest.raises(ValueError, match="min_rows"):
        mi.conditional_mutual_information(x, y, g, min_rows=n + 1, device="cpu")


def test_mi_controls_expose_the_offset_artefact(digits):
    pool = synthetic_pool(m=3, seed=3)
    gen = torch.Generator().manual_seed(0)
    j = pool.indices(len(digits["a_test"]), generator=gen)
    sent = shredder.apply_noise(digits["a_test"], *pool.sample(j))
    table = mi_controls.mi_controls(digits["x_test"], digits["a_test"], {"exact": sent}, j, pool.w, pool.n, seeds=2,
                                device="cpu")
    un, given = table["unconditional"], table["given_draw"]
    assert set(un) == {"clean", "exact", "offset_control", "rescale_global", "rescale_local"}
    # the lossless offset "reduces" the standardised estimate a lot, so the same drop for the real noise is no
    # evidence of lost information ...
    assert un["offset_control"]["ite_block"]["mean"] < 0.5 * un["clean"]["ite_block"]["mean"]
    # ... and given the draw, the control is exactly the clean activation again
    for est in ("ite_block", "ite_dim", "ksg_dim"):
        assert given["offset_control"][est]["mean"] == pytest.approx(given["clean"][est]["mean"], abs=1e-9)
    # z-scored within a draw, a per-channel gain is undone as well: the exact sampler loses nothing
    for rep in ("exact", "rescale_local"):
        assert given[rep]["ite_dim"]["mean"] == pytest.approx(given["clean"]["ite_dim"]["mean"], abs=1.0)
    assert table["protocol"]["draws"] == 3 and table["protocol"]["units"] == "nats"
