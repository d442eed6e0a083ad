"""The sound per-example StoBatch designs: independent noise per example, labels protected in every layer, one
accountant under replace-one, certificates that hold, and the paper's mechanism caught leaking."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpbook import data, persample, robustness
from dpbook import stobatch as sb


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train", scale="symmetric")


def options(**kw):
    return sb.StoBatchOptions(**{"batch_size": 100, "attack_steps": 1, "input_dims": 16, "epsilon_autoencoder": 6.0,
                                 "epsilon2": 2.0, **kw})


def gen(seed):
    return torch.Generator().manual_seed(seed)  # a test's noise: reproducible on purpose, never a release


# ---------------------------------------------------------------------------------------------------
# 1. The release: per-example noise, the coder, randomized response
# ---------------------------------------------------------------------------------------------------
def test_no_two_examples_share_their_input_noise(digits):
    """Identical examples in one batch: released differences must carry noise (the paper's batch-shared noise
    releases x_i - x_j exactly), and the noises of different examples must be uncorrelated."""
    x = digits.x[:1].expand(400, -1, -1, -1).contiguous()
    y = torch.zeros(400, dtype=torch.long)
    opts = options()
    release = sb.release_for(opts, x, y, digits.x[:200], n_classes=10, generator=gen(0))
    run = sb.prepare(sb.digits_network(norm="group"), len(x), opts, release=release)
    assert not run.noise.x.any() and not run.noise.h.any()  # nothing added per batch on top of the release
    batch = run.partition[0]
    z = release.coder.encode(x[batch])
    c = release.coder
    noise = ((release.x[batch].flatten(1) - c.centre) @ c.basis.T) / c.shrink - z  # the draws themselves
    assert (noise[0] - noise[1]).abs().min() > 0                       # x_bar_0 - x_bar_1 is not x_0 - x_1 = 0
    corr = np.corrcoef(noise.numpy())[np.triu_indices(len(batch), 1)]
    assert (np.abs(corr) > 0.99).sum() == 0 and np.median(np.abs(corr)) < 0.4  # shared noise: all corr = 1
    assert abs(corr.mean()) < 0.02                                     # independent draws, 16 coordinates each
    assert noise.std().item() == pytest.approx(release.input_scale, rel=0.05)


def test_coder_is_public_orthonormal_and_clips():
    torch.manual_seed(0)
    public = torch.rand(300, 1, 8, 8) * 2 - 1
    for basis, k in (("pca", 10), ("pool", 16), ("pixels", 64)):
        coder = sb.public_coder(public, basis=basis, dims=10, mechanism="gaussian", clip=2.0)
        assert coder.basis.shape == (k, 64)
        torch.testing.assert_close(coder.basis @ coder.basis.T, torch.eye(k), atol=1e-5, rtol=0)
        z = coder.encode(torch.rand(50, 1, 8, 8) * 4 - 2)
        assert z.norm(dim=1).max() <= 2.0 + 1e-5
        a, b = torch.rand(2, 20, 1, 8, 8) * 2 - 1                        # 1-Lipschitz: what the certificate needs
        assert ((coder.encode(a) - coder.encode(b)).norm(dim=1) <= (a - b).flatten(1).norm(dim=1) + 1e-5).all()
    l1 = sb.public_coder(public, basis="pixels", mechanism="laplace", clip=3.0)
    assert l1.encode(torch.ones(5, 1, 8, 8) * 2).abs().sum(1).max() <= 3.0 + 1e-5


def test_randomized_response_frequencies_and_their_ratio():
    eps, k, n = 1.0, 10, 200_000
    keep = sb.keep_probability(eps, k)
    y = torch.full((n,), 3)
    out = sb.randomized_response(y, k, epsilon=eps, generator=gen(1))
    freq = torch.bincount(out, minlength=k).double() / n
    assert freq[3].item() == pytest.approx(keep, abs=4e-3)
    others = (1 - keep) / (k - 1)
    assert torch.allclose(torch.cat([freq[:3], freq[4:]]), torch.full((k - 1,), others, dtype=torch.float64),
                          atol=3e-3)
    assert math.log(keep / others) == pytest.approx(eps)               # the worst-case ratio is e^eps


# ---------------------------------------------------------------------------------------------------
# 2. Labels: every layer sees them only through a private mechanism
# ---------------------------------------------------------------------------------------------------
def layer_gradients(model, run, x, y, options):
    model.zero_grad(set_to_none=True)
    loss, _ = sb.batch_pair_loss(model, x[run.partition[0]], y[run.partition[0]], x[run.partition[1]],
                                 y[run.partition[1]], run.noise[0], run.noise[1], options,
                                 attack_generator=gen(3))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_true_label_reaches_the_gradients_of_every_layer_only_through_randomized_response(digits):
    """Randomized-response designs, from the raw data through the release to one step's gradients of every
    layer, with the mechanism's coins fixed: flipping a true label changes the gradients exactly when it changes
    the released label (which RR bounds by e^eps2), never otherwise."""
    x, y = digits.x[:400], digits.y[:400]
    opts = options(mu_max=0.0)
    i = int(sb.partition(400, 100, seed=opts.partition_seed)[0][0])   # an example of the first batch
    flipped = y.clone()
    flipped[i] = (y[i] + 1) % 10

    def gradients(labels, seed):
        release = sb.release_for(opts, x, labels, digits.x[400:600], n_classes=10, generator=gen(seed))
        torch.manual_seed(0)
        model = sb.digits_network(norm="group")
        run = sb.prepare(model, len(x), opts, release=release)
        return release.y[i], layer_gradients(model, run, release.x, release.y, opts)

    outcomes = []
    for seed in range(30):
        (ya, ga), (yb, gb) = gradients(y, seed), gradients(flipped, seed)
        changed = [n for n in ga if not torch.equal(ga[n], gb[n])]
        assert len(ga) >= 6 and set(ga) == set(gb)
        outcomes.append((bool(ya != yb), bool(changed)))
        if ya != yb:
            assert any(n.startswith("rest.") for n in changed)        # the released label does train the layers
    assert all(released == moved for released, moved in outcomes)     # gradients move iff the release moved
    assert 0 < sum(r for r, _ in outcomes) < len(outcomes)


def test_the_paper_mechanism_leaks_labels_into_every_hidden_layer(digits):
    """The paper's mechanism perturbs only the output layer's label coefficient: flip one label with all noise
    fixed and the hidden layers' gradients move deterministically (issue: labels reach the hidden layers)."""
    x, y = digits.x[:400], digits.y[:400].clone()
    opts = sb.StoBatchOptions(release="batch_shared", batch_size=100, attack_steps=1, mu_max=0.0,
                              epsilon_autoencoder=1.0, epsilon2=1.0)
    torch.manual_seed(0)
    model = sb.digits_network(norm="group")
    run = sb.prepare(model, len(x), opts, generator=gen(7))
    before = layer_gradients(model, run, x, y, opts)
    y[run.partition[0][0]] = (y[run.partition[0][0]] + 1) % 10
    after = layer_gradients(model, run, x, y, opts)
    hidden = [n for n in before if n.startswith("rest.") and not n.startswith("head")]
    assert hidden and all(not torch.equal(before[n], after[n]) for n in hidden if before[n].abs().sum() > 0)


