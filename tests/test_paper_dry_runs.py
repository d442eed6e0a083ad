"""Dry runs of every experiment of the ``paper`` profile on the CPU, through the real code path.

Each test writes fake data files (:mod:`dpbook.data.fake`) in the dataset's own on-disk format at its real
image size (MNIST idx files 28x28, CIFAR-10 pickled batches 3x32x32, CIFAR-100's for GEP's public anchors,
SVHN ``.mat`` files with ``extra``, the Tiny ImageNet folder of 64x64 JPEGs), points ``$DPBOOK_DATA`` at them and calls
``experiments.run(name, profile="paper", ...)`` with the paper's settings and networks (ResNet20-GN with
k = 1,000 bases for GEP on CIFAR-10, LeNet-5 for Shredder, the StoBatch networks with
``hyperparameters="paper"``, ResNet-18 "from ImageNet weights" for Tiny ImageNet).
Only sizes shrink: the number of examples (public, validation, private, test), epochs and steps, attack
iterations, Monte-Carlo votes and audit repeats. Where the paper's batch size cannot shrink through a setting
(StoBatch's ``hyperparameters="paper"`` takes it from ``stobatch.PAPER_SETTINGS``), the test shrinks that
table's batch size, attack steps and micro-batches, and nothing else in it.

``experiments.run(..., profile="paper")`` makes ``paper`` the active profile while the experiment runs, so the
settings it reads from other experiments are the paper's too
(:func:`test_audit_profile_argument_reaches_the_gep_settings_it_audits`, under an active ``smoke`` profile).

``gep_tuning``, ``shredder_attacks`` and ``stobatch_designs`` run other experiments with the profile's own
settings, which no override of theirs reaches: their tests shrink the size entries of the inner experiment's
``paper`` preset (:func:`shrink_paper_preset`, sizes only) and run small grids.
"""
import json
from types import SimpleNamespace

import pytest
import torch

from dpbook import config, data, experiments, gep, guarantees, privacy, stats
from dpbook import stobatch as sb
from dpbook.data.fake import write_cifar10, write_cifar100, write_mnist, write_svhn, write_tinyimagenet

# ---------------------------------------------------------------------------------------------------------
# Fixtures and spies (they record what the experiment builds; they change nothing)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def paper(tmp_path, monkeypatch):
    """Data folder and results folder in ``tmp_path``; the ``paper`` profile active, as the command line's
    ``--profile paper`` makes it; no system copy of Fashion-MNIST."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DPBOOK_DATA", str(root))
    monkeypatch.setenv("DPBOOK_PROFILE", "paper")
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")
    monkeypatch.setattr(guarantees, "_WARNED", set())  # unsound modes warn once per process: not across tests
    return SimpleNamespace(data=root, results=tmp_path / "results", monkeypatch=monkeypatch)


def result_file(paper, result):
    """The results file of ``result``, read back: it must exist and hold what ``run`` returned."""
    path = paper.results / result["experiment"] / f"{result['config_hash']}.json"
    assert path.exists()
    stored = json.loads(path.read_text())
    assert stored["config_hash"] == result["config_hash"] and stored["environment"]["profile"] == "paper"
    return stored


def spy_gep_engines(monkeypatch) -> list:
    made = []

    class Recorded(gep.GEP):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(gep, "GEP", Recorded)
    return made


def spy_stobatch_networks(monkeypatch) -> SimpleNamespace:
    """Records (input shape, classes, pretrained, network) of each ``stobatch.network_for`` call; torchvision's
    ResNet-18 never downloads: the ImageNet weights it is asked for are recorded, the weights stay random (as
    tests/test_stobatch_experiment.py::test_pretrained_resnet_asks_torchvision_for_imagenet_weights)."""
    import torchvision

    made, real_network_for, real_resnet18 = [], sb.network_for, torchvision.models.resnet18

    def network_for(input_shape, n_classes, **kwargs):
        net = real_network_for(input_shape, n_classes, **kwargs)
        made.append(SimpleNamespace(input_shape=tuple(input_shape), n_classes=n_classes,
                                    pretrained=kwargs.get("pretrained", False), net=net))
        return net

    def resnet18(weights=None):
        asked.append(weights)
        return real_resnet18(weights=None)

    asked: list = []
    monkeypatch.setattr(sb, "network_for", network_for)
    monkeypatch.setattr(torchvision.models, "resnet18", resnet18)
    return SimpleNamespace(networks=made, weights=asked)


def shrink_paper_hyperparameters(monkeypatch, dataset: str, **sizes) -> dict:
    """``stobatch.PAPER_SETTINGS[dataset]`` with ``sizes`` (batch size, attack steps, micro-batches) replaced;
    returns the original entry."""
    original = dict(sb.PAPER_SETTINGS[dataset])
    assert set(sizes) <= {"batch_size", "attack_steps", "micro_batches"}
    monkeypatch.setitem(sb.PAPER_SETTINGS, dataset, {**original, **sizes})
    return original


#: the settings a dry run may shrink: numbers of examples, epochs, steps, runs, votes and draws
SIZES = {"public", "validation", "max_train", "batch_size", "epochs", "base_epochs", "min_epochs", "pool_size",
         "max_runs", "mi_samples", "mi_seeds", "adversary_epochs", "autoencoder_epochs", "n_validation",
         "validation_draws", "n_test", "n_draws", "test_attack_steps", "eot", "eot_study", "eot_points"}


def shrink_paper_preset(monkeypatch, name: str, **sizes) -> None:
    """The ``paper`` entry of ``PRESETS[name]`` with ``sizes`` replaced, for the experiments that run ``name``
    inside them with the profile's own settings (no override of theirs reaches those)."""
    from dpbook.presets import PRESETS

    assert set(sizes) <= SIZES, set(sizes) - SIZES
    monkeypatch.setitem(PRESETS[name], "paper", {**PRESETS[name]["paper"], **sizes})


