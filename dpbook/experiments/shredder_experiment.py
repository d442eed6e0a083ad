"""Shredder v2 on an image dataset: chapter 32's runs (noise pool, accuracy, SNR, MI with controls, adversaries)."""
from __future__ import annotations

import time

import torch

from .. import data, models
from ..config import device
from ..progress import progress
from ..runs import Run
from ..training import fit
from .loop import save_and_check
from .registry import experiment


def batched(fn, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def frozen_lenet(cfg, run: Run, task: str, x_train, y_train, x_val, y_val, n_classes: int):
    """The base LeNet-5 for ``task`` ("public" or "private"), trained once per data config and cached in
    ``<results>/shredder-base/``; returned frozen."""
    from .. import shredder

    dev = x_train.device
    base_cfg = {"task": task, **{k: cfg[k] for k in ("dataset", "validation", "max_train", "seed", "base_epochs",
                                                     "base_lr", "base_batch_size", "public_threshold")}}
    handle = Run("shredder-base", base_cfg, root=run.dir.parent, resume=True)
    torch.manual_seed(cfg.seed + (task == "private"))
    net = shredder.LeNet5(x_train.shape[1], n_classes).to(dev)
    state = handle.load_checkpoint()
    if state is not None:
        net.load_state_dict(state["model"])
    else:
        train = data.ArrayDataset(x_train, y_train, name=cfg.dataset, split="train", classes=[""] * n_classes)
        val = data.ArrayDataset(x_val, y_val, name=cfg.dataset, split="validation", classes=[""] * n_classes)
        fit(net, train, epochs=cfg.base_epochs, batch_size=cfg.base_batch_size, lr=cfg.base_lr, seed=cfg.seed,
            validation=val, log=False)
        handle.save_checkpoint({"model": net.state_dict()})
    return shredder.freeze(net)


def mi_table(cfg, images: torch.Tensor, blocks: dict[str, torch.Tensor]) -> dict:
    """MI between the images and each representation in ``blocks``, by the original's estimator on raw and on
    block-standardised values (``cfg.mi_seeds`` permutation seeds: mean and sd) and by KSG (z-scored)."""
    import numpy as np

    from .. import mi

    out = {}
    x = images.flatten(1).double()
    for name, y in blocks.items():
        y = y.flatten(1).double()
        row = {}
        for label, standardize in (("ite_raw", False), ("ite_standardized", "block")):
            values = [mi.mutual_information(x, y, method="ite_dkl", k=cfg.mi_k, standardize=standardize,
                                            jitter=1e-6, seed=s) for s in range(cfg.mi_seeds)]
            row[label] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                          else 0.0}
        row["ksg_standardized"] = mi.mutual_information(x, y, method="ksg", k=cfg.mi_k, standardize=True,
                                                        jitter=1e-6, seed=0)
        out[name] = row
    return out


