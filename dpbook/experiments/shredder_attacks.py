"""Shredder's leakage under the strongest attackers: private-label attacks under four threat models, a
reconstruction attack, and mutual information with controls, on the pool the ``shredder`` experiment made."""
from __future__ import annotations

import time

import torch

from .. import data, leakage, mi_controls, models, reconstruction
from ..config import device, settings
from ..runs import Run
from ..stats import mean_interval
from .loop import save_and_check
from .registry import experiment
from .shredder_experiment import batched, frozen_lenet

CHANNELS = ("exact", "resample_w", "offset_control")  # the two samplers and the lossless control a + n_J
ATTACKERS = leakage.THREAT_MODELS + ("global", "original_check")


def _noise(pool, j, channel: str, generator):
    """(w, n, pool w as the Kerckhoffs attacker knows it, its sampler) of ``channel`` for draws ``j``."""
    if channel == "offset_control":
        _, n = pool.sample(j)
        return torch.ones_like(n), n, torch.ones_like(pool.w), "exact"
    w, n = pool.sample(j, sampler=channel, generator=generator)
    return w, n, pool.w, channel


@experiment("shredder_attacks", uses=("shredder",))
def shredder_attacks(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Attack the pool of the ``shredder`` run with ``cfg.laplace_scale`` and ``cfg.multiplicative`` (its other
    settings from ``settings("shredder")`` under the active profile; trained first if it is not in the
    results folder). The attackers hold ``cfg.attacker_train`` examples of the training split with their
    private labels; the victims are the test set.

    For each channel of :data:`CHANNELS` and each of ``cfg.seeds`` seeds (fresh noise draws, probe
    initialisations, clusterings): the private-label accuracy of every attacker of :mod:`dpbook.leakage`, the
    ``global`` reference (the chapter's earlier probe) and ``original_check`` (the code's check: the separately
    trained 10-class LeNet with the same noise at its own cut). With the first seed's draws: a reconstruction
    attack per threat model (:mod:`dpbook.reconstruction`) and MI with controls (:func:`dpbook.mi_controls.mi_controls`).
    Each finished seed is checkpointed.
    """
    from . import run as run_experiment
    from .. import shredder

    t0 = time.perf_counter()
    dev = device()
    root = run.dir.parent
    pool_settings = dict(laplace_scale=cfg.laplace_scale, multiplicative=cfg.multiplicative)
    base = run_experiment("shredder", reuse=True, results=str(root), **pool_settings)
    scfg = settings("shredder", **pool_settings)
    handle = Run("shredder", base["config"], root=root)
    pool = shredder.NoisePool.load(handle.dir / f"{handle.hash}.pool.pt")

    parts = data.splits(scfg.dataset, validation=scfg.validation, max_train=scfg.max_train, seed=scfg.seed,
                        scale="unit")
    n_att = min(cfg.attacker_train or len(parts["train"]), len(parts["train"]))
    x_att, y_att = shredder.to_32(parts["train"].x[:n_att]).to(dev), parts["train"].y[:n_att].to(dev)
    x_test, y_test = shredder.to_32(parts["test"].x).to(dev), parts["test"].y.to(dev)
    n_classes = len(parts["train"].classes)
    public = lambda y: (y > scfg.public_threshold).long()  # noqa: E731
    xs_val, ys_val = shredder.to_32(parts["validation"].x).to(dev), parts["validation"].y.to(dev)
    net = frozen_lenet(scfg, handle, "public", x_att, public(y_att), xs_val, public(ys_val), 2)
    private_net = frozen_lenet(scfg, handle, "private", x_att, y_att, xs_val, ys_val, n_classes)
    edge, _ = shredder.split(net, scfg.cut)
    p_edge, p_cloud = shredder.split(private_net, scfg.cut)
    a_att, a_test, a_private = batched(edge, x_att), batched(edge, x_test), batched(p_edge, x_test)
    probe = dict(hidden=cfg.probe_hidden, epochs=cfg.probe_epochs, lr=cfg.probe_lr)
    print(f"shredder_attacks: pool of {len(pool)} samples ({handle.hash}), {n_att} attacker examples, "
          f"{len(x_test)} victims, {cfg.seeds} seeds", flush=True)

    state = run.load_checkpoint() or {"seeds": []}
    per_seed = state["seeds"]
    keep = {}  # the first seed's draws and views, for the reconstruction and MI
    for s in range(cfg.seeds):
        if s < len(per_seed) and s > 0:
            continue
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000 + s)
        j_att, j_test = pool.indices(n_att, generator=gen), pool.indices(len(x_test), generator=gen)
        clean_probe = leakage.train_probe(a_att, y_att, n_classes=n_classes, seed=s, **probe)
        row = {"clean": clean_probe.accuracy(a_test, y_test)}
        for channel in CHANNELS:
            w_att, n_att_noise, known_w, sampler = _noise(pool, j_att, channel, gen)
            w_test, n_test, _, _ = _noise(pool, j_test, channel, gen)
            sent = shredder.apply_noise(a_test, w_test, n_test)
            attack = leakage.AttackData(a_att, shredder.apply_noise(a_att, w_att, n_att_noise), y_att, sent)
            accuracy, views, facts = leakage.attack_accuracies(
                attack, y_test, pool_w=known_w, pool_n=pool.n, sampler=sampler, n_classes=n_classes,
                k_max=cfg.k_max, clean_probe=clean_probe, seed=s, **probe)
            noisy_private = shredder.apply_noise(a_private, w_test, n_test)
            accuracy["original_check"] = models.accuracy(p_cloud, noisy_private, y_test)
            estimate = views["kerckhoffs"][1]
            a_flat = a_test.flatten(1)
            accuracy["draws_identified"] = float((facts["draws_identified"] == j_test).float().mean())
            accuracy["kerckhoffs_relative_error"] = float((estimate - a_flat).norm() / a_flat.norm())
            accuracy["clusters_blind"] = facts["clusters_blind"]
            accuracy["clusters_adaptive"] = facts["clusters_adaptive"]
            row[channel] = accuracy
            if s == 0:
                keep[channel] = {"views": views, "sent": sent, "j": j_test}
        print(f"seed {s}: clean {row['clean']:.3f}; " + "; ".join(
            f"{c}: " + ", ".join(f"{t} {row[c][t]:.3f}" for t in ATTACKERS) for c in CHANNELS), flush=True)
        if s < len(per_seed):
            continue  # seed 0 was recomputed only for its views; its accuracies stay as checkpointed
        per_seed.append(row)
        save_and_check(run, len(per_seed), {"seeds": per_seed}, stop_after_epoch, unit="seed")
    attack_seconds = time.perf_counter() - t0

    attackers = {"clean": _summary([r["clean"] for r in per_seed])}
    for channel in CHANNELS:
        attackers[channel] = {t: _summary([r[channel][t] for r in per_seed]) for t in ATTACKERS}
        for fact in ("draws_identified", "kerckhoffs_relative_error", "clusters_blind", "clusters_adaptive"):
            attackers[channel][fact] = [r[channel][fact] for r in per_seed]

    recon, images = _reconstruction(cfg, keep, a_att, x_att, a_test, x_test)
    m = min(cfg.mi_samples or len(x_test), len(x_test))
    mi_table = mi_controls.mi_controls(x_test[:m], a_test[:m], {c: keep[c]["sent"][:m] for c in CHANNELS[:2]},
                                   keep["exact"]["j"][:m], pool.w, pool.n, k=cfg.mi_k, seeds=cfg.mi_seeds)
    metrics = {
        "channels": list(CHANNELS), "threat_models": list(ATTACKERS), "n_classes": n_classes,
        "chance": float(torch.bincount(y_test.cpu()).max() / len(y_test)),
        "shredder_config_hash": handle.hash, "pool_size": len(pool), "attacker_examples": n_att,
        "public_accuracy_clean": base["metrics"]["public_accuracy_clean"],
        "public_accuracy_noisy": base["metrics"]["public_accuracy_noisy"],
        "public_accuracy_noisy_resample_w": base["metrics"]["public_accuracy_noisy_resample_w"],
        "attackers": attackers, "per_seed": per_seed, "reconstruction": recon, "images": images, "mi": mi_table,
    }
    print("private-label accuracy (mean over seeds): clean probe "
          f"{attackers['clean']['mean']:.3f}; " + "; ".join(
              f"{c}: " + ", ".join(f"{t} {attackers[c][t]['mean']:.3f}" for t in ATTACKERS) for c in CHANNELS),
          flush=True)
    return run.finish(metrics=metrics, timings={"attack_seconds": attack_seconds,
                                                "total_seconds": time.perf_counter() - t0})


def _summary(values: list) -> dict:
    out = {"per_seed": list(values), "mean": sum(values) / len(values)}
    if len(values) > 1:
        out["interval"] = mean_interval(values).as_dict()
    return out


def _reconstruction(cfg, keep: dict, a_att, x_att, a_test, x_test) -> tuple[dict, dict]:
    """Decoders trained on the attacker's images from each threat model's training view, scored on the test
    images; the clean decoder serves every view trained on clean activations."""
    prior = reconstruction.prior_scores(x_att, x_test)
    options = dict(hidden=cfg.decoder_hidden, epochs=cfg.decoder_epochs, lr=cfg.decoder_lr)
    clean_decoder = reconstruction.train_decoder(a_att, x_att, seed=0, **options)
    shown = slice(0, cfg.n_images)
    out = {"prior": prior, "clean": reconstruction.scores(clean_decoder(a_test), x_test, prior_mse=prior["mse"])}
    images = {"shape": list(x_test.shape[1:]), "original": reconstruction.as_levels(x_test[shown]),
              "prior": reconstruction.as_levels(x_att.mean(0, keepdim=True)),
              "clean": reconstruction.as_levels(clean_decoder(a_test[shown]))}
    for channel, kept in keep.items():
        out[channel], images[channel] = {}, {}
        for threat in leakage.THREAT_MODELS:
            train, test = kept["views"][threat]
            decoder = clean_decoder if train is kept["views"]["non_adaptive"][0] else \
                reconstruction.train_decoder(train, x_att, seed=0, **options)
            out[channel][threat] = reconstruction.scores(decoder(test), x_test, prior_mse=prior["mse"])
            images[channel][threat] = reconstruction.as_levels(decoder(test[shown]))
    return out, images
