"""The baseline experiment, its results file, checkpoints and resume, and the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpbook import experiments, runs
from dpbook.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_baseline_learns_digits_and_writes_its_result(tmp_path):
    result = experiments.run("baseline", results=str(tmp_path), epochs=4)
    path = tmp_path / "baseline" / f"{result['config_hash']}.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert result["metrics"]["test_accuracy"] > 0.85  # chance is 0.1; a small CNN gets ~0.95 on digits
    assert result["config"]["dataset"] == "digits" and result["environment"]["profile"] == "smoke"
    assert len(result["timings"]["seconds_per_epoch"]) == 4 and result["timings"]["train_seconds"] > 0
    assert result["resumed_from_epoch"] == 0


def test_interrupted_run_resumes_without_repeating_epochs(tmp_path):
    full = experiments.run("baseline", results=str(tmp_path / "a"), epochs=3)
    with pytest.raises(experiments.Interrupted):
        experiments.run("baseline", results=str(tmp_path / "b"), epochs=3, stop_after_epoch=1)
    resumed = experiments.run("baseline", results=str(tmp_path / "b"), epochs=3, resume=True)
    assert resumed["resumed_from_epoch"] == 1
    assert [h["epoch"] for h in resumed["metrics"]["history"]] == [1, 2, 3]
    # same seeds, same batches: the resumed run ends where the uninterrupted one does
    a = torch.load(tmp_path / "a" / "baseline" / f"{full['config_hash']}.ckpt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "baseline" / f"{resumed['config_hash']}.ckpt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed["metrics"]["test_accuracy"] == full["metrics"]["test_accuracy"]
    # a finished run is returned as it is, not retrained
    again = experiments.run("baseline", results=str(tmp_path / "b"), epochs=3, resume=True)
    assert again["finished_at"] == resumed["finished_at"]


def test_config_hash_is_canonical():
    assert runs.config_hash({"a": 1, "b": 2}) == runs.config_hash({"b": 2, "a": 1})
    assert runs.config_hash({"a": 1}) != runs.config_hash({"a": 2})


def test_settings_an_experiment_reads_are_part_of_its_key(monkeypatch):
    """The audit reads settings("gep") at run time: changing them must change the audit's key, so that a
    result computed with other sizes is never reused; an experiment that reads nothing else is unaffected."""
    from dpbook import config, presets

    key = {name: runs.config_hash(experiments.config_of(name, config.settings(name))) for name in ("audit", "baseline")}
    assert "settings_gep" in experiments.config_of("audit", config.settings("audit"))
    edited = {**presets.PRESETS["gep"], "base": {**presets.PRESETS["gep"]["base"], "weight_decay": 0.5}}
    monkeypatch.setitem(presets.PRESETS, "gep", edited)
    assert runs.config_hash(experiments.config_of("audit", config.settings("audit"))) != key["audit"]
    assert runs.config_hash(experiments.config_of("baseline", config.settings("baseline"))) == key["baseline"]


def test_cli_run_with_setting_overrides(tmp_path, capsys):
    assert main(["run", "baseline", "--epochs", "1", "--batch-size=128", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "profile smoke" in out and '"test_accuracy"' in out
    (result,) = (tmp_path / "baseline").glob("*.json")
    assert json.loads(result.read_text())["config"]["batch_size"] == 128


def test_cli_rejects_unknown_settings(capsys):
    with pytest.raises(SystemExit, match="valid: .*--batch-size"):
        main(["run", "baseline", "--epoch", "1"])


def test_cli_help_and_list_in_a_fresh_process():
    env = {**os.environ, "DPBOOK_PROFILE": "smoke"}
    out = subprocess.run([sys.executable, "-m", "dpbook", "--help"], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout
    assert "run NAME" in out and "fetch" in out
    listed = subprocess.run([sys.executable, "-m", "dpbook", "list"], capture_output=True, text=True, env=env,
                            cwd=ROOT, check=True).stdout
    names = [line.split(":")[0] for line in listed.splitlines()]
    assert names == sorted(experiments.EXPERIMENTS) and "baseline" in names  # every experiment, with its settings


def test_gep_experiment_meets_its_budget_and_learns(tmp_path):
    result = experiments.run("gep", results=str(tmp_path), epsilon=8.0)
    m = result["metrics"]
    assert m["epsilon"] <= 8.0 and m["epsilon"] > 7.0  # calibrated to the target, not far below it
    assert m["test_accuracy"] > 0.3  # digits, 2 epochs of GEP at epsilon 8; chance is 0.1
    assert m["effective_noise_multiplier"] == pytest.approx(m["noise_multiplier"] / 2**0.5)


def test_gep_experiment_reads_validation_each_epoch_and_the_test_set_once(tmp_path, monkeypatch):
    from dpbook import data, models

    parts = data.splits("digits", validation=200, public=200, scale="symmetric")
    n_test = len(parts["test"])
    calls = []
    real_accuracy = models.accuracy
    monkeypatch.setattr(models, "accuracy", lambda m, x, y, **kw: calls.append(len(x)) or real_accuracy(m, x, y))
    result = experiments.run("gep", results=str(tmp_path), method="dpsgd")
    m = result["metrics"]
    assert calls == [200, 200, n_test]  # validation after each of the 2 epochs, then the test set once
    assert [set(h) & {"validation_accuracy", "test_accuracy"} for h in m["history"]] == [{"validation_accuracy"}] * 2
    assert m["validation_accuracy"] == m["history"][-1]["validation_accuracy"] and 0 <= m["test_accuracy"] <= 1
    assert m["validation_examples"] == 200 and "not them" in m["validation_use"]
    assert not any(k.startswith("best_test") for k in m)
    # validation=0 keeps the original code's protocol: test accuracy every epoch, best epoch chosen on it
    calls.clear()
    legacy = experiments.run("gep", results=str(tmp_path), method="dpsgd", validation=0)
    assert calls == [n_test, n_test] and "validation_accuracy" not in legacy["metrics"]
    assert legacy["metrics"]["best_test_accuracy_over_epochs (original's selection, on the test set)"] >= \
        legacy["metrics"]["test_accuracy"]


def test_gep_original_accounting_uses_the_codes_sigma(tmp_path):
    from dpbook import data, gep

    result = experiments.run("gep", results=str(tmp_path), accounting="original", epochs=1)
    m = result["metrics"]
    q = 64 / len(data.splits("digits", public=200, validation=200)["train"])
    sigma, claimed = gep.original_sigma(target_epsilon=8.0, delta=1e-5, sample_rate=q, epochs=1)
    assert m["noise_multiplier"] == sigma and m["epsilon_claimed_by_original_accounting"] == claimed < 8.0


def test_gep_experiment_resumes_with_its_accountant(tmp_path):
    with pytest.raises(experiments.Interrupted):
        experiments.run("gep", results=str(tmp_path), method="dpsgd", stop_after_epoch=1)
    resumed = experiments.run("gep", results=str(tmp_path), method="dpsgd", resume=True)
    assert resumed["resumed_from_epoch"] == 1 and len(resumed["metrics"]["history"]) == 2
    fresh = experiments.run("gep", results=str(tmp_path / "fresh"), method="dpsgd")
    assert resumed["metrics"]["epsilon"] == pytest.approx(fresh["metrics"]["epsilon"])


def test_gep_experiment_with_an_images_file_and_with_real_labels(tmp_path):
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, size=(50, 1, 8, 8), dtype=np.uint8)
    path = tmp_path / "aux.npy"
    np.save(path, images)
    result = experiments.run("gep", results=str(tmp_path), public_source=str(path), public=40, epochs=1)
    assert result["metrics"]["epsilon"] <= 8.0
    from dpbook import data

    n_all = len(data.load("digits", "train"))
    # the file replaced the held-out slice, so no training example was set aside as public (only validation)
    assert result["metrics"]["sample_rate"] == pytest.approx(64 / (n_all - 200))
    real = experiments.run("gep", results=str(tmp_path), public_labels="real", epochs=1)
    assert real["metrics"]["sample_rate"] == pytest.approx(64 / (n_all - 200 - 200))
    with pytest.raises(ValueError, match="heldout"):
        experiments.run("gep", results=str(tmp_path), public_source=str(path), public_labels="real")
    with pytest.raises(ValueError, match=r"1 channel\(s\), as digits; got 'cifar100 \(3 channels\)'"):
        experiments.run("gep", results=str(tmp_path), public_source="cifar100")
    with pytest.raises(ValueError, match="heldout"):  # the private task's own test split is no public data
        experiments.run("gep", results=str(tmp_path), public_source="digits")


def test_gep_public_data_from_another_dataset_resized_and_from_noise(tmp_path, monkeypatch):
    """public_source names another dataset (the laptop profile's digits anchors for 28x28 images, resized) or
    "noise": the anchors have the private images' shape and scale, and every training example stays private."""
    from dpbook import data
    from dpbook.data.fake import write_mnist
    from dpbook.experiments import gep_experiment

    write_mnist(tmp_path, 90, 10)
    monkeypatch.setenv("DPBOOK_DATA", str(tmp_path))
    seen, real = [], gep_experiment.public_data  # records the anchors each run gets
    monkeypatch.setattr(gep_experiment, "public_data", lambda cfg, parts: seen.append(real(cfg, parts)) or seen[-1])
    sizes = dict(dataset="mnist", public=400, validation=10, batch_size=40, n_bases=16, epochs=1)
    result = experiments.run("gep", results=str(tmp_path / "results"), public_source="digits", **sizes)
    (x, y), = seen
    digits = data.load("digits", "test").x  # test split first: 359 of the 400 anchors
    assert tuple(x.shape) == (400, 1, 28, 28) and y is None and -1 <= x.min() < x.max() <= 1  # scale symmetric
    # bilinear upsampling keeps each image's mean brightness (up to the edges): these are the digits, in order
    assert torch.allclose((x[:359] + 1).mean((1, 2, 3)) / 2, digits.mean((1, 2, 3)), atol=0.02)
    assert result["metrics"]["sample_rate"] == pytest.approx(40 / (90 - 10))  # nothing held out as public
    noise = experiments.run("gep", results=str(tmp_path / "results"), public_source="noise", **sizes)
    assert tuple(seen[-1][0].shape) == (400, 1, 28, 28) and seen[-1][0].std() > 0.5  # uniform on [-1, 1]
    assert noise["metrics"]["sample_rate"] == result["metrics"]["sample_rate"]
    heldout = experiments.run("gep", results=str(tmp_path / "results"), **{**sizes, "public": 20})
    assert heldout["metrics"]["sample_rate"] == pytest.approx(40 / (90 - 10 - 20))


def test_shredder_experiment_end_to_end_and_resume(tmp_path):
    """Smoke profile on digits: the pool is written and reloads, accepted samples meet the validation bar,
    an interrupted run resumes with the samples it had, and every reported quantity is present."""
    from dpbook import shredder

    with pytest.raises(experiments.Interrupted):
        experiments.run("shredder", results=str(tmp_path), laplace_scale=3.0, stop_after_epoch=1)
    result = experiments.run("shredder", results=str(tmp_path), laplace_scale=3.0, resume=True)
    m = result["metrics"]
    assert m["runs_tried"] >= 2 and 1 <= m["pool_size"] <= 3
    pool = shredder.NoisePool.load(m["pool_path"])
    assert len(pool) == m["pool_size"] and pool.w.shape[1:] == (120, 1, 1)
    assert m["public_accuracy_clean"] > 0.9 and m["adversary"]["clean"] > 0.8
    assert m["adversary"]["chance"] < 0.2
    for name in ("clean", "noisy", "rescaled_clean"):
        assert set(m["mi"][name]) == {"ite_raw", "ite_standardized", "ksg_standardized"}
    # (acceptance on validation only, and controls that can fail: tests/test_shredder.py, tests/test_leakage.py)


def test_gep_on_svhn_files_with_extra_and_resnet20(tmp_path, monkeypatch):
    """The paper's SVHN set-up end to end on tiny .mat files: train + extra as private data, ResNet20-GN
    chosen by model="auto", the paper's layer groups, public labels redrawn at every refresh."""
    import numpy as np
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    (tmp_path / "svhn").mkdir()
    for split, n in (("train", 40), ("extra", 30), ("test", 12)):
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat",
                {"X": rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8),
                 "y": rng.integers(1, 11, size=(n, 1), dtype=np.uint8)})
    monkeypatch.setenv("DPBOOK_DATA", str(tmp_path))
    result = experiments.run("gep", results=str(tmp_path / "results"), dataset="svhn", extra=True, model="auto",
                             public=10, validation=5, batch_size=16, n_bases=20, grouping="layers",
                             public_labels="redraw", epochs=1)
    m = result["metrics"]
    assert m["model"] == "resnet20-gn" and m["sample_rate"] == pytest.approx(16 / (40 - 10 - 5 + 30))
    assert m["epsilon"] <= 8.0
    with pytest.raises(ValueError, match="extra"):
        experiments.run("gep", results=str(tmp_path / "results"), extra=True)


def test_gep_with_the_originals_fixed_size_batches(tmp_path):
    from dpbook import data

    result = experiments.run("gep", results=str(tmp_path), method="dpsgd", sampling="shuffle", epochs=1)
    n = len(data.splits("digits", public=200, validation=200)["train"])
    assert result["metrics"]["steps"] == n // 64 and result["config"]["sampling"] == "shuffle"
