"""GEP, Biased-GEP and DP-SGD compared fairly: the same small grid for each, chosen on validation, then seeds.

The ``gep_tuning`` experiment answers "which method is more accurate at this epsilon?" in a way one run each
cannot (chapter 21):

1. **Validation split.** Every run of the ``gep`` experiment cuts ``settings("gep").validation`` examples from
   the private training split and records its final validation accuracy; selection reads only that. The test
   set is read once per run, after its last epoch, and the summary reports test accuracies only at the chosen
   point.
2. **Equal tuning budgets.** Each method gets the same grid, ``lrs`` x ``clips`` (:func:`grid`): the learning
   rate, and the clipping norms the method has (DP-SGD's C; GEP's S_1 = C with S_0 = ``clip_ratio`` * C;
   Biased-GEP's S_0 alike). At a fixed learning rate GEP's noise-free update is larger than DP-SGD's
   (S_0 = 5 against C = 2 in the original code), so one shared learning rate confounds the method with the
   step size; tuning both on the same grid removes that.
3. **Seeds and intervals.** Each grid point is trained once (``seed=0``); the point with the best validation
   accuracy (:func:`choose`) is trained again at fresh seeds ``1 .. seeds``; the test accuracies of those
   ``seeds`` runs give a mean and a 95% Student-t interval (:func:`dpbook.stats.mean_interval`), and
   methods are compared by :func:`dpbook.stats.compare`, turned into verdicts by
   :func:`dpbook.claims.interval_verdict`.
4. **The cost of tuning** (:func:`tuning_cost`): each run meets its target epsilon, but releasing the best of
   G runs is a function of all G, so the model released is (epsilon_G, delta)-DP with epsilon_G from the RDP
   composition of every run's steps; the validation examples get no guarantee from the selection at all.
   Private selection (Liu & Talwar, STOC 2019; Papernot & Steinke, ICLR 2022) would charge only a small
   multiple of epsilon, but needs a random number of runs, which a fixed grid is not.

A seed (``seed`` of the gep settings) fixes the initialisation, the public labels and the splits; the DP noise
and the Poisson batches are drawn from OS-seeded generators, so the seeds' runs have independent noise. The
seed-0 run that won the selection is not one of the seeds: its noise was lucky on validation, and part of that
luck is a genuinely better model, which would bias its test accuracy upwards (the winner's curse).

Every run is ``experiments.run("gep", resume=True, ...)`` under the active profile (sizes from
``settings("gep")``), so the grid is resumable: an interrupted tuning restarts where it stopped, and once
every run exists re-running ``gep_tuning`` only re-reads their results (seconds). The ``gep`` settings are
part of the summary's key (``uses=("gep",)``), so ``reuse=True`` never returns a summary of other sizes.

Example (smoke profile, digits; a minute; tests/test_tuning.py runs it)::

    from dpbook import experiments
    res = experiments.run("gep_tuning")
    [(c["method"], c["epsilon"], c["interval_text"]) for c in res["metrics"]["cells"]]
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from .. import checks, stats
from ..runs import Run
from .registry import experiment

#: Method names as the book prints them.
NAMES = {"dpsgd": "DP-SGD", "biased": "Biased-GEP", "gep": "GEP"}
#: The comparisons the verdicts read: (method A, method B) for the claim "A is more accurate than B".
COMPARISONS = (("gep", "dpsgd"), ("gep", "biased"))

TUNING_CAVEAT = (
    "Each run meets its target epsilon, but the released model is the best of the grid, a function of every "
    "grid run: by RDP composition of all their steps it is (epsilon_tuning, delta)-DP for an example trained on "
    "in every run (the 'epsilon_all_grid_runs' and 'epsilon_all_runs' fields; the seeds' runs are released "
    "too). Private selection (Liu & Talwar 2019; Papernot & Steinke 2022) would cost only a small multiple of "
    "epsilon but needs a random number of runs, which this fixed grid does not use. The validation examples "
    "are private data read without noise: the selection gives them no guarantee. The test set is read once per "
    "run, after training, and never by the selection.")


def grid(method: str, *, lrs: Sequence[float], clips: Sequence[float], clip_ratio: float) -> list[dict]:
    """The grid points of ``method``: one dict of gep settings per (learning rate, clipping norm), in the order
    ``lrs`` x ``clips``, each with ``lr``, ``clip`` (the grid value) and the gep settings it sets.

    ``clip`` is DP-SGD's clipping norm C and GEP's residual norm S_1 (``clip_residual``); GEP's and
    Biased-GEP's embedding norm is S_0 = ``clip_ratio`` * ``clip`` (``clip_embedding``; the original code's
    5 / 2 = 2.5), Biased-GEP being GEP without the residual. Every method gets ``len(lrs) * len(clips)``
    points: equal budgets. The point ``lr=0.1, clip=2`` is the original code's setting for all three.

    Example:
        >>> [(p["lr"], p["clip_embedding"], p["clip_residual"])
        ...  for p in grid("gep", lrs=(0.1,), clips=(1.0, 2.0), clip_ratio=2.5)]
        [(0.1, 2.5, 1.0), (0.1, 5.0, 2.0)]
        >>> grid("dpsgd", lrs=(0.1,), clips=(1.0,), clip_ratio=2.5)
        [{'lr': 0.1, 'clip': 1.0, 'clip_residual': 1.0}]
    """
    checks.one_of(method, tuple(NAMES), "method", "grid()")
    checks.check(len(lrs) > 0 and all(v > 0 for v in lrs), "lrs", "grid()", "a non-empty list of numbers > 0", lrs)
    checks.check(len(clips) > 0 and all(v > 0 for v in clips), "clips", "grid()",
                 "a non-empty list of numbers > 0", clips)
    checks.positive(clip_ratio, "clip_ratio", "grid()")
    points = []
    for lr in lrs:
        for c in clips:
            lr, c = float(lr), float(c)
            if method == "dpsgd":
                norms = {"clip_residual": c}
            elif method == "biased":
                norms = {"clip_embedding": clip_ratio * c}
            else:
                norms = {"clip_embedding": clip_ratio * c, "clip_residual": c}
            points.append({"lr": lr, "clip": c, **norms})
    return points


def settings_of(point: dict) -> dict:
    """The gep settings of a grid ``point`` (without its bookkeeping key ``clip``)."""
    return {k: v for k, v in point.items() if k != "clip"}


def choose(validation_accuracies: Sequence[float]) -> int:
    """Index of the best validation accuracy (the first of equals, so the choice is deterministic).

    Only validation accuracies go in: the selection cannot see the test set.
    """
    scores = [float(v) for v in validation_accuracies]
    checks.check(len(scores) > 0, "validation_accuracies", "choose()", "non-empty", scores)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def tuning_cost(runs: Sequence[dict], *, delta: float) -> float:
    """Epsilon at ``delta`` of releasing every run in ``runs`` (gep results), by RDP composition of all their
    steps: what an example trained on in each of them is guaranteed, whatever is chosen from them.

    Each run is ``steps`` Poisson-subsampled Gaussian mechanisms with its ``effective_noise_multiplier`` and
    ``sample_rate`` (joint accounting); RDP curves add under composition (Mironov 2017, Proposition 1), and
    the sum is converted once (:func:`dpbook.privacy.rdp_to_epsilon`).
    """
    from .. import privacy

    checks.check(len(runs) > 0, "runs", "tuning_cost()", "non-empty", len(runs))
    total = 0.0
    for r in runs:
        m = r["metrics"]
        total = total + privacy.rdp(noise_multiplier=m["effective_noise_multiplier"], sample_rate=m["sample_rate"],
                                    steps=m["steps"])
    return privacy.rdp_to_epsilon(privacy.DEFAULT_ORDERS, total, delta)[0]


def tune(*, epsilons: Sequence[float], methods: Sequence[str], lrs: Sequence[float], clips: Sequence[float],
         clip_ratio: float, seeds: int, delta: float, run_one: Callable[..., dict],
         log: Callable[[str], None] = print) -> dict:
    """Tune every method at every epsilon on the same grid, choose on validation, re-run the choice at seeds.

    Args:
        epsilons: target epsilons.
        methods: gep ``method`` values (``"dpsgd"``, ``"biased"``, ``"gep"``).
        lrs, clips, clip_ratio: the grid (:func:`grid`).
        seeds: fresh runs at the chosen point (seeds ``1 .. seeds``; the grid's seed-0 run is not one), >= 3 for an
            interval worth reading.
        delta: of the tuning cost.
        run_one: ``run_one(method=..., epsilon=..., seed=..., lr=..., clip_...=...)`` trains (or reloads) one
            gep run and returns its result; its ``metrics`` must hold ``validation_accuracy``,
            ``test_accuracy``, ``epsilon``, ``effective_noise_multiplier``, ``sample_rate``, ``steps``.
        log: where progress lines go.

    Returns:
        ``{"cells": [...], "comparisons": [...], "verdicts": {...}, "train_seconds": float}``: one cell per
        (epsilon, method) with the grid's validation accuracies (no test accuracies), the chosen point, the
        seeds' test accuracies and their interval; one comparison per epsilon and pair of :data:`COMPARISONS`.
    """
    from .. import claims

    checks.check(isinstance(seeds, int) and seeds >= 2, "seeds", "tune()", "an integer >= 2 (3 or more for "
                 "the book's verdicts)", seeds)
    points = {m: grid(m, lrs=lrs, clips=clips, clip_ratio=clip_ratio) for m in methods}
    total = len(epsilons) * sum(len(p) + seeds for p in points.values())
    done, start, train_seconds = 0, time.perf_counter(), 0.0

    def one(method: str, epsilon: float, point: dict, seed: int) -> dict:
        nonlocal done, train_seconds
        done += 1
        label = (f"[{done}/{total}] {NAMES.get(method, method)} eps {epsilon:g} lr {point['lr']:g} "
                 f"clip {point['clip']:g} seed {seed}")
        log(f"{label}: start ({time.perf_counter() - start:.0f} s elapsed)")
        result = run_one(method=method, epsilon=float(epsilon), seed=seed, **settings_of(point))
        seconds = result.get("timings", {}).get("train_seconds", 0.0)
        train_seconds += seconds
        log(f"{label}: validation {result['metrics']['validation_accuracy']:.4f} "
            f"(trained {seconds:.0f} s; {time.perf_counter() - start:.0f} s elapsed)")
        return result

    cells = []
    for epsilon in epsilons:
        for method in methods:
            grid_runs = [one(method, epsilon, p, 0) for p in points[method]]
            validation = [r["metrics"]["validation_accuracy"] for r in grid_runs]
            best = choose(validation)
            chosen = points[method][best]
            seed_runs = [one(method, epsilon, chosen, s) for s in range(1, seeds + 1)]  # fresh: not the winner
            test = [r["metrics"]["test_accuracy"] for r in seed_runs]  # read here, after the choice, only
            interval = stats.mean_interval(test)
            cells.append({
                "epsilon": float(epsilon), "method": method,
                "grid": [{**p, "validation_accuracy": v, "config_hash": r.get("config_hash")}
                         for p, v, r in zip(points[method], validation, grid_runs)],
                "chosen_index": best, "chosen": chosen,
                # the settings chosen at the smallest or largest of their values (where the grid has more than
                # one): the optimum may lie outside the grid in that direction
                "chosen_on_boundary": [key for key, vals in (("lr", lrs), ("clip", clips))
                                       if len(vals) > 1 and chosen[key] in (min(vals), max(vals))],
                "seeds": list(range(1, seeds + 1)),
                "validation_accuracy": [r["metrics"]["validation_accuracy"] for r in seed_runs],
                "test_accuracy": test, "interval": interval.as_dict(), "interval_text": interval.text(),
                "epsilon_per_run": max(r["metrics"]["epsilon"] for r in grid_runs + seed_runs),
                "epsilon_all_grid_runs": tuning_cost(grid_runs, delta=delta),
                "epsilon_all_runs": tuning_cost(grid_runs + seed_runs, delta=delta),
                "delta": delta,
                "seed_config_hashes": [r.get("config_hash") for r in seed_runs],
            })
            log(f"{NAMES.get(method, method)} at eps {epsilon:g}: chose lr {chosen['lr']:g}, clip {chosen['clip']:g} "
                f"(validation {validation[best]:.4f}); test over {seeds} seeds {interval.text()}")

    def cell(method: str, epsilon: float) -> dict | None:
        return next((c for c in cells if c["method"] == method and c["epsilon"] == float(epsilon)), None)

    def interval_of(c: dict) -> stats.Interval:
        return stats.Interval(**c["interval"])

    comparisons, verdicts = [], {}
    for a, b in COMPARISONS:
        pairs = []
        for epsilon in epsilons:
            ca, cb = cell(a, epsilon), cell(b, epsilon)
            if ca is None or cb is None:
                continue
            ia, ib = interval_of(ca), interval_of(cb)
            pairs.append((ia, ib))
            comparisons.append({"epsilon": float(epsilon), "a": a, "b": b, "outcome": stats.compare(ia, ib),
                                "gap_of_means": ia.mean - ib.mean, "a_text": ia.text(), "b_text": ib.text()})
        if pairs:
            verdicts[f"{NAMES[a]} is more accurate than {NAMES[b]}"] = claims.interval_verdict(pairs)
    return {"cells": cells, "comparisons": comparisons, "verdicts": verdicts, "train_seconds": train_seconds}


def gep_run(cfg, root: str, *, stop_after_epoch: int | None = None, **overrides) -> dict:
    """One ``gep`` run as :func:`gep_tuning` with settings ``cfg`` trains it: ``settings("gep")`` of the active
    profile with ``overrides`` (method, epsilon, seed, a grid point's settings, ...) and ``cfg.epochs`` when
    > 0, stored under ``root`` and resumed if interrupted (returned as it is when finished)."""
    from . import run as run_experiment

    sized = {"epochs": cfg.epochs} if cfg.epochs else {}
    return run_experiment("gep", resume=True, results=root, stop_after_epoch=stop_after_epoch, **sized, **overrides)


@experiment("gep_tuning", uses=("gep",))
def gep_tuning(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Tune GEP, Biased-GEP and DP-SGD on equal grids (``cfg.lrs`` x ``cfg.clips``) at each of ``cfg.epsilons``,
    choose on validation, train the choice at ``cfg.seeds`` seeds, and compare the methods by their intervals.

    The runs are ``gep`` experiments under the active profile's ``settings("gep")`` (sizes, validation split,
    pixel scale; ``cfg.epochs`` replaces its epochs when > 0), stored in the same results folder and resumed if
    interrupted. The result's ``metrics``:

    * ``cells``: per (epsilon, method): ``grid`` (each point's settings and final validation accuracy),
      ``chosen``, ``chosen_index`` and ``chosen_on_boundary`` (``"lr"`` and/or ``"clip"`` when the choice is
      the grid's smallest or largest value of it), ``seeds``, the seeds' ``validation_accuracy`` and ``test_accuracy``,
      ``interval`` (:meth:`dpbook.stats.Interval.as_dict`) and ``interval_text``, ``epsilon_per_run``,
      ``epsilon_all_grid_runs`` and ``epsilon_all_runs`` (:func:`tuning_cost`), ``delta``;
    * ``comparisons``: per epsilon and pair of :data:`COMPARISONS`: ``outcome`` of
      :func:`dpbook.stats.compare` (``"higher"``, ``"lower"``, ``"overlap"``) and the gap of the means;
    * ``verdicts``: ``{"GEP is more accurate than DP-SGD": ..., ...}`` from
      :func:`dpbook.claims.interval_verdict` over the epsilons;
    * ``tuning_cost``: :data:`TUNING_CAVEAT`; ``validation_use``: what the validation split is;
      ``gep_settings``: the gep settings the runs share (besides the grid, method, epsilon and seed).

    ``timings``: ``wall_seconds`` of this call and ``train_seconds``, the training time of every run it used
    (including runs reloaded from earlier calls): the compute the whole comparison costs.
    """
    from .. import config
    from .gep_experiment import VALIDATION_USE

    gep_cfg = config.settings("gep")
    if not gep_cfg.validation:
        raise ValueError("gep_tuning chooses on a validation split, but settings('gep').validation is 0; "
                         "set validation to a few thousand examples (or a fraction) in the gep preset")
    root = str(run.dir.parent)
    t0 = time.perf_counter()
    print(f"gep_tuning: {len(cfg.methods)} methods x {len(cfg.epsilons)} epsilons x "
          f"{len(cfg.lrs) * len(cfg.clips)} grid points (lr {list(cfg.lrs)} x clip {list(cfg.clips)}), then "
          f"{cfg.seeds} seeds at each choice; gep runs: {gep_cfg.dataset}, {gep_cfg.model}, "
          f"{gep_cfg.max_train or 'all'} private / {gep_cfg.validation} validation examples, "
          f"{cfg.epochs or gep_cfg.epochs} "
          f"epochs, batch {gep_cfg.batch_size}, scale {gep_cfg.scale!r}", flush=True)

    sized = {"epochs": cfg.epochs} if cfg.epochs else {}

    def run_one(**overrides) -> dict:
        return gep_run(cfg, root, stop_after_epoch=stop_after_epoch, **overrides)

    out = tune(epsilons=cfg.epsilons, methods=cfg.methods, lrs=cfg.lrs, clips=cfg.clips, clip_ratio=cfg.clip_ratio,
               seeds=cfg.seeds, delta=gep_cfg.delta, run_one=run_one, log=lambda s: print(s, flush=True))
    for c in out["comparisons"]:
        print(f"eps {c['epsilon']:g}: {NAMES[c['a']]} {c['a_text']} vs {NAMES[c['b']]} {c['b_text']}: "
              f"{c['outcome']}", flush=True)
    for claim, verdict in out["verdicts"].items():
        print(f"{claim}: {verdict}", flush=True)
    shared = {k: v for k, v in {**gep_cfg, **sized}.items()
              if k not in ("method", "epsilon", "seed", "lr", "clip_embedding", "clip_residual", "minutes")}
    return run.finish(
        metrics={"cells": out["cells"], "comparisons": out["comparisons"], "verdicts": out["verdicts"],
                 "tuning_cost": TUNING_CAVEAT, "validation_use": VALIDATION_USE, "gep_settings": shared,
                 "grid_points_per_method": len(cfg.lrs) * len(cfg.clips),
                 "runs": len(out["cells"]) * (len(cfg.lrs) * len(cfg.clips) + cfg.seeds)},
        timings={"wall_seconds": time.perf_counter() - t0, "train_seconds": out["train_seconds"]})
