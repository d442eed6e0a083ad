"""StoBatch (dpbook.stobatch), the paper's batch-shared mechanism: privacy arithmetic against the original
code's constants, noise scales and shapes, Taylor identities, the auto-encoder loss against an explicit matrix,
batching invariants (with the original's batch-sampling bug as a regression), and a smoke training on digits.
The sound per-example designs are tested in tests/test_stobatch_sound.py."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpbook import attacks, data, guarantees, privacy, robustness
from dpbook import stobatch as sb


def PAPER(**kw):
    """The paper's mechanism (``release="batch_shared"``, unsound: it warns once per process)."""
    return sb.StoBatchOptions(release="batch_shared", **kw)


def seeded(seed):
    with pytest.warns(privacy.UnsafeSeedWarning):
        return privacy.noise_generator(seed=seed)


def tiny_rgb_network(out_channels=4):
    """A 3-channel StoBatchNet on 3x8x8 inputs, to see channels."""
    first = sb.AutoEncoderLayer(3, out_channels, 3, stride=2, padding=1, input_size=(8, 8))
    body = nn.Sequential(sb.LatentBias(out_channels), nn.ReLU(), nn.Flatten(), nn.Linear(out_channels * 16, 6),
                         nn.Hardtanh())
    return sb.StoBatchNet(first, body, 6, 3)


def conv_matrix(first):
    """The linear map x -> theta_1^T x of the auto-encoder layer as an explicit (beta * C_out, d) matrix,
    built by applying the bare convolution to the d unit images (independent of conv_transpose)."""
    d = math.prod(first.input_shape)
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *first.input_shape)
    cols = F.conv2d(basis, first.weight.detach().double(), stride=first.stride, padding=first.padding)
    return cols.reshape(d, -1).T


# ---------------------------------------------------------------------------------------------------
# 1. Privacy arithmetic
# ---------------------------------------------------------------------------------------------------
def test_delta_R_matches_the_code_constants():
    assert sb.delta_R(in_channels=3, kernel_size=4, out_height=14, out_width=14) == 9504          # CIFAR-10
    assert sb.delta_R(in_channels=1, kernel_size=5, out_height=14, out_width=14) == 4950          # MNIST
    assert sb.delta_R(in_channels=3, kernel_size=7, out_height=32, out_width=32) == 150_822       # Tiny ImageNet
    assert sb.delta_R(in_channels=1, kernel_size=3, out_height=4, out_width=4) == 162             # digits
    assert sb.delta_R(in_channels=1, kernel_size=3, out_height=4, out_width=4, out_channels=16,
                      beta_includes_channels=True) == 2322
    # the networks' own geometry gives the same numbers
    assert sb.mnist_network().first.delta_R() == 4950
    assert sb.cifar10_network().first.delta_R() == 9504
    assert sb.resnet18_network().first.delta_R() == 150_822
    assert sb.digits_network().first.delta_R() == 162
    assert sb.digits_network().first.delta_R(beta_includes_channels=True) == 2322
    assert sb.delta_L2(256) == 512


def test_budget_split_reproduces_the_cifar_regression_values():
    b = sb.solve_budget(epsilon_autoencoder=1.0, epsilon2=1.0, delta_R=9504, batch_size=1851, sigma_max=0.545,
                        delta_x=1.0, hidden=256)
    assert b.gamma_x == pytest.approx(5.1345, abs=1e-4)
    assert b.gamma == pytest.approx(18.84, abs=5e-3)
    assert b.epsilon1 == pytest.approx(0.8014, abs=1e-4)
    terms = b.terms
    assert terms["epsilon1"] + terms["epsilon1/gamma_x"] + terms["epsilon1/gamma"] == pytest.approx(1.0, rel=1e-12)
    assert b.total == pytest.approx(2.0, rel=1e-12)
    # the closed forms, written out
    assert terms["epsilon1/gamma_x"] == pytest.approx(b.epsilon1 * 1851 * 1.0 / 9504, rel=1e-12)
    assert terms["epsilon1/gamma"] == pytest.approx(b.epsilon1 * 1851 * 0.545 / (2 * 9504), rel=1e-12)


