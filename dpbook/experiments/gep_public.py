"""GEP's public anchors in and out of the private task's distribution, at GEP's tuned point (chapter 21).

GEP spans its gradient subspace with the gradients of public "anchor" examples. The paper's anchors are 2,000
downsampled ImageNet images, out of the distribution of CIFAR-10 and SVHN; the original code also takes the first
2,000 CIFAR-100 test images (``--aux_dataset cifar100``, which its README says "yields similar performance").
Anchors held out of the private task's own training split are in distribution: their gradients resemble the
private ones more than any other public data's would, which flatters GEP. The ``gep_public_data`` experiment
measures by how much:

1. It reads (or runs) ``gep_tuning`` of the active profile and takes GEP's choice at each of ``cfg.epsilons``
   (learning rate and clipping norms chosen on validation, with the profile's default ``public_source``).
2. It trains GEP at that point at the tuning's fresh seeds with ``public_source`` set to ``cfg.in_distribution``
   and to ``cfg.out_of_distribution``, everything else as the tuning's seed runs
   (:func:`dpbook.experiments.tuning.gep_run`); the runs with the default source are the tuning's own seed
   runs, reloaded.
3. It compares the seeds' test accuracies by their 95% intervals (:func:`dpbook.stats.compare`), each against
   the other and against the tuning's DP-SGD seeds (which use no public data).

The point was tuned with the default source (laptop: held out; paper: CIFAR-100), so the other source runs at a
point chosen for the first one: a small advantage for the default (``metrics["tuned_with"]``). With a source
other than ``"heldout"`` no training example is set aside as public; where ``max_train`` caps the private data
(the laptop profile) the count is the same either way and only which examples differs (``private_examples``).

Example (smoke profile, digits, ``"noise"`` anchors against held-out digits; tests/test_tuning.py runs it)::

    from dpbook import experiments
    res = experiments.run("gep_public_data")
    [(c["epsilon"], c["out_vs_in"]) for c in res["metrics"]["cells"]]
"""
from __future__ import annotations

import time

from .. import stats
from ..runs import Run
from .registry import experiment
from .tuning import gep_run, settings_of

#: The keys of the two public sources in a result's cells.
SOURCES = ("in_distribution", "out_of_distribution")


def seeds_summary(runs: list[dict], batch_size: int) -> dict:
    """Test accuracies of ``runs`` (gep results of one setting at several seeds), their interval, the config
    hashes and the number of private examples each trained on (``batch_size / sample_rate``)."""
    test = [r["metrics"]["test_accuracy"] for r in runs]
    interval = stats.mean_interval(test)
    return {"test_accuracy": test, "interval": interval.as_dict(), "interval_text": interval.text(),
            "config_hashes": [r["config_hash"] for r in runs],
            "private_examples": [round(batch_size / r["metrics"]["sample_rate"]) for r in runs]}


