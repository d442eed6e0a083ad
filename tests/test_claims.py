"""Verdict rules of dpbook.claims: each verdict flips when its measured number crosses the rule."""
import json

import pytest

from dpbook import claims, guarantees, tables


def test_privacy_verdict_flips_at_the_claim_and_on_refutation():
    holds = claims.privacy_verdict(refuted=False, epsilon_accountant=7.99, epsilon_claimed=8.0)
    assert holds.startswith("holds")
    assert claims.privacy_verdict(refuted=False, epsilon_accountant=8.01, epsilon_claimed=8.0).startswith("does not hold")
    assert claims.privacy_verdict(refuted=True, epsilon_accountant=7.99, epsilon_claimed=8.0).startswith("refuted")


def test_direction_needs_every_setting():
    assert claims.direction_verdict([(0.86, 0.85), (0.84, 0.83)]) == "holds in direction"
    assert claims.direction_verdict([(0.86, 0.85), (0.83, 0.84)]) == "does not hold"
    assert claims.direction_verdict([(0.85, 0.85)]) == "does not hold"
    assert claims.direction_verdict([]) == "does not hold"


@pytest.mark.parametrize("as_trained, code, verdict", [
    (0.010, 0.015, "holds for both samplers"),
    (0.010, 0.017, "holds for the samples as trained"),
    (0.017, 0.017, "does not hold"),
])
def test_accuracy_loss_against_the_claim(as_trained, code, verdict):
    assert claims.accuracy_loss_verdict(loss_as_trained=as_trained, loss_code_sampler=code,
                                        claimed_loss=0.016).startswith(verdict)


def test_mi_raw_verdict_needs_a_fall_larger_than_the_rescale_control():
    assert claims.mi_raw_verdict(noise_reduction=-0.46, rescale_reduction=0.84).startswith("does not hold")
    assert claims.mi_raw_verdict(noise_reduction=0.5, rescale_reduction=0.41).startswith("not evidence")
    assert claims.mi_raw_verdict(noise_reduction=0.5, rescale_reduction=0.39).startswith("holds")


def test_adversary_verdict_follows_the_strongest_adversary():
    chance = 0.1
    assert claims.adversary_verdict(adaptive=0.19, non_adaptive=0.12, chance=chance) == "holds"
    assert claims.adversary_verdict(adaptive=0.21, non_adaptive=0.12, chance=chance) == \
        "holds only against the non-adaptive check"
    assert claims.adversary_verdict(adaptive=0.15, non_adaptive=0.21, chance=chance) == "does not hold"


def test_private_accuracy_and_chance():
    assert claims.at_chance(0.19, 0.1) and not claims.at_chance(0.21, 0.1)
    assert claims.private_accuracy_verdict(private_clean=0.09, dp_baseline_clean=0.79, chance=0.1).startswith(
        "does not hold: the private StoBatch is at chance")
    assert claims.private_accuracy_verdict(private_clean=0.80, dp_baseline_clean=0.79, chance=0.1) == "holds"
    assert claims.private_accuracy_verdict(private_clean=0.78, dp_baseline_clean=0.79, chance=0.1).startswith(
        "does not hold: the DP baseline")


def test_certified_verdict_ignores_models_at_chance():
    clean = {"a": 0.09, "b": 0.8}
    assert claims.certified_verdict({"a": 0.09, "b": 0.0}, clean, 0.1).startswith("does not hold")
    assert claims.certified_verdict({"a": 0.09, "b": 0.01}, clean, 0.1) == "holds for b"


def test_scaling_and_benchmark_targets():
    assert claims.scaling_verdict(speedup=1.6, device="cpu (x86_64, 2 threads)").startswith("holds in direction")
    assert claims.scaling_verdict(speedup=1.6, device="cuda:0 (NVIDIA H200)") == "holds"
    assert claims.scaling_verdict(speedup=0.99, device="cpu") == "does not hold"
    assert claims.target_verdict(2.0, "<= 2") == "met" and claims.target_verdict(2.01, "<= 2") == "not met"
    assert claims.target_verdict(3.0, ">= 3") == "met" and claims.target_verdict(2.99, ">= 3") == "not met"
    with pytest.raises(ValueError, match="target of target_verdict"):
        claims.target_verdict(1.0, "== 1")


def _stobatch_result(conv, cert):
    avg = {str(mu): {"conventional": c, "certified": k} for mu, c, k in zip((0.05, 0.1, 0.3), conv, cert)}
    return {"metrics": {"main_protocol": "fresh", "evaluation": {"fresh": {
        "rows": [{"conventional": 0.8, "attack": None}], "average_over_attacks": avg}}}}


def test_readers_of_results():
    r = _stobatch_result((0.7, 0.6, 0.3), (0.1, 0.0, 0.0))
    assert claims.clean_accuracy(r) == 0.8
    assert claims.under_attack(r) == (0.1, 0.6)
    assert claims.under_attack(r, mu=0.3, key="certified") == (0.3, 0.0)
    m = {"mi": {"clean": {"ite": {"mean": 100.0, "sd": 1.0}}, "noisy": {"ite": {"mean": 25.0, "sd": 1.0}},
                "x": {"ksg": 0.5}}}
    assert claims.mi_reduction(m, "noisy", "ite") == 0.75
    audit = {"metrics": {"epsilon_lower_many_runs": 1.2, "epsilon_lower_one_run": 1.5}}
    assert claims.audit_lower_bound(audit) == 1.5
    env = {"environment": {"profile": "laptop", "device": "cpu"}}
    assert claims.source(env, env) == "laptop profile, cpu"


