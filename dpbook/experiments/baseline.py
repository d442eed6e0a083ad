"""The non-private reference network of a dataset (Adam, no noise): the ceiling the private runs aim at."""
from __future__ import annotations

import torch

from .. import data, models
from ..config import device
from ..runs import Run
from ..training import fit
from .loop import resume, save_and_check
from .registry import experiment


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
    start_epoch, history, _ = resume(run, model, optimizer, epochs=cfg.epochs)
    print(f"{run.experiment}: {cfg.dataset}, {len(train)} train / {len(val)} validation / {len(test)} test, "
          f"{models.n_parameters(model):,} parameters, {cfg.epochs} epochs on {dev}")

    def checkpoint(epoch: int, hist: list) -> None:
        save_and_check(run, epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "epoch": epoch, "history": hist}, stop_after_epoch)

    history = fit(model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                  validation=val, optimizer=optimizer, start_epoch=start_epoch, history=history,
                  on_epoch_end=checkpoint)

    test_acc = models.accuracy(model, test.x, test.y)
    print(f"test accuracy {test_acc:.4f}")
    return run.finish(
        metrics={"test_accuracy": test_acc, "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
                 "history": history},
        timings={"train_seconds": sum(h["seconds"] for h in history),
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start_epoch,
    )
