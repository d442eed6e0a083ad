"""The GEP step: exact identities with clipping and noise off, clip bounds,
noise scales, and DP-SGD / Biased-GEP as the special cases they claim to be."""
import math
import warnings

import pytest
import torch

from dpbook import gep, privacy


def seeded(seed):
    with pytest.warns(privacy.UnsafeSeedWarning):
        return privacy.noise_generator(seed=seed)


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    p, n, m = 60, 12, 20
    low_rank = torch.randn(m, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, p, generator=gen, dtype=torch.float64)
    anchors = low_rank + 0.01 * torch.randn(m, p, generator=gen, dtype=torch.float64)
    grads = torch.randn(n, 5, generator=gen, dtype=torch.float64) @ low_rank[:5] / 3 \
        + 0.1 * torch.randn(n, p, generator=gen, dtype=torch.float64)
    groups = gep.group_slices(p, 3)
    bases = gep.anchor_subspace(anchors, groups, gep.basis_budget([20, 20, 20], 12, m), generator=gen)
    return grads, anchors, groups, bases


def test_groups_and_budget_match_the_original():
    groups = gep.group_slices(268_346, 3)
    assert [g.stop - g.start for g in groups] == [89_448, 89_448, 89_450]
    assert gep.basis_budget([89_448, 89_448, 89_450], 1000, 2000) == [333, 333, 333]
    assert gep.basis_budget([432, 13_824, 50_688, 202_752, 650], 1000, 2000) == [24, 140, 268, 536, 30]
    assert gep.basis_budget([100, 100], 1000, 30) == [30, 30]  # capped at the anchors' rank


def test_bases_are_orthonormal_and_span_a_low_rank_anchor_space():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(30, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, 50, generator=gen, dtype=torch.float64)
    for how in gep.ORTHOGONALIZE:
        (basis,) = gep.anchor_subspace(a, [slice(0, 50)], [4], orthogonalize=how, generator=gen)
        torch.testing.assert_close(basis.T @ basis, torch.eye(4, dtype=torch.float64))
        torch.testing.assert_close(a - a @ basis @ basis.T, torch.zeros_like(a), atol=1e-9, rtol=0)
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    q = gep.anchor_subspace(a, [slice(0, 50)], [4], orthogonalize="qr", generator=gen_a)[0]
    mgs = gep.anchor_subspace(a, [slice(0, 50)], [4], orthogonalize="gram_schmidt", generator=gen_b)[0]
    torch.testing.assert_close(q @ q.T, mgs @ mgs.T)  # the same subspace


def test_embedding_plus_residual_reconstructs_each_gradient(problem):
    grads, _, groups, bases = problem
    w, r = gep.embed(grads, bases, groups)
    assert w.shape == (12, sum(b.shape[1] for b in bases))
    rebuilt = torch.stack([gep.reconstruct(w[i], bases, groups, grads.shape[1]) for i in range(len(grads))]) + r
    torch.testing.assert_close(rebuilt, grads)
    # orthonormal bases: Pythagoras per sample
    torch.testing.assert_close((r**2).sum(1) + (w**2).sum(1), (grads**2).sum(1))


def test_without_clipping_and_noise_the_step_is_the_mean_gradient(problem):
    grads, _, groups, bases = problem
    out = gep.privatize(grads, bases, groups, clip_embedding=1e9, clip_residual=1e9, noise_multiplier=0.0,
                        expected_batch_size=len(grads))
    torch.testing.assert_close(out.gradient, grads.mean(0))


def test_clipped_parts_never_exceed_their_thresholds(problem):
    grads, _, groups, bases = problem
    w, r = gep.embed(grads * 100, bases, groups)
    assert gep.clip_rows(w, 0.5).norm(dim=1).max() <= 0.5 + 1e-12
    assert gep.clip_rows(r, 0.2).norm(dim=1).max() <= 0.2 + 1e-12
    small = gep.clip_rows(w * 1e-6, 0.5)
    torch.testing.assert_close(small, w * 1e-6)  # rows inside the ball are untouched