def n_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# GEP: CIFAR-10 (the paper profile) and SVHN with extra (the paper's other colour setup)
# ---------------------------------------------------------------------------------------------------------


def test_gep_cifar10_paper_profile_one_step_with_resnet20_and_1000_bases(paper, monkeypatch):
    s = config.settings("gep", profile_name="paper")
    assert (s.dataset, s.model, s.n_bases, s.n_groups, s.epsilon) == ("cifar10", "auto", 1000, 3, 8.0)
    assert s.public_source == "cifar100"  # out of distribution, as the paper's ImageNet anchors
    public, validation, private, batch = 340, 20, 80, 64  # 340 anchors: every group keeps its 333 bases
    write_cifar10(paper.data, validation + private, 20)  # no training example is held out as public
    write_cifar100(paper.data, 10, public + 5)  # the anchors: the first CIFAR-100 test images
    engines = spy_gep_engines(monkeypatch)

    result = experiments.run("gep", profile="paper", results=str(paper.results), epochs=1, public=public,
                             validation=validation, batch_size=batch)

    m, (engine,) = result["metrics"], engines
    assert result["config"]["dataset"] == "cifar10" and result["config"]["n_bases"] == 1000
    assert m["model"] == "resnet20-gn" and n_parameters(engine.model) == 268_346
    assert engine.budgets == [333, 333, 333]  # k = 1,000 split by sqrt(p_g), as the paper's
    assert [tuple(b.shape) for b in engine.bases] == [(89_448, 333), (89_448, 333), (89_450, 333)]
    anchors = data.rescale(data.load("cifar100", "test").x[:public], "cifar10", s.scale)
    assert torch.equal(engine.public_x.cpu(), anchors)
    assert m["steps"] == engine.steps == 1 and m["sample_rate"] == pytest.approx(batch / private)  # all private
    assert 7.9 < m["epsilon"] <= s.epsilon + 1e-6 and m["epsilon"] == engine.epsilon()
    assert m["guarantee"] == "as stated" and 0.0 <= m["test_accuracy"] <= 1.0
    assert result_file(paper, result)["metrics"]["epsilon"] == m["epsilon"]


def test_gep_svhn_with_extra_paper_setup_one_step(paper, monkeypatch):
    setup = gep.PAPER_SETUPS["svhn"]  # train + extra as private data, delta 1e-6
    public, validation, train, extra, batch = 100, 20, 100, 60, 112  # 140 private examples: one step
    write_svhn(paper.data, {"train": train, "extra": extra, "test": 20})
    write_cifar100(paper.data, 10, public)  # the paper profile's anchors for SVHN too
    engines = spy_gep_engines(monkeypatch)

    result = experiments.run("gep", profile="paper", results=str(paper.results), dataset="svhn", extra=True,
                             delta=setup["delta"], epochs=1, public=public, validation=validation, batch_size=batch)

    m, (engine,) = result["metrics"], engines
    n = train - validation + extra  # CIFAR-100 anchors: no training example held out as public
    assert m["model"] == "resnet20-gn" and n_parameters(engine.model) == 268_346
    assert tuple(engine.public_x.shape) == (public, 3, 32, 32)
    assert engine.budgets == [public] * 3  # k = 1,000 asks 333 per group; 100 anchors span at most 100
    assert m["sample_rate"] == pytest.approx(batch / n) and m["steps"] == engine.steps == 1
    assert engine.accountant.delta == setup["delta"]
    assert 7.9 < m["epsilon"] <= 8.0 + 1e-6
    result_file(paper, result)


