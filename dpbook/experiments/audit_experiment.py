"""Empirical privacy audits of DP-SGD, GEP and StoBatch: chapter 90's runs (lower bounds on epsilon)."""
from __future__ import annotations

import contextlib
import io
import time
import warnings

import numpy as np
import torch

from .. import checks, data, guarantees
from ..config import settings
from ..progress import progress
from ..runs import Run
from .gep_experiment import held_out
from .loop import save_and_check
from .registry import experiment
from .stobatch_experiment import stobatch_options

AUDIT_TARGETS = ("dpsgd", "gep", "stobatch")
CANARY_KINDS = ("label", "input")


def stobatch_model_canaries(cfg, *, kind: str, n_trials: int, examples: int = 400, seed: int = 0) -> dict:
    """Canaries through StoBatch's whole training code: each trial is one complete training run
    (:func:`dpbook.experiments.stobatch_trainers.train_stobatch`, the experiment's trainer) on ``examples``
    digits images (``settings("stobatch", profile_name="smoke")`` sizes, one epoch, the audited variant and
    budget), and the attacker reads the whole trained model.

    With probability 1/2 (the auditor's coin) the run's first example is the canary: its label changed to the
    next class (``kind="label"``), or its image replaced by its negative (``kind="input"``). The attacker knows
    everything public (initialisation, schedule and attack seeds, public data, the original's noise seed) and
    scores the trained network's noiseless log-probability of the canary's label at the canary's image, for
    every layer takes part in it. The original variant is deterministic given the data (its noise comes from
    a public seed), so its two worlds give two fixed models. Returns ``{"scores", "included"}``.
    """
    import tempfile

    from .. import stobatch as sb
    from . import stobatch_trainers as trainers

    checks.one_of(kind, CANARY_KINDS, "kind", "stobatch_model_canaries()")
    parts = data.splits("digits", public=100, validation=0, seed=0, scale="symmetric")
    x0, y0 = parts["train"].x[:examples].clone(), parts["train"].y[:examples].clone()
    canary_x = -x0[0] if kind == "input" else x0[0]
    canary_y = (y0[0] + 1) % 10 if kind == "label" else y0[0]
    coin = torch.Generator().manual_seed(seed)
    included = torch.rand(n_trials, generator=coin) < 0.5
    scores = np.empty(n_trials)
    with tempfile.TemporaryDirectory() as tmp:
        for t in progress(range(n_trials), desc=f"{kind} canaries", every=max(1, n_trials // 10)):
            x, y = x0.clone(), y0.clone()
            if included[t]:
                x[0], y[0] = canary_x, canary_y
            torch.manual_seed(seed)  # the initialisation is public: the same in both worlds
            model = sb.network_for((1, 8, 8), 10, norm=cfg.norm)
            run = Run("stobatch_audit", {"trial": t}, root=tmp)
            setup = trainers.Setup(cfg=cfg, run=run, model=model, parts={**parts, "train": parts["train"]}, x=x, y=y,
                                   n_classes=10, device=torch.device("cpu"))
            with warnings_quiet():
                trainers.train_stobatch(setup)
            model.eval()
            with torch.no_grad():
                scores[t] = float(model(canary_x[None]).log_softmax(-1)[0, canary_y])
    return {"scores": scores, "included": included.numpy()}


@contextlib.contextmanager
def warnings_quiet():
    """Silence the per-trial prints and the (already recorded) unsound-mode and seed warnings of a training run."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def gep_mechanism(cfg) -> dict:
    """The (q, steps, sigma, claimed epsilon, delta) of the audited DP-SGD or GEP run at ``cfg.epsilon`` and
    ``cfg.accounting``, and what the PLD accountant says of the mechanism that really runs. ``cfg.setup``:
    ``"gep"``, the gep experiment with ``settings("gep")`` of the active profile; or a dataset of
    :data:`dpbook.gep.PAPER_SETUPS`, the paper's N, batch, delta and epochs (steps counted as the code does)."""
    from .. import gep, privacy

    g = settings("gep")
    if cfg.setup == "gep":
        name, delta = g.dataset, cfg.delta
        n = len(data.splits(g.dataset, validation=g.validation, public=held_out(g), max_train=g.max_train,
                            seed=g.seed)["train"])  # the private examples of the gep experiment
        q = g.batch_size / n
        epochs = g.epochs or gep.paper_epochs(g.dataset, cfg.epsilon)
        steps = epochs * privacy.steps_per_epoch(n, g.batch_size)
    elif cfg.setup in gep.PAPER_SETUPS:
        name, paper = cfg.setup, gep.PAPER_SETUPS[cfg.setup]
        n, delta = paper["dataset_size"], paper["delta"]
        q = paper["batch_size"] / n
        epochs = gep.paper_epochs(cfg.setup, cfg.epsilon)
        steps = gep.original_steps(epochs, q)  # the code counts int(epochs / q) steps
    else:
        raise ValueError(f"setup must be 'gep' or one of {', '.join(gep.PAPER_SETUPS)}; got {cfg.setup!r}")
    if cfg.accounting == "original":
        if cfg.target != "gep":
            raise ValueError("accounting='original' is GEP's (it doubles the RDP of the residual release)")
        sigma, claimed = gep.original_sigma(target_epsilon=cfg.epsilon, delta=delta, sample_rate=q, epochs=epochs)
    else:
        sigma = gep.calibrate(target_epsilon=cfg.epsilon, delta=delta, sample_rate=q, steps=steps, mode=cfg.target)
        claimed = cfg.epsilon
    effective = gep.effective_noise_multiplier(cfg.target, sigma)
    true = privacy.epsilon(noise_multiplier=effective, sample_rate=q, steps=steps, delta=delta, accountant="pld")
    return dict(dataset=name, dataset_size=n, sample_rate=q, steps=steps, delta=delta, noise_multiplier=sigma,
                effective_noise_multiplier=effective, epsilon_claimed=claimed, epsilon_accountant_pld=true,
                clip_embedding=g.clip_embedding, clip_residual=g.clip_residual)


@experiment("audit", uses=("gep", "stobatch"))
def audit_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Empirical lower bounds on epsilon (:mod:`dpbook.audit`) for DP-SGD, GEP or StoBatch (``cfg.target``).

    DP-SGD and GEP: white-box gradient canaries through :func:`dpbook.gep.privatize` for a whole run with the
    sampling rate, steps and noise of the ``gep`` experiment, or of a paper setup (``cfg.setup``,
    :func:`gep_mechanism`), at ``cfg.epsilon`` (``cfg.accounting``: the sound joint calibration or the
    original's); ``cfg.repeats`` runs of ``cfg.n_canaries`` canaries each, one checkpoint per run.
    StoBatch: ``cfg.stobatch_trials`` whole training runs per canary kind (label, input) under ``cfg.variant``
    (:func:`stobatch_model_canaries`). Reports the claimed epsilon, the many-run bound (threshold chosen on
    half the trials), for DP-SGD and GEP the one-run bound on the first run and the accountant's epsilon of the
    mechanism that really runs. Two bounds are computed and the larger reported, so each is taken at
    confidence 1 - (1 - ``cfg.confidence``) / 2 (Bonferroni): ``refuted`` holds at ``cfg.confidence``.
    """
    from .. import audit

    checks.one_of(cfg.target, AUDIT_TARGETS, "target", "the audit experiment")
    guarantee = guarantees.record(guarantees.unsound_settings(cfg))  # what the audited claim stands on
    t0 = time.perf_counter()
    state = run.load_checkpoint() or {"scores": [], "included": []}
    if cfg.target == "stobatch":
        s = settings("stobatch", profile_name="smoke", variant=cfg.variant,
                     norm="batch" if cfg.variant == "original" else "group", epochs=1, test=False,
                     epsilon_autoencoder=cfg.epsilon / 2, epsilon2=cfg.epsilon / 2)
        options = stobatch_options(s, trainers=1)
        mechanism = {"variant": cfg.variant, "release": options.release, "inputs": options.inputs,
                     "labels": options.labels, "noise_seed": options.noise_seed, "batch_size": options.batch_size,
                     "epsilon_claimed": cfg.epsilon, "delta": options.delta if options.release == "per_example"
                     else 0.0, "relation": "replace-one", "examples": cfg.stobatch_examples}
        print(f"audit of StoBatch ({cfg.variant}) at claimed epsilon {cfg.epsilon:g}: {cfg.stobatch_trials} training "
              f"runs per canary kind ({', '.join(CANARY_KINDS)}) on {cfg.stobatch_examples} digits", flush=True)
        kinds = {}
        for i, kind in enumerate(CANARY_KINDS):
            if kind not in state.setdefault("kinds", {}):
                state["kinds"][kind] = stobatch_model_canaries(s, kind=kind, n_trials=cfg.stobatch_trials,
                                                               examples=cfg.stobatch_examples, seed=cfg.seed)
                save_and_check(run, i + 1, state, stop_after_epoch, unit="canary kind")
            kinds[kind] = state["kinds"][kind]
        claim_audited = cfg.epsilon
        delta = mechanism["delta"]
        # two bounds (one per canary kind) and the larger is reported: each at 1 - (1 - confidence) / 2
        level = 1.0 - (1.0 - cfg.confidence) / len(kinds)
        bounds = {k: audit.split_threshold_epsilon(v["scores"], v["included"], delta=delta, confidence=level,
                                                   two_sided=True) for k, v in kinds.items()}
        best = max(bounds, key=lambda k: bounds[k]["epsilon_lower"])
        print(f"claimed epsilon {claim_audited:g}; lower bounds at {cfg.confidence:.0%} (Bonferroni over "
              f"{len(kinds)} canary kinds): " + ", ".join(f"{k} {b['epsilon_lower']:.3f}" for k, b in bounds.items()),
              flush=True)
        return run.finish(
            metrics={"mechanism": mechanism, "epsilon_claimed_audited": claim_audited,
                     "epsilon_lower_many_runs": bounds[best]["epsilon_lower"], "many_runs": bounds[best],
                     "by_kind": bounds, "strongest_kind": best, "epsilon_lower_one_run": None,
                     "trials": int(sum(len(v["scores"]) for v in kinds.values())), "bonferroni_level": level,
                     "refuted": bool(bounds[best]["epsilon_lower"] > claim_audited), **guarantee},
            timings={"seconds": time.perf_counter() - t0})
    else:
        mechanism = gep_mechanism(cfg)
        print(f"audit of {cfg.target} ({cfg.accounting} accounting) at claimed epsilon "
              f"{mechanism['epsilon_claimed']:.3f}: q = {mechanism['sample_rate']:.4g}, {mechanism['steps']} steps, "
              f"sigma = {mechanism['noise_multiplier']:.3f}; {cfg.repeats} runs of {cfg.n_canaries} canaries",
              flush=True)
        for r in progress(range(len(state["scores"]), cfg.repeats), desc="audit runs", every=1):
            s, inc = audit.gradient_canaries(
                mode=cfg.target, n_canaries=cfg.n_canaries, steps=mechanism["steps"],
                sample_rate=mechanism["sample_rate"], noise_multiplier=mechanism["noise_multiplier"],
                clip_embedding=mechanism["clip_embedding"], clip_residual=mechanism["clip_residual"],
                seed=cfg.seed * 100_003 + r)
            state["scores"].append(s.tolist()), state["included"].append(inc.tolist())
            save_and_check(run, r + 1, state, stop_after_epoch, unit="audit run")
        scores, included = np.concatenate(state["scores"]), np.concatenate(state["included"]).astype(bool)
        first = (np.asarray(state["scores"][0]), np.asarray(state["included"][0], bool))
        claim_audited = mechanism["epsilon_claimed"]
    delta = mechanism.get("delta", cfg.delta)  # the claim's delta (a paper setup has its own)
    # two bounds and the larger is reported: each at 1 - (1 - confidence) / 2 (Bonferroni)
    level = 1.0 - (1.0 - cfg.confidence) / 2
    many = audit.split_threshold_epsilon(scores, included, delta=delta, confidence=level)
    one, guesses = audit.best_one_run_epsilon(*first, delta=delta, confidence=level)
    print(f"claimed epsilon {claim_audited:.3f}; empirical lower bounds at {cfg.confidence:.0%} confidence: "
          f"{many['epsilon_lower']:.3f} (many runs, {many['negatives'] + many['positives']} trials), "
          f"{one:.3f} (one run, {guesses.r} guesses, {guesses.v} right)", flush=True)
    return run.finish(
        metrics={"mechanism": mechanism, "epsilon_claimed_audited": claim_audited,
                 "epsilon_lower_many_runs": many["epsilon_lower"], "many_runs": many,
                 "epsilon_lower_one_run": one, "one_run": vars(guesses), "trials": int(len(scores)),
                 "bonferroni_level": level,
                 "refuted": bool(max(many["epsilon_lower"], one) > claim_audited), **guarantee},
        timings={"seconds": time.perf_counter() - t0})