@pytest.mark.parametrize("setting, expected", [
    # (eps_AE, eps2, Delta_R, m, sigma_max) -> (gamma_x, gamma, eps1, b_x, b_h, b_out): the code's settings,
    # with the sigma_max of a Xavier-initialised theta_1
    ((0.1, 0.1, 4950, 2499, 0.50), (1.98, 7.9, 0.061, 32, 65, 2.05)),          # MNIST
    ((1.0, 1.0, 9504, 1851, 0.55), (5.13, 18.8, 0.80, 6.4, 12.8, 0.28)),       # CIFAR-10
    ((4.0, 1.0, 150_822, 4500, 0.48), (33.5, 139, 3.86, 8.7, 17.4, 0.114)),    # Tiny ImageNet
])
def test_noise_scales_of_the_code_settings(setting, expected):
    eps_ae, eps2, d_r, m, sigma = setting
    b = sb.solve_budget(epsilon_autoencoder=eps_ae, epsilon2=eps2, delta_R=d_r, batch_size=m, sigma_max=sigma,
                        delta_x=1.0, hidden=256)
    got = (b.gamma_x, b.gamma, b.epsilon1, b.input_scale, b.latent_scale, b.output_scale)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=0.03)
    eps1 = eps_ae / (1 + m / d_r + m * sigma / (2 * d_r))
    assert b.input_scale == pytest.approx(d_r / (m * eps1), rel=1e-12)
    assert b.latent_scale == pytest.approx(2 * d_r / (m * eps1), rel=1e-12)
    assert b.output_scale == pytest.approx(512 / (m * eps2), rel=1e-12)


def test_input_sensitivity_conventions():
    assert sb.input_sensitivity((1, 8, 8), "l1") == 128.0   # replace-one l1 change of x in [-1, 1]^64
    assert sb.input_sensitivity((3, 28, 28), "unit") == 1.0
    with pytest.raises(ValueError, match="delta_x_convention"):
        sb.input_sensitivity((1, 8, 8), "l2")


def test_gamma_uses_the_actual_weights_and_projection_enforces_it():
    model = sb.digits_network()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a kernel with known singular values 3, 2, 1, 0.5, ...
        u, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen))
        s = torch.tensor([3.0, 2.0, 1.0] + [0.5] * 6)
        model.first.weight.copy_((u[:, :9] * s @ v.T).reshape(16, 1, 3, 3))
    assert sb.spectral_norm(model.first.weight) == pytest.approx(3.0, rel=1e-5)
    run = sb.prepare(model, 1438, PAPER(), generator=seeded(0))
    assert run.budget.sigma_max == pytest.approx(3.0, rel=1e-5)
    assert run.budget.gamma == pytest.approx(2 * 162 / (200 * 3.0), rel=1e-5)
    assert run.budget.delta_x == 128.0
    # projection clips the singular values at the bound and keeps the singular vectors
    w = model.first.weight.detach().clone()
    sb.project_spectral_norm_(w, 1.5)
    expected = (u[:, :9] * s.clamp(max=1.5) @ v.T).reshape(16, 1, 3, 3)
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=1e-5)
    before = w.clone()
    sb.project_spectral_norm_(w, 10.0)
    assert torch.equal(w, before)  # inside the ball: untouched


def test_privacy_report_rechecks_sigma_max_when_theta1_is_not_constrained():
    x = torch.rand(400, 1, 8, 8) * 2 - 1
    y = torch.randint(0, 10, (400,))
    reports = {}
    for constraint in ("project", "none"):
        torch.manual_seed(0)
        model = sb.digits_network()
        opts = PAPER(theta1_constraint=constraint, lr_theta1=0.3, attack_steps=1, batch_size=100,
                                  epsilon_autoencoder=3.0, epsilon2=2.0)
        run = sb.prepare(model, len(x), opts, generator=seeded(1))
        report = sb.train_epoch(model, sb.make_optimizers(model, opts), run, x, y,
                                schedule_generator=torch.Generator().manual_seed(0))
        reports[constraint] = (report, sb.spectral_norm(model.first.weight), run.sigma_bound)
    report, sigma_now, bound = reports["project"]
    assert sigma_now <= bound * (1 + 1e-5)
    assert report["epsilon_recheck"] == pytest.approx(report["epsilon"]) == pytest.approx(5.0)
    report, sigma_now, bound = reports["none"]
    assert sigma_now > bound  # a large theta_1 step grows sigma_max ...
    eps1 = report["epsilon1"]
    grown = eps1 * 100 * report["sigma_max_seen"] / (2 * 162)   # eps_h = Delta_h m eps1 / (2 Delta_R)
    assert report["epsilon_recheck"] == pytest.approx(5.0 - report["epsilon1/gamma"] + grown, rel=1e-9)
    assert report["epsilon_recheck"] > report["epsilon"]          # ... and the re-check shows the overspend


