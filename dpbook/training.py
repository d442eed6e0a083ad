"""The plain training loop shared by experiments and notebooks (non-private; DP training has its own steps).

:func:`fit` trains a classifier with Adam on in-memory tensors. The batch order of epoch e comes from the
seed ``seed + e``, so a run resumed at epoch e replays exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import ArrayDataset
from .models import accuracy
from .progress import progress


def fit(model: nn.Module, train: ArrayDataset, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float = 0.0, seed: int = 0, validation: ArrayDataset | None = None,
        optimizer: torch.optim.Optimizer | None = None, start_epoch: int = 0, history: list | None = None,
        on_epoch_end: Callable[[int, list], None] | None = None, log: bool = True) -> list[dict]:
    """Train ``model`` on ``train`` for epochs ``start_epoch .. epochs - 1``; return the history.

    Args:
        model: a classifier returning logits, already on its device (the data follow it).
        train, validation: datasets from :mod:`dpbook.data`.
        epochs, batch_size, lr, weight_decay: as usual (Adam unless ``optimizer`` is given).
        seed: base seed of the batch order.
        optimizer, start_epoch, history: to resume from a checkpoint.
        on_epoch_end: called as ``on_epoch_end(epoch + 1, history)`` after each epoch (checkpointing).

    Returns:
        list of dicts ``{epoch, train_loss, val_accuracy, seconds}``, one per finished epoch.
    """
    device = next(model.parameters()).device
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = list(history or [])
    x, y = train.x.to(device), train.y.to(device)
    n_batches = (len(train) + batch_size - 1) // batch_size
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch)).to(device)
        total = 0.0
        for b in progress(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}"):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val_acc = accuracy(model, validation.x, validation.y) if validation is not None and len(validation) \
            else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / len(train), "val_accuracy": val_acc,
                        "seconds": time.perf_counter() - t0})
        if log:
            h = history[-1]
            print(f"epoch {epoch + 1}/{epochs}: train loss {h['train_loss']:.4f}, "
                  f"validation accuracy {val_acc:.4f} ({h['seconds']:.1f} s)", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
    return history