def test_gep_tuning_paper_profile_shrunk_grid(paper):
    """The tuning orchestration (grid on validation, the choice at fresh seeds, intervals) over ``gep`` runs
    of the paper profile: 2 methods x 1 grid point, 2 seeds each, one step per run."""
    public, validation, private, batch = 40, 20, 80, 64
    shrink_paper_preset(paper.monkeypatch, "gep", public=public, validation=validation, batch_size=batch)
    write_cifar10(paper.data, validation + private, 20)
    write_cifar100(paper.data, 10, public)

    result = experiments.run("gep_tuning", profile="paper", results=str(paper.results), epsilons=(8.0,),
                             methods=("dpsgd", "gep"), lrs=(0.1,), clips=(2.0,), seeds=2, epochs=1)

    m = result["metrics"]
    assert (m["gep_settings"]["dataset"], m["gep_settings"]["model"], m["gep_settings"]["n_bases"]) == (
        "cifar10", "auto", 1000)
    assert [c["method"] for c in m["cells"]] == ["dpsgd", "gep"] and m["runs"] == 2 * (1 + 2)
    for cell in m["cells"]:
        assert len(cell["grid"]) == 1 and cell["chosen_index"] == 0 and cell["seeds"] == [1, 2]
        assert len(cell["test_accuracy"]) == 2 and 7.9 < cell["epsilon_per_run"] <= 8.0 + 1e-6
    runs = [json.loads(f.read_text()) for f in (paper.results / "gep").glob("*.json")]
    assert len(runs) == 6 and all(r["metrics"]["model"] == "resnet20-gn" for r in runs)
    assert sorted(r["config"]["seed"] for r in runs) == [0, 0, 1, 1, 2, 2]
    result_file(paper, result)


def test_gep_public_data_paper_profile_cifar100_against_heldout(paper):
    """GEP at the tuned point with the paper profile's CIFAR-100 anchors (the tuning's own seed runs, reloaded)
    and with held-out CIFAR-10 anchors (new runs, the public examples cut from the private ones): a one-point
    tuning grid, 2 seeds, one epoch (one or two steps) per run."""
    from dpbook.presets import PRESETS

    public, validation, private, batch = 40, 20, 110, 64  # held out: 70 private examples, still > batch
    s = config.settings("gep_public_data", profile_name="paper")
    assert (s.in_distribution, s.out_of_distribution) == ("heldout", "cifar100")
    shrink_paper_preset(paper.monkeypatch, "gep", public=public, validation=validation, batch_size=batch)
    # the grid and the seeds are the tuning's preset (the experiment reads it): one point, two seeds, one epoch
    paper.monkeypatch.setitem(PRESETS["gep_tuning"], "paper", dict(
        epsilons=(8.0,), methods=("dpsgd", "gep"), lrs=(0.1,), clips=(2.0,), seeds=2, epochs=1))
    write_cifar10(paper.data, validation + private, 20)
    write_cifar100(paper.data, 10, public)

    result = experiments.run("gep_public_data", profile="paper", results=str(paper.results), epsilons=(8.0,))

    (cell,) = result["metrics"]["cells"]
    inside, outside = cell["in_distribution"], cell["out_of_distribution"]
    assert result["metrics"]["tuned_with"] == "cifar100" and outside["reused_from_tuning"]
    assert not inside["reused_from_tuning"] and inside["public_source"] == "heldout"
    assert outside["private_examples"] == [private] * 2 and inside["private_examples"] == [private - public] * 2
    runs = {r["config_hash"]: r for r in (json.loads(f.read_text()) for f in (paper.results / "gep").glob("*.json"))}
    assert len(runs) == 2 * (1 + 2) + 2  # the tuning's six runs and the two held-out seeds
    assert [runs[h]["config"]["public_source"] for h in inside["config_hashes"]] == ["heldout"] * 2
    assert [runs[h]["config"]["seed"] for h in inside["config_hashes"]] == cell["seeds"] == [1, 2]
    intervals = [stats.Interval(**x["interval"]) for x in (outside, inside)]
    assert cell["out_vs_in"] == stats.compare(*intervals)
    result_file(paper, result)