# ---------------------------------------------------------------------------------------------------
# 2. Noise scales and shapes
# ---------------------------------------------------------------------------------------------------
def test_laplace_scales_of_the_noise_tables():
    budget = sb.solve_budget(epsilon_autoencoder=2.0, epsilon2=1.5, delta_R=162, batch_size=200, sigma_max=0.8,
                             delta_x=1.0, hidden=32)
    table = sb.draw_noise(3200, budget=budget, input_shape=(1, 8, 8), latent_shape=(16, 4, 4), n_classes=10,
                          generator=seeded(2), dtype=torch.float64)
    eps1 = 2.0 / (1 + 200 / 162 + 200 * 0.8 / (2 * 162))
    for noise, scale in ((table.x, 162 / (200 * eps1)), (table.h, 2 * 162 / (200 * eps1)),
                         (table.chi, 64 / (200 * 1.5))):
        assert noise.numel() >= 200_000
        assert float(noise.abs().mean()) == pytest.approx(scale, rel=0.02)   # E|Lap(b)| = b
        assert float(noise.mean()) == pytest.approx(0.0, abs=0.02 * scale)
    assert table.x.shape == (3200, 1, 8, 8) and table.h.shape == (3200, 16, 4, 4) and table.chi.shape == (3200, 32, 10)


@pytest.mark.parametrize("reuse", sb.NOISE_REUSE)
@pytest.mark.parametrize("shared", [False, True])
def test_noise_shapes_per_batch_and_per_channel(reuse, shared):
    model = tiny_rgb_network()
    opts = PAPER(batch_size=10, noise_reuse=reuse, channel_shared_input_noise=shared)
    run = sb.prepare(model, 45, opts, generator=seeded(3))
    assert run.partition.shape == (4, 10)
    assert len(run.noise.x) == (4 if reuse == "per_batch" else 1)
    n0, n1 = run.noise[0], run.noise[1]
    assert n0.x.shape == (1, 3, 8, 8) and n0.h.shape == (1, 4, 4, 4) and n0.chi.shape == (6, 3)
    # the same noise for every example of a batch
    x = torch.rand(10, 3, 8, 8)
    x_bar, h, h_bar = sb.dp_layers(model, x, n0)
    torch.testing.assert_close(x_bar - x, n0.x.expand_as(x))
    torch.testing.assert_close(h_bar - h, n0.h.expand_as(h))
    # colour channels: equal (the code) or independent (principled)
    assert torch.equal(n0.x[:, 0], n0.x[:, 1]) == shared and torch.equal(n0.x[:, 1], n0.x[:, 2]) == shared
    # batches: distinct draws (principled) or one draw reused (the code)
    for a, b in ((n0.x, n1.x), (n0.h, n1.h), (n0.chi, n1.chi)):
        assert torch.equal(a, b) == (reuse == "global_once")


def test_original_options_use_the_public_seed_and_warn():
    opts = sb.StoBatchOptions.original()
    assert (opts.noise_reuse, opts.noise_seed, opts.channel_shared_input_noise, opts.adv_input) == \
        ("global_once", 1024, True, "clean_no_noise")
    with pytest.warns(privacy.UnsafeSeedWarning):
        first = sb.prepare(sb.digits_network(), 600, opts)
    with pytest.warns(privacy.UnsafeSeedWarning):
        second = sb.prepare(sb.digits_network(), 600, opts)
    # anyone can regenerate it (the code seeds it with 1024; book/stobatch.md): the same draw, up to the scale
    # set by sigma_max at init
    torch.testing.assert_close(first.noise.x / first.budget.input_scale, second.noise.x / second.budget.input_scale)
    torch.testing.assert_close(first.noise.chi, second.noise.chi)
    with pytest.raises(ValueError, match="noise_reuse"):
        sb.StoBatchOptions(noise_reuse="always")


@pytest.fixture
def fresh_warnings():
    """Unsound modes warn once per process: forget which have warned, so that a test sees its warning."""
    guarantees._WARNED.clear()
    yield
    guarantees._WARNED.clear()


