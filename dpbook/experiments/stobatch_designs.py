"""The sound StoBatch design space searched on a validation split, then the choice at several seeds (chapter 42).

Every design (:data:`DESIGNS`) is a per-example StoBatch (:mod:`dpbook.stobatch.release`) at a total budget
eps: how the inputs are protected (a per-example Gaussian or Laplace release on a public code, or not at all
because a public auto-encoder and DP-SGD take them), how the labels are (randomized response, or DP-SGD above
the DP layer), and the share of eps the input release gets (eps_AE = share * eps, eps2 = the rest).

For each eps of ``cfg.epsilons``: every design is trained once (seed 0, ``test=False``: validation accuracy
only); the best on validation (:func:`dpbook.experiments.tuning.choose`) is trained again at fresh seeds
``1 .. cfg.seeds`` with the full test evaluation (attacks, certificates); their test accuracies give a mean and
a 95% interval (:func:`dpbook.stats.mean_interval`). The test set is read only by the seeds' runs. Every run is
``experiments.run("stobatch", resume=True, ...)``: the search is resumable and, once done, re-reading it takes
seconds.

Example (smoke profile, digits; tests/test_stobatch_experiment.py runs it)::

    from dpbook import experiments
    res = experiments.run("stobatch_designs")
    [(c["epsilon"], c["chosen"], c["interval_text"]) for c in res["metrics"]["cells"]]
"""
from __future__ import annotations

import time

from .. import checks, stats
from ..runs import Run
from .registry import experiment
from .tuning import choose

#: name -> (the stobatch settings of the design, share of eps for the input release)
DESIGNS = {
    "release PCA-32 Gaussian + RR labels (3/4 to inputs)":
        (dict(inputs="released", labels="randomized_response", input_basis="pca", input_dims=32), 0.75),
    "release PCA-32 Gaussian + RR labels (1/2 to inputs)":
        (dict(inputs="released", labels="randomized_response", input_basis="pca", input_dims=32), 0.5),
    "release PCA-8 Gaussian + RR labels (3/4 to inputs)":
        (dict(inputs="released", labels="randomized_response", input_basis="pca", input_dims=8), 0.75),
    "release 2x2-pooled Gaussian + RR labels (3/4 to inputs)":
        (dict(inputs="released", labels="randomized_response", input_basis="pool"), 0.75),
    "release pixels Laplace + RR labels (3/4 to inputs)":
        (dict(inputs="released", labels="randomized_response", input_basis="pixels", input_mechanism="laplace"),
         0.75),
    "release PCA-32 Gaussian + DP-SGD above (1/2 to inputs)":
        (dict(inputs="released", labels="dpsgd", input_basis="pca", input_dims=32), 0.5),
    "public auto-encoder + DP-SGD above":
        (dict(inputs="public_autoencoder", labels="dpsgd"), 0.0),
}


def design_settings(name: str, epsilon: float) -> dict:
    """The stobatch settings of design ``name`` at total budget ``epsilon``."""
    checks.one_of(name, tuple(DESIGNS), "design", "design_settings()")
    settings, share = DESIGNS[name]
    return {"variant": "principled", **settings, "epsilon_autoencoder": share * epsilon,
            "epsilon2": (1.0 - share) * epsilon}


@experiment("stobatch_designs", uses=("stobatch",))
def stobatch_designs(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Search ``cfg.designs`` at each of ``cfg.epsilons`` on validation, then the choice at ``cfg.seeds`` seeds.

    ``metrics["cells"]``: per eps, ``grid`` (each design's validation accuracy and the accountant's eps),
    ``chosen``, the seeds' ``test_accuracy``, ``interval`` and ``interval_text``, ``seed_config_hashes`` (the
    runs chapter 42 reads for attacks and certificates). ``timings["train_seconds"]``: every run's training.
    """
    from . import run as run_experiment
    from .stobatch_experiment import VALIDATION_USE

    designs = list(cfg.designs) or list(DESIGNS)
    for name in designs:
        checks.one_of(name, tuple(DESIGNS), "designs", "the stobatch_designs experiment")
    root, t0, train_seconds = str(run.dir.parent), time.perf_counter(), 0.0

    def one(name: str, epsilon: float, seed: int, test: bool) -> dict:
        nonlocal train_seconds
        print(f"[eps {epsilon:g}, seed {seed}] {name}: start ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
        result = run_experiment("stobatch", resume=True, results=root, stop_after_epoch=stop_after_epoch,
                                seed=seed, test=test, **design_settings(name, epsilon))
        train_seconds += result.get("timings", {}).get("train_seconds", 0.0)
        print(f"[eps {epsilon:g}, seed {seed}] {name}: validation {result['metrics']['validation_accuracy']:.4f}",
              flush=True)
        return result

    cells = []
    for epsilon in cfg.epsilons:
        grid = [one(name, epsilon, 0, False) for name in designs]
        validation = [r["metrics"]["validation_accuracy"] for r in grid]
        best = choose(validation)
        chosen = designs[best]
        seeds = [one(chosen, epsilon, s, True) for s in range(1, cfg.seeds + 1)]
        test = [r["metrics"]["test_accuracy"] for r in seeds]
        interval = stats.mean_interval(test)
        cells.append({"epsilon": float(epsilon), "chosen": chosen, "chosen_index": best,
                      "grid": [{"design": n, "validation_accuracy": v, "epsilon": r["metrics"]["epsilon"],
                                "config_hash": r["config_hash"]} for n, v, r in zip(designs, validation, grid)],
                      "seeds": list(range(1, cfg.seeds + 1)), "test_accuracy": test,
                      "validation_accuracy": [r["metrics"]["validation_accuracy"] for r in seeds],
                      "interval": interval.as_dict(), "interval_text": interval.text(),
                      "seed_config_hashes": [r["config_hash"] for r in seeds]})
        print(f"eps {epsilon:g}: chose {chosen!r} (validation {validation[best]:.4f}); test over {cfg.seeds} seeds "
              f"{interval.text()}", flush=True)
    return run.finish(metrics={"cells": cells, "validation_use": VALIDATION_USE, "designs": designs},
                      timings={"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds})
