"""Named experiments, shared by the notebooks and the command line.

An experiment is a function ``fn(cfg, run) -> dict`` registered with :func:`experiment`. ``cfg`` holds
its settings (from :func:`dpbook.settings`, so the profile decides the sizes) and ``run`` is the
:class:`dpbook.runs.Run` that owns its results file and checkpoint. The same call backs a notebook cell
and ``python -m dpbook run NAME``.

Example:
    >>> import dpbook.experiments as ex
    >>> sorted(ex.EXPERIMENTS)
    ['baseline', 'gep']
"""
from __future__ import annotations

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
    """
    from . import gep

    dev = device()
    torch.manual_seed(cfg.seed)
    heldout = cfg.public if cfg.public_source == "heldout" else 0
    parts = data.splits(cfg.dataset, validation=cfg.validation, public=heldout, max_train=cfg.max_train,
                        seed=cfg.seed, scale=cfg.scale)
    private, test = parts["train"], parts["test"]
    public_x, public_y = _public_data(cfg, parts)
    epochs = cfg.epochs or gep.paper_epochs(cfg.dataset, cfg.epsilon)
    model_name = cfg.model if cfg.model != "auto" else ("resnet20-gn" if private.x.shape[1] == 3 else "small-cnn")
    n = len(private)
    q = cfg.batch_size / n
    steps_per_epoch = max(1, round(1 / q))
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
        for _ in progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}"):
            idx = gep.poisson_batch(n, q, generator=engine.generator).to(dev)
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