def test_dpsgd_above_bounds_each_example_and_leaves_theta1_alone(digits):
    """DP-SGD above the DP layer: theta_1 gets no gradient; with the noise off, replacing one example's label
    moves the summed clipped gradient of theta_2 by at most 2C (the sensitivity the accountant uses)."""
    torch.manual_seed(0)
    model = sb.digits_network(norm="group")
    opts = options(inputs="public_autoencoder", labels="dpsgd", mu_max=0.0, clip_gradient=0.5)
    sb.above.pretrain_autoencoder(model, digits.x[:200], epochs=1, lr=1e-2)
    assert not any(p.requires_grad for p in model.first.parameters())
    x, y = digits.x[:64], digits.y[:64].clone()
    with torch.no_grad():
        h = model.first(x)

    def summed(labels):
        g = persample.flatten(persample.per_sample_gradients(model.rest, h, labels))
        return (g * (opts.clip_gradient / g.norm(dim=1, keepdim=True)).clamp(max=1)).sum(0)

    flipped = y.clone()
    flipped[0] = (y[0] + 5) % 10
    change = (summed(y) - summed(flipped)).norm()
    assert 0 < change <= 2 * opts.clip_gradient + 1e-5
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = sb.make_optimizers(model, opts)[0]
    sb.above.dpsgd_step(model, opt, x, y, opts, multiplier=1.0, smoothing_std=0.5, noise_generator=gen(8),
                        attack_generator=gen(9))
    assert all(torch.equal(before[n], p) for n, p in model.first.named_parameters(prefix="first"))
    assert any(not torch.equal(before[n], p) for n, p in model.rest.named_parameters(prefix="rest"))