def test_dpsgd_is_gep_without_a_subspace(problem):
    grads, _, groups, bases = problem
    c, sigma, b = 0.3, 1.3, 10.0
    ours = gep.privatize(grads, bases, groups, mode="dpsgd", clip_embedding=99.0, clip_residual=c,
                         noise_multiplier=sigma, expected_batch_size=b, generator=seeded(7))
    gen = seeded(7)
    gen_noise = privacy.gaussian_noise((0,), noise_std=sigma * 99.0, generator=gen, dtype=grads.dtype)  # empty draw
    reference = (gep.clip_rows(grads, c).sum(0)
                 + privacy.gaussian_noise((grads.shape[1],), noise_std=sigma * c, generator=gen, dtype=grads.dtype)) / b
    assert gen_noise.numel() == 0
    torch.testing.assert_close(ours.gradient, reference)


def test_biased_gep_is_the_projected_clipped_embedding(problem):
    grads, _, groups, bases = problem
    out = gep.privatize(grads, bases, groups, mode="biased", clip_embedding=0.4, clip_residual=1.0,
                        noise_multiplier=0.0, expected_batch_size=12)
    w, _ = gep.embed(grads, bases, groups)
    expected = gep.reconstruct(gep.clip_rows(w, 0.4).sum(0) / 12, bases, groups, grads.shape[1])
    torch.testing.assert_close(out.gradient, expected)
    assert torch.count_nonzero(out.residual) == 0


@pytest.mark.parametrize("part", ["embedding", "residual"])
def test_noise_has_the_calibrated_standard_deviation(part):
    gen = torch.Generator().manual_seed(3)
    p, k, b = 20_000, 400, 50.0
    groups = [slice(0, p)]
    basis = torch.linalg.qr(torch.randn(p, k, generator=gen, dtype=torch.float64)).Q
    zero = torch.zeros(5, p, dtype=torch.float64)
    s0, s1 = 2.0, 0.5
    sig0, sig1 = (1.5, 0.0) if part == "embedding" else (0.0, 1.5)
    out = gep.privatize(zero, [basis], groups, clip_embedding=s0, clip_residual=s1, noise_multiplier=sig0,
                        residual_noise_multiplier=sig1, expected_batch_size=b)
    if part == "embedding":
        assert float(out.embedding.std()) == pytest.approx(sig0 * s0 / b, rel=0.15)  # k = 400 draws
        assert float(out.gradient.norm()) == pytest.approx(float(out.embedding.norm()), rel=1e-9)  # orthonormal
    else:
        assert float(out.residual.std()) == pytest.approx(sig1 * s1 / b, rel=0.03)   # p = 20,000 draws


def test_effective_noise_multiplier_and_poisson_sampling():
    assert gep.effective_noise_multiplier("gep", 2.0) == pytest.approx(2.0 / math.sqrt(2))
    assert gep.effective_noise_multiplier("gep", 1.0, 2.0) == pytest.approx((1 + 0.25) ** -0.5)
    assert gep.effective_noise_multiplier("biased", 1.7, 9.0) == 1.7
    assert gep.effective_noise_multiplier("dpsgd", 1.7, 0.9) == 0.9
    sizes = [len(gep.poisson_batch(10_000, 0.01, generator=seeded(s))) for s in range(20)]
    assert abs(sum(sizes) / 20 - 100) < 10 and len(set(sizes)) > 1


def test_bad_arguments(problem):
    grads, _, groups, bases = problem
    with pytest.raises(ValueError, match="mode"):
        gep.privatize(grads, bases, groups, mode="rgp", clip_embedding=1, clip_residual=1, noise_multiplier=1,
                      expected_batch_size=1)
    with pytest.raises(ValueError, match="n_groups"):
        gep.group_slices(10, 0)
    with pytest.raises(ValueError, match="orthogonalize"):
        gep.anchor_subspace(grads, groups, [2, 2, 2], orthogonalize="svd")