def test_original_variant_warns_and_the_default_is_sound(fresh_warnings):
    assert sb.unsound_modes(sb.StoBatchOptions()) == []
    assert sb.unsound_modes(sb.StoBatchOptions(), sb.digits_network(norm="group")) == []
    with pytest.warns(guarantees.UnsoundModeWarning) as caught:
        opts = sb.StoBatchOptions.original()
    warned = {str(w.message) for w in caught if issubclass(w.category, guarantees.UnsoundModeWarning)}
    assert any(m.startswith("variant='original'") for m in warned)
    assert any(m.startswith("noise_reuse='global_once'") for m in warned)
    assert any(m.startswith("delta_x_convention='unit'") for m in warned)
    reasons = sb.unsound_modes(opts)
    assert [r.split(" voids")[0] for r in reasons] == ["release='batch_shared'", "variant='original'",
                                                       "noise_reuse='global_once'", "delta_x_convention='unit'"]
    assert guarantees.record(reasons)["guarantee"] == "none"
    with pytest.warns(guarantees.UnsoundModeWarning, match="norm='batch'"):
        model = sb.digits_network(norm="batch")
    assert sb.unsound_modes(sb.StoBatchOptions(), model) == [guarantees.warn_unsound("norm='batch'")]


# ---------------------------------------------------------------------------------------------------
# 3. Output loss: Taylor identities and the functional mechanism
# ---------------------------------------------------------------------------------------------------
def test_code_form_of_the_taylor_loss_equals_the_polynomial():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(64, 10, generator=gen, dtype=torch.float64) * 3
    y = F.one_hot(torch.randint(0, 10, (64,), generator=gen), 10).double()
    code = torch.relu(z) - z * y + math.log(2) - z.abs() / 2 + z.abs() ** 2 / 8
    torch.testing.assert_close(sb.taylor_bce(z, y), code.sum(1), atol=1e-6, rtol=0)


def test_taylor_loss_is_within_the_fourth_order_remainder_of_the_exact_loss():
    gen = torch.Generator().manual_seed(5)
    z = (torch.rand(256, 10, generator=gen, dtype=torch.float64) * 2 - 1) * 0.5
    y = F.one_hot(torch.randint(0, 10, (256,), generator=gen), 10).double()
    exact = (y * torch.log1p(torch.exp(-z)) + (1 - y) * torch.log1p(torch.exp(z))).sum(1)
    torch.testing.assert_close(sb.exact_bce(z, y), exact)
    error = (sb.taylor_bce(z, y) - exact).abs()
    assert bool((error <= (z ** 4).sum(1) / 192 + 1e-12).all())
    # and the remainder is truly fourth order: (exact - taylor) / z^4 -> f''''(0) / 4! = -1/192
    for t in (1e-2, 2e-2):
        zz = torch.full((1, 1), t, dtype=torch.float64)
        for yy in (0.0, 1.0):
            yt = torch.full((1, 1), yy, dtype=torch.float64)
            ratio = float((sb.exact_bce(zz, yt) - sb.taylor_bce(zz, yt)) / t ** 4)
            assert ratio == pytest.approx(-1 / 192, rel=0.01)