# ---------------------------------------------------------------------------------------------------
# 3. One accountant, replace-one
# ---------------------------------------------------------------------------------------------------
def test_accountant_matches_the_single_mechanisms_and_calibrates_the_total():
    from dpbook import privacy

    # one Gaussian alone: the RDP conversion is at least the exact (analytic) epsilon, and close to it
    z = 2.0
    exact = privacy.analytic_gaussian_epsilon(noise_std=z, delta=1e-5)
    rdp = sb.accounting.epsilon(sb.Parts(input_multiplier=z), delta=1e-5)
    assert exact <= rdp <= exact * 1.25
    # randomized response alone is pure eps-DP: the RDP bound cannot go below eps, and stays near it
    assert 1.0 <= sb.accounting.epsilon(sb.Parts(label_epsilon=1.0), delta=1e-5) <= 1.01
    # calibration meets the total, and more of it to the labels means more input noise
    p1 = sb.accounting.calibrate(sb.Parts(label_epsilon=1.0), "input_multiplier", target_epsilon=4.0, delta=1e-5)
    p2 = sb.accounting.calibrate(sb.Parts(label_epsilon=2.0), "input_multiplier", target_epsilon=4.0, delta=1e-5)
    assert sb.accounting.epsilon(p1, delta=1e-5) == pytest.approx(4.0, rel=1e-4)
    assert p2.input_multiplier > p1.input_multiplier
    with pytest.raises(ValueError, match="other parts"):
        sb.accounting.calibrate(sb.Parts(label_epsilon=5.0), "input_multiplier", target_epsilon=4.0, delta=1e-5)
    # DP-SGD under replace-one needs more noise than more steps' worth of nothing: monotone in steps
    few = sb.accounting.calibrate(sb.Parts(dataset_size=1000, batch_size=100, steps=10), "dpsgd_multiplier",
                                  target_epsilon=2.0, delta=1e-5)
    many = sb.accounting.calibrate(sb.Parts(dataset_size=1000, batch_size=100, steps=100), "dpsgd_multiplier",
                                   target_epsilon=2.0, delta=1e-5)
    assert many.dpsgd_multiplier > few.dpsgd_multiplier
    # the bound is not monotone in z everywhere (sampling without replacement, m = n / 2): still never above
    tight = sb.accounting.calibrate(sb.Parts(dataset_size=128, batch_size=64, steps=2), "dpsgd_multiplier",
                                    target_epsilon=0.2, delta=1e-5)
    assert 0.199 <= sb.accounting.epsilon(tight, delta=1e-5) <= 0.2
    with pytest.raises(ValueError, match="reachable"):  # batches of nearly everyone: the bound has a floor
        sb.accounting.calibrate(sb.Parts(dataset_size=128, batch_size=126, steps=2), "dpsgd_multiplier",
                                target_epsilon=0.2, delta=1e-5)