def test_engine_without_noise_or_clipping_takes_the_mean_gradient_step():
    from dpbook import models

    torch.manual_seed(0)
    model = models.SmallCNN(1, 10, 8)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    engine = gep.GEP(model, torch.randn(20, 1, 8, 8), n_classes=10, n_bases=15, clip_embedding=1e9,
                     clip_residual=1e9, noise_multiplier=1e-20, sample_rate=16 / 100, dataset_size=100)
    engine.step(x, y)
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()]) / 16
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert engine.steps == 1 and engine.accountant.steps == 1


def test_engine_trains_on_digits_and_accounts_the_joint_mechanism():
    from dpbook import data, models

    torch.manual_seed(0)
    parts = data.splits("digits", public=200, scale="standard", seed=0)
    train, public, test = parts["train"], parts["public"], parts["test"]
    model = models.SmallCNN(1, 10, 8)
    q = 64 / len(train)
    engine = gep.GEP(model, public.x, n_classes=10, n_bases=64, noise_multiplier=0.5, clip_embedding=5.0,
                     clip_residual=2.0, sample_rate=q, dataset_size=len(train), generator=seeded(11))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(60):
        idx = gep.poisson_batch(len(train), q, generator=engine.generator)
        engine.step(train.x[idx], train.y[idx])
        optimizer.step()
    assert models.accuracy(model, test.x, test.y) > 0.5  # chance is 0.1
    expected = privacy.epsilon(noise_multiplier=0.5 / math.sqrt(2), sample_rate=q, steps=60, delta=1e-5)
    assert engine.epsilon() == pytest.approx(expected)


# (epochs, epsilon, delta, q) -> (sigma with the residual, sigma without), as the original code's utils.get_sigma
# (with its rdp_accountant.py) computes them
ORIGINAL_TABLE = [
    ((200, 8, 1e-5, 0.02), (2.09, 1.56)),
    ((100, 5, 1e-5, 0.02), (2.24, 1.67)),
    ((50, 2, 1e-5, 0.02), (3.64, 2.64)),
    ((10, 8, 1e-5, 1000 / 604_388), (0.55, 0.52)),
    ((20, 8, 1e-6, 1000 / 604_388), (0.60, 0.57)),
    ((10, 5, 1e-6, 1000 / 604_388), (0.65, 0.62)),
    ((5, 2, 1e-6, 1000 / 604_388), (0.87, 0.85)),
]


@pytest.mark.parametrize("setting,expected", ORIGINAL_TABLE)
def test_original_accounting_reproduces_the_codes_sigmas(setting, expected):
    epochs, eps, delta, q = setting
    for residual, sigma in zip((True, False), expected):
        ours, claimed = gep.original_sigma(target_epsilon=eps, delta=delta, sample_rate=q, epochs=epochs,
                                           residual=residual)
        assert ours == pytest.approx(sigma, abs=1e-9) and claimed < eps


def test_sound_calibration_needs_more_noise_than_the_original():
    q, steps = 0.02, 10_000
    legacy = dict(conversion="legacy", orders=gep.ORIGINAL_ORDERS)
    sigma = gep.calibrate(target_epsilon=8, delta=1e-5, sample_rate=q, steps=steps, **legacy)
    assert sigma == pytest.approx(2.20, abs=0.01)  # sound per-part sigma (RDP, legacy conversion)
    joint = privacy.epsilon(noise_multiplier=gep.effective_noise_multiplier("gep", 2.09), sample_rate=q,
                            steps=steps, delta=1e-5, **legacy)
    assert joint == pytest.approx(8.61, abs=0.01)  # what the original's sigma really costs
    assert gep.calibrate(target_epsilon=8, delta=1e-5, sample_rate=q, steps=steps, mode="dpsgd", **legacy) == \
        pytest.approx(1.56, abs=0.01)  # DP-SGD / Biased-GEP: the original's accounting was right