# ---------------------------------------------------------------------------------------------------------
# Shredder on MNIST (the paper profile's dataset)
# ---------------------------------------------------------------------------------------------------------


def test_shredder_mnist_paper_profile_small_pool(paper):
    from dpbook import shredder

    s = config.settings("shredder", profile_name="paper")
    assert (s.dataset, s.cut, s.pool_size) == ("mnist", "relu5", 149)
    write_mnist(paper.data, 300, 60)

    result = experiments.run("shredder", profile="paper", results=str(paper.results), validation=60, base_epochs=1,
                             pool_size=1, max_runs=5, epochs=1, min_epochs=1, mi_samples=40, mi_seeds=2,
                             adversary_epochs=1)

    m = result["metrics"]
    assert result["config"]["dataset"] == "mnist" and result["config"]["laplace_scale"] == s.laplace_scale
    pool = shredder.NoisePool.load(m["pool_path"])
    assert len(pool) == m["pool_size"] == 1 and 1 <= m["runs_tried"] <= 5
    assert tuple(pool.w.shape[1:]) == tuple(pool.n.shape[1:]) == (120, 1, 1)  # LeNet-5's c5 + ReLU
    assert pool.val_accuracy[0] >= m["accept_accuracy"] and m["mi_samples"] == 40
    assert set(m["mi"]) == {"clean", "noisy", "rescaled_clean"}
    assert set(m["adversary"]) >= {"clean", "noisy", "chance", "non_adaptive"}
    # the frozen LeNet-5s (public task: 2 classes; the non-adaptive adversary's: 10), on MNIST resized to 1x32x32
    bases = [torch.load(f, map_location="cpu", weights_only=False)["model"]
             for f in (paper.results / "shredder-base").glob("*.ckpt")]
    assert sorted(b["f7.weight"].shape[0] for b in bases) == [2, 10]
    assert all(tuple(b["c1.weight"].shape) == (6, 1, 5, 5) for b in bases)
    result_file(paper, result)


def test_shredder_attacks_paper_profile_on_a_small_pool(paper):
    """Every threat model, the reconstruction and MI with controls, on the pool of a shredder run of the paper
    profile (trained first by shredder_attacks itself, with the profile's sizes shrunk)."""
    shrink_paper_preset(paper.monkeypatch, "shredder", validation=60, base_epochs=1, pool_size=2, max_runs=6,
                        epochs=1, min_epochs=1, mi_samples=40, mi_seeds=2, adversary_epochs=1)
    write_mnist(paper.data, 300, 60)
    s = config.settings("shredder_attacks", profile_name="paper")
    assert s.attacker_train == 0 and s.seeds == 5

    result = experiments.run("shredder_attacks", profile="paper", results=str(paper.results), seeds=2, k_max=8,
                             probe_epochs=1, decoder_epochs=1, mi_samples=40, mi_seeds=2)

    m = result["metrics"]
    (shredder_run,) = [json.loads(f.read_text()) for f in (paper.results / "shredder").glob("*.json")]
    assert m["shredder_config_hash"] == shredder_run["config_hash"] and shredder_run["config"]["dataset"] == "mnist"
    assert m["pool_size"] == 2 and m["attacker_examples"] == 300 - 60 and m["n_classes"] == 10
    assert m["channels"] == ["exact", "resample_w", "offset_control"] and len(m["per_seed"]) == 2
    for channel in m["channels"]:
        assert set(m["threat_models"]) <= set(m["attackers"][channel])
        assert all(len(m["attackers"][channel][t]["per_seed"]) == 2 for t in m["threat_models"])
    assert m["images"]["shape"] == [1, 32, 32] and set(m["mi"]) == {"unconditional", "given_draw", "protocol"}
    result_file(paper, result)


# ---------------------------------------------------------------------------------------------------------
# StoBatch: the default sound design with the paper's hyperparameters, on MNIST, CIFAR-10 and Tiny ImageNet
# ---------------------------------------------------------------------------------------------------------