@experiment("gep_public_data", uses=("gep", "gep_tuning"))
def gep_public_data(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """GEP at its tuned point with in-distribution (``cfg.in_distribution``) and out-of-distribution
    (``cfg.out_of_distribution``) public anchors, at the tuning's seeds, for each of ``cfg.epsilons``.

    The result's ``metrics``:

    * ``cells``: per epsilon: ``chosen`` (GEP's point in ``gep_tuning``), ``seeds``, then for each of
      :data:`SOURCES` the ``public_source`` and :func:`seeds_summary` (``test_accuracy`` per seed, ``interval``,
      ``interval_text``, ``config_hashes``, ``private_examples``) and ``reused_from_tuning`` (its runs are the
      tuning's GEP seeds); ``dpsgd`` (the tuning's DP-SGD seeds: ``test_accuracy``, ``interval``,
      ``interval_text``); ``out_vs_in``, ``out_vs_dpsgd``, ``in_vs_dpsgd`` (:func:`dpbook.stats.compare`) and
      ``gap_of_means`` (out-of-distribution minus in-distribution mean accuracy);
    * ``verdicts``: ``{"In-distribution anchors make GEP more accurate": ...}`` from
      :func:`dpbook.claims.interval_verdict` over the epsilons;
    * ``tuned_with``: the public source of the tuning (``settings("gep").public_source``);
      ``tuning_config_hash``: the ``gep_tuning`` result read.

    ``timings``: ``wall_seconds`` of this call and ``train_seconds`` of the runs it used (reloaded ones too).
    """
    from .. import claims, config
    from . import run as run_experiment

    if cfg.in_distribution == cfg.out_of_distribution:
        raise ValueError(f"in_distribution and out_of_distribution of gep_public_data must differ; both are "
                         f"{cfg.in_distribution!r}")
    t0 = time.perf_counter()
    root = str(run.dir.parent)
    gep_cfg, tuning_cfg = config.settings("gep"), config.settings("gep_tuning")
    tuning = run_experiment("gep_tuning", reuse=True, results=root, stop_after_epoch=stop_after_epoch)
    cells_of = {(c["method"], c["epsilon"]): c for c in tuning["metrics"]["cells"]}
    missing = [e for e in cfg.epsilons if ("gep", float(e)) not in cells_of]
    if missing:
        raise ValueError(f"epsilons of gep_public_data must be budgets gep_tuning tuned GEP at "
                         f"({list(tuning_cfg.epsilons)}); got {missing}")
    sources = dict(zip(SOURCES, (cfg.in_distribution, cfg.out_of_distribution)))
    print(f"gep_public_data: GEP on {gep_cfg.dataset} at gep_tuning's choice (tuned with public_source "
          f"{gep_cfg.public_source!r}), {gep_cfg.public} public examples from {cfg.in_distribution!r} (in "
          f"distribution) and from {cfg.out_of_distribution!r} (out of distribution)", flush=True)
    cells, pairs, train_seconds = [], [], 0.0
    for epsilon in cfg.epsilons:
        tuned, dpsgd = cells_of[("gep", float(epsilon))], cells_of[("dpsgd", float(epsilon))]
        cell = {"epsilon": float(epsilon), "chosen": tuned["chosen"], "seeds": tuned["seeds"]}
        for key, source in sources.items():
            runs = [gep_run(tuning_cfg, root, stop_after_epoch=stop_after_epoch, method="gep", epsilon=float(epsilon),
                            seed=seed, public_source=source, **settings_of(tuned["chosen"]))
                    for seed in tuned["seeds"]]
            train_seconds += sum(r.get("timings", {}).get("train_seconds", 0.0) for r in runs)
            summary = seeds_summary(runs, gep_cfg.batch_size)
            cell[key] = {"public_source": source, **summary,
                         "reused_from_tuning": summary["config_hashes"] == tuned["seed_config_hashes"]}
            print(f"eps {epsilon:g}, public {source!r}: test {summary['test_accuracy']} -> {summary['interval_text']}",
                  flush=True)
        cell["dpsgd"] = {k: dpsgd[k] for k in ("test_accuracy", "interval", "interval_text")}
        inside, outside, plain = (stats.Interval(**x["interval"]) for x in
                                  (cell["in_distribution"], cell["out_of_distribution"], cell["dpsgd"]))
        cell.update(out_vs_in=stats.compare(outside, inside), out_vs_dpsgd=stats.compare(outside, plain),
                    in_vs_dpsgd=stats.compare(inside, plain), gap_of_means=outside.mean - inside.mean)
        pairs.append((inside, outside))
        cells.append(cell)
        print(f"eps {epsilon:g}: out of distribution {outside.text()} vs in {inside.text()} ({cell['out_vs_in']}); "
              f"DP-SGD {plain.text()}", flush=True)
    return run.finish(
        metrics={"cells": cells, "sources": sources, "tuned_with": gep_cfg.public_source,
                 "tuning_config_hash": tuning["config_hash"],
                 "verdicts": {"In-distribution anchors make GEP more accurate": claims.interval_verdict(pairs)}},
        timings={"wall_seconds": time.perf_counter() - t0, "train_seconds": train_seconds})
