"""Empirical privacy audits of DP-SGD, GEP and StoBatch: chapter 90's runs (lower bounds on epsilon)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import checks, data, guarantees
from ..config import settings
from ..progress import progress
from ..runs import Run
from .loop import save_and_check
from .registry import experiment
from .stobatch_experiment import stobatch_options, stobatch_shape

AUDIT_TARGETS = ("dpsgd", "gep", "stobatch")


def gep_mechanism(cfg) -> dict:
    """The (q, steps, sigma, claimed epsilon, delta) of the audited DP-SGD or GEP run at ``cfg.epsilon`` and
    ``cfg.accounting``, and what the PLD accountant says of the mechanism that really runs. ``cfg.setup``:
    ``"gep"``, the gep experiment with ``settings("gep")`` of the active profile; or a dataset of
    :data:`dpbook.gep.PAPER_SETUPS`, the paper's N, batch, delta and epochs (steps counted as the code does)."""
    from .. import gep, privacy

    g = settings("gep")
    if cfg.setup == "gep":
        name, delta = g.dataset, cfg.delta
        n = len(data.splits(g.dataset, validation=g.validation, public=g.public, max_train=g.max_train,
                            seed=g.seed)["train"])
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
    StoBatch: ``cfg.stobatch_trials`` releases of the output layer's functional mechanism under ``cfg.variant``
    (:func:`dpbook.audit.stobatch_output_canaries`). Reports the claimed epsilon, the many-run bound
    (threshold chosen on half the trials), the one-run bound on the first run, and for DP-SGD and GEP the
    accountant's epsilon of the mechanism that really runs.
    """
    from .. import audit

    checks.one_of(cfg.target, AUDIT_TARGETS, "target", "the audit experiment")
    guarantee = guarantees.record(guarantees.unsound_settings(cfg))  # what the audited claim stands on
    t0 = time.perf_counter()
    state = run.load_checkpoint() or {"scores": [], "included": []}
    if cfg.target == "stobatch":
        from .. import stobatch as sb

        s = settings("stobatch", variant=cfg.variant, norm="batch" if cfg.variant == "original" else "group",
                     epsilon_autoencoder=cfg.epsilon / 2, epsilon2=cfg.epsilon / 2)
        options = stobatch_options(s, trainers=1)
        torch.manual_seed(cfg.seed)
        model = sb.network_for(*stobatch_shape(s.dataset), norm=s.norm)
        mechanism = {"variant": cfg.variant, "noise_reuse": options.noise_reuse, "noise_seed": options.noise_seed,
                     "batch_size": options.batch_size, "epsilon_claimed": cfg.epsilon,
                     "epsilon2_claimed": options.epsilon2}
        out = audit.stobatch_output_canaries(model, options, n_trials=cfg.stobatch_trials, seed=cfg.seed)
        scores, included = out["scores"], out["included"]
        first = (scores, included)
        claim_audited = options.epsilon2
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
    many = audit.split_threshold_epsilon(scores, included, delta=delta, confidence=cfg.confidence)
    one, guesses = audit.best_one_run_epsilon(*first, delta=delta, confidence=cfg.confidence)
    print(f"claimed epsilon {claim_audited:.3f}; empirical lower bounds at {cfg.confidence:.0%} confidence: "
          f"{many['epsilon_lower']:.3f} (many runs, {many['negatives'] + many['positives']} trials), "
          f"{one:.3f} (one run, {guesses.r} guesses, {guesses.v} right)", flush=True)
    return run.finish(
        metrics={"mechanism": mechanism, "epsilon_claimed_audited": claim_audited,
                 "epsilon_lower_many_runs": many["epsilon_lower"], "many_runs": many,
                 "epsilon_lower_one_run": one, "one_run": vars(guesses), "trials": int(len(scores)),
                 "refuted": bool(max(many["epsilon_lower"], one) > claim_audited), **guarantee},
        timings={"seconds": time.perf_counter() - t0})
