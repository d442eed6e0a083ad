"""The papers' claims, the readers of results and benchmark files, and the rules that turn numbers into verdicts.

The report chapter (``notebooks/91_audit_report.ipynb``) and the experiment chapters put each paper's claim
next to what its original code does and what we measured. The verdict is computed here, by a rule with a
unit test (``tests/test_claims.py``: each verdict flips when its number crosses the rule), never typed in a
notebook. Verdicts are one of:

* **holds**: measured as claimed, on this profile;
* **holds in direction**: the sign of the effect, not its size;
* **does not hold**: measured otherwise;
* **refuted**: a test that could catch the claim caught it;
* **not tested here**: the profile cannot reach it.

Example:
    >>> privacy_verdict(refuted=False, epsilon_accountant=14.8, epsilon_claimed=7.6)
    'does not hold (accountant); audit too weak to tell'
    >>> adversary_verdict(adaptive=0.55, non_adaptive=0.12, chance=0.1)
    'holds only against the non-adaptive check'
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Where the benchmark scripts store their measurements.
BENCHMARK_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
#: A classifier whose accuracy is below this multiple of chance counts as "at chance".
CHANCE_FACTOR = 2.0
#: An adversary more than this above chance recovers the private attribute.
ADVERSARY_MARGIN = 0.1

#: StoBatch's claims, from the paper's abstract (Phan et al., ICML 2020).
STOBATCH_CLAIMS = {
    "privacy": "eps1 + eps1/gamma_x + eps1/gamma + eps2",
    "accuracy": "better than DP baselines under attack",
    "certified": "certified accuracy under attack",
    "scaling": "several GPUs / trainers",
}


def paper_claims() -> dict:
    """Every paper's recorded claims: ``{"gep": ..., "shredder": ..., "stobatch": ...}``."""
    from . import gep, shredder

    return {"gep": {"table1": gep.PAPER_TABLE1, "epsilons": gep.PAPER_EPSILONS,
                    "nonprivate": gep.PAPER_NONPRIVATE},
            "shredder": shredder.PAPER_CLAIMS, "stobatch": STOBATCH_CLAIMS}


# ---------------------------------------------------------------------------------------------------
# Readers of results files (``dpbook.experiments.run(..., reuse=True)``) and benchmark files
# ---------------------------------------------------------------------------------------------------
def source(*results: dict) -> str:
    """Which profile and device produced ``results``: ``"laptop profile, cpu (x86_64, 2 threads)"``."""
    return "; ".join(sorted({f"{r['environment']['profile']} profile, {r['environment']['device']}"
                             for r in results}))


def guarantee(result: dict) -> str:
    """``"none"`` when the run used a mode that voids its privacy guarantee (:mod:`dpbook.guarantees`), else
    ``"as stated"``; read from the result, or from its settings for files written before it was recorded."""
    from . import guarantees

    recorded = result["metrics"].get("guarantee")
    if recorded is not None:
        return recorded
    return guarantees.record(guarantees.unsound_settings(result["config"]))["guarantee"]


def evaluation(result: dict, protocol: str | None = None) -> tuple[float, dict[float, dict]]:
    """(clean conventional accuracy, {attack size: averages over attacks}) of a stobatch result, for inference
    ``protocol`` (default the run's main one)."""
    m = result["metrics"]
    ev = m["evaluation"][protocol or m["main_protocol"]]
    return ev["rows"][0]["conventional"], {float(k): v for k, v in ev["average_over_attacks"].items()}


def clean_accuracy(result: dict, protocol: str | None = None) -> float:
    """Conventional accuracy of a stobatch result on clean test points."""
    return evaluation(result, protocol)[0]