def test_guarantee_is_read_or_derived_from_the_settings():
    assert claims.guarantee({"metrics": {"guarantee": "none"}, "config": {}}) == "none"
    assert claims.guarantee({"metrics": {}, "config": {"sampling": "shuffle"}}) == "none"
    assert claims.guarantee({"metrics": {}, "config": {"sampling": "poisson", "accounting": "joint"}}) == "as stated"


def test_benchmark_reader(tmp_path):
    (tmp_path / "demo-cpu.json").write_text(json.dumps({"environment": {"device": "cpu"}, "rows": [{"a": 1}]}))
    found = claims.benchmarks("demo", root=tmp_path)
    assert found[0]["file"] == "demo-cpu.json" and found[0]["rows"] == [{"a": 1}]
    with pytest.raises(FileNotFoundError, match="python benchmarks/other.py"):
        claims.benchmarks("other", root=tmp_path)


def test_unsound_modes_warn_once_and_are_recorded():
    guarantees._WARNED.clear()
    with pytest.warns(guarantees.UnsoundModeWarning, match="sampling='shuffle' voids"):
        record = guarantees.check_settings({"sampling": "shuffle", "accounting": "original"})
    assert record["guarantee"] == "none" and len(record["guarantee_voided_by"]) == 2
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = guarantees.check_settings({"sampling": "shuffle"})  # once per process: no second warning
    assert again["guarantee"] == "none"
    assert guarantees.check_settings({"sampling": "poisson", "variant": "principled"})["guarantee"] == "as stated"
    with pytest.raises(ValueError, match="mode of warn_unsound"):
        guarantees.warn_unsound("nonsense")


def test_table_checks_its_rows():
    t = tables.Table(["a", "b"], [[1, "x"]], caption="from somewhere")
    assert repr(t).splitlines()[0] == "from somewhere" and t.column("b") == ["x"]
    assert "<caption>from somewhere</caption>" in t._repr_html_()
    with pytest.raises(ValueError, match="rows of Table"):
        tables.Table(["a", "b"], [[1]])
    assert tables.pct(0.8616) == "86.2%" and tables.fmt(None) == "-" and tables.fmt(1.23456, ".2f") == "1.23"


def test_mi_controls_verdict_flips_at_its_rule():
    artefact = claims.mi_controls_verdict(noise_reduction=0.99, lossless_reduction=0.98, given_draw_reduction=0.0)
    assert artefact.startswith("does not hold")
    # a lossless change that does not reproduce the reduction, and no conditional loss: the controls disagree
    assert claims.mi_controls_verdict(noise_reduction=0.99, lossless_reduction=0.5,
                                      given_draw_reduction=0.05).startswith("not settled")
    # a real loss given the draw
    assert claims.mi_controls_verdict(noise_reduction=0.99, lossless_reduction=0.98,
                                      given_draw_reduction=0.24).startswith("holds in part: 24%")
    assert claims.mi_controls_verdict(noise_reduction=0.99, lossless_reduction=0.98,
                                      given_draw_reduction=0.09).startswith("does not hold")


def test_strongest_attacker_is_the_highest_mean():
    from dpbook.stats import mean_interval

    attackers = {t: {"interval": mean_interval(v).as_dict()} for t, v in
                 {"blind": [0.80, 0.81, 0.79], "kerckhoffs": [0.85, 0.86, 0.84], "adaptive": [0.84, 0.85, 0.83]}.items()}
    name, interval = claims.strongest_attacker(attackers, ("blind", "adaptive", "kerckhoffs"))
    assert name == "kerckhoffs" and abs(interval.mean - 0.85) < 1e-12
    assert claims.strongest_attacker(attackers, ("blind", "adaptive"))[0] == "adaptive"


def test_private_accuracy_verdict_reads_the_interval():
    kw = dict(dp_baseline_clean=0.79, chance=0.1)
    assert claims.private_accuracy_verdict(private_clean=0.70, private_interval=(0.65, 0.75), **kw).startswith("does not")
    assert claims.private_accuracy_verdict(private_clean=0.78, private_interval=(0.75, 0.81), **kw) == "not settled"
    assert claims.private_accuracy_verdict(private_clean=0.85, private_interval=(0.82, 0.88), **kw) == "holds"
    both = dict(dp_baseline_interval=(0.77, 0.81), **kw)
    assert claims.private_accuracy_verdict(private_clean=0.76, private_interval=(0.75, 0.775), **both) == "not settled"
    assert claims.private_accuracy_verdict(private_clean=0.74, private_interval=(0.73, 0.76), **both).startswith("does not")


def test_certified_verdict_tells_nothing_certified_from_chance_models_certified():
    clean = {"a": 0.8, "b": 0.1}
    assert claims.certified_verdict({"a": 0.0, "b": 0.0}, clean, 0.1) == \
        "does not hold: no model is certified at this attack size"
    assert claims.certified_verdict({"a": 0.0, "b": 0.1}, clean, 0.1).endswith("only models at chance are certified")
    assert claims.certified_verdict({"a": 0.3, "b": 0.1}, clean, 0.1) == "holds for a"