def test_layer_groups_are_the_papers_five_for_resnet20():
    from dpbook import models, persample

    params = persample.trainable(models.ResNet20GN())
    groups = gep.groups_for(params, "layers")
    sizes = [g.stop - g.start for g in groups]
    assert sizes == [432, 13_824, 50_688, 202_752, 650] and groups[-1].stop == 268_346
    assert gep.basis_budget(sizes, 1000, 2000) == [24, 140, 268, 536, 30]  # the paper's grouping
    assert [g.stop - g.start for g in gep.groups_for(params, "equal", 3)] == [89_448, 89_448, 89_450]
    with pytest.raises(ValueError, match="not contiguous"):
        gep.layer_groups({"a.w": torch.zeros(2), "b.w": torch.zeros(3), "a.b": torch.zeros(1)})
    with pytest.raises(ValueError, match="grouping"):
        gep.groups_for(params, "blocks")


def test_grouping_does_not_change_the_noise_free_step_with_full_bases(problem):
    grads, anchors, _, _ = problem
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(60, 60, generator=gen, dtype=torch.float64)  # full-rank anchors: the bases span R^p
    outs = []
    for groups in (gep.group_slices(60, 1), gep.group_slices(60, 4), [slice(0, 7), slice(7, 60)]):
        bases = gep.anchor_subspace(full, groups, [g.stop - g.start for g in groups], generator=gen)
        outs.append(gep.privatize(grads, bases, groups, mode="biased", clip_embedding=1e9, clip_residual=1e9,
                                  noise_multiplier=0.0, expected_batch_size=len(grads)).gradient)
    for out in outs:
        torch.testing.assert_close(out, grads.mean(0))


def test_public_label_modes():
    from dpbook import models

    model = models.SmallCNN(in_channels=1, n_classes=10, image_size=8, width=2)
    public_x = torch.randn(30, 1, 8, 8)
    kw = dict(n_classes=10, noise_multiplier=1.0, sample_rate=0.1, dataset_size=100, n_bases=4)
    fixed = gep.GEP(model, public_x, **kw)
    before = fixed.public_y.clone()
    fixed.refresh_subspace()
    assert torch.equal(fixed.public_y, before)  # the code: drawn once
    redraw = gep.GEP(model, public_x, public_labels="redraw", **kw)
    draws = []
    for _ in range(3):
        redraw.refresh_subspace()
        draws.append(redraw.public_y.clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])  # the paper: every update
    real_y = torch.arange(30) % 10
    real = gep.GEP(model, public_x, public_y=real_y, public_labels="real", **kw)
    real.refresh_subspace()
    assert torch.equal(real.public_y, real_y)
    with pytest.raises(ValueError, match="public_y"):
        gep.GEP(model, public_x, public_labels="real", **kw)
    with pytest.raises(ValueError, match="public_y"):
        gep.GEP(model, public_x, public_y=real_y, **kw)
    with pytest.raises(ValueError, match="public_labels"):
        gep.GEP(model, public_x, public_labels="fresh", **kw)


def test_paper_epochs():
    assert gep.paper_epochs("cifar10", 8) == 200 and gep.paper_epochs("svhn", 2.0) == 5
    with pytest.raises(ValueError, match="Set epochs explicitly"):
        gep.paper_epochs("cifar10", 3)


def test_accounting_audit_measures_the_gap():
    """Notebook 21_gep_experiments, section 2: CIFAR-10 at epsilon 8 (sigma 2.09, claimed 7.97; joint PLD 7.18-7.38) and
    SVHN as in the paper (sigma 0.60, claimed 7.79; joint PLD 18.3-18.6)."""
    cifar = gep.accounting_audit(**gep.PAPER_SETUPS["cifar10"], epochs=200, target_epsilon=8.0)
    assert cifar["sigma_original"] == 2.09 and cifar["epsilon_claimed"] == pytest.approx(7.97, abs=0.01)
    assert 7.18 <= cifar["epsilon_pld"] <= 7.38 + 0.02
    assert cifar["epsilon_pld"] < cifar["epsilon_rdp"] < cifar["epsilon_rdp_legacy"]
    svhn = gep.accounting_audit(**gep.PAPER_SETUPS["svhn"], epochs=20, target_epsilon=8.0, pld_discretization=1e-3)
    assert svhn["sigma_original"] == 0.6 and svhn["epsilon_claimed"] == pytest.approx(7.79, abs=0.01)
    assert 18.3 <= svhn["epsilon_pld"] <= 18.6 + 0.1  # coarser grid: an upper bound, slightly above
    assert svhn["epsilon_rdp"] > 2 * svhn["epsilon_claimed"]
    # the sound sigma meets the target under the joint mechanism
    eps = privacy.epsilon(noise_multiplier=svhn["sigma_joint"] / 2**0.5, sample_rate=svhn["sample_rate"],
                          steps=svhn["steps"], delta=1e-6)
    assert eps == pytest.approx(8.0, abs=0.05) and eps <= 8.0 + 1e-9