def under_attack(result: dict, protocol: str | None = None, mu: float | None = None,
                 key: str = "conventional") -> tuple[float, float | None]:
    """(attack size, accuracy averaged over attacks) of a stobatch result; ``mu`` defaults to the middle size;
    ``key`` is ``"conventional"`` or ``"certified"``."""
    avg = evaluation(result, protocol)[1]
    mu = sorted(avg)[len(avg) // 2] if mu is None else float(mu)
    return mu, avg[mu][key]


def mi_reduction(metrics: dict, name: str, estimator: str, kind: str | None = None) -> float:
    """1 - MI(representation ``name``) / MI(clean) for ``estimator`` (means over seeds), from a ``shredder``
    result's ``metrics`` or, with ``kind`` (``"unconditional"`` or ``"given_draw"``), a ``shredder_attacks`` one's."""
    def value(v):
        return v["mean"] if isinstance(v, dict) else v

    table = metrics["mi"] if kind is None else metrics["mi"][kind]
    return 1 - value(table[name][estimator]) / value(table["clean"][estimator])


def audit_lower_bound(result: dict) -> float:
    """The larger of an audit's two lower bounds on epsilon (many runs, one run)."""
    m = result["metrics"]
    return max(m["epsilon_lower_many_runs"], m["epsilon_lower_one_run"])


def tuned(result: dict, method: str, epsilon: float):
    """The :class:`dpbook.stats.Interval` of the test accuracies of ``method`` at ``epsilon`` in a gep_tuning
    result (its seeds at the point chosen on validation)."""
    from .stats import Interval

    for cell in result["metrics"]["cells"]:
        if cell["method"] == method and cell["epsilon"] == float(epsilon):
            return Interval(**cell["interval"])
    raise KeyError(f"no {method!r} at epsilon {epsilon:g} in this gep_tuning result; it has "
                   + ", ".join(f"{c['method']} at {c['epsilon']:g}" for c in result["metrics"]["cells"]))


def benchmarks(name: str, root: Path = BENCHMARK_RESULTS) -> list[dict]:
    """The stored measurements of benchmark ``name`` (``benchmarks/results/<name>-<machine>.json``), one per
    machine, each with ``file`` (its name), ``environment`` and ``rows``."""
    found = [{"file": p.name, **json.loads(p.read_text())} for p in sorted(root.glob(f"{name}-*.json"))]
    if not found:
        raise FileNotFoundError(f"no results of benchmark {name!r} in {root.name}/; run  python benchmarks/{name}.py")
    return found


# ---------------------------------------------------------------------------------------------------
# Verdict rules
# ---------------------------------------------------------------------------------------------------
def at_chance(accuracy: float, chance: float) -> bool:
    """Below :data:`CHANCE_FACTOR` times chance: the classifier has learned (almost) nothing."""
    return accuracy < CHANCE_FACTOR * chance


def privacy_verdict(*, refuted: bool, epsilon_accountant: float, epsilon_claimed: float) -> str:
    """A privacy claim against the accountant's epsilon of the mechanism that really runs and an audit, which
    can only refute."""
    if refuted:
        return "refuted (audit)"
    if epsilon_accountant > epsilon_claimed:
        return "does not hold (accountant); audit too weak to tell"
    return "holds (accountant); audit consistent"


def direction_verdict(pairs: Iterable[tuple[float, float]]) -> str:
    """"A beats B" from (a, b) measurements, one per setting: holds in direction when a > b in every one."""
    pairs = list(pairs)
    return "holds in direction" if pairs and all(a > b for a, b in pairs) else "does not hold"


def interval_verdict(pairs: Iterable[tuple]) -> str:
    """"A beats B" from (A, B) pairs of :class:`dpbook.stats.Interval` (means over seeds with their intervals),
    one pair per setting (e.g. per epsilon).

    * ``"holds"``: A's interval lies above B's in every setting (:func:`dpbook.stats.compare`);
    * ``"does not hold"``: B's lies above A's in some setting;
    * ``"not settled: ..."``: the intervals overlap somewhere (the runs cannot tell), saying whether the
      means at least point the claimed way everywhere;
    * ``"not tested here"``: no pairs.

    Example:
        >>> from dpbook.stats import mean_interval
        >>> a, b = mean_interval([0.80, 0.81, 0.82]), mean_interval([0.70, 0.71, 0.72])
        >>> interval_verdict([(a, b)]), interval_verdict([(b, a)])
        ('holds', 'does not hold')
    """
    from .stats import compare

    pairs = list(pairs)
    if not pairs:
        return "not tested here"
    outcomes = [compare(a, b) for a, b in pairs]
    if all(o == "higher" for o in outcomes):
        return "holds"
    if any(o == "lower" for o in outcomes):
        return "does not hold"
    if all(a.mean > b.mean for a, b in pairs):
        return "not settled: the means point the claimed way, but the intervals overlap"
    return "not settled: the intervals overlap"


def accuracy_loss_verdict(*, loss_as_trained: float, loss_code_sampler: float, claimed_loss: float) -> str:
    """Shredder's "the public task keeps its accuracy": the loss with the pool's samples as trained and with the
    original code's sampler, against the paper's claimed loss."""
    if max(loss_as_trained, loss_code_sampler) <= claimed_loss:
        return "holds for both samplers"
    if loss_as_trained <= claimed_loss:
        return "holds for the samples as trained; the code's own sampler loses more than the claim"
    return "does not hold"


def mi_raw_verdict(*, noise_reduction: float, rescale_reduction: float) -> str:
    """Shredder's "the noise cuts MI", on the original's raw estimator, with the pure-rescale control (a
    rescale removes no information, so an estimate it moves as much measures scale)."""
    if noise_reduction <= 0:
        return "does not hold: the raw estimate does not fall"
    if abs(rescale_reduction) >= 0.8 * noise_reduction:
        return "not evidence: a pure rescale, which removes nothing, moves the raw estimate as much"
    return "holds on raw values (a proxy, not a bound)"


def mi_controls_verdict(*, noise_reduction: float, lossless_reduction: float, given_draw_reduction: float,
                        margin: float = 0.1) -> str:
    """Shredder's "the noise cuts MI", judged with two controls (fractions, 1 - MI / MI of the clean activation):
    ``lossless_reduction``, what a lossless change (the pool's offset added to the clean activation, from which
    it is recoverable) does to the same estimate; ``given_draw_reduction``, the reduction of the MI estimated
    within each pool draw (``I(X; A~ | J)``), which a lossless offset cannot move.

    * the estimate conditioned on the draw shows no reduction (below ``margin``) and a lossless change
      reproduces the unconditional one: ``"does not hold: ..."`` (the reduction is an artefact);
    * the conditioned estimate falls by at least ``margin``: ``"holds in part: ..."`` (a proxy, not a bound);
    * otherwise ``"not settled: ..."``.

    Example:
        >>> mi_controls_verdict(noise_reduction=0.99, lossless_reduction=0.99, given_draw_reduction=0.0)[:13]
        'does not hold'
    """
    if given_draw_reduction < margin and lossless_reduction >= noise_reduction - margin:
        return ("does not hold: a lossless offset reproduces the reduction, and given the pool draw the estimate "
                "does not fall")
    if given_draw_reduction >= margin:
        return f"holds in part: {given_draw_reduction:.0%} lower given the draw (a proxy, not a bound)"
    return "not settled: the controls disagree"


def strongest_attacker(attackers: dict, threat_models: Sequence[str]) -> tuple[str, Any]:
    """The threat model of ``threat_models`` with the highest mean accuracy in ``attackers`` (one channel of a
    ``shredder_attacks`` result: ``{threat: {"interval": ...}}``), with its :class:`dpbook.stats.Interval`."""
    from .stats import Interval

    name = max(threat_models, key=lambda t: attackers[t]["interval"]["mean"])
    return name, Interval(**attackers[name]["interval"])


def adversary_verdict(*, adaptive: float, non_adaptive: float, chance: float,
                      margin: float = ADVERSARY_MARGIN) -> str:
    """"An adversary cannot recover the private attribute": it holds only if every adversary tried stays
    within ``margin`` of chance; the verdict follows the strongest."""
    if adaptive > chance + margin and non_adaptive <= chance + margin:
        return "holds only against the non-adaptive check"
    if max(adaptive, non_adaptive) > chance + margin:
        return "does not hold"
    return "holds"


def private_accuracy_verdict(*, private_clean: float, dp_baseline_clean: float, chance: float,
                             private_interval: tuple[float, float] | None = None,
                             dp_baseline_interval: tuple[float, float] | None = None) -> str:
    """StoBatch's "more accurate than DP baselines": the private model against the DP baseline (clean). With
    ``private_interval`` (low, high) of the private model's seeds, a baseline inside it is "not settled"; with the
    baseline's interval too, overlapping intervals are "not settled" (:func:`dpbook.stats.compare`)."""
    if at_chance(private_clean, chance) and not at_chance(dp_baseline_clean, chance):
        return "does not hold: the private StoBatch is at chance, the DP baseline is not"
    if private_interval is not None:
        low, high = dp_baseline_interval or (dp_baseline_clean, dp_baseline_clean)
        if private_interval[0] <= high and low <= private_interval[1]:
            return "not settled"
        return "holds" if private_interval[0] > high else "does not hold: the DP baseline is more accurate"
    if private_clean >= dp_baseline_clean:
        return "holds"
    return "does not hold: the DP baseline is more accurate"


def certified_verdict(certified: dict[str, float], clean: dict[str, float], chance: float) -> str:
    """"Certified robustness": which models are certified on some points while not at chance."""
    useful = [name for name, c in certified.items() if c and c > 0 and not at_chance(clean[name], chance)]
    if useful:
        return f"holds for {', '.join(useful)}"
    if not any(c and c > 0 for c in certified.values()):
        return "does not hold: no model is certified at this attack size"
    return "does not hold: only models at chance are certified"


def scaling_verdict(*, speedup: float, device: str) -> str:
    """"Scales with trainers": more examples per second with more trainer processes."""
    if speedup <= 1:
        return "does not hold"
    return "holds" if device.startswith("cuda") else "holds in direction (CPU only; GPU not measured)"


def target_verdict(value: float, target: str) -> str:
    """A benchmark ratio against its target (``"<= 2"`` or ``">= 3"``): ``"met"`` or ``"not met"``."""
    op, bound = target.split()
    ok = value <= float(bound) if op == "<=" else value >= float(bound) if op == ">=" else None
    if ok is None:
        raise ValueError(f"target of target_verdict() must be '<= x' or '>= x'; got {target!r}")
    return "met" if ok else "not met"
