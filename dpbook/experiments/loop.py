"""The private-training loop every DP experiment shares: Poisson batches, one checkpoint per epoch, resume.

:func:`private_epochs` runs epochs of a DP engine (:class:`dpbook.gep.GEP` in any of its modes): each epoch
draws its batches with the engine's :meth:`~dpbook.gep.GEP.epoch_batches` (its own generator) (Poisson sampling with
rate q = B / N by default, the analysis the accountant makes), calls ``step(idx)`` per batch, records the
epsilon spent so far, and checkpoints model, optimiser, accountant and the caller's extra state, so an
interrupted run resumes (:func:`resume`) with the same accountant.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

from ..progress import progress
from ..runs import Run
from .registry import Interrupted


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless launched by torchrun with several processes (then joins their group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .. import distributed

        return distributed.setup()
    return 0, 1


def restore(state: dict | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
            engine=None) -> None:
    """Load a checkpoint ``state`` (if any) into ``model``, ``optimizer`` and the ``engine``'s accountant and
    step count."""
    if state is None:
        return
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if engine is not None:
        engine.accountant.load_state_dict(state["accountant"])
        engine.steps = state.get("engine_steps", engine.steps)


def resume(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
           epochs: int, engine=None) -> tuple[int, list, dict | None]:
    """The last checkpoint of ``run`` (if resuming), loaded by :func:`restore`: returns (start epoch, history,
    the whole checkpoint or ``None``)."""
    state = run.load_checkpoint()
    if state is None:
        return 0, [], None
    restore(state, model, optimizer, engine)
    print(f"resuming {run.experiment} from epoch {state['epoch']} of {epochs}")
    return state["epoch"], state["history"], state


def save_and_check(run: Run, done: int, state: dict, stop_after: int | None, *, unit: str = "epoch",
                   write: bool = True) -> None:
    """Checkpoint ``state`` (when ``write``: rank 0 only in distributed runs), then raise
    :class:`Interrupted` if ``stop_after`` units are done (the resume tests' interruption)."""
    if write:
        run.save_checkpoint(state)
    if stop_after is not None and done >= stop_after:
        raise Interrupted(f"stopped after {unit} {done} as asked")


def private_epochs(run: Run, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, engine,
                   step: Callable[[torch.Tensor], None], n: int, batch_size: int, epochs: int, start: int,
                   history: list, device: torch.device, sampling: str = "poisson",
                   evaluate: Callable[[], dict] | None = None, extra_state: Callable[[], dict] | None = None,
                   stop_after_epoch: int | None = None) -> list:
    """Epochs ``start .. epochs - 1`` of private training; returns ``history`` (one entry per epoch).

    Args:
        engine: the DP engine; its ``epoch_batches`` draws the batches, its ``accountant`` is checkpointed and
            ``engine.epsilon()`` is recorded after each epoch.
        step: called with each batch's indices (on ``device``); computes the private gradient and steps.
        n, batch_size: dataset size N and expected batch size B (q = B / N).
        sampling: ``"poisson"`` (the accountant's analysis) or ``"shuffle"`` (the original GEP code's).
        evaluate: returns metrics to record after each epoch (e.g. ``{"test_accuracy": ...}``).
        extra_state: returns more state to checkpoint (e.g. a learning-rate schedule).
    """
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        batches = engine.epoch_batches(n, batch_size, sampling=sampling)
        for idx in progress(batches, desc=f"epoch {epoch + 1}/{epochs}"):
            step(idx.to(device))
        lead = engine.rank == 0  # in a data-parallel run only rank 0 evaluates, reports and checkpoints
        metrics = evaluate() if evaluate is not None and lead else {}
        history.append({"epoch": epoch + 1, **metrics, "epsilon": engine.epsilon(),
                        "seconds": time.perf_counter() - t0})
        shown = "".join(f"{k.replace('_', ' ')} {v:.4f}, " for k, v in metrics.items())
        if lead:
            print(f"epoch {epoch + 1}/{epochs}: {shown}epsilon so far {history[-1]['epsilon']:.3f} "
                  f"({history[-1]['seconds']:.1f} s)", flush=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "accountant": engine.accountant.state_dict(), "engine_steps": engine.steps,
                 "epoch": epoch + 1, "history": history, **(extra_state() if extra_state else {})}
        save_and_check(run, epoch + 1, state, stop_after_epoch, write=lead)
    return history