@experiment("shredder")
def shredder_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Shredder v2 on ``cfg.dataset``: public task "label > public_threshold", private attribute the label.

    Trains (or loads) the base LeNet-5 on the public task, cuts it at ``cfg.cut``, learns a pool of
    ``cfg.pool_size`` noise samples from independent runs (accepted on the validation split; at most
    ``cfg.max_runs`` runs), then measures on the test set: public accuracy without noise, with one pool sample
    per query (``exact``) and with the code's redrawn w (``resample_w``), the SNR, how much of w is gated off,
    MI between image and transmitted activation (:func:`mi_table`, with the pure-rescale control), an
    adversary MLP trained on noisy activations to recover the label (against clean activations and chance),
    and the original's non-adaptive adversary (a 10-class LeNet with the same noise at its own cut).
    Accepted samples are checkpointed, so an interrupted run resumes with the pool it had.
    """
    from .. import shredder

    dev = device()
    t0 = time.perf_counter()
    parts = data.splits(cfg.dataset, validation=cfg.validation, max_train=cfg.max_train, seed=cfg.seed,
                        scale="unit")
    xs = {k: shredder.to_32(parts[k].x).to(dev) for k in ("train", "validation", "test")}
    ys = {k: parts[k].y.to(dev) for k in xs}
    public = {k: (v > cfg.public_threshold).long() for k, v in ys.items()}
    n_private = len(parts["train"].classes)
    base = frozen_lenet(cfg, run, "public", xs["train"], public["train"], xs["validation"], public["validation"], 2)
    edge, cloud = shredder.split(base, cfg.cut)
    a = {k: batched(edge, v) for k, v in xs.items()}

    def public_accuracy(activations: torch.Tensor, split: str = "test") -> float:
        return models.accuracy(cloud, activations, public[split])

    clean_val, clean_test = public_accuracy(a["validation"], "validation"), public_accuracy(a["test"])
    accept = clean_val - cfg.accept_drop
    print(f"shredder on {cfg.dataset}: base LeNet-5 public accuracy {clean_test:.4f} (test), {clean_val:.4f} "
          f"(validation); activation {tuple(a['test'].shape[1:])}; accepting noise with validation accuracy "
          f">= {accept:.4f}", flush=True)

    state = run.load_checkpoint() or {"samples": [], "runs_tried": 0}
    samples = [shredder.NoiseSample(**s) for s in state["samples"]]
    runs_tried = state["runs_tried"]
    for attempt in progress(range(runs_tried, cfg.max_runs), desc="noise-training runs", every=1):
        if len(samples) >= cfg.pool_size:
            break
        sample = shredder.train_noise(
            cloud, a["train"], public["train"], a["validation"], public["validation"],
            laplace_scale=cfg.laplace_scale, multiplicative=cfg.multiplicative, pairing=cfg.pairing,
            pairing_weight=cfg.pairing_weight, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs,
            min_epochs=cfg.min_epochs, accept_accuracy=accept,
            reset_optimizer_each_epoch=cfg.reset_optimizer_each_epoch, seed=cfg.seed * 100_003 + attempt)
        runs_tried = attempt + 1
        if sample.accepted:
            samples.append(sample)
        save_and_check(run, runs_tried, {"samples": [vars(s) for s in samples], "runs_tried": runs_tried},
                       stop_after_epoch, unit="noise-training run")
    if not samples:
        raise RuntimeError(f"none of {runs_tried} runs reached validation accuracy {accept:.4f}; raise accept_drop, "
                           f"lower laplace_scale or train longer")
    pool = shredder.NoisePool.from_samples(samples)
    pool_path = run.dir / f"{run.hash}.pool.pt"
    pool.save(pool_path)
    train_seconds = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(cfg.seed + 1)  # evaluation draws: fixed, so results are repeatable
    a_test = a["test"]
    noisy = {s: shredder.apply_noise(a_test, *pool.draw(len(a_test), sampler=s, generator=gen)) for s in
             shredder.SAMPLERS}
    accuracy = {s: public_accuracy(v) for s, v in noisy.items()}
    per_sample = [public_accuracy(shredder.apply_noise(a_test, pool.w[j:j + 1], pool.n[j:j + 1]))
                  for j in range(len(pool))]  # the code's view: one sample for the whole test set
    untrained = shredder.NoisyActivation(tuple(a_test.shape[1:]), laplace_scale=cfg.laplace_scale,
                                         multiplicative=cfg.multiplicative,
                                         generator=torch.Generator().manual_seed(cfg.seed)).to(dev)
    a_untrained = batched(untrained, a_test)

    m = min(cfg.mi_samples or len(a_test), len(a_test))
    a_noisy = noisy["exact"][:m]
    scale = float(a_noisy.flatten(1).std() / a_test[:m].flatten(1).std())  # the pure-rescale control's factor
    mi_estimates = mi_table(cfg, xs["test"][:m], {"clean": a_test[:m], "noisy": a_noisy,
                                               "rescaled_clean": scale * a_test[:m]})

    n_adv = min(cfg.adversary_train or len(a["train"]), len(a["train"]))
    train_idx = torch.arange(n_adv, device=dev).repeat(cfg.adversary_draws)
    noisy_train = shredder.apply_noise(a["train"][train_idx], *pool.draw(len(train_idx), generator=gen))
    probe = dict(n_classes=n_private, epochs=cfg.adversary_epochs, seed=cfg.seed)
    adversary = {
        "clean": shredder.probe_accuracy(a["train"][:n_adv], ys["train"][:n_adv], a_test, ys["test"], **probe),
        "noisy": shredder.probe_accuracy(noisy_train, ys["train"][train_idx], noisy["exact"], ys["test"], **probe),
        "chance": shredder.chance_accuracy(ys["test"].cpu()),
    }
    private_net = frozen_lenet(cfg, run, "private", xs["train"], ys["train"], xs["validation"], ys["validation"],
                                n_private)
    p_edge, p_cloud = shredder.split(private_net, cfg.cut)
    a_private = shredder.apply_noise(batched(p_edge, xs["test"]), *pool.draw(len(a_test), generator=gen))
    adversary["non_adaptive"] = models.accuracy(p_cloud, a_private, ys["test"])
    adversary["non_adaptive_clean"] = models.accuracy(private_net, xs["test"], ys["test"])

    metrics = {
        "public_accuracy_clean": clean_test, "public_accuracy_validation_clean": clean_val,
        "public_accuracy_noisy": accuracy["exact"], "public_accuracy_noisy_resample_w": accuracy["resample_w"],
        "public_accuracy_per_sample": {"mean": sum(per_sample) / len(per_sample), "min": min(per_sample),
                                       "max": max(per_sample)},
        "public_accuracy_untrained_noise": public_accuracy(a_untrained),
        "snr": shredder.snr(a_test, noisy["exact"]), "snr_untrained": shredder.snr(a_test, a_untrained),
        "w_gated_fraction": float((pool.w.abs() < 0.05).float().mean()),
        "w_negative_fraction": float((pool.w < 0).float().mean()),
        "n_mean_abs": float(pool.n.abs().mean()), "pool_size": len(pool), "runs_tried": runs_tried,
        "acceptance_epochs": pool.epochs, "accept_accuracy": accept, "mi_samples": m, "mi_rescale_factor": scale,
        "mi": mi_estimates, "adversary": adversary, "pool_path": str(pool_path),
    }
    print(f"public accuracy {clean_test:.4f} clean -> {accuracy['exact']:.4f} noisy; SNR {metrics['snr']:.2e}; "
          f"adversary {adversary['clean']:.3f} clean -> {adversary['noisy']:.3f} noisy (chance "
          f"{adversary['chance']:.3f})", flush=True)
    return run.finish(metrics=metrics, timings={"train_seconds": train_seconds,
                                                "total_seconds": time.perf_counter() - t0})