def test_sampling_without_replacement_of_everyone_is_the_gaussian_mechanism():
    """dp-accounting's convention, pinned: the noise multiplier of the replace-one sampled-without-replacement
    Gaussian is relative to the replace-one sensitivity of the sum (2C here), and sampling everyone (m = N) is one
    Gaussian mechanism, RDP alpha / (2 z^2). A change of that convention would change our noise."""
    import dp_accounting as dpa

    z, orders = 1.7, [2.0, 4.0, 8.0]
    acc = dpa.rdp.RdpAccountant(orders, dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(100, 100, dpa.GaussianDpEvent(z)))
    np.testing.assert_allclose(acc._rdp, np.array(orders) / (2 * z * z), rtol=1e-9)


def test_release_report_and_unsound_modes(digits):
    opts = options()
    release = sb.release_for(opts, digits.x[:300], digits.y[:300], digits.x[300:500], n_classes=10, generator=gen(2))
    report = release.privacy()
    assert report["relation"] == "replace-one" and report["epsilon"] == pytest.approx(8.0, rel=1e-4)
    assert report["label_epsilon"] == 2.0 and release.input_scale == pytest.approx(
        report["input_multiplier"] * 2 * release.coder.clip)
    assert sb.unsound_modes(opts) == []
    assert any(r.startswith("release='batch_shared'") for r in
               sb.unsound_modes(sb.StoBatchOptions(release="batch_shared")))
    with pytest.raises(ValueError, match="released"):
        sb.StoBatchOptions(inputs="public_autoencoder", labels="randomized_response")
    with pytest.raises(ValueError, match="release"):
        sb.prepare(sb.digits_network(norm="group"), 300, opts)  # a per-example run needs its release


# ---------------------------------------------------------------------------------------------------
# 4. Certificates
# ---------------------------------------------------------------------------------------------------
def test_smoothing_certificate_of_a_threshold_classifier_holds_on_the_ball():
    """Base classifier: class 1 iff the first pixel > 0. Smoothed with Gaussian sigma on the pixels, the certified
    l2 radius must not exceed the distance to the boundary, and the prediction must hold inside it."""
    sigma, n = 0.5, 4000
    model = sb.digits_network(norm="group")
    model.forward = lambda x, *a, **k: torch.stack([-x.flatten(1)[:, 0], x.flatten(1)[:, 0]], 1)
    model.n_classes = 2
    dep, radii = sb.per_example_deployed(model, std=sigma, generator=gen(11))
    xs = torch.linspace(0.05, 1.5, 12)
    x = torch.zeros(12, 1, 8, 8)
    x[:, 0, 0, 0] = xs
    counts = robustness.monte_carlo_counts(dep.predict, x, n_draws=n, n_classes=2)
    bounds = robustness.vote_bounds(counts, eta=0.05)
    l2, linf = radii["randomized smoothing (l2)"](bounds)
    assert np.all(l2 <= xs.numpy() + 1e-9) and np.all(l2[-4:] > 0.6 * xs.numpy()[-4:])
    assert np.allclose(linf, l2 / 8.0)
    exact = sigma * stats.norm.ppf(stats.norm.cdf(xs.numpy() / sigma))  # = xs with exact probabilities
    assert np.allclose(exact, xs.numpy(), atol=1e-6)
    cap = sb.radius_cap(sigma, n_draws=n, eta=0.05, n_classes=2)
    assert np.all(l2 <= cap + 1e-9) and cap == pytest.approx(sigma * stats.norm.ppf((0.025) ** (1 / n)))


def test_original_inference_certifies_nothing(digits):
    torch.manual_seed(0)
    model = sb.digits_network(norm="group")
    opts = sb.StoBatchOptions(release="batch_shared", batch_size=100, epsilon_autoencoder=8.0, epsilon2=8.0)
    run = sb.prepare(model, len(digits), opts, generator=gen(4))
    assert sb.deployed(model, run, inference="original").certify is None
    assert sb.deployed(model, run, inference="fresh").certify is not None
