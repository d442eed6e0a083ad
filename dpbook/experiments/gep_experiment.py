"""GEP, Biased-GEP or DP-SGD trained to a target (epsilon, delta): chapter 21's runs."""
from __future__ import annotations

import functools

import torch

from .. import data, guarantees, models
from ..config import device
from ..runs import Run
from .loop import private_epochs, restore, resume, world
from .registry import experiment

#: What a result says about its validation split (``metrics["validation_use"]``).
VALIDATION_USE = ("the validation examples are cut from the private training split and read without noise to "
                  "choose settings; the run's (epsilon, delta) covers the examples trained on, not them")


@functools.lru_cache(maxsize=128)
def calibrated(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, mode: str) -> float:
    """:func:`dpbook.gep.calibrate`, remembered: the runs of a tuning grid share their (epsilon, delta, q, steps)
    and so their noise multiplier, which takes seconds to search for."""
    from .. import gep

    return gep.calibrate(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, mode=mode)


def public_data(cfg, parts: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GEP's auxiliary data (inputs, and labels when ``cfg.public_labels == "real"``) per ``cfg.public_source``:

    * ``"heldout"``: ``cfg.public`` examples cut from the training split and excluded from the private data:
      in distribution, anchors drawn from the private task's own distribution;
    * the name of another dataset of :data:`dpbook.data.DATASETS` (``"cifar100"``, ``"digits"``, ...): its
      first ``cfg.public`` images, test split first, resized to the private images' size and scaled like them
      (:func:`dpbook.data.load_like`); ``"cifar100"`` for CIFAR-10 is the code's ``--aux_dataset cifar100``,
      which its README says "yields similar performance" to its downsampled ImageNet;
    * ``"noise"``: uniform random pixels (seeded by ``cfg.seed``), anchors that come from no data at all, a
      control that needs no files;
    * the path of an images file (:func:`dpbook.data.load_images_file`; the code's ImageNet tensor).

    Only ``"heldout"`` takes examples from the private training split; with any other source every training
    example stays private (:func:`private_data`).
    """
    real = cfg.public_labels == "real"
    if cfg.public_source == "heldout":
        return parts["public"].x, parts["public"].y if real else None
    if real:
        raise ValueError(f"public_labels='real' needs public_source='heldout' (labels of the private task); "
                         f"{cfg.public_source!r} has none")
    if cfg.public_source == "noise":
        seeded = torch.Generator().manual_seed(cfg.seed)
        pixels = torch.rand((cfg.public, *data.SHAPES[cfg.dataset]), generator=seeded)
        return data.rescale(pixels, cfg.dataset, cfg.scale), None
    if cfg.public_source in data.DATASETS:
        return data.load_like(cfg.public_source, like=cfg.dataset, scale=cfg.scale, limit=cfg.public), None
    return data.load_images_file(cfg.public_source, like=cfg.dataset, scale=cfg.scale, limit=cfg.public), None


def held_out(cfg) -> int:
    """Training examples the gep settings ``cfg`` set aside as public data: ``cfg.public`` when the anchors are
    held out of the training split (``public_source="heldout"``), else none."""
    return cfg.public if cfg.public_source == "heldout" else 0


def private_data(cfg) -> tuple[data.ArrayDataset, data.ArrayDataset, data.ArrayDataset, torch.Tensor,
                                torch.Tensor | None]:
    """(private training set, validation set, test set, public inputs, public labels or ``None``) of a GEP run.

    The validation set (``cfg.validation`` examples, possibly none) is cut from the training split, so it is
    private data, disjoint from the examples trained on; the public anchors are cut from it too only when
    ``cfg.public_source == "heldout"`` (:func:`held_out`); SVHN's extra split is added to the private data when
    ``cfg.extra`` (the paper's 604,388 images)."""
    parts = data.splits(cfg.dataset, validation=cfg.validation, public=held_out(cfg), max_train=cfg.max_train,
                        seed=cfg.seed, scale=cfg.scale)
    private, validation, test = parts["train"], parts["validation"], parts["test"]
    if cfg.extra:
        if cfg.dataset != "svhn":
            raise ValueError(f"extra=True adds SVHN's extra split; dataset is {cfg.dataset}")
        more = data.load("svhn", "extra", scale=cfg.scale)
        private = data.ArrayDataset(torch.cat([private.x, more.x]), torch.cat([private.y, more.y]),
                                    name="svhn", split="train+extra", classes=private.classes)
    return (private, validation, test, *public_data(cfg, parts))


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

    Validation: ``cfg.validation`` > 0 examples are cut from the training split *before* the private data are
    taken, and each epoch records ``validation_accuracy`` on them; the test set is then evaluated once, after
    the last epoch (``metrics["test_accuracy"]``), so choosing settings on ``metrics["validation_accuracy"]``
    (:mod:`dpbook.experiments.tuning`) never looks at the test set. The validation examples are private data
    too, used without noise: the run's (epsilon, delta) covers the training examples, not them, and the result
    says so (``metrics["validation_use"]``). With ``cfg.validation == 0`` (the original code's protocol) each
    epoch records the test accuracy instead, and ``best_test_accuracy_over_epochs`` shows the code's selection
    of the best epoch on the test set.

    Pixels: ``cfg.scale="symmetric"`` (the settings' default) maps them to [-1, 1], a data-independent map;
    ``"standard"`` z-scores them with the training images' per-channel mean and std
    (:data:`dpbook.data.STANDARD_STATS`, as the GEP code), statistics of the private data that no privacy
    analysis here pays for.

    Seeds: ``cfg.seed`` fixes the initialisation, the random public labels and the splits; the DP noise and the
    Poisson batches come from OS-seeded generators (:func:`dpbook.privacy.noise_generator`), so runs that
    differ in ``cfg.seed`` (or not at all) have independent noise.

    Launched by ``torchrun --nproc_per_node N -m dpbook run gep ...``, the N processes train data-parallel
    (:mod:`dpbook.gep.parallel`: each its share of every batch, rank 0's noise); rank 0 writes checkpoints
    and the result.
    """
    from .. import gep, privacy

    guarantee = guarantees.check_settings(cfg)
    rank, world_size = world()
    dev = device()
    torch.manual_seed(cfg.seed)
    private, validation, test, public_x, public_y = private_data(cfg)
    epochs = cfg.epochs or gep.paper_epochs(cfg.dataset, cfg.epsilon)
    model_name = cfg.model if cfg.model != "auto" else ("resnet20-gn" if private.x.shape[1] == 3 else "small-cnn")
    n = len(private)
    q = cfg.batch_size / n
    total_steps = epochs * privacy.steps_per_epoch(n, cfg.batch_size, sampling=cfg.sampling)
    claimed = None
    if cfg.accounting == "joint":
        noise_multiplier = calibrated(target_epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q,
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
                     refresh_every=cfg.refresh_every, backend=cfg.backend, public_seed=cfg.seed,
                     distributed=world_size > 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    x_private, y_private = private.x.to(dev), private.y.to(dev)
    start_epoch, history, state = resume(run, model, optimizer, epochs=epochs, engine=engine) if rank == 0 else (
        0, [], None)
    if world_size > 1:  # every process starts, or resumes, from rank 0's weights and checkpoint
        start_epoch, history, state = gep.parallel.broadcast_object((start_epoch, history, state))
        if rank != 0:
            restore(state, model, optimizer, engine)
        gep.parallel.broadcast_module(model)
    if state is not None:
        schedule.load_state_dict(state["schedule"])
    if rank == 0:
        print(f"{cfg.method} on {cfg.dataset} with {model_name}: {n} private / {len(public_x)} public "
              f"({cfg.public_source}) / {len(validation)} validation / {len(test)} test examples, q = {q:.4g}, "
              f"{total_steps} steps, "
              f"noise multiplier {noise_multiplier:.3f} ({cfg.accounting} accounting for epsilon = {cfg.epsilon}, "
              f"delta = {cfg.delta}){f', {world_size} data-parallel processes' if world_size > 1 else ''}")

    def step(idx: torch.Tensor) -> None:
        engine.step(x_private[idx], y_private[idx])
        optimizer.step()
        schedule.step()

    validated = len(validation) > 0
    # per epoch: validation accuracy when there is a validation split (the test set waits for the end), else the
    # test accuracy (the original code's protocol, which selects on it)
    watched, watch_x, watch_y = (("validation_accuracy", validation.x, validation.y) if validated else
                                 ("test_accuracy", test.x, test.y))
    history = private_epochs(
        run, model=model, optimizer=optimizer, engine=engine, step=step, n=n, batch_size=cfg.batch_size,
        epochs=epochs, start=start_epoch, history=history, device=dev, sampling=cfg.sampling,
        evaluate=lambda: {watched: models.accuracy(model, watch_x, watch_y)},
        extra_state=lambda: {"schedule": schedule.state_dict()}, stop_after_epoch=stop_after_epoch)
    if rank != 0:  # rank 0 writes the result; the others return it too (tuning reads it on every process)
        return gep.parallel.broadcast_object(None)
    if validated:
        selection = {"validation_accuracy": history[-1]["validation_accuracy"],
                     "test_accuracy": models.accuracy(model, test.x, test.y),  # once, after the last epoch
                     "validation_examples": len(validation), "validation_use": VALIDATION_USE}
    else:
        selection = {"test_accuracy": history[-1]["test_accuracy"], "validation_examples": 0,
                     "best_test_accuracy_over_epochs (original's selection, on the test set)":
                         max(h["test_accuracy"] for h in history)}
    result = run.finish(
        metrics={**selection, "epsilon": engine.epsilon(),
                 "epsilon_claimed_by_original_accounting": claimed, "noise_multiplier": noise_multiplier,
                 "effective_noise_multiplier": engine.effective_noise_multiplier, "epochs": epochs,
                 "model": model_name, "steps": total_steps, "sample_rate": q, "history": history, **guarantee},
        timings={"train_seconds": sum(h["seconds"] for h in history),
                 "seconds_per_epoch": [h["seconds"] for h in history]},
        resumed_from_epoch=start_epoch,
    )
    return result if world_size == 1 else gep.parallel.broadcast_object(result)