def test_fm_term_is_the_perturbed_label_coefficient():
    gen = torch.Generator().manual_seed(6)
    m, hidden, k = 50, 8, 4
    h = torch.rand(m, hidden, generator=gen, dtype=torch.float64) * 2 - 1
    y = F.one_hot(torch.randint(0, k, (m,), generator=gen), k).double()
    w = torch.randn(k, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    chi = torch.randn(hidden, k, generator=gen, dtype=torch.float64)
    # gradient of the noise term in W is exactly -chi^T
    (grad,) = torch.autograd.grad(sb.fm_term(w, chi), w)
    assert torch.equal(grad, -chi.T)
    # the loss as a polynomial in W with the noisy label coefficient (1/m) sum_i y_i h_i^T + chi
    coefficient = h.T @ y / m + chi                                    # (hidden, K)
    z = h @ w.T
    polynomial = (math.log(2) + z / 2 + z ** 2 / 8).sum(1).mean() - (w.T * coefficient).sum()
    torch.testing.assert_close(sb.output_loss(z, y, w, chi), polynomial)
    # the code's variants
    torch.testing.assert_close(sb.fm_term(w, chi, form="abs_mean"), (chi * w.T).abs().mean())
    torch.testing.assert_close(sb.output_loss(z, y, w, chi * 0, taylor_on="probs"),
                               sb.taylor_bce(z.softmax(1), y).mean())


def test_xi_mixture_weights_the_adversarial_examples():
    gen = torch.Generator().manual_seed(7)
    z_b, z_a = torch.randn(2, 30, 5, generator=gen, dtype=torch.float64)
    y_b, y_a = (F.one_hot(torch.randint(0, 5, (30,), generator=gen), 5).double() for _ in range(2))
    w, chi = torch.zeros(5, 3, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    l_b, l_a = sb.output_loss(z_b, y_b, w, chi), sb.output_loss(z_a, y_a, w, chi)
    xi = 1.5
    assert float(sb.mix(l_b, l_a, xi)) == pytest.approx(float((l_b + xi * l_a) / (1 + xi)), rel=1e-12)
    # = a weighted mean over the joint batch, weight 1 for benign and xi for adversarial examples
    per_example = torch.cat([sb.taylor_bce(z_b, y_b), sb.taylor_bce(z_a, y_a)])
    weights = torch.cat([torch.ones(30), torch.full((30,), xi)]).double()
    assert float(sb.mix(l_b, l_a, xi)) == pytest.approx(float((weights * per_example).sum() / weights.sum()))


# ---------------------------------------------------------------------------------------------------
# 4. Auto-encoder loss
# ---------------------------------------------------------------------------------------------------
def test_decoder_is_the_adjoint_of_the_encoder():
    for first in (sb.digits_network().first, sb.mnist_network().first, tiny_rgb_network().first):
        a = conv_matrix(first)
        h = torch.randn(3, *first.latent_shape, dtype=torch.float64)
        r = first.double().decode(h)
        assert r.shape == (3, *first.input_shape)
        torch.testing.assert_close(r.reshape(3, -1), h.reshape(3, -1) @ a)


def test_autoencoder_loss_with_zero_weights_is_d_log_2():
    first = tiny_rgb_network().first
    with torch.no_grad():
        first.weight.zero_()
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    h = first(x)
    for form in ("paper_second_order", "paper_first_order"):
        loss = sb.autoencoder_loss(x, h, h, first, form=form).item()
        assert loss == pytest.approx(3 * 8 * 8 * math.log(2), rel=1e-6)


def test_autoencoder_loss_against_the_explicit_matrix_and_its_noise_terms():
    torch.manual_seed(8)
    first = tiny_rgb_network().first.double().requires_grad_(False)
    a = conv_matrix(first)                                                 # (beta C_out, d)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(6, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    n_x = torch.randn(1, 3, 8, 8, generator=gen, dtype=torch.float64) * 0.3
    n_h = torch.randn(1, *first.latent_shape, generator=gen, dtype=torch.float64) * 0.3
    x_bar = x + n_x
    h = (x_bar.reshape(6, -1) @ a.T).clamp(-1, 1)                          # clip(theta_1^T x_bar)
    h_bar = h + n_h.reshape(1, -1)
    r, r_bar = h @ a, h_bar @ a
    xb = x_bar.reshape(6, -1)
    paper = (math.log(2) + r_bar / 2 - xb * r + r ** 2 / 8).sum(1).mean()
    h_t, h_bar_t = first(x_bar), first(x_bar) + n_h
    torch.testing.assert_close(h_t.reshape(6, -1), h)
    torch.testing.assert_close(sb.autoencoder_loss(x_bar, h_t, h_bar_t, first), paper)
    first_order = (math.log(2) + r_bar / 2 - xb * r).sum(1).mean()
    torch.testing.assert_close(sb.autoencoder_loss(x_bar, h_t, h_bar_t, first, form="paper_first_order"), first_order)
    r_c = torch.relu(r_bar)
    code = (math.log(2) + r_c / 2 - xb * r_c).abs().sum(1).mean()
    torch.testing.assert_close(sb.autoencoder_loss(x_bar, h_t, h_bar_t, first, form="code_abs"), code)
    # x-noise enters only the x_bar coefficient: with h fixed, a change delta at coordinate j moves the
    # loss by -delta r_j / m, exactly (finite difference of a linear term)
    j, delta = 37, 0.25
    bumped = x_bar.clone().reshape(6, -1)
    bumped[2, j] += delta
    change = sb.autoencoder_loss(bumped.reshape(6, 3, 8, 8), h_t, h_bar_t, first) - \
        sb.autoencoder_loss(x_bar, h_t, h_bar_t, first)
    assert float(change) == pytest.approx(-delta * float(r[2, j]) / 6, rel=1e-9)
    # h-noise enters only the 1/2 h coefficient: the change is 1/2 sum_j (theta_1 n_h)_j
    no_h_noise = sb.autoencoder_loss(x_bar, h_t, h_t, first)
    assert float(sb.autoencoder_loss(x_bar, h_t, h_bar_t, first) - no_h_noise) == \
        pytest.approx(float((n_h.reshape(1, -1) @ a).sum() / 2), rel=1e-9)


def test_autoencoder_taylor_loss_approximates_the_exact_reconstruction_loss():
    first = tiny_rgb_network().first.double().requires_grad_(False)
    first.weight.mul_(0.2)
    x = torch.rand(8, 3, 8, 8, dtype=torch.float64)                 # targets in [0, 1]
    h = first(x)
    r = first.decode(h)
    exact = sb.exact_bce(r, x).mean()
    taylor = sb.autoencoder_loss(x, h, h, first)
    assert float((taylor - exact).abs()) <= float((r ** 4).flatten(1).sum(1).mean() / 192) + 1e-12
    assert float((r.abs()).max()) > 0.05  # not a trivially zero reconstruction


# ---------------------------------------------------------------------------------------------------
# 5. Stochastic batching
# ---------------------------------------------------------------------------------------------------
def test_partition_is_disjoint_and_covers_floor_n_over_m_batches():
    parts = sb.partition(1438, 200, seed=1024)
    assert parts.shape == (7, 200)
    flat = parts.flatten()
    assert len(torch.unique(flat)) == 1400 and int(flat.min()) >= 0 and int(flat.max()) < 1438
    assert torch.equal(parts, sb.partition(1438, 200, seed=1024))           # fixed once
    assert not torch.equal(parts, sb.partition(1438, 200, seed=1))
    with pytest.raises(ValueError, match="batch_size"):
        sb.partition(10, 11)


def uses_each_batch_once(schedule, n_batches):
    """The invariant: within an epoch, every batch id appears exactly once over both roles."""
    ids = torch.cat([torch.as_tensor(part).flatten() for part in schedule])
    return sorted(ids.tolist()) == list(range(n_batches))


def original_tin_schedule(n_batches, rng):
    """``next_super_batch(random=True)`` of the original TIN reader: it appends the position in the shrinking
    list of unused batches, not the batch id (``tinyimagenet_read.py``; book/stobatch.md)."""
    available, used = list(range(n_batches)), []
    while available:
        position = int(rng.integers(len(available)))
        used.append(position)          # the bug: should be available[position]
        del available[position]
    return (used,)


@pytest.mark.parametrize("trainers", [1, 2, 3])
def test_each_batch_serves_once_per_epoch_and_roles_differ(trainers):
    n_batches, gen = 12, torch.Generator().manual_seed(10)
    counts = torch.zeros(n_batches)
    for _ in range(200):
        benign, adversarial = sb.epoch_schedule(n_batches, trainers=trainers, generator=gen)
        assert benign.shape == adversarial.shape == (n_batches // (2 * trainers), trainers)
        assert uses_each_batch_once((benign, adversarial), n_batches)
        assert not bool((benign[:, :, None] == adversarial[:, None, :]).any())   # a step's roles differ
        counts += torch.bincount(benign.flatten(), minlength=n_batches)
    # each batch is benign in about half of the epochs
    assert float(counts.min()) > 70 and float(counts.max()) < 130
    # with a remainder, a batch serves at most once and the unused ones vary
    benign, adversarial = sb.epoch_schedule(7, trainers=1, generator=gen)
    ids = torch.cat([benign.flatten(), adversarial.flatten()])
    assert len(ids) == 6 and len(torch.unique(ids)) == 6
    with pytest.raises(ValueError, match="at least"):
        sb.epoch_schedule(3, trainers=2)


def test_regression_original_batch_sampling_bug_is_caught():
    rng = np.random.default_rng(0)
    n_batches = 20
    # the invariant detects the original's bug: positions repeat and high ids are never drawn ...
    buggy = [original_tin_schedule(n_batches, rng) for _ in range(50)]
    assert not any(uses_each_batch_once(s, n_batches) for s in buggy)
    counts = np.bincount(np.concatenate([s[0] for s in buggy]), minlength=n_batches)
    assert counts[0] > 5 * max(counts[-1], 1)
    # ... and ours satisfies it
    gen = torch.Generator().manual_seed(11)
    assert all(uses_each_batch_once(sb.epoch_schedule(n_batches, generator=gen), n_batches) for _ in range(50))


def test_train_step_uses_the_noise_of_each_batch():
    """Each trainer's loss takes its benign batch's noise and its adversarial source's noise."""
    model = sb.digits_network()
    opts = PAPER(batch_size=50, attack_steps=1)
    run = sb.prepare(model, 300, opts, generator=seeded(12))
    seen = []
    original = sb.batch_pair_loss

    def spy(model, x, y, x_source, y_source, noise, noise_source, options, **kw):
        seen.append((noise.x, noise_source.x, x, x_source))
        return original(model, x, y, x_source, y_source, noise, noise_source, options, **kw)

    x, y = torch.rand(300, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (300,))
    sb.batch_pair_loss = spy
    try:
        sb.train_step(model, sb.make_optimizers(model, opts), run, x, y, torch.tensor([4, 1]), torch.tensor([0, 5]))
    finally:
        sb.batch_pair_loss = original
    for (nx, nxs, xb, xs), b, a in zip(seen, (4, 1), (0, 5)):
        assert torch.equal(nx, run.noise.x[b:b + 1]) and torch.equal(nxs, run.noise.x[a:a + 1])
        assert torch.equal(xb, x[run.partition[b]]) and torch.equal(xs, x[run.partition[a]])


def test_micro_batches_accumulate_the_full_batch_gradient():
    x, y = torch.rand(60, 3, 8, 8) * 2 - 1, torch.randint(0, 3, (60,))
    grads = []
    for k in (1, 3):
        torch.manual_seed(14)
        model = tiny_rgb_network()   # no BatchNorm; mu_max = 0 makes the attacks the identity
        opts = PAPER(batch_size=20, micro_batches=k, mu_max=0.0, train_theta1_with_cls_loss=True,
                                  epsilon_autoencoder=1e4, epsilon2=1e4)
        run = sb.prepare(model, 60, opts, generator=seeded(15))
        sb.train_step(model, [], run, x, y, torch.tensor([2]), torch.tensor([0]))
        grads.append([p.grad.clone() for p in model.parameters()])
    for full, accumulated in zip(*grads):
        torch.testing.assert_close(accumulated, full, atol=1e-5, rtol=1e-4)


def test_theta1_is_trained_by_the_autoencoder_loss_only():
    x, y = torch.rand(60, 3, 8, 8) * 2 - 1, torch.randint(0, 3, (60,))
    torch.manual_seed(16)
    model = tiny_rgb_network()
    opts = PAPER(batch_size=20, mu_max=0.0, epsilon_autoencoder=1e4, epsilon2=1e4)  # h not saturated
    run = sb.prepare(model, 60, opts, generator=seeded(17))
    sb.train_step(model, [], run, x, y, torch.tensor([1]), torch.tensor([2]))
    got = model.first.weight.grad.clone()
    model.zero_grad()
    # mu = 0: the adversarial examples are the noisy source batch itself
    benign = sb.dp_layers(model, x[run.partition[1]], run.noise[1])
    source = sb.dp_layers(model, x[run.partition[2]] + run.noise[2].x, run.noise[2], input_noise=False)
    ae = [sb.autoencoder_loss(*parts, model.first) for parts in (benign, source)]
    ((ae[0] + 1.5 * ae[1]) / 2.5).backward()
    torch.testing.assert_close(got, model.first.weight.grad)


def test_crafting_never_sees_labels_and_stays_in_the_ball(monkeypatch):
    model = tiny_rgb_network().eval()
    calls = []
    original = attacks.iterative

    def spy(model, x, **kw):
        calls.append(kw.get("y"))
        return original(model, x, **kw)

    monkeypatch.setattr(attacks, "iterative", spy)
    x = torch.rand(9, 3, 8, 8) * 2 - 1
    x_adv, mu = sb.craft_adversarial(model, x, mu_max=0.3, steps=2, clip=(-1.0, 1.0),
                                     generator=torch.Generator().manual_seed(13))
    assert len(calls) == 3 and all(y is None for y in calls)      # one call per attack, no labels
    assert 0 <= mu <= 0.3 and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= mu + 1e-6 and float(x_adv.abs().max()) <= 1.0
    x_same, _ = sb.craft_adversarial(model, x, mu_max=0.0, steps=2, clip=(-1.0, 1.0))
    torch.testing.assert_close(x_same, x)


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, shape, latent, classes", [
    (sb.digits_network, (1, 8, 8), (16, 4, 4), 10),
    (sb.mnist_network, (1, 28, 28), (32, 14, 14), 10),
    (sb.cifar10_network, (3, 28, 28), (128, 14, 14), 10),
    (sb.resnet18_network, (3, 64, 64), (64, 32, 32), 30),
])
def test_networks_shapes_and_clipped_last_hidden_layer(build, shape, latent, classes):
    torch.manual_seed(0)
    model = build().eval()
    assert model.first.input_shape == shape and model.first.latent_shape == latent
    x = torch.rand(2, *shape) * 2 - 1
    assert model(x).shape == (2, classes)
    assert model.first(x).shape == (2, *latent)
    with torch.no_grad():
        h_pi = model.rest[0](model.first(x) * 50)
    assert float(h_pi.abs().max()) <= 1.0 and model.head.bias is None


def test_resnet18_surgery():
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    conv1 = resnet.conv1.weight.detach().clone()
    model = sb.resnet18_network(resnet=resnet)
    assert torch.equal(model.first.weight.detach(), conv1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert resnet.layer2[0].conv1.stride == (1, 1) and resnet.layer3[0].conv1.stride == (2, 2)
    with torch.no_grad():
        features = model.rest[0][:7](model.first(torch.zeros(1, 3, 64, 64)))   # up to layer4
    assert features.shape == (1, 512, 8, 8)


# ---------------------------------------------------------------------------------------------------
# 11. End-to-end smoke training on digits
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train", scale="symmetric"), data.load("digits", "test", scale="symmetric")


def train_digits(digits, options, *, epochs, seed=0):
    train, test = digits
    torch.manual_seed(seed)
    model = sb.digits_network()
    run = sb.prepare(model, len(train.x), options, generator=seeded(seed))
    optimizers = sb.make_optimizers(model, options)
    schedule, attack = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        report = sb.train_epoch(model, optimizers, run, train.x, train.y, schedule_generator=schedule,
                                attack_generator=attack)
    model.eval()
    noisy = sb.noisy_network(model, run.budget, generator=seeded(seed + 2))
    counts = robustness.monte_carlo_counts(noisy, test.x, n_draws=50, n_classes=10)
    bounds = robustness.vote_bounds(counts)
    correct = bounds.prediction == test.y.numpy()
    radius = robustness.composed_radius(bounds, sb.laplace_composition(model, input_scale=run.budget.input_scale,
                                                                           latent_scale=run.budget.latent_scale))
    return report, float(correct.mean()), robustness.certified_accuracy(correct, radius, np.array([0.0, 0.02, 0.1]))


def test_smoke_training_learns_and_logs_the_configured_budget(digits):
    loose = PAPER(epsilon_autoencoder=5e5, epsilon2=5e5, attack_steps=3)
    report, accuracy, certified = train_digits(digits, loose, epochs=15)
    assert report["epsilon"] == pytest.approx(1e6, rel=1e-9)      # from the accountant's arithmetic
    assert report["steps"] == 3 and report["sigma_max_seen"] <= report["sigma_bound"] * (1 + 1e-5)
    assert accuracy >= 0.9                                       # negligible noise: near the non-private net
    assert certified[0] >= 0.8 * accuracy                        # near-deterministic votes: certified at radius 0
    # eps = 8 with the paper's accounting (Delta_x = 1), fresh noise at inference: above chance, below the
    # noiseless run (at eps = 1 the accuracy under fresh noise is at chance)
    private = PAPER(epsilon_autoencoder=4.0, epsilon2=4.0, delta_x_convention="unit", attack_steps=3)
    report, private_accuracy, certified = train_digits(digits, private, epochs=15)
    assert report["epsilon"] == pytest.approx(8.0, rel=1e-12)
    assert report["epsilon1"] + report["epsilon1/gamma_x"] + report["epsilon1/gamma"] == pytest.approx(4.0)
    assert 0.2 < private_accuracy < accuracy - 0.1


def test_original_mode_leans_on_its_fixed_noise(digits):
    """The code's single noise draw is a fixed offset the network learns around: with that draw
    the test accuracy is high, without it (or with fresh noise) it collapses."""
    train, test = digits
    torch.manual_seed(0)
    model = sb.digits_network()
    opts = sb.StoBatchOptions.original(epsilon_autoencoder=4.0, epsilon2=4.0, attack_steps=3)
    with pytest.warns(privacy.UnsafeSeedWarning):
        run = sb.prepare(model, len(train.x), opts)
    optimizers = sb.make_optimizers(model, opts)
    for _ in range(15):
        sb.train_epoch(model, optimizers, run, train.x, train.y, schedule_generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        with_draw = (model(test.x, run.noise[0].x, run.noise[0].h).argmax(1) == test.y).float().mean()
        without = (model(test.x).argmax(1) == test.y).float().mean()
    assert float(with_draw) > 0.7 and float(without) < float(with_draw) - 0.3
