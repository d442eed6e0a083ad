"""Named experiments, shared by the notebooks and the command line.

An experiment is a function ``fn(cfg, run) -> dict`` registered with :func:`experiment`. ``cfg`` holds
its settings (from :func:`dpbook.settings`, so the profile decides the sizes) and ``run`` is the
:class:`dpbook.runs.Run` that owns its results file and checkpoint. The same call backs a notebook cell
and ``python -m dpbook run NAME``.

Example:
    >>> import dpbook.experiments as ex
    >>> sorted(ex.EXPERIMENTS)
    ['audit', 'baseline', 'gep', 'shredder', 'stobatch']
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import torch

from . import data, models
from .config import device, settings
from .progress import progress
from .runs import Run
from .training import fit

EXPERIMENTS: dict[str, Callable] = {}


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` to simulate an interruption (used by the resume tests)."""


def experiment(name: str) -> Callable:
    """Register ``fn(cfg, run, **options)`` as experiment ``name``; its settings are ``PRESETS[name]``."""
    def register(fn: Callable) -> Callable:
        EXPERIMENTS[name] = fn
        return fn
    return register


def run(name: str, *, profile: str | None = None, resume: bool = False, reuse: bool = False,
        results: str | None = None, stop_after_epoch: int | None = None, **overrides) -> dict:
    """Run experiment ``name`` and return its result dictionary (also written to the results file).

    Args:
        profile: settings profile; default the active one.
        resume: continue from the last checkpoint of the same config, if any; a finished run is returned
            as it is.
        reuse: return the finished result of the same config if it exists (what notebooks do under
            ``paper``, where training takes hours); otherwise run.
        results: results folder (default ``$DPBOOK_RESULTS`` or ``./results``).
        stop_after_epoch: stop with :class:`Interrupted` after this many epochs (tests of ``resume``).
        **overrides: settings to change, e.g. ``dataset="mnist"``.
    """
    if name not in EXPERIMENTS:
        raise KeyError(f"no experiment named {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    cfg = settings(name, profile_name=profile, **overrides)
    config = {k: v for k, v in cfg.items() if k != "minutes"}
    handle = Run(name, config, root=results, resume=resume)
    if reuse or resume:
        done = handle.load_result()
        if done is not None:
            print(f"{name}: finished result found, not re-running: {handle.result_path}")
            return done
    return EXPERIMENTS[name](cfg, handle, stop_after_epoch=stop_after_epoch)


def _resume(run: Run, model, optimizer, epochs: int) -> tuple[int, list, dict | None]:
    """Load the last checkpoint into ``model`` and ``optimizer`` if resuming: (start epoch, history, state)."""
    state = run.load_checkpoint()
    if state is None:
        return 0, [], None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resuming {run.experiment} from epoch {state['epoch']} of {epochs} ({run.checkpoint_path})")
    return state["epoch"], state["history"], state


@experiment("baseline")
def baseline(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Train the non-private reference network of ``cfg.dataset`` with Adam; report test accuracy.

    The batch order of epoch e comes from seed ``cfg.seed + e``, so a resumed run replays exactly the
    batches an uninterrupted run would have seen.
    """
    dev = device()
    torch.manual_seed(cfg.seed)
    parts = data.splits(cfg.dataset, validation=cfg.validation, max_train=cfg.max_train, seed=cfg.seed,
                        scale=cfg.scale)
    train, val, test = parts["train"], parts["validation"], parts["test"]
    model = models.build(cfg.model, in_channels=train.x.shape[1], image_size=train.x.shape[-1],
                         n_classes=len(train.classes)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history, _ = _resume(run, model, optimizer, cfg.epochs)
    print(f"{run.experiment}: {cfg.dataset}, {len(train)} train / {len(val)} validation / {len(test)} test, "
          f"{models.n_parameters(model):,} parameters, {cfg.epochs} epochs on {dev}")

    def checkpoint(epoch: int, hist: list) -> None:
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "epoch": epoch, "history": hist})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise Interrupted(f"stopped after epoch {epoch} as asked")

    history = fit(model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                  validation=val, optimizer=optimizer, start_epoch=start_epoch, history=history,
                  on_epoch_end=checkpoint)

    test_acc = models.accuracy(model, test.x, test.y)
    print(f"test accuracy {test_acc:.4f}; result: {run.result_path}")
    return run.finish(
        metrics={"test_accuracy": test_acc, "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
                 "history": history},
        timings={"train_seconds": sum(h["seconds"] for h in history),
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start_epoch,
    )


def _public_data(cfg, parts: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GEP's auxiliary data (inputs, and labels when ``cfg.public_labels == "real"``) per ``cfg.public_source``:
    ``"heldout"`` (``cfg.public`` examples cut from the training split, excluded from the private data),
    ``"cifar100"`` (the first ``cfg.public`` CIFAR-100 test images, as the code's ``--aux_dataset cifar100``)
    or the path of an images file (:func:`dpbook.data.load_images_file`; the code's ImageNet tensor)."""
    real = cfg.public_labels == "real"
    if cfg.public_source == "heldout":
        return parts["public"].x, parts["public"].y if real else None
    if real:
        raise ValueError(f"public_labels='real' needs public_source='heldout' (labels of the private task); "
                         f"{cfg.public_source!r} has none")
    if cfg.public_source == "cifar100":
        if cfg.dataset not in ("cifar10", "svhn"):
            raise ValueError(f"CIFAR-100 images (3x32x32) cannot be public data for {cfg.dataset}")
        x = data.load("cifar100", "test", scale="unit").x[:cfg.public]
        return data.rescale(x, cfg.dataset, cfg.scale), None
    return data.load_images_file(cfg.public_source, like=cfg.dataset, scale=cfg.scale, limit=cfg.public), None


@experiment("gep")
def gep_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Train with GEP, Biased-GEP or DP-SGD (``cfg.method``) to a target (epsilon, delta); report test accuracy
    at the last epoch and the epsilon the accountant certifies.

    The public (anchor) data come from :func:`_public_data`. Batches are Poisson samples with rate
    q = batch_size / N; sigma comes from :func:`dpbook.gep.calibrate` (``accounting="joint"``, sound) or
    :func:`dpbook.gep.original_sigma` (``accounting="original"``, the code's, which under-counts GEP's privacy
    loss). The learning rate drops 10x at half and 100x at three quarters of training, as in the code.
    ``epochs=0`` takes the paper's epochs for the dataset and epsilon (:func:`dpbook.gep.paper_epochs`);
    ``model="auto"`` is ResNet20-GN for colour images and the small CNN otherwise (the paper's choice).
    ``sampling="shuffle"`` trains on the original's fixed-size shuffled batches, which the accountant's
    Poisson analysis does not cover (:func:`dpbook.gep.epoch_batches`); the result records it.
    """
    from . import gep

    dev = device()
    torch.manual_seed(cfg.seed)
    heldout = cfg.public if cfg.public_source == "heldout" else 0
    parts = data.splits(cfg.dataset, validation=cfg.validation, public=heldout, max_train=cfg.max_train,
                        seed=cfg.seed, scale=cfg.scale)
    private, test = parts["train"], parts["test"]
    if cfg.extra:  # the paper's SVHN: train + extra (604,388 images)
        if cfg.dataset != "svhn":
            raise ValueError(f"extra=True adds SVHN's extra split; dataset is {cfg.dataset}")
        more = data.load("svhn", "extra", scale=cfg.scale)
        private = data.ArrayDataset(torch.cat([private.x, more.x]), torch.cat([private.y, more.y]),
                                    name="svhn", split="train+extra", classes=private.classes)
    public_x, public_y = _public_data(cfg, parts)
    epochs = cfg.epochs or gep.paper_epochs(cfg.dataset, cfg.epsilon)
    model_name = cfg.model if cfg.model != "auto" else ("resnet20-gn" if private.x.shape[1] == 3 else "small-cnn")
    n = len(private)
    q = cfg.batch_size / n
    steps_per_epoch = max(1, round(1 / q)) if cfg.sampling == "poisson" else n // cfg.batch_size
    total_steps = epochs * steps_per_epoch
    claimed = None
    if cfg.accounting == "joint":
        sigma = gep.calibrate(target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q, steps=total_steps,
                              mode=cfg.method)
    elif cfg.accounting == "original":
        sigma, claimed = gep.original_sigma(target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q,
                                            epochs=epochs, residual=cfg.method == "gep")
    else:
        raise ValueError(f"accounting must be 'joint' or 'original'; got {cfg.accounting!r}")
    model = models.build(model_name, in_channels=private.x.shape[1], image_size=private.x.shape[-1],
                         n_classes=len(private.classes)).to(dev)
    engine = gep.GEP(model, public_x, n_classes=len(private.classes), public_y=public_y,
                     public_labels=cfg.public_labels, mode=cfg.method, n_bases=cfg.n_bases, grouping=cfg.grouping,
                     n_groups=cfg.n_groups, clip_embedding=cfg.clip_embedding, clip_residual=cfg.clip_residual,
                     noise_multiplier=sigma, sample_rate=q, dataset_size=n, delta=cfg.delta,
                     refresh_every=cfg.refresh_every, backend=cfg.backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    x_private, y_private = private.x.to(dev), private.y.to(dev)
    start_epoch, history, state = _resume(run, model, optimizer, epochs)
    if state is not None:
        schedule.load_state_dict(state["schedule"])
        engine.accountant.load_state_dict(state["accountant"])
        engine.steps = state["engine_steps"]
    print(f"{cfg.method} on {cfg.dataset} with {model_name}: {n} private / {len(public_x)} public "
          f"({cfg.public_source}) / {len(test)} test examples, "
          f"q = {q:.4g}, {total_steps} steps, sigma = {sigma:.3f} ({cfg.accounting} accounting for "
          f"epsilon = {cfg.epsilon}, delta = {cfg.delta})")
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        batches = gep.epoch_batches(n, cfg.batch_size, sampling=cfg.sampling, generator=engine.generator)
        for idx in progress(batches, desc=f"epoch {epoch + 1}/{epochs}"):
            idx = idx.to(dev)
            engine.step(x_private[idx], y_private[idx])
            optimizer.step()
            schedule.step()
        test_acc = models.accuracy(model, test.x, test.y)
        history.append({"epoch": epoch + 1, "test_accuracy": test_acc, "epsilon": engine.epsilon(),
                        "seconds": time.perf_counter() - t0})
        print(f"epoch {epoch + 1}/{epochs}: test accuracy {test_acc:.4f}, epsilon so far "
              f"{history[-1]['epsilon']:.3f} ({history[-1]['seconds']:.1f} s)", flush=True)
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "accountant": engine.accountant.state_dict(),
                             "engine_steps": engine.steps, "epoch": epoch + 1, "history": history})
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            raise Interrupted(f"stopped after epoch {epoch + 1} as asked")
    spent = engine.epsilon()
    return run.finish(
        metrics={"test_accuracy": history[-1]["test_accuracy"], "epsilon": spent,
                 "epsilon_claimed_by_original_accounting": claimed,
                 "best_test_accuracy_over_epochs (original's selection, on the test set)":
                     max(h["test_accuracy"] for h in history), "noise_multiplier": sigma,
                 "effective_noise_multiplier": engine.effective_noise_multiplier, "epochs": epochs,
                 "model": model_name, "steps": total_steps, "sample_rate": q, "history": history},
        timings={"train_seconds": sum(h["seconds"] for h in history),
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start_epoch,
    )


# ---------------------------------------------------------------------------------------------------
# Shredder
# ---------------------------------------------------------------------------------------------------
def _batched(fn, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _frozen_lenet(cfg, run: Run, task: str, x_train, y_train, x_val, y_val, n_classes: int):
    """The base LeNet-5 for ``task`` ("public" or "private"), trained once per data config and cached in
    ``<results>/shredder-base/``; returned frozen."""
    from . import shredder

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


def _mi_table(cfg, images: torch.Tensor, blocks: dict[str, torch.Tensor]) -> dict:
    """MI between the images and each representation in ``blocks``, by the original's estimator on raw and on
    block-standardised values (``cfg.mi_seeds`` permutation seeds: mean and sd) and by KSG (z-scored)."""
    import numpy as np

    from . import mi

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
    MI between image and transmitted activation (:func:`_mi_table`, with the pure-rescale control), an
    adversary MLP trained on noisy activations to recover the label (against clean activations and chance),
    and the original's non-adaptive adversary (a 10-class LeNet with the same noise at its own cut).
    Accepted samples are checkpointed, so an interrupted run resumes with the pool it had.
    """
    from . import shredder

    dev = device()
    t0 = time.perf_counter()
    parts = data.splits(cfg.dataset, validation=cfg.validation, max_train=cfg.max_train, seed=cfg.seed,
                        scale="unit")
    xs = {k: shredder.to_32(parts[k].x).to(dev) for k in ("train", "validation", "test")}
    ys = {k: parts[k].y.to(dev) for k in xs}
    public = {k: (v > cfg.public_threshold).long() for k, v in ys.items()}
    n_private = len(parts["train"].classes)
    base = _frozen_lenet(cfg, run, "public", xs["train"], public["train"], xs["validation"], public["validation"], 2)
    edge, cloud = shredder.split(base, cfg.cut)
    a = {k: _batched(edge, v) for k, v in xs.items()}

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
        run.save_checkpoint({"samples": [vars(s) for s in samples], "runs_tried": runs_tried})
        if stop_after_epoch is not None and runs_tried >= stop_after_epoch:
            raise Interrupted(f"stopped after {runs_tried} noise-training runs as asked")
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
    a_untrained = _batched(untrained, a_test)

    m = min(cfg.mi_samples or len(a_test), len(a_test))
    a_noisy = noisy["exact"][:m]
    scale = float(a_noisy.flatten(1).std() / a_test[:m].flatten(1).std())  # the pure-rescale control's factor
    mi_table = _mi_table(cfg, xs["test"][:m], {"clean": a_test[:m], "noisy": a_noisy,
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
    private_net = _frozen_lenet(cfg, run, "private", xs["train"], ys["train"], xs["validation"], ys["validation"],
                                n_private)
    p_edge, p_cloud = shredder.split(private_net, cfg.cut)
    a_private = shredder.apply_noise(_batched(p_edge, xs["test"]), *pool.draw(len(a_test), generator=gen))
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
        "mi": mi_table, "adversary": adversary, "pool_path": str(pool_path),
    }
    print(f"public accuracy {clean_test:.4f} clean -> {accuracy['exact']:.4f} noisy; SNR {metrics['snr']:.2e}; "
          f"adversary {adversary['clean']:.3f} clean -> {adversary['noisy']:.3f} noisy (chance "
          f"{adversary['chance']:.3f})", flush=True)
    return run.finish(metrics=metrics, timings={"train_seconds": train_seconds,
                                                "total_seconds": time.perf_counter() - t0})


# ---------------------------------------------------------------------------------------------------
# StoBatch and its baselines
# ---------------------------------------------------------------------------------------------------
STOBATCH_METHODS = ("stobatch", "pixeldp", "securesgd", "nonprivate")


def _paper_key(dataset: str) -> str:
    """The dataset whose code settings (spec 2.2) a StoBatch run on ``dataset`` follows."""
    return {"fashion-mnist": "mnist", "svhn": "cifar10"}.get(dataset, dataset)


def _stobatch_shape(dataset: str) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) the StoBatch networks see for ``dataset`` (:func:`_stobatch_data`)."""
    shape = (3, 28, 28) if dataset in _CROPPED else data._SHAPES[dataset]
    return shape, 30 if dataset == "tinyimagenet" else 10


_CROPPED = ("cifar10", "svhn")  # 3x32x32 images the StoBatch network sees as 28x28 centre crops


def _stobatch_data(cfg):
    """Train / public / test splits in [-1, 1] for the StoBatch networks: CIFAR-10 centre-cropped to 28x28
    (the code crops at random in training), Tiny ImageNet's first 30 classes."""
    parts = data.splits(cfg.dataset, public=cfg.public, max_train=cfg.max_train, seed=cfg.seed, scale="symmetric",
                        classes=30 if cfg.dataset == "tinyimagenet" else None)
    if cfg.dataset in _CROPPED:
        parts = {k: data.ArrayDataset(v.x[..., 2:30, 2:30].contiguous(), v.y, name=v.name, split=v.split,
                                      classes=v.classes) for k, v in parts.items()}
    return parts


def _stobatch_options(cfg, trainers: int):
    """:class:`dpbook.stobatch.StoBatchOptions` of the settings: the variant's switches, with ``noise_reuse``
    and ``delta_x_convention`` overridden when set; ``hyperparameters="paper"`` takes the code's batch size,
    xi, attack sizes and steps, learning rates and optimiser for the dataset (spec 2.2)."""
    from . import stobatch as sb

    paper = sb.PAPER_SETTINGS[_paper_key(cfg.dataset)] if cfg.hyperparameters == "paper" else {}
    paper = {k: v for k, v in paper.items() if not k.startswith("epsilon")}  # the budget is always the settings'
    kw = dict(epsilon_autoencoder=cfg.epsilon_autoencoder, epsilon2=cfg.epsilon2, batch_size=cfg.batch_size,
              xi=cfg.xi, mu_max=cfg.mu_max, attack_steps=cfg.attack_steps, lr_theta1=cfg.lr, lr_theta2=cfg.lr,
              trainers=trainers, partition_seed=cfg.seed)
    kw.update(paper)
    kw.update({k: cfg[k] for k in ("noise_reuse", "delta_x_convention") if cfg[k]})
    if cfg.variant not in ("principled", "original"):
        raise ValueError(f"variant must be 'principled' or 'original'; got {cfg.variant!r}")
    return sb.StoBatchOptions.original(**kw) if cfg.variant == "original" else sb.StoBatchOptions(**kw)


def _world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless launched by torchrun with several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from . import distributed

        return distributed.setup()
    return 0, 1


@experiment("stobatch")
def stobatch_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """StoBatch (``method="stobatch"``) or a baseline (``"pixeldp"``, ``"securesgd"``, ``"nonprivate"``) on the
    same network (:func:`dpbook.stobatch.network_for`), then conventional and certified accuracy on clean and
    attacked test points (:func:`dpbook.evaluation.evaluate`).

    StoBatch trains on the fixed partition of ``batch_size`` disjoint batches with the budget's noise
    (:func:`dpbook.stobatch.prepare`); the privacy numbers are :func:`dpbook.stobatch.privacy_report`'s.
    Launched by ``torchrun --nproc_per_node N python -m dpbook run stobatch``, each process is one trainer
    (:mod:`dpbook.distributed`); rank 0 writes checkpoints and the result. Every epoch is checkpointed (with
    the noise table, so a resumed run keeps its noise); schedule and attack randomness of epoch e come from
    seed + e. The original variant is evaluated with the code's inference protocol and with fresh noise.
    """
    from . import baselines, evaluation, gep
    from . import stobatch as sb

    if cfg.method not in STOBATCH_METHODS:
        raise ValueError(f"method must be one of {', '.join(STOBATCH_METHODS)}; got {cfg.method!r}")
    rank, world = _world() if cfg.method == "stobatch" else (0, 1)
    dev = device()
    torch.manual_seed(cfg.seed)
    parts = _stobatch_data(cfg)
    train, test = parts["train"], parts["test"]
    in_shape, n_classes = tuple(train.x.shape[1:]), len(train.classes)
    # the paper's Tiny ImageNet network starts from ImageNet weights (spec 2.1); the other networks have none
    model = sb.network_for(in_shape, n_classes, norm=cfg.norm, pretrained=cfg.hyperparameters == "paper").to(dev)
    x, y = train.x.to(dev), train.y.to(dev)
    state = run.load_checkpoint()
    history = state["history"] if state else []
    start = state["epoch"] if state else 0
    if state:
        print(f"resuming {run.experiment} from epoch {start} ({run.checkpoint_path})")
    info: dict = {}

    def save(epoch: int, extra: dict) -> None:
        if rank == 0:
            run.save_checkpoint({"model": model.state_dict(), "epoch": epoch, "history": history, **extra})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise Interrupted(f"stopped after epoch {epoch} as asked")

    t0 = time.perf_counter()
    if cfg.method == "stobatch":
        options = _stobatch_options(cfg, world)
        epochs = cfg.epochs or sb.PAPER_EPOCHS[_paper_key(cfg.dataset)]
        sb_run = sb.prepare(model, len(train), options)
        optimizers = sb.make_optimizers(model, options)
        if world > 1:
            from . import distributed

            distributed.broadcast_run(model, sb_run)
            train_epoch = functools.partial(distributed.train_epoch, rank=rank, world=world)
        else:
            train_epoch = sb.train_epoch
        if state:
            model.load_state_dict(state["model"])
            for opt, s in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            sb_run.noise = sb.NoiseTable(**{k: v.to(dev) for k, v in state["noise"].items()})
            sb_run.sigma_max_seen, sb_run.steps = state["sigma_max_seen"], state["steps"]
        print(f"stobatch ({cfg.variant}) on {cfg.dataset}: {len(train)} examples in {len(sb_run.partition)} batches "
              f"of {options.batch_size}, {world} trainer(s), {epochs} epochs; noise scales b_x = "
              f"{sb_run.budget.input_scale:.4g}, b_h = {sb_run.budget.latent_scale:.4g}, chi = "
              f"{sb_run.budget.output_scale:.4g}; claimed epsilon {sb.privacy_report(sb_run)['epsilon']:.4g}",
              flush=True)
        for epoch in range(start, epochs):
            t = time.perf_counter()
            schedule_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            attack_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + epoch + 10_000 * (rank + 1))
            stats = train_epoch(model, optimizers, sb_run, x, y, schedule_generator=schedule_gen,
                                attack_generator=attack_gen)
            history.append({"epoch": epoch + 1, **{k: stats[k] for k in ("loss", "ae_loss", "output_loss",
                                                                         "train_accuracy", "adv_accuracy")},
                            "seconds": time.perf_counter() - t})
            print(f"epoch {epoch + 1}/{epochs}: train accuracy {stats['train_accuracy']:.4f} (benign batch, its "
                  f"noise), adversarial {stats['adv_accuracy']:.4f} ({history[-1]['seconds']:.1f} s)", flush=True)
            save(epoch + 1, {"optimizers": [o.state_dict() for o in optimizers], "sigma_max_seen":
                             sb_run.sigma_max_seen, "steps": sb_run.steps,
                             "noise": {k: getattr(sb_run.noise, k).cpu() for k in ("x", "h", "chi")}})
        if rank != 0:
            return {"metrics": {}, "timings": {}}
        info["privacy"] = sb.privacy_report(sb_run)
        info["options"] = {k: v for k, v in vars(options).items() if not isinstance(v, tuple)}
        protocols = ("fresh",) if cfg.variant == "principled" else ("original", "fresh")
        deployed = {p: sb.deployed(model, sb_run, inference=p, mode=cfg.certify_mode) for p in protocols}
    elif cfg.method in ("pixeldp", "nonprivate"):
        epochs = cfg.epochs
        scales = dict(input_scale=cfg.pixeldp_input_scale, latent_scale=cfg.pixeldp_latent_scale)
        net = baselines.pixeldp_network(model, **scales) if cfg.method == "pixeldp" else baselines.plain_network(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.baseline_lr)
        if state:  # the noisy network wraps the model's own modules: its weights are the model's
            model.load_state_dict(state["model"]), optimizer.load_state_dict(state["optimizer"])

        def checkpoint(epoch: int, hist: list) -> None:
            history[:] = hist
            save(epoch, {"optimizer": optimizer.state_dict()})

        fit(net, train, epochs=epochs, batch_size=cfg.baseline_batch_size, lr=cfg.baseline_lr, seed=cfg.seed,
            optimizer=optimizer, start_epoch=start, history=history, on_epoch_end=checkpoint)
        net.eval()
        deployed = {"fresh": baselines.pixeldp_deployed(model, **scales, mode=cfg.certify_mode)
                    if cfg.method == "pixeldp" else evaluation.Deployed(predict=net, n_classes=n_classes,
                                                                        deterministic=True)}
        if cfg.method == "pixeldp":
            info["noise"] = scales
    else:  # securesgd: DP-SGD through the GEP engine (mode "dpsgd") on inputs that carry their HGM noise
        epochs = cfg.epochs
        n, q = len(train), cfg.baseline_batch_size / len(train)
        steps = epochs * max(1, round(1 / q))
        sigma = gep.calibrate(target_epsilon=cfg.securesgd_epsilon, delta=cfg.securesgd_delta, sample_rate=q,
                              steps=steps, mode="dpsgd")
        sb.project_spectral_norm_(model.first.weight, 1.0)
        hgm = baselines.hgm_sigma(epsilon_r=cfg.hgm_epsilon_r, delta_r=cfg.hgm_delta_r, bound=cfg.hgm_bound,
                                  sensitivity=baselines.conv_l2_sensitivity(model.first))
        r = baselines.redistribution(model, parts["public"].x.to(dev), parts["public"].y.to(dev))
        packed = baselines.PackedNoise(model, r).to(dev)
        engine = gep.GEP(packed, torch.zeros(0, 1, device=dev), n_classes=n_classes, mode="dpsgd",
                         clip_residual=cfg.securesgd_clip, noise_multiplier=sigma, sample_rate=q, dataset_size=n,
                         delta=cfg.securesgd_delta)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.securesgd_lr, momentum=0.9)
        if state:
            model.load_state_dict(state["model"]), optimizer.load_state_dict(state["optimizer"])
            engine.accountant.load_state_dict(state["accountant"])
            packed.sqrt_r.copy_(state["sqrt_r"])
        print(f"securesgd on {cfg.dataset}: q = {q:.4g}, {steps} steps, sigma = {sigma:.3f} for (epsilon = "
              f"{cfg.securesgd_epsilon}, delta = {cfg.securesgd_delta}); HGM sigma {hgm:.4g}", flush=True)
        noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        for epoch in range(start, epochs):
            t = time.perf_counter()
            model.train()
            for idx in progress(gep.epoch_batches(n, cfg.baseline_batch_size, generator=engine.generator),
                                desc=f"epoch {epoch + 1}/{epochs}"):
                idx = idx.to(dev)
                engine.step(baselines.pack(x[idx], model.first.latent_shape, hgm, noise_gen), y[idx])
                optimizer.step()
                sb.project_spectral_norm_(model.first.weight, 1.0)  # keeps the certificate's sensitivity
            history.append({"epoch": epoch + 1, "epsilon": engine.epsilon(), "seconds": time.perf_counter() - t})
            print(f"epoch {epoch + 1}/{epochs}: epsilon so far {history[-1]['epsilon']:.3f} "
                  f"({history[-1]['seconds']:.1f} s)", flush=True)
            save(epoch + 1, {"optimizer": optimizer.state_dict(), "accountant": engine.accountant.state_dict(),
                             "sqrt_r": packed.sqrt_r})
        model.eval()
        deployed = {"fresh": baselines.securesgd_deployed(model, packed.sqrt_r.square(), hgm)}
        info["privacy"] = {"epsilon": engine.epsilon(), "delta": cfg.securesgd_delta, "noise_multiplier": sigma,
                           "sample_rate": q, "steps": steps}
        info["noise"] = {"hgm_sigma": hgm, "r_min": float(packed.sqrt_r.min() ** 2)}
    train_seconds = time.perf_counter() - t0

    n_test = min(cfg.n_test or len(test), len(test))
    xt, yt = test.x[:n_test].to(dev), test.y[:n_test].to(dev)
    evaluations = {}
    for protocol, dep in deployed.items():
        print(f"evaluating ({protocol} inference) on {n_test} test points: {cfg.n_draws} votes each, attacks "
              f"{', '.join(cfg.attacks)} at sizes {cfg.attack_sizes}", flush=True)
        rows = evaluation.evaluate(dep, xt, yt, attack_names=cfg.attacks, sizes=cfg.attack_sizes,
                                   steps=cfg.test_attack_steps, eot=cfg.eot, n_draws=cfg.n_draws, eta=cfg.eta)
        evaluations[protocol] = {"rows": rows, "average_over_attacks": evaluation.average_over_attacks(rows)}
        clean = rows[0]
        print(f"  clean conventional accuracy {clean['conventional']:.4f}; averaged over attacks: "
              + ", ".join(f"mu {mu}: {v['conventional']:.3f}" for mu, v in
                          evaluations[protocol]["average_over_attacks"].items()), flush=True)
    main_protocol = next(iter(evaluations))
    return run.finish(
        metrics={"test_accuracy": evaluations[main_protocol]["rows"][0]["conventional"],
                 "epsilon": info.get("privacy", {}).get("epsilon"), "evaluation": evaluations,
                 "main_protocol": main_protocol, "epochs": epochs, "history": history, "n_test": n_test,
                 "trainers": world, **info},
        timings={"train_seconds": train_seconds, "evaluation_seconds": time.perf_counter() - t0 - train_seconds,
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start)


# ---------------------------------------------------------------------------------------------------
# Privacy audits
# ---------------------------------------------------------------------------------------------------
AUDIT_TARGETS = ("dpsgd", "gep", "stobatch")


def _gep_mechanism(cfg) -> dict:
    """The (q, steps, sigma, claimed epsilon, delta) of the audited DP-SGD or GEP run at ``cfg.epsilon`` and
    ``cfg.accounting``, and what the PLD accountant says of the mechanism that really runs. ``cfg.setup``:
    ``"gep"``, the gep experiment with ``settings("gep")`` of the active profile; or a dataset of
    :data:`dpbook.gep.PAPER_SETUPS`, the paper's N, batch, delta and epochs (steps counted as the code does)."""
    from . import gep, privacy

    g = settings("gep")
    if cfg.setup == "gep":
        name, delta = g.dataset, cfg.delta
        n = len(data.splits(g.dataset, validation=g.validation, public=g.public, max_train=g.max_train,
                            seed=g.seed)["train"])
        q = g.batch_size / n
        epochs = g.epochs or gep.paper_epochs(g.dataset, cfg.epsilon)
        steps = epochs * max(1, round(1 / q))
    elif cfg.setup in gep.PAPER_SETUPS:
        name, paper = cfg.setup, gep.PAPER_SETUPS[cfg.setup]
        n, delta = paper["dataset_size"], paper["delta"]
        q = paper["batch_size"] / n
        epochs = gep.paper_epochs(cfg.setup, cfg.epsilon)
        steps = int(epochs / q)
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


@experiment("audit")
def audit_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Empirical lower bounds on epsilon (:mod:`dpbook.audit`) for DP-SGD, GEP or StoBatch (``cfg.target``).

    DP-SGD and GEP: white-box gradient canaries through :func:`dpbook.gep.privatize` for a whole run with the
    sampling rate, steps and noise of the ``gep`` experiment, or of a paper setup (``cfg.setup``,
    :func:`_gep_mechanism`), at ``cfg.epsilon`` (``cfg.accounting``: the sound joint calibration or the
    original's); ``cfg.repeats`` runs of ``cfg.n_canaries`` canaries each, one checkpoint per run.
    StoBatch: ``cfg.stobatch_trials`` releases of the output layer's functional mechanism under ``cfg.variant``
    (:func:`dpbook.audit.stobatch_output_canaries`). Reports the claimed epsilon, the many-run bound
    (threshold chosen on half the trials), the one-run bound on the first run, and for DP-SGD and GEP the
    accountant's epsilon of the mechanism that really runs.
    """
    import numpy as np

    from . import audit

    if cfg.target not in AUDIT_TARGETS:
        raise ValueError(f"target must be one of {', '.join(AUDIT_TARGETS)}; got {cfg.target!r}")
    t0 = time.perf_counter()
    state = run.load_checkpoint() or {"scores": [], "included": []}
    if cfg.target == "stobatch":
        from . import stobatch as sb

        s = settings("stobatch", variant=cfg.variant, norm="batch" if cfg.variant == "original" else "group",
                     epsilon_autoencoder=cfg.epsilon / 2, epsilon2=cfg.epsilon / 2)
        options = _stobatch_options(s, trainers=1)
        torch.manual_seed(cfg.seed)
        model = sb.network_for(*_stobatch_shape(s.dataset), norm=s.norm)
        mechanism = {"variant": cfg.variant, "noise_reuse": options.noise_reuse, "noise_seed": options.noise_seed,
                     "batch_size": options.batch_size, "epsilon_claimed": cfg.epsilon,
                     "epsilon2_claimed": options.epsilon2}
        out = audit.stobatch_output_canaries(model, options, n_trials=cfg.stobatch_trials, seed=cfg.seed)
        scores, included = out["scores"], out["included"]
        first = (scores, included)
        claim_audited = options.epsilon2
    else:
        mechanism = _gep_mechanism(cfg)
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
            run.save_checkpoint(state)
            if stop_after_epoch is not None and r + 1 >= stop_after_epoch:
                raise Interrupted(f"stopped after {r + 1} audit runs as asked")
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
                 "refuted": bool(max(many["epsilon_lower"], one) > claim_audited)},
        timings={"seconds": time.perf_counter() - t0})