#: evaluation sizes of the dry runs (the paper: 1,000 test points, 1,000 votes, 100-step attacks)
SMALL_EVALUATION = dict(n_validation=4, validation_draws=2, n_test=4, n_draws=8, test_attack_steps=1, eot=1,
                        eot_study=(1,), eot_points=2)


@pytest.mark.parametrize("dataset, shape, first_layer", [("mnist", (1, 28, 28), (32, 1, 5, 5)),
                                                         ("cifar10", (3, 28, 28), (128, 3, 4, 4))],
                         ids=["mnist", "cifar10"])
def test_stobatch_default_design_paper_hyperparameters(paper, monkeypatch, dataset, shape, first_layer):
    s = config.settings("stobatch", profile_name="paper")
    assert s.hyperparameters == "paper" and (s.inputs, s.labels, s.norm) == ("public_autoencoder", "dpsgd", "group")
    m_batch, public, validation = 16, 20, 20
    original = shrink_paper_hyperparameters(monkeypatch, dataset, batch_size=m_batch, attack_steps=1)
    n_train = public + validation + 3 * m_batch  # three batches: three DP-SGD steps
    (write_mnist if dataset == "mnist" else write_cifar10)(paper.data, n_train, 8)
    spy = spy_stobatch_networks(monkeypatch)
    sizes = dict(attack_sizes=(0.1, 0.3)) if dataset == "cifar10" else {}  # the CIFAR-10 network is ~100x MNIST's

    result = experiments.run("stobatch", profile="paper", results=str(paper.results), dataset=dataset, epochs=1,
                             public=public, validation=validation, autoencoder_epochs=1, **SMALL_EVALUATION,
                             **sizes)

    m, (made,) = result["metrics"], spy.networks
    assert (made.input_shape, made.n_classes, made.pretrained) == (shape, 10, True)
    assert spy.weights == []  # the MNIST and CIFAR-10 networks have no ImageNet weights to load
    assert tuple(made.net.first.weight.shape) == first_layer and made.net.head.out_features == 10
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in made.net.modules())
    options = m["options"]
    assert (options["release"], options["inputs"], options["labels"]) == ("per_example", "public_autoencoder",
                                                                        "dpsgd")
    for key, value in original.items():  # the paper's hyperparameters, sizes aside; the budget is the profile's
        if key not in ("batch_size", "attack_steps") and not key.startswith("epsilon"):
            assert options[key] == value, key
    assert options["batch_size"] == m_batch
    budget = s.epsilon_autoencoder + s.epsilon2
    assert m["privacy"]["dpsgd_steps"] == 3 and m["privacy"]["dpsgd_sample_rate"] == pytest.approx(1 / 3)
    assert budget - 1e-3 < m["epsilon"] <= budget + 1e-9 and m["privacy"]["delta"] == s.delta
    assert m["guarantee"] == "as stated" and m["n_test"] == 4 and m["epochs"] == 1
    rows = m["evaluation"]["fresh"]["rows"]
    sizes_run = sizes.get("attack_sizes", s.attack_sizes)
    assert len(rows) == len(sizes_run) * (1 + len(s.attacks))  # clean, then every attack at every size
    result_file(paper, result)


def test_stobatch_designs_paper_profile_shrunk_grid(paper, monkeypatch):
    """The design search on validation and the choice at fresh seeds, over stobatch runs of the paper profile
    on MNIST: two designs at one budget, two seeds."""
    from dpbook.experiments import stobatch_designs, tuning

    shrink_paper_hyperparameters(monkeypatch, "mnist", batch_size=16, attack_steps=1)
    shrink_paper_preset(monkeypatch, "stobatch", epochs=1, public=40, validation=20, autoencoder_epochs=1,
                        **SMALL_EVALUATION)
    write_mnist(paper.data, 40 + 20 + 48, 8)  # PCA-32 of the release design needs 32 public images
    designs = ("release PCA-32 Gaussian + RR labels (3/4 to inputs)", "public auto-encoder + DP-SGD above")

    result = experiments.run("stobatch_designs", profile="paper", results=str(paper.results), epsilons=(2.0,),
                             designs=designs, seeds=2)

    (cell,) = result["metrics"]["cells"]
    assert [g["design"] for g in cell["grid"]] == list(designs)
    assert cell["chosen"] == designs[tuning.choose([g["validation_accuracy"] for g in cell["grid"]])]
    assert all(g["epsilon"] == pytest.approx(2.0, rel=1e-3) for g in cell["grid"])
    runs = {h: json.loads((paper.results / "stobatch" / f"{h}.json").read_text())
            for h in [g["config_hash"] for g in cell["grid"]] + cell["seed_config_hashes"]}
    assert all(r["config"]["dataset"] == "mnist" and r["config"]["hyperparameters"] == "paper" for r in runs.values())
    seeds = [runs[h] for h in cell["seed_config_hashes"]]
    assert [r["config"]["seed"] for r in seeds] == [1, 2] and all("test_accuracy" in r["metrics"] for r in seeds)
    assert all("test_accuracy" not in runs[g["config_hash"]]["metrics"] for g in cell["grid"])
    assert {k: seeds[0]["config"][k] for k in ("inputs", "labels")} == {
        k: stobatch_designs.design_settings(cell["chosen"], 2.0)[k] for k in ("inputs", "labels")}
    result_file(paper, result)


