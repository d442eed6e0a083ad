"""Equal-budget tuning of GEP, Biased-GEP and DP-SGD (dpbook.experiments.tuning): the grid, the choice on
validation only, the seeds, the cost of tuning, and smoke runs end to end on digits (with gep_public_data, GEP's
anchors in and out of distribution at the tuned point)."""
import pytest
import torch

from dpbook import experiments, privacy, stats
from dpbook.experiments import tuning

GRID = dict(lrs=(0.03, 0.1, 0.3), clips=(1.0, 2.0), clip_ratio=2.5)


def test_every_method_gets_the_same_number_of_points_and_its_own_norms():
    points = {m: tuning.grid(m, **GRID) for m in ("dpsgd", "biased", "gep")}
    assert {len(p) for p in points.values()} == {6}
    assert [(p["lr"], p["clip"]) for p in points["gep"]] == [(lr, c) for lr in GRID["lrs"] for c in GRID["clips"]]
    for d, b, g in zip(points["dpsgd"], points["biased"], points["gep"]):
        assert set(tuning.settings_of(d)) == {"lr", "clip_residual"} and d["clip_residual"] == d["clip"]
        assert set(tuning.settings_of(b)) == {"lr", "clip_embedding"} and b["clip_embedding"] == 2.5 * b["clip"]
        assert (g["clip_embedding"], g["clip_residual"]) == (2.5 * g["clip"], g["clip"])
    # the original code's setting (lr 0.1, S_0 = 5, S_1 = C = 2) is a point of every method's grid
    assert {"lr": 0.1, "clip": 2.0, "clip_embedding": 5.0, "clip_residual": 2.0} in points["gep"]
    with pytest.raises(ValueError, match="lrs of grid"):
        tuning.grid("gep", lrs=(), clips=(1.0,), clip_ratio=2.5)
    with pytest.raises(ValueError, match="method of grid"):
        tuning.grid("sgd", **GRID)


def test_choose_takes_the_best_validation_accuracy_and_the_first_of_equals():
    assert tuning.choose([0.5, 0.7, 0.6]) == 1
    assert tuning.choose([0.7, 0.5, 0.7]) == 0
    with pytest.raises(ValueError, match="validation_accuracies"):
        tuning.choose([])


class Watched(dict):
    """Metrics that log every read of the test accuracy."""

    def __init__(self, key, log, **kw):
        super().__init__(**kw)
        self.key, self.log = key, log

    def __getitem__(self, name):
        if name == "test_accuracy":
            self.log.append(("test read", self.key))
        return super().__getitem__(name)


def fake_runs(validation, test, log):
    """A stand-in for the gep experiment: scores by (method, lr, clip, seed) from the two functions."""
    def run_one(*, method, epsilon, seed, lr, **norms):
        clip = norms.get("clip_residual", norms.get("clip_embedding", 0) / 2.5)
        key = (method, epsilon, lr, clip, seed)
        log.append(("run", key))
        metrics = Watched(key, log, validation_accuracy=validation(method, lr, clip, seed),
                          test_accuracy=test(method, lr, clip, seed), epsilon=epsilon * 0.999,
                          effective_noise_multiplier=1.0, sample_rate=0.01, steps=100)
        return {"metrics": metrics, "config_hash": str(key), "timings": {"train_seconds": 1.0}}
    return run_one


def test_the_choice_reads_validation_only_and_test_accuracies_only_after_it():
    """Validation prefers the smallest lr, the test set the largest: the choice follows validation, and no test
    accuracy is read before a cell's grid is done, nor for any point but the chosen one."""
    log = []
    run_one = fake_runs(validation=lambda m, lr, c, s: 0.9 - lr + 0.001 * s,
                        test=lambda m, lr, c, s: 0.5 + lr + (0.02 if m == "gep" else 0) + 0.001 * s, log=log)
    out = tuning.tune(epsilons=(2.0, 8.0), methods=("dpsgd", "biased", "gep"), seeds=3, delta=1e-5,
                      run_one=run_one, log=lambda s: None, **GRID)
    assert len(out["cells"]) == 6
    for cell in out["cells"]:
        assert cell["chosen"]["lr"] == 0.03 and cell["chosen_index"] == 0
        assert cell["chosen_on_boundary"] == ["lr", "clip"]  # smallest lr, and a clip of a two-value grid
        assert all("test_accuracy" not in p for p in cell["grid"])  # the grid shows validation only
        assert [p["validation_accuracy"] for p in cell["grid"]] == [pytest.approx(0.9 - p["lr"]) for p in cell["grid"]]
        assert cell["seeds"] == [1, 2, 3] and len(cell["test_accuracy"]) == 3
        assert stats.Interval(**cell["interval"]) == stats.mean_interval(cell["test_accuracy"])
    # run order: the grid (seed 0) of a cell, then fresh seeds 1 to 3 at the chosen point; the winner is not reused
    runs = [key for what, key in log if what == "run"]
    assert len(runs) == 2 * 3 * (6 + 3) and len(set(runs)) == len(runs)
    reads = [(i, key) for i, (what, key) in enumerate(log) if what == "test read"]
    assert {key[2] for _, key in reads} == {0.03} and {key[4] for _, key in reads} == {1, 2, 3}
    for i, key in reads:  # every run of that cell (grid and seeds) came before its test accuracies were read
        cell_runs = [j for j, (what, k) in enumerate(log) if what == "run" and k[:2] == key[:2]]
        assert max(cell_runs) < i


