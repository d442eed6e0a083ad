"""GEP, Biased-GEP or DP-SGD trained to a target (epsilon, delta): chapter 21's runs."""
from __future__ import annotations

import torch

from .. import data, guarantees, models
from ..config import device
from ..runs import Run
from .loop import private_epochs, resume
from .registry import experiment


def public_data(cfg, parts: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def private_data(cfg) -> tuple[data.ArrayDataset, data.ArrayDataset, torch.Tensor, torch.Tensor | None]:
    """(private training set, test set, public inputs, public labels or ``None``) of a GEP run; SVHN's extra
    split is added to the private data when ``cfg.extra`` (the paper's 604,388 images)."""
    heldout = cfg.public if cfg.public_source == "heldout" else 0
    parts = data.splits(cfg.dataset, validation=cfg.validation, public=heldout, max_train=cfg.max_train,
                        seed=cfg.seed, scale=cfg.scale)
    private, test = parts["train"], parts["test"]
    if cfg.extra:
        if cfg.dataset != "svhn":
            raise ValueError(f"extra=True adds SVHN's extra split; dataset is {cfg.dataset}")
        more = data.load("svhn", "extra", scale=cfg.scale)
        private = data.ArrayDataset(torch.cat([private.x, more.x]), torch.cat([private.y, more.y]),
                                    name="svhn", split="train+extra", classes=private.classes)
    return (private, test, *public_data(cfg, parts))


@experiment("gep")
def gep_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """Train with GEP, Biased-GEP or DP-SGD (``cfg.method``) to a target (epsilon, delta); report test accuracy
    at the last epoch and the epsilon the accountant certifies.

    The public (anchor) data come from :func:`public_data`. Batches are Poisson samples with rate
    q = batch_size / N; the noise multiplier comes from :func:`dpbook.gep.calibrate` (``accounting="joint"``,
    sound) or :func:`dpbook.gep.original_sigma` (``accounting="original"``, the code's, which under-counts
    GEP's privacy loss). The learning rate drops 10x at half and 100x at three quarters of training, as in
    the code. ``epochs=0`` takes the paper's epochs for the dataset and epsilon
    (:func:`dpbook.gep.paper_epochs`); ``model="auto"`` is ResNet20-GN for colour images and the small CNN
    otherwise (the paper's choice). ``sampling="shuffle"`` trains on the original's fixed-size shuffled
    batches, which the accountant's Poisson analysis does not cover (:func:`dpbook.gep.epoch_batches`).
    Unsound modes warn and the result records ``guarantee: none`` (:mod:`dpbook.guarantees`).
    """
    from .. import gep, privacy

    guarantee = guarantees.check_settings(cfg)
    dev = device()
    torch.manual_seed(cfg.seed)
    private, test, public_x, public_y = private_data(cfg)
    epochs = cfg.epochs or gep.paper_epochs(cfg.dataset, cfg.epsilon)
    model_name = cfg.model if cfg.model != "auto" else ("resnet20-gn" if private.x.shape[1] == 3 else "small-cnn")
    n = len(private)
    q = cfg.batch_size / n
    total_steps = epochs * privacy.steps_per_epoch(n, cfg.batch_size, sampling=cfg.sampling)
    claimed = None
    if cfg.accounting == "joint":
        noise_multiplier = gep.calibrate(target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q,
                                         steps=total_steps, mode=cfg.method)
    elif cfg.accounting == "original":
        noise_multiplier, claimed = gep.original_sigma(target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q,
                                                       epochs=epochs, residual=cfg.method == "gep")
    else:
        raise ValueError(f"accounting of the gep experiment must be 'joint' or 'original'; got {cfg.accounting!r}")
    model = models.build(model_name, in_channels=private.x.shape[1], image_size=private.x.shape[-1],
                         n_classes=len(private.classes)).to(dev)
    engine = gep.GEP(model, public_x, n_classes=len(private.classes), public_y=public_y,
                     public_labels=cfg.public_labels, mode=cfg.method, n_bases=cfg.n_bases, grouping=cfg.grouping,
                     n_groups=cfg.n_groups, clip_embedding=cfg.clip_embedding, clip_residual=cfg.clip_residual,
                     noise_multiplier=noise_multiplier, sample_rate=q, dataset_size=n, delta=cfg.delta,
                     refresh_every=cfg.refresh_every, backend=cfg.backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    x_private, y_private = private.x.to(dev), private.y.to(dev)
    start_epoch, history, state = resume(run, model, optimizer, epochs=epochs, engine=engine)
    if state is not None:
        schedule.load_state_dict(state["schedule"])
    print(f"{cfg.method} on {cfg.dataset} with {model_name}: {n} private / {len(public_x)} public "
          f"({cfg.public_source}) / {len(test)} test examples, q = {q:.4g}, {total_steps} steps, "
          f"noise multiplier {noise_multiplier:.3f} ({cfg.accounting} accounting for epsilon = {cfg.epsilon}, "
          f"delta = {cfg.delta})")

    def step(idx: torch.Tensor) -> None:
        engine.step(x_private[idx], y_private[idx])
        optimizer.step()
        schedule.step()

    history = private_epochs(
        run, model=model, optimizer=optimizer, engine=engine, step=step, n=n, batch_size=cfg.batch_size,
        epochs=epochs, start=start_epoch, history=history, device=dev, sampling=cfg.sampling,
        evaluate=lambda: {"test_accuracy": models.accuracy(model, test.x, test.y)},
        extra_state=lambda: {"schedule": schedule.state_dict()}, stop_after_epoch=stop_after_epoch)
    return run.finish(
        metrics={"test_accuracy": history[-1]["test_accuracy"], "epsilon": engine.epsilon(),
                 "epsilon_claimed_by_original_accounting": claimed,
                 "best_test_accuracy_over_epochs (original's selection, on the test set)":
                     max(h["test_accuracy"] for h in history), "noise_multiplier": noise_multiplier,
                 "effective_noise_multiplier": engine.effective_noise_multiplier, "epochs": epochs,
                 "model": model_name, "steps": total_steps, "sample_rate": q, "history": history, **guarantee},
        timings={"train_seconds": sum(h["seconds"] for h in history),
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start_epoch,
    )
