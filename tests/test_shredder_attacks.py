"""The shredder_attacks experiment end to end on digits (smoke profile): it reuses the shredder run's pool,
writes every table the chapter reads, and its attackers and controls behave as they must."""
import pytest

from dpbook import experiments, leakage, reconstruction


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("results"))
    pool_run = experiments.run("shredder", results=root)
    with pytest.raises(experiments.Interrupted):
        experiments.run("shredder_attacks", results=root, stop_after_epoch=1)
    out = experiments.run("shredder_attacks", results=root, resume=True)
    again = experiments.run("shredder", results=root, reuse=True)
    assert again["finished_at"] == pool_run["finished_at"]  # the pool was reused, not retrained
    return out


def test_attacker_table_has_every_channel_threat_and_seed(result):
    m = result["metrics"]
    assert m["channels"] == ["exact", "resample_w", "offset_control"]
    assert set(leakage.THREAT_MODELS) <= set(m["threat_models"])
    seeds = result["config"]["seeds"]
    assert seeds >= 3 and len(m["per_seed"]) == seeds
    for channel in m["channels"]:
        for threat in m["threat_models"]:
            row = m["attackers"][channel][threat]
            assert len(row["per_seed"]) == seeds
            assert row["interval"]["low"] <= row["mean"] <= row["interval"]["high"]


def test_kerckhoffs_reaches_the_clean_probe_and_the_lossless_control_loses_nothing(result):
    m = result["metrics"]
    a, clean = m["attackers"], m["attackers"]["clean"]["mean"]
    assert clean > 0.85 and m["chance"] < 0.2
    assert a["exact"]["draws_identified"] == [1.0] * len(m["per_seed"])
    assert a["exact"]["kerckhoffs"]["mean"] >= clean - 0.02
    assert a["exact"]["non_adaptive"]["mean"] < m["chance"] + 0.15  # the original's check: near chance
    for threat in ("adaptive", "blind", "kerckhoffs"):
        assert a["offset_control"][threat]["mean"] >= clean - 0.05, threat
    r = m["reconstruction"]
    assert r["prior"]["explained_variance"] == 0.0 and r["clean"]["explained_variance"] > 0.3
    assert r["exact"]["kerckhoffs"]["explained_variance"] >= r["clean"]["explained_variance"] - 0.02
    assert r["exact"]["non_adaptive"]["explained_variance"] < 0.1
    given = m["mi"]["given_draw"]
    for est in ("ite_block", "ite_dim", "ksg_dim"):
        assert given["offset_control"][est]["mean"] == pytest.approx(given["clean"][est]["mean"], abs=1e-9)


def test_image_pairs_are_small_grey_levels(result):
    images = result["metrics"]["images"]
    n, shape = result["config"]["n_images"], images["shape"]
    assert shape == [1, 32, 32] and len(images["original"]) == n and len(images["clean"]) == n
    for channel in ("exact", "resample_w"):
        for threat in leakage.THREAT_MODELS:
            pictures = reconstruction.from_levels(images[channel][threat], shape)
            assert pictures.shape == (n, 1, 32, 32) and 0 <= float(pictures.min()) <= float(pictures.max()) <= 1
