"""Named experiments, shared by the notebooks and the command line.

An experiment is a function ``fn(cfg, run) -> dict`` registered with :func:`experiment`. ``cfg`` holds
its settings (from :func:`dpbook.settings`, so the profile decides the sizes) and ``run`` is the
:class:`dpbook.runs.Run` that owns its results file and checkpoint. The same call backs a notebook cell
and ``python -m dpbook run NAME``.

Example:
    >>> import dpbook.experiments as ex
    >>> sorted(ex.EXPERIMENTS)
    ['baseline']
"""
from __future__ import annotations

from typing import Callable

import torch

from . import data, models
from .config import device, settings
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
    history: list[dict] = []
    start_epoch = 0
    state = run.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        print(f"resuming {run.experiment} from epoch {start_epoch} of {cfg.epochs} ({run.checkpoint_path})")
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