def test_seeds_at_the_chosen_point_and_the_verdicts_follow_the_intervals():
    spread = {0: 0.5, 1: -0.005, 2: 0.0, 3: 0.005}  # seed 0 (the selection run) must not enter the intervals
    level = {"gep": 0.80, "biased": 0.79, "dpsgd": 0.70}
    run_one = fake_runs(validation=lambda m, lr, c, s: 0.5 + (lr == 0.1) * 0.1 + (c == 2.0) * 0.05,
                        test=lambda m, lr, c, s: level[m] + spread[s], log=[])
    out = tuning.tune(epsilons=(8.0,), methods=("dpsgd", "biased", "gep"), seeds=3, delta=1e-5,
                      run_one=run_one, log=lambda s: None, **GRID)
    assert all((c["chosen"]["lr"], c["chosen"]["clip"], c["chosen_on_boundary"]) == (0.1, 2.0, ["clip"])
               for c in out["cells"])
    outcomes = {(c["a"], c["b"]): c["outcome"] for c in out["comparisons"]}
    assert outcomes == {("gep", "dpsgd"): "higher", ("gep", "biased"): "overlap"}
    assert out["verdicts"] == {"GEP is more accurate than DP-SGD": "holds",
                               "GEP is more accurate than Biased-GEP": "not settled: the means point the claimed "
                                                                       "way, but the intervals overlap"}
    with pytest.raises(ValueError, match="seeds of tune"):
        tuning.tune(epsilons=(8.0,), methods=("gep",), seeds=1, delta=1e-5, run_one=run_one, **GRID)


def test_tuning_cost_composes_every_run():
    run = {"metrics": {"effective_noise_multiplier": 0.8, "sample_rate": 0.02, "steps": 150}}
    one = tuning.tuning_cost([run], delta=1e-5)
    assert one == pytest.approx(privacy.epsilon(noise_multiplier=0.8, sample_rate=0.02, steps=150, delta=1e-5))
    six = tuning.tuning_cost([run] * 6, delta=1e-5)
    assert six == pytest.approx(privacy.epsilon(noise_multiplier=0.8, sample_rate=0.02, steps=900, delta=1e-5))
    assert one < six < 6 * one  # more than one run's epsilon, less than basic composition


def test_runs_with_the_same_seed_draw_independent_noise():
    """The seed fixes the initialisation and the data, never the DP noise (an OS-seeded generator)."""
    from dpbook import gep, models

    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    grads = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.build("small-cnn", in_channels=1, image_size=8, n_classes=10)
        engine = gep.GEP(model, torch.randn(16, 1, 8, 8), n_classes=10, mode="dpsgd", noise_multiplier=1.0,
                         sample_rate=0.1, dataset_size=80)
        engine.step(x, y)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        batches = gep.epoch_batches(80, 8, generator=engine.generator)
    assert not torch.allclose(grads[0], grads[1])
    # the noise is the difference: about sqrt(2) sigma C / B per coordinate
    assert (grads[0] - grads[1]).std().item() == pytest.approx(2 ** 0.5 * 1.0 * 2.0 / 8, rel=0.1)
    assert len(batches) == 10


def test_tuning_needs_a_validation_split(tmp_path, monkeypatch):
    from dpbook.presets import PRESETS

    monkeypatch.setitem(PRESETS["gep"]["smoke"], "validation", 0)
    with pytest.raises(ValueError, match="validation"):
        experiments.run("gep_tuning", results=str(tmp_path))


