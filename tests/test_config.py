"""Profiles, settings and device selection."""
import pytest
import torch

import dpbook
from dpbook import config


def test_conftest_selects_smoke():
    assert dpbook.profile() == "smoke"


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("DPBOOK_PROFILE", "huge")
    with pytest.raises(ValueError, match="smoke, laptop, paper"):
        config.profile()


def test_unset_profile_follows_cuda(monkeypatch):
    monkeypatch.delenv("DPBOOK_PROFILE")
    assert config.profile() == ("paper" if torch.cuda.is_available() else "laptop")
    monkeypatch.setattr(config, "_cuda_available", lambda: True)
    assert config.profile() == "paper"


def test_profiles_override_only_what_differs():
    base = config.PRESETS["baseline"]["base"]
    laptop = config.settings("baseline", profile_name="laptop")
    smoke = config.settings("baseline")
    assert laptop.dataset == base["dataset"] and smoke.dataset == "digits"
    assert smoke.lr == base["lr"]  # not overridden by smoke
    assert set(smoke) == set(base)


def test_overrides_and_typos():
    s = dpbook.settings("baseline", epochs=1, dataset="mnist")
    assert (s.epochs, s["dataset"]) == (1, "mnist")
    with pytest.raises(KeyError, match="valid:.*epochs"):
        dpbook.settings("baseline", epoch=1)
    with pytest.raises(KeyError, match="known"):
        dpbook.settings("no-such-experiment")
    with pytest.raises(TypeError, match="read-only"):
        s["epochs"] = 3
    with pytest.raises(AttributeError, match="available"):
        s.learning_rate


def test_every_preset_has_all_profiles_and_expected_minutes():
    for name, preset in config.PRESETS.items():
        assert set(preset) <= {"base", *config.PROFILES}, name
        for prof in config.PROFILES:
            s = config.settings(name, profile_name=prof)
            assert s.minutes > 0
            assert set(preset.get(prof, {})) <= set(preset["base"]), f"{name}/{prof} adds keys not in base"


def test_device_and_override(monkeypatch):
    assert dpbook.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DPBOOK_DEVICE", "cpu")
    assert dpbook.device() == torch.device("cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("DPBOOK_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            dpbook.device()


def test_describe_run_says_what_runs(capsys):
    text = dpbook.describe_run("baseline")
    assert capsys.readouterr().out.strip() == text
    assert "profile smoke" in text and f"torch {torch.__version__}" in text
    assert "digits (bundled with scikit-learn)" in text and "about 0.1 min" in text