TIN_DESIGN = "release PCA-32 Gaussian + RR labels (1/2 to inputs)"  # eps_AE = eps2 = eps / 2, as the paper profile
TIN_SIZES = dict(epochs=1, public=40, validation=4, autoencoder_epochs=1, n_validation=2, validation_draws=2,
                 n_test=2, n_draws=4, attacks=("fgsm", "pgd"), attack_sizes=(0.1,), test_attack_steps=1, eot=1,
                 eot_study=())


def test_stobatch_tinyimagenet_paper_resnet18_released_design(paper, monkeypatch):
    """Tiny ImageNet (first 30 classes, 64x64) on the paper's ResNet-18 from ImageNet weights, with the sound
    per-example release design of ``stobatch_designs`` that runs with BatchNorm (the default design does not:
    :func:`test_stobatch_tinyimagenet_as_documented_runs_the_default_design`)."""
    from dpbook.experiments import stobatch_designs

    s = config.settings("stobatch", profile_name="paper")
    design = stobatch_designs.design_settings(TIN_DESIGN, s.epsilon_autoencoder + s.epsilon2)
    m_batch = 8
    original = shrink_paper_hyperparameters(monkeypatch, "tinyimagenet", batch_size=m_batch, attack_steps=1,
                                            micro_batches=2)
    write_tinyimagenet(paper.data, train_per_class=2, val_per_class=1)  # 60 train: 40 public, 4 validation, 16
    spy = spy_stobatch_networks(monkeypatch)

    with pytest.warns(guarantees.UnsoundModeWarning, match="norm='batch'"):
        result = experiments.run("stobatch", profile="paper", results=str(paper.results), dataset="tinyimagenet",
                                 norm="batch", **design, **TIN_SIZES)

    import torchvision

    m, (made,) = result["metrics"], spy.networks
    assert (made.input_shape, made.n_classes, made.pretrained) == ((3, 64, 64), 30, True)
    assert spy.weights == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert tuple(made.net.first.weight.shape) == (64, 3, 7, 7) and made.net.first.latent_shape == (64, 32, 32)
    assert made.net.head.out_features == 30 and n_parameters(made.net) > 11_000_000
    options = m["options"]
    assert (options["inputs"], options["labels"], options["input_dims"]) == ("released", "randomized_response", 32)
    assert options["batch_size"] == m_batch and options["micro_batches"] == 2
    assert all(options[k] == original[k] for k in ("xi", "mu_max", "lr_theta1", "lr_theta2"))
    assert m["privacy"]["label_epsilon"] == design["epsilon2"] and m["privacy"]["input_dims"] == 32
    assert abs(m["epsilon"] - (s.epsilon_autoencoder + s.epsilon2)) < 1e-3
    assert m["guarantee"] == "none" and any("norm='batch'" in r for r in m["guarantee_voided_by"])
    assert len(m["evaluation"]["fresh"]["rows"]) == 1 + 2
    result_file(paper, result)


@pytest.mark.filterwarnings("ignore::dpbook.guarantees.UnsoundModeWarning")  # norm='batch', as documented
def test_stobatch_tinyimagenet_default_design_says_what_to_run_instead(paper, monkeypatch):
    """The Tiny ImageNet ResNet-18 has BatchNorm, which DP-SGD's per-example gradients cannot use: the default
    design stops before training with an error that names the design that runs (the previous test runs it)."""
    shrink_paper_hyperparameters(monkeypatch, "tinyimagenet", batch_size=8, attack_steps=1, micro_batches=2)
    write_tinyimagenet(paper.data, train_per_class=2, val_per_class=1)
    spy_stobatch_networks(monkeypatch)
    with pytest.raises(ValueError, match="--inputs released --labels randomized_response"):
        experiments.run("stobatch", profile="paper", results=str(paper.results), dataset="tinyimagenet",
                        norm="batch", **TIN_SIZES)