def test_smoke_tuning_end_to_end_on_digits_and_reloads_without_training(tmp_path, monkeypatch):
    result = experiments.run("gep_tuning", results=str(tmp_path))
    m, cfg = result["metrics"], result["config"]
    n_grid = len(cfg["lrs"]) * len(cfg["clips"])
    assert m["grid_points_per_method"] == n_grid >= 2 and result["environment"]["profile"] == "smoke"
    assert len(m["cells"]) == len(cfg["methods"]) * len(cfg["epsilons"])
    assert len(list((tmp_path / "gep").glob("*.json"))) == m["runs"] == len(m["cells"]) * (n_grid + cfg["seeds"])
    for cell in m["cells"]:
        validation = [p["validation_accuracy"] for p in cell["grid"]]
        assert cell["chosen_index"] == tuning.choose(validation) and len(cell["grid"]) == n_grid
        assert len(cell["test_accuracy"]) == cfg["seeds"] == 3
        assert stats.Interval(**cell["interval"]) == stats.mean_interval(cell["test_accuracy"])
        assert cell["epsilon_per_run"] <= cell["epsilon"] < cell["epsilon_all_grid_runs"] < cell["epsilon_all_runs"]
    for c in m["comparisons"]:
        cells = {x["method"]: stats.Interval(**x["interval"]) for x in m["cells"] if x["epsilon"] == c["epsilon"]}
        assert c["outcome"] == stats.compare(cells[c["a"]], cells[c["b"]])
    assert set(m["verdicts"]) == {"GEP is more accurate than DP-SGD", "GEP is more accurate than Biased-GEP"}
    assert "Papernot & Steinke" in m["tuning_cost"] and "not them" in m["validation_use"]
    assert m["gep_settings"]["scale"] == "symmetric" and m["gep_settings"]["validation"] > 0
    # every run is stored: a second call trains nothing and reads the same numbers
    monkeypatch.setitem(experiments.EXPERIMENTS, "gep", lambda *a, **k: pytest.fail("retrained a stored run"))
    again = experiments.run("gep_tuning", results=str(tmp_path))
    assert [c["test_accuracy"] for c in again["metrics"]["cells"]] == [c["test_accuracy"] for c in m["cells"]]


def test_smoke_public_data_in_and_out_of_distribution_at_the_tuned_point(tmp_path, monkeypatch):
    """gep_public_data on digits: the held-out runs are the tuning's GEP seeds (reloaded, not retrained); the
    out-of-distribution runs differ from them in public_source only, and keep the held-out examples private."""
    import json

    result = experiments.run("gep_public_data", results=str(tmp_path))
    m, cfg = result["metrics"], result["config"]
    assert (cfg["in_distribution"], cfg["out_of_distribution"], m["tuned_with"]) == ("heldout", "noise", "heldout")
    tuned = experiments.run("gep_tuning", reuse=True, results=str(tmp_path))
    assert m["tuning_config_hash"] == tuned["config_hash"] and len(m["cells"]) == len(cfg["epsilons"])
    public = tuned["metrics"]["gep_settings"]["public"]
    for cell in m["cells"]:
        gep_cell, dpsgd_cell = (next(c for c in tuned["metrics"]["cells"] if c["method"] == method
                                     and c["epsilon"] == cell["epsilon"]) for method in ("gep", "dpsgd"))
        inside, outside = cell["in_distribution"], cell["out_of_distribution"]
        assert inside["reused_from_tuning"] and inside["test_accuracy"] == gep_cell["test_accuracy"]
        assert not outside["reused_from_tuning"] and cell["dpsgd"]["test_accuracy"] == dpsgd_cell["test_accuracy"]
        assert [o - i for o, i in zip(outside["private_examples"], inside["private_examples"])] == [public] * 3
        for h_in, h_out in zip(inside["config_hashes"], outside["config_hashes"]):
            c_in, c_out = (json.loads((tmp_path / "gep" / f"{h}.json").read_text())["config"] for h in (h_in, h_out))
            assert {k for k in c_in if c_in[k] != c_out[k]} == {"public_source"}
        a, b, d = (stats.Interval(**x["interval"]) for x in (outside, inside, cell["dpsgd"]))
        assert cell["out_vs_in"] == stats.compare(a, b) and cell["out_vs_dpsgd"] == stats.compare(a, d)
        assert cell["gap_of_means"] == pytest.approx(a.mean - b.mean)
    assert set(m["verdicts"]) == {"In-distribution anchors make GEP more accurate"}
    # every run is stored: a second call trains nothing
    monkeypatch.setitem(experiments.EXPERIMENTS, "gep", lambda *a, **k: pytest.fail("retrained a stored run"))
    again = experiments.run("gep_public_data", results=str(tmp_path))  # runs the study again, reloading its runs
    assert again["metrics"]["cells"] == m["cells"]
    with pytest.raises(ValueError, match="must be budgets gep_tuning tuned"):
        experiments.run("gep_public_data", results=str(tmp_path), epsilons=(3.0,))