def test_epoch_batches_poisson_and_the_originals_fixed_size():
    gen = torch.Generator().manual_seed(0)
    poisson = gep.epoch_batches(1000, 50, generator=gen)
    sizes = torch.tensor([len(b) for b in poisson], dtype=torch.float64)
    assert len(poisson) == 20 and not torch.all(sizes == 50)           # random sizes, mean B
    assert abs(float(sizes.mean()) - 50) < 4 * math.sqrt(50 * 0.95 / 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the shuffle warning has its own test
        fixed = gep.epoch_batches(1010, 50, sampling="shuffle", generator=gen)
    assert len(fixed) == 20 and all(len(b) == 50 for b in fixed)
    flat = torch.cat(fixed)
    assert len(torch.unique(flat)) == 1000  # disjoint: each example at most once per epoch
    with pytest.raises(ValueError, match="sampling"):
        gep.epoch_batches(100, 10, sampling="fixed", generator=gen)
    with pytest.raises(ValueError, match="batch_size"):
        gep.epoch_batches(100, 0, generator=gen)


def test_epoch_batches_count_is_steps_per_epoch_and_the_originals_steps():
    gen = torch.Generator().manual_seed(0)
    for n, b in [(1000, 50), (1437, 64), (49, 2)]:
        assert len(gep.epoch_batches(n, b, generator=gen)) == privacy.steps_per_epoch(n, b)
    assert gep.original_steps(10, 1000 / 604_388) == 6043  # the loop runs 10 * (604,388 // 1000) = 6,040


def test_shuffled_batches_warn_that_they_void_the_guarantee():
    from dpbook import guarantees

    guarantees._WARNED.clear()
    with pytest.warns(guarantees.UnsoundModeWarning, match="sampling='shuffle'"):
        gep.epoch_batches(100, 10, sampling="shuffle", generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gep.epoch_batches(100, 10, generator=torch.Generator().manual_seed(0))  # Poisson: no warning


def test_clipped_sum_matches_clipping_then_summing(problem):
    grads = problem[0]
    for c in (0.05, 1.0, 1e9):
        torch.testing.assert_close(gep.clipped_sum(grads, c), gep.clip_rows(grads, c).sum(0))
    assert gep.clipped_sum(grads[:0], 1.0).shape == (grads.shape[1],)  # an empty Poisson batch sums to zero
    w, r = gep.embed(grads, [], [])
    assert w.shape == (len(grads), 0) and r is grads  # DP-SGD: no copy of the gradient matrix


def test_streamed_residual_sum_equals_the_materialised_one(problem):
    grads, _, groups, bases = problem
    w, r = gep.embed(grads, bases, groups)
    for clip in (0.05, 0.3, 1e9):
        expected = gep.clip_rows(r, clip).sum(0)
        for rows in (1, 5, None):
            got = gep.clipped_residual_sum(grads, w, bases, groups, clip, rows=rows)
            torch.testing.assert_close(got, expected)
    torch.testing.assert_close(gep.clipped_residual_sum(grads, w[:, :0], [], [], 0.3), gep.clip_rows(grads, 0.3).sum(0))


def test_privatize_is_the_materialised_formula_with_the_same_noise(problem):
    """The release without an n x p residual is the textbook one: clip the rows of W and R, sum, add the
    same noise draws, rebuild."""
    grads, _, groups, bases = problem
    s0, s1, sig, b = 0.4, 0.2, 1.3, 10.0
    out = gep.privatize(grads, bases, groups, clip_embedding=s0, clip_residual=s1, noise_multiplier=sig,
                        expected_batch_size=b, generator=seeded(3))
    w, r = gep.embed(grads, bases, groups)
    gen = seeded(3)
    w_noisy = (gep.clip_rows(w, s0).sum(0) + privacy.gaussian_noise((w.shape[1],), noise_std=sig * s0, generator=gen,
                                                                    dtype=w.dtype)) / b
    r_noisy = (gep.clip_rows(r, s1).sum(0) + privacy.gaussian_noise((r.shape[1],), noise_std=sig * s1, generator=gen,
                                                                    dtype=r.dtype)) / b
    torch.testing.assert_close(out.embedding, w_noisy)
    torch.testing.assert_close(out.residual, r_noisy)
    torch.testing.assert_close(out.gradient, gep.reconstruct(w_noisy, bases, groups, grads.shape[1]) + r_noisy)


def test_clipping_is_full_precision_even_where_tf32_is_allowed(monkeypatch):
    seen, real = [], gep.step.scales_for
    matmul = torch.backends.cuda.matmul

    def spy(norms, max_norm):  # runs just before the clipped sum's product
        seen.append(matmul.fp32_precision)
        return real(norms, max_norm)

    monkeypatch.setattr(gep.step, "scales_for", spy)
    before = matmul.fp32_precision
    with gep.tf32_products(True):
        assert matmul.fp32_precision == "tf32"
        gep.clipped_sum(torch.randn(4, 3), 1.0)
        assert matmul.fp32_precision == "tf32"  # restored after the clipped sum
    assert seen == ["ieee"] and matmul.fp32_precision == before


def test_a_diverged_example_counts_as_zero_not_as_nan():
    g = torch.randn(5, 7)
    bad = g.clone()
    bad[1, 3], bad[3, 0] = float("nan"), float("inf")
    kept = g.clone()
    kept[[1, 3]] = 0.0
    torch.testing.assert_close(gep.clipped_sum(bad, 0.5), gep.clip_rows(kept, 0.5).sum(0))
    assert torch.isfinite(bad).sum() == 33  # the caller's matrix is left as it was


def engine_problem(**kw):
    torch.manual_seed(0)
    from dpbook import models

    model = models.build("small-cnn", in_channels=1, image_size=12, n_classes=10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 12, 12, generator=gen), torch.randint(0, 10, (60,), generator=gen)
    engine = gep.GEP(model, torch.randn(20, 1, 12, 12, generator=gen), n_classes=10, n_bases=8,
                     noise_multiplier=1.0, sample_rate=0.25, dataset_size=60, **kw)
    return engine, x, y


def test_engine_reuses_its_gradient_buffers_across_steps():
    engine, x, y = engine_problem()
    engine.step(x[:15], y[:15])
    private, public = engine._buffers["private"].data_ptr(), engine._buffers["public"].data_ptr()
    engine.step(x[15:27], y[15:27])
    engine.step(x[:0], y[:0])  # an empty batch still releases noise
    assert engine._buffers["private"].data_ptr() == private and engine._buffers["public"].data_ptr() == public
    engine.step(x, y)  # a batch larger than the buffer grows it
    assert len(engine._buffers["private"]) >= 60


def test_warm_start_draws_nothing_and_keeps_orthonormal_bases():
    engine, x, y = engine_problem(warm_start=True)
    engine.step(x[:15], y[:15])
    state = engine.public_gen.get_state()
    engine.step(x[15:30], y[15:30])  # refresh from the previous bases: no random start
    assert torch.equal(engine.public_gen.get_state(), state)
    for basis in engine.bases:
        torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
    cold, _, _ = engine_problem()
    cold.step(x[:15], y[:15])
    state = cold.public_gen.get_state()
    cold.step(x[15:30], y[15:30])
    assert not torch.equal(cold.public_gen.get_state(), state)  # the paper's refresh draws a fresh start