# ---------------------------------------------------------------------------------------------------------
# Audits: the paper profile's GEP mechanism, the paper's SVHN setup under the original accounting, StoBatch
# ---------------------------------------------------------------------------------------------------------


def write_cifar10_for_the_paper_gep_split(root, private=1_100):
    """CIFAR-10 files whose training split holds the paper profile's validation examples plus ``private``
    examples (at least the paper's batch of 1,000, so that q <= 1); its public anchors are CIFAR-100 images, so
    no training example is held out for them (the audit counts the private examples without them)."""
    g = config.settings("gep", profile_name="paper")
    assert g.public_source == "cifar100"
    write_cifar10(root, g.validation + private, 10)
    return g


def test_audit_paper_profile_gep_mechanism(paper):
    g = write_cifar10_for_the_paper_gep_split(paper.data, private=1_100)
    s = config.settings("audit", profile_name="paper")
    assert (s.target, s.setup, s.accounting, s.repeats) == ("gep", "gep", "joint", 200)

    result = experiments.run("audit", profile="paper", results=str(paper.results), repeats=2, n_canaries=100)

    m = result["metrics"]
    mech = m["mechanism"]
    assert mech["dataset"] == "cifar10" == result["config"]["settings_gep"]["dataset"]
    assert mech["dataset_size"] == 1_100 and mech["sample_rate"] == pytest.approx(g.batch_size / 1_100)
    assert mech["steps"] == gep.paper_epochs("cifar10", s.epsilon) * privacy.steps_per_epoch(1_100, g.batch_size)
    assert mech["epsilon_claimed"] == s.epsilon and mech["epsilon_accountant_pld"] <= s.epsilon + 1e-6
    assert m["trials"] == 200 and not m["refuted"]
    assert m["epsilon_lower_many_runs"] < s.epsilon and m["epsilon_lower_one_run"] < s.epsilon
    result_file(paper, result)


def test_audit_paper_svhn_setup_original_accounting(paper):
    setup = gep.PAPER_SETUPS["svhn"]
    result = experiments.run("audit", profile="paper", results=str(paper.results), setup="svhn",
                             accounting="original", repeats=1, n_canaries=100)

    mech = result["metrics"]["mechanism"]
    q = setup["batch_size"] / setup["dataset_size"]
    assert (mech["dataset"], mech["dataset_size"], mech["delta"]) == ("svhn", 604_388, setup["delta"])
    assert mech["steps"] == gep.original_steps(gep.paper_epochs("svhn", 8.0), q) == 12_087
    assert mech["sample_rate"] == pytest.approx(q) and mech["epsilon_claimed"] <= 8.0
    assert mech["epsilon_accountant_pld"] > mech["epsilon_claimed"]  # the original accounting under-counts
    assert result["metrics"]["trials"] == 100
    result_file(paper, result)


def test_audit_paper_profile_stobatch_canaries(paper):
    s = config.settings("audit", profile_name="paper")
    result = experiments.run("audit", profile="paper", results=str(paper.results), target="stobatch",
                             stobatch_trials=4)

    m = result["metrics"]
    assert m["trials"] == 2 * 4 and set(m["by_kind"]) == {"label", "input"}
    assert m["mechanism"]["release"] == "per_example" and m["mechanism"]["examples"] == s.stobatch_examples
    assert m["epsilon_claimed_audited"] == s.epsilon and not m["refuted"]
    result_file(paper, result)


def test_audit_profile_argument_reaches_the_gep_settings_it_audits(paper, monkeypatch):
    write_cifar10_for_the_paper_gep_split(paper.data, private=1_100)
    monkeypatch.setenv("DPBOOK_PROFILE", "smoke")  # what tests and notebooks have active

    result = experiments.run("audit", profile="paper", results=str(paper.results), repeats=1, n_canaries=20)

    assert result["config"]["settings_gep"]["dataset"] == "cifar10"
    assert result["metrics"]["mechanism"]["dataset"] == "cifar10"
    assert result["environment"]["profile"] == "paper"
