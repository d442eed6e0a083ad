"""Shredder (dpbook.shredder): the cut, the noise layer, the pairing term's gradients, SNR,
the pool and its samplers, and an adversary on real digits."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpbook import data, models, shredder


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return shredder.LeNet5(in_channels=1, n_classes=2)


def test_cut_points_and_split_reproduce_the_network(lenet):
    assert shredder.cut_points(lenet) == ["s2", "s4", "relu5"]  # the code's conv_layers [3, 6, 8]
    x = torch.randn(5, 1, 32, 32)
    for at in shredder.cut_points(lenet) + ["c1", "f6"]:
        edge, cloud = shredder.split(lenet, at)
        torch.testing.assert_close(cloud(edge(x)), lenet(x))
    edge, cloud = shredder.split(lenet, "relu5")
    a = edge(x)
    assert a.shape == (5, 120, 1, 1)
    identity = shredder.NoisyActivation((120, 1, 1), multiplicative=False)
    with torch.no_grad():
        identity.n.zero_()
    torch.testing.assert_close(cloud(identity(a)), lenet(x))  # noise off: the full network's output
    with pytest.raises(ValueError, match="no layer named"):
        shredder.split(lenet, "c9")


def test_noise_layer_is_w_times_a_plus_n_broadcast_over_the_batch():
    gen = torch.Generator().manual_seed(0)
    layer = shredder.NoisyActivation((4, 2, 3), laplace_scale=3.0, generator=gen)
    a = torch.randn(7, 4, 2, 3)
    out = layer(a)
    torch.testing.assert_close(out, layer.w[None] * a + layer.n[None])
    torch.testing.assert_close(out[3] - layer.n, layer.w * a[3])  # the same (w, n) for every item
    again = shredder.NoisyActivation((4, 2, 3), laplace_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.w, layer.w) and torch.equal(again.n, layer.n)  # seeded: bitwise repeatable
    with pytest.raises(ValueError, match="does not match"):
        layer(torch.randn(2, 4, 3, 2))
    additive = shredder.NoisyActivation((4, 2, 3), multiplicative=False)
    assert torch.equal(additive.w, torch.ones(4, 2, 3)) and not additive.w.requires_grad


def test_initial_noise_statistics():
    gen = torch.Generator().manual_seed(1)
    layer = shredder.NoisyActivation((120, 20, 20), laplace_scale=20.0, generator=gen)
    n = layer.n.detach()
    assert n.abs().mean() == pytest.approx(20.0, rel=0.02)           # E|n| = b
    assert n.std() == pytest.approx(20.0 * math.sqrt(2), rel=0.02)  # sd = b sqrt(2)
    small = torch.stack([shredder.NoisyActivation((120, 1, 1), generator=torch.Generator().manual_seed(s)).w.detach()
                         for s in range(200)])
    assert small.std() == pytest.approx(math.sqrt(2 / 121), rel=0.03)  # Xavier on (120, 1, 1): fan_in 1, fan_out 120


def test_pairing_term_by_hand_and_its_gradient_never_reaches_n():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    z2 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y, y2 = torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0])
    # D = [3, 2, 4]; pair 0 same label, pairs 1 and 2 different: S_pos = 3, S_neg = 6
    assert float(shredder.pairing_term(z, z2, y, y2)) == pytest.approx(-3.0)
    assert float(shredder.pairing_term(z, z2, y, y2, variant="ratio")) == pytest.approx(-3.0 / 9.0)

    gen = torch.Generator().manual_seed(2)
    layer = shredder.NoisyActivation((6, 1, 1), laplace_scale=3.0, generator=gen)
    a, a2 = torch.randn(16, 6, 1, 1, generator=gen), torch.randn(16, 6, 1, 1, generator=gen)
    labels, labels2 = torch.randint(0, 2, (16,), generator=gen), torch.randint(0, 2, (16,), generator=gen)
    for variant in ("difference", "ratio"):
        layer.zero_grad()
        term = shredder.pairing_term(layer(a), layer(a2), labels, labels2, variant=variant)
        term.backward()
        assert torch.equal(layer.n.grad, torch.zeros_like(layer.n))  # exactly zero: n cancels
        assert layer.w.grad.abs().sum() > 0
        if variant == "ratio":
            assert -1.0 <= float(term.detach()) <= 1.0
    # the cross-entropy does reach n
    layer.zero_grad()
    F.cross_entropy(layer(a).flatten(1), labels).backward()
    assert layer.n.grad.abs().sum() > 0


def test_snr_by_hand_and_monotone_in_the_noise_scale():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    noisy = a + torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    assert shredder.snr(a, noisy) == pytest.approx((1 + 4 + 9 + 0) / 4 / 1.0)  # var of +-1 is 1
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(64, 120, 1, 1, generator=gen)
    values = [shredder.snr(a, shredder.NoisyActivation((120, 1, 1), laplace_scale=b, multiplicative=False,
                                                       generator=torch.Generator().manual_seed(0))(a).detach())
              for b in (0.5, 3, 10, 20)]
    assert values == sorted(values, reverse=True)
    assert shredder.decibels(100.0) == pytest.approx(20.0)


def _pool(m=5, shape=(3, 2, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    samples = [shredder.NoiseSample(w=torch.randn(shape, generator=gen), n=torch.randn(shape, generator=gen),
                                    epoch=3, val_accuracy=0.9) for _ in range(m)]
    return shredder.NoisePool.from_samples(samples)


def test_pool_round_trip_and_samplers(tmp_path):
    pool = _pool()
    pool.save(tmp_path / "pool.pt")
    back = shredder.NoisePool.load(tmp_path / "pool.pt")
    assert torch.equal(back.w, pool.w) and torch.equal(back.n, pool.n) and back.epochs == pool.epochs
    w, n = pool.draw(400, generator=torch.Generator().manual_seed(1))
    assert w.shape == n.shape == (400, 3, 2, 2)
    rows = {int(((pool.n - n_i).abs().flatten(1).sum(1) == 0).nonzero()) for n_i in n}
    assert rows == set(range(5))  # every draw is one pool sample, all used
    w_before = pool.w.clone()
    w_r, n_r = pool.draw(300, sampler="resample_w", generator=torch.Generator().manual_seed(2))
    assert torch.equal(pool.w, w_before)  # the pool is not modified
    j = [int(((pool.n - n_i).abs().flatten(1).sum(1) == 0).nonzero()) for n_i in n_r]
    source = pool.w[j].flatten(1)
    # the same rank order as the pool sample, with fresh values (a (C, H, W) shape: the code's bug 12)
    assert torch.equal(torch.argsort(w_r.flatten(1), dim=1), torch.argsort(source, dim=1))
    assert not torch.equal(w_r.flatten(1), source)
    with pytest.raises(ValueError, match="sampler"):
        pool.draw(3, sampler="laplace")
    with pytest.raises(ValueError, match="no accepted"):
        shredder.NoisePool.from_samples([])


def test_resampled_w_follows_the_fitted_normal():
    pool = _pool(m=1, shape=(2000,))
    w, _ = pool.draw(50, sampler="resample_w", generator=torch.Generator().manual_seed(4))
    assert w.mean() == pytest.approx(float(pool.w.mean()), abs=0.02)
    assert w.std() == pytest.approx(float(pool.w.std()), rel=0.02)
    torch.testing.assert_close(shredder.apply_noise(torch.ones(50, 2000), w, torch.zeros(50, 2000)), w)


@pytest.fixture(scope="module")
def public_digits():
    """A frozen public LeNet-5 (digit > 5) on real digits, its cut after relu5, and the activations."""
    digits = data.load("digits", "train")
    x, y_public = shredder.to_32(digits.x), (digits.y > 5).long()
    torch.manual_seed(0)
    net = shredder.LeNet5(1, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y_public[idx]).backward()
        opt.step()
    shredder.freeze(net)
    edge, cloud = shredder.split(net, "relu5")
    with torch.no_grad():
        a = edge(x)
    return net, cloud, a, y_public


def test_training_accepts_at_the_validation_bar_and_touches_only_w_and_n(public_digits):
    net, cloud, a, y = public_digits
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, val = slice(0, 1000), slice(1000, None)
    bar = models.accuracy(cloud, a[val], y[val]) - 0.03  # the book's rule: clean validation accuracy - 3 points
    assert bar > 0.9
    options = dict(laplace_scale=3.0, lr=1e-2, batch_size=64, epochs=12, min_epochs=3, accept_accuracy=bar, seed=0)
    sample = shredder.train_noise(cloud, a[train], y[train], a[val], y[val], **options)
    assert sample.accepted and sample.epoch >= 3 and sample.val_accuracy >= bar
    assert all(h["val_accuracy"] < bar for h in sample.history[2:-1])  # the first epoch past min_epochs at the bar
    # the recorded accuracy is that of the returned noise on the validation split
    assert models.accuracy(cloud, sample.w * a[val] + sample.n, y[val]) == pytest.approx(sample.val_accuracy)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the base network is frozen
    start = shredder.NoisyActivation((120, 1, 1), laplace_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sample.n, start.n.detach()) and not torch.equal(sample.w, start.w.detach())
    # the same run, judged on validation labels that are all wrong, is rejected: the decision is the
    # validation split's, whatever the training data say
    judged_wrong = shredder.train_noise(cloud, a[train], y[train], a[val], 1 - y[val], **options)
    assert not judged_wrong.accepted and judged_wrong.epoch == 12
    with pytest.raises(ValueError, match="rejected"):
        shredder.NoisePool.from_samples([sample, judged_wrong])


def test_shredder_experiment_never_accepts_on_the_test_split(tmp_path, monkeypatch):
    """The test images are replaced by NaN: an acceptance rule that read them would see NaN activations."""
    from dpbook import experiments, settings

    real_splits, real_train = data.splits, shredder.train_noise

    def poisoned(*args, **kwargs):
        parts = real_splits(*args, **kwargs)
        test = parts["test"]
        parts["test"] = data.ArrayDataset(torch.full_like(test.x, float("nan")), test.y, name=test.name,
                                          split="test", classes=test.classes)
        return parts

    judged = []

    def spy(cloud, a_train, y_train, a_val, y_val, **options):
        judged.append((a_val.clone(), options["accept_accuracy"]))
        return real_train(cloud, a_train, y_train, a_val, y_val, **options)

    monkeypatch.setattr(data, "splits", poisoned)
    monkeypatch.setattr(shredder, "train_noise", spy)
    with pytest.raises(experiments.Interrupted):
        experiments.run("shredder", results=str(tmp_path), laplace_scale=3.0, stop_after_epoch=2)
    assert len(judged) == 2
    for a_val, bar in judged:
        assert len(a_val) == settings("shredder").validation and torch.isfinite(a_val).all()
        assert 0.5 < bar < 1
    state = torch.load(next((tmp_path / "shredder").glob("*.ckpt")), weights_only=False)
    assert all(math.isfinite(s["val_accuracy"]) and s["val_accuracy"] >= judged[0][1] for s in state["samples"])


def test_adversary_reads_digits_from_clean_activations():
    """The smoke-profile check of the issue: a probe on clean activations of a small real set is accurate."""
    digits_train, digits_test = data.load("digits", "train"), data.load("digits", "test")
    torch.manual_seed(0)
    net = shredder.LeNet5(1, 10)
    x = shredder.to_32(digits_train.x)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), digits_train.y[idx]).backward()
        opt.step()
    edge, _ = shredder.split(shredder.freeze(net), "relu5")
    with torch.no_grad():
        a_train, a_test = edge(x), edge(shredder.to_32(digits_test.x))
    acc = shredder.probe_accuracy(a_train, digits_train.y, a_test, digits_test.y, n_classes=10, epochs=30)
    assert acc > 0.85 > 3 * shredder.chance_accuracy(digits_test.y)
    # pure noise features carry nothing: the probe stays near chance
    noise = torch.randn_like(a_train), torch.randn_like(a_test)
    assert shredder.probe_accuracy(noise[0], digits_train.y, noise[1], digits_test.y, n_classes=10, epochs=5) < 0.25
