"""The stobatch experiment (StoBatch and its baselines), its evaluation and baselines, resume and torchrun."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpbook import baselines, data, evaluation, experiments, persample, privacy
from dpbook import stobatch as sb

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", experiments.STOBATCH_METHODS)
def test_each_method_trains_on_digits_and_reports_both_accuracies(tmp_path, method):
    epochs = 3 if method in ("stobatch", "securesgd") else 12  # Adam baselines: 6 steps per epoch on digits
    result = experiments.run("stobatch", results=str(tmp_path), method=method, epochs=epochs)
    m = result["metrics"]
    rows = m["evaluation"]["fresh"]["rows"]
    assert [r["attack"] for r in rows] == ["none", "fgsm", "pgd"]
    for r in rows:
        assert (r["certified"] is None) == (method == "nonprivate")  # no noise, no certificate
    if method in ("nonprivate", "pixeldp"):
        assert m["epsilon"] is None and m["test_accuracy"] > 0.5  # chance 0.1 (digits, 72 Adam steps)
    else:
        assert m["epsilon"] == pytest.approx(8.0 if method == "stobatch" else 2.0, rel=1e-3)
    if method == "stobatch":  # the sound default: DP-SGD above a public auto-encoder, replace-one
        p = m["privacy"]
        parts = sb.Parts(dpsgd_multiplier=p["dpsgd_multiplier"], steps=p["dpsgd_steps"], batch_size=100,
                         dataset_size=round(100 / p["dpsgd_sample_rate"]))
        assert p["relation"] == "replace-one" and p["epsilon"] <= 8.0
        assert sb.accounting.epsilon(parts, delta=p["delta"]) == pytest.approx(p["epsilon"])
        curves = m["certified_curves"]
        assert curves["curves"] and all(max(c["l2"]) <= curves["clean_accuracy"] for c in curves["curves"].values())
    if method == "pixeldp":
        assert "PixelDP Laplace (l1)" in m["certified_curves"]["curves"]


def test_original_variant_is_evaluated_with_both_protocols(tmp_path):
    result = experiments.run("stobatch", results=str(tmp_path), variant="original", norm="batch", epochs=3)
    m = result["metrics"]
    assert list(m["evaluation"]) == ["original", "fresh"] and m["main_protocol"] == "original"
    assert m["options"]["noise_reuse"] == "global_once" and m["options"]["delta_x_convention"] == "unit"
    # the fixed training noise is what the network learned to live with; fresh noise at that scale is not
    assert m["evaluation"]["original"]["rows"][0]["conventional"] > m["evaluation"]["fresh"]["rows"][0]["conventional"]


def test_switch_settings_override_the_variant():
    cfg = experiments.settings("stobatch", variant="original", noise_reuse="per_batch", delta_x_convention="l1")
    options = experiments.stobatch_options(cfg, trainers=1)
    assert options.noise_reuse == "per_batch" and options.delta_x_convention == "l1"
    assert options.fm_noise_form == "abs_mean"  # the other switches stay the original's
    paper = experiments.stobatch_options(experiments.settings("stobatch", dataset="mnist",
                                                               hyperparameters="paper"), trainers=1)
    assert (paper.batch_size, paper.xi, paper.attack_steps) == (2499, 1.0, 100)
    assert paper.epsilon_autoencoder == cfg.epsilon_autoencoder  # the budget stays the settings'
    with pytest.raises(ValueError, match="variant"):
        experiments.stobatch_options(experiments.settings("stobatch", variant="faithful"), trainers=1)


def test_settings_set_explicitly_against_the_paper_hyperparameters_are_refused():
    """``hyperparameters="paper"`` fills in the original code's values; a batch size, attack steps or learning
    rate the caller set to something else (keyword or ``--batch-size``) stops the run instead of being replaced
    silently (and is not kept either: two runs would share a result key)."""
    with pytest.raises(ValueError, match=r"batch_size=64 \(the paper's: 2499\).*attack_steps=2.*preset"):
        experiments.stobatch_options(experiments.settings("stobatch", dataset="mnist", hyperparameters="paper",
                                                          batch_size=64, attack_steps=2), trainers=1)
    same = experiments.settings("stobatch", dataset="mnist", hyperparameters="paper", batch_size=2499)
    assert experiments.stobatch_options(same, trainers=1).batch_size == 2499  # agreeing with the paper is fine
    # a profile's own preset values are not set by the caller: the paper's replace them (smoke: batch 100)
    smoke = experiments.settings("stobatch", profile_name="smoke", dataset="mnist", hyperparameters="paper")
    options = experiments.stobatch_options(smoke, trainers=1)
    assert (options.batch_size, smoke.batch_size, options.xi, options.mu_max) == (2499, 100, 1.0, 1.0)


@pytest.mark.parametrize("design", [dict(variant="paper"), dict(inputs="released", labels="randomized_response")])
def test_interrupted_stobatch_run_resumes_with_its_noise_which_does_not_outlive_the_run(tmp_path, monkeypatch, design):
    key = "noise" if design.get("variant") == "paper" else "release"
    with pytest.raises(experiments.Interrupted):
        experiments.run("stobatch", results=str(tmp_path), epochs=2, stop_after_epoch=1, **design)
    (ckpt,) = (tmp_path / "stobatch").glob("*.ckpt")
    noise = torch.load(ckpt, weights_only=False)[key]
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    resumed = experiments.run("stobatch", results=str(tmp_path), epochs=2, resume=True, **design)
    assert resumed["resumed_from_epoch"] == 1 and [h["epoch"] for h in resumed["metrics"]["history"]] == [1, 2]
    kept = next(s[key] for s in seen if isinstance(s, dict) and key in s and s.get("epoch") == 2)
    for k in noise:  # the OS-seeded noise of the first epoch is kept, not redrawn
        assert (noise[k] is None and kept[k] is None) or torch.equal(noise[k], kept[k])
    final = real(ckpt, weights_only=False)
    assert final["epoch"] == 2 and "model" in final and key not in final  # gone once training ended


def test_torchrun_launches_the_experiment_with_two_trainers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DPBOOK_PROFILE": "smoke"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dpbook",
           "run", "stobatch", "--epochs", "1", "--n-test", "20", "--results", str(tmp_path), "--inputs", "released",
           "--labels", "randomized_response"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = (tmp_path / "stobatch").glob("*.json")  # one result, written by rank 0
    import json

    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["trainers"] == 2 and metrics["history"][0]["epoch"] == 1


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------
def test_evaluation_of_a_deterministic_model_votes_once_and_certifies_nothing():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(30, 1, 4, 4) * 2 - 1
    y = net(x).argmax(1)  # labels = the model's predictions: clean accuracy 1
    calls = []
    dep = evaluation.Deployed(predict=lambda z: calls.append(len(z)) or net(z), n_classes=3, deterministic=True)
    counts = evaluation.votes(dep, x, n_draws=100)
    assert counts.sum(1).eq(1).all() and calls == [30]
    rows = evaluation.evaluate(dep, x, y, attack_names=("fgsm",), sizes=(0.0, 0.5), n_draws=100)
    assert rows[0]["conventional"] == 1.0 and rows[0]["certified"] is None
    assert rows[2]["conventional"] == 1.0  # an attack of size 0 changes nothing
    assert rows[3]["conventional"] < 0.9   # FGSM of size 0.5 flips predictions of a linear model
    avg = evaluation.average_over_attacks(rows)
    assert set(avg) == {0.0, 0.5} and avg[0.5]["certified"] is None


def test_certified_accuracy_counts_only_correct_points():
    dep = evaluation.Deployed(predict=lambda z: torch.eye(3)[torch.zeros(len(z), dtype=torch.long)], n_classes=3,
                              certify=lambda bounds, mu: np.ones(len(bounds.prediction), bool))
    x, y = torch.zeros(4, 2), torch.tensor([0, 0, 1, 2])
    (row,) = evaluation.evaluate(dep, x, y, attack_names=(), sizes=(0.1,), n_draws=10)
    assert row["conventional"] == row["certified"] == 0.5


# ---------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------
def test_packed_noise_per_example_gradients_are_those_of_each_example_with_its_noise():
    torch.manual_seed(0)
    model = sb.digits_network(norm="group")
    r = torch.rand(model.first.latent_shape) + 0.5
    packed = baselines.PackedNoise(model, r)
    x, y = torch.rand(5, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (5,))
    z = baselines.pack(x, model.first.latent_shape, sigma=0.7, generator=torch.Generator().manual_seed(1))
    grads = persample.per_sample_gradients(packed, z, y)
    n = z[:, 64:].view(5, *model.first.latent_shape)
    for i in (0, 3):
        model.zero_grad()
        F.cross_entropy(model.rest(model.first(x[i:i + 1]) + r.sqrt() * n[i:i + 1]), y[i:i + 1]).backward()
        torch.testing.assert_close(grads["model.first.weight"][i], model.first.weight.grad)


def test_redistribution_is_normalised_and_floored():
    torch.manual_seed(0)
    model = sb.digits_network(norm="group")
    x, y = torch.rand(64, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (64,))
    r = baselines.redistribution(model, x, y, floor=0.2)
    assert r.shape == model.first.latent_shape
    assert float(r.mean()) == pytest.approx(1.0) and float(r.min()) >= 0.2 / (1 + 1e-6) * 0.99


def test_hgm_sigma_is_the_extended_gaussian_at_the_bound_and_conv_sensitivity_bounds_the_operator():
    assert baselines.hgm_sigma(epsilon_r=4.0, delta_r=0.05, bound=0.2, sensitivity=3.0) == pytest.approx(
        privacy.extended_gaussian_sigma(epsilon=4.0, delta=0.05, sensitivity=0.6))
    torch.manual_seed(0)
    first = sb.mnist_network().first.requires_grad_(False)
    bound = baselines.conv_l2_sensitivity(first)
    worst = 0.0
    for _ in range(20):  # power iteration on the convolution's operator norm from random starts
        v = torch.randn(1, *first.input_shape)
        for _ in range(30):
            v = first.decode(F.conv2d(v, first.weight, stride=first.stride, padding=first.padding))
            v = v / v.norm()
        worst = max(worst, float(F.conv2d(v, first.weight, stride=first.stride, padding=first.padding).norm()))
    assert worst <= bound * (1 + 1e-5)


def test_original_predictor_uses_batch_statistics_without_changing_them():
    torch.manual_seed(0)
    model = sb.digits_network(norm="batch")
    train = data.load("digits", "train", scale="symmetric")
    run = sb.prepare(model, len(train), sb.StoBatchOptions(release="batch_shared", batch_size=100,
                                                           epsilon_autoencoder=8.0, epsilon2=8.0))
    before = [b.clone() for b in sb.running_buffers(model)]
    model.eval()
    predict = sb.original_predictor(model, run)
    x = train.x[:50].clone().requires_grad_(True)
    out = predict(x)
    out.sum().backward()  # differentiable: the original's attacks go through it
    assert x.grad is not None and out.shape == (50, 10)
    for a, b in zip(before, sb.running_buffers(model)):
        assert torch.equal(a, b)
    assert not any(m.training for m in model.modules())


def test_network_for_picks_the_code_network_and_norm():
    assert isinstance(sb.network_for((1, 28, 28), 10, norm="group").rest[0][2], torch.nn.GroupNorm)
    assert sb.network_for((3, 28, 28), 10).first.latent_shape == (128, 14, 14)
    with pytest.raises(ValueError, match="no StoBatch network"):
        sb.network_for((3, 32, 32), 10)
    with pytest.raises(ValueError, match="BatchNorm"):
        sb.network_for((3, 64, 64), 30, norm="group")


def test_group_norm_networks_have_no_batch_coupling():
    torch.manual_seed(0)
    model = sb.mnist_network(norm="group").train()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    alone = model(x[:1])
    together = model(x)[:1]
    torch.testing.assert_close(alone, together)  # one example's output does not depend on its batch
    assert math.isfinite(float(alone.detach().sum()))


def test_pretrained_resnet_asks_torchvision_for_imagenet_weights(monkeypatch):
    import torchvision

    asked = {}
    real = torchvision.models.resnet18

    def fake(weights=None):  # never download in a test: record the request, build random weights
        asked["weights"] = weights
        return real(weights=None)

    monkeypatch.setattr(torchvision.models, "resnet18", fake)
    net = sb.network_for((3, 64, 64), 30, pretrained=True)
    assert asked["weights"] == torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert net.first.latent_shape == (64, 32, 32)
    assert isinstance(sb.network_for((1, 28, 28), 10, pretrained=True), sb.StoBatchNet)  # no weights to load there


def test_design_search_chooses_on_validation_and_reruns_the_choice_at_fresh_seeds(tmp_path):
    from dpbook.experiments import stobatch_designs

    result = experiments.run("stobatch_designs", results=str(tmp_path))
    (cell,) = result["metrics"]["cells"]
    validation = [g["validation_accuracy"] for g in cell["grid"]]
    assert cell["chosen"] == cell["grid"][int(np.argmax(validation))]["design"]
    assert all(g["epsilon"] == pytest.approx(cell["epsilon"], rel=1e-3) for g in cell["grid"])  # each spends its budget
    assert cell["seeds"] == [1, 2] and cell["interval"]["n"] == 2
    seed_runs = [json_of(tmp_path, h) for h in cell["seed_config_hashes"]]
    assert [r["config"]["seed"] for r in seed_runs] == [1, 2] and all(r["config"]["test"] for r in seed_runs)
    grid_runs = [json_of(tmp_path, g["config_hash"]) for g in cell["grid"]]
    assert all("test_accuracy" not in r["metrics"] for r in grid_runs)  # the search never reads the test set
    assert set(stobatch_designs.design_settings(cell["chosen"], 8.0)) >= {"inputs", "labels", "epsilon2"}


def json_of(root, config_hash):
    import json

    return json.loads((root / "stobatch" / f"{config_hash}.json").read_text())
