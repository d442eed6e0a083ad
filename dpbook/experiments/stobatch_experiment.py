"""StoBatch and its baselines on the same network, evaluated under attack: chapter 42's runs.

The experiment prepares data and network (:func:`stobatch_data`, :func:`dpbook.stobatch.network_for`), hands
them to one trainer per method (:mod:`.stobatch_trainers`) and evaluates what each trainer deployed with one
shared evaluation (:func:`dpbook.evaluation.evaluate`): conventional and certified accuracy on clean and
attacked test points.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import checks, data, guarantees
from ..config import device
from ..runs import Run
from . import stobatch_trainers as trainers
from .loop import world
from .registry import experiment

STOBATCH_METHODS = tuple(trainers.TRAINERS)
#: "principled": a sound per-example design (the default); "paper": the paper's batch-shared mechanism with
#: the principled switches; "original": the original code (both void the guarantee and warn)
VARIANTS = ("principled", "paper", "original")
_CROPPED = ("cifar10", "svhn")  # 3x32x32 images the StoBatch network sees as 28x28 centre crops


def paper_key(dataset: str) -> str:
    """The dataset whose original-code settings (:data:`dpbook.stobatch.PAPER_SETTINGS`) a StoBatch run on
    ``dataset`` follows."""
    return {"fashion-mnist": "mnist", "svhn": "cifar10"}.get(dataset, dataset)


def stobatch_shape(dataset: str) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) the StoBatch networks see for ``dataset`` (:func:`stobatch_data`)."""
    shape = (3, 28, 28) if dataset in _CROPPED else data.SHAPES[dataset]
    return shape, 30 if dataset == "tinyimagenet" else 10


def stobatch_data(cfg) -> dict[str, data.ArrayDataset]:
    """Train / validation / public / test splits in [-1, 1] for the StoBatch networks (the validation split is
    private data too, cut from the training split; choices between designs are made on it): CIFAR-10 centre-cropped to 28x28
    (the code crops at random in training), Tiny ImageNet's first 30 classes."""
    parts = data.splits(cfg.dataset, public=cfg.public, validation=cfg.validation, max_train=cfg.max_train,
                        seed=cfg.seed, scale="symmetric", classes=30 if cfg.dataset == "tinyimagenet" else None)
    if cfg.dataset in _CROPPED:
        parts = {k: data.ArrayDataset(v.x[..., 2:30, 2:30].contiguous(), v.y, name=v.name, split=v.split,
                                      classes=v.classes) for k, v in parts.items()}
    return parts


#: settings -> the StoBatchOptions fields they set (the ones :data:`dpbook.stobatch.PAPER_SETTINGS` also sets)
HYPERPARAMETERS = {"batch_size": ("batch_size",), "xi": ("xi",), "mu_max": ("mu_max",),
                   "attack_steps": ("attack_steps",), "lr": ("lr_theta1", "lr_theta2")}


def stobatch_options(cfg, trainers: int):
    """:class:`dpbook.stobatch.StoBatchOptions` of the settings: the variant's switches, with ``noise_reuse``
    and ``delta_x_convention`` overridden when set; ``hyperparameters="paper"`` takes the original code's batch
    size, xi, attack sizes and steps, learning rates and optimiser for the dataset
    (:data:`dpbook.stobatch.PAPER_SETTINGS`) in place of the presets' values. A value the caller set
    (``cfg.overridden``: keywords of :func:`dpbook.settings`, ``--batch-size`` on the command line) that differs
    from the paper's is an error, not silently replaced, and not silently kept either: the result's key is the
    settings' values, so a kept value would file two different runs under one key. Choose every value yourself
    with ``hyperparameters="preset"``."""
    from .. import stobatch as sb

    paper = sb.PAPER_SETTINGS[paper_key(cfg.dataset)] if cfg.hyperparameters == "paper" else {}
    paper = {k: v for k, v in paper.items() if not k.startswith("epsilon")}  # the budget is always the settings'
    conflicts = [f"{key}={cfg[key]} (the paper's: {paper[fields[0]]})" for key, fields in HYPERPARAMETERS.items()
                 if key in getattr(cfg, "overridden", ()) and fields[0] in paper and paper[fields[0]] != cfg[key]]
    if conflicts:
        raise ValueError(f"hyperparameters='paper' sets the original code's values on {cfg.dataset}, but you set "
                         f"{', '.join(conflicts)}: drop them, or pass hyperparameters='preset' to choose every "
                         "value yourself")
    kw = dict(epsilon_autoencoder=cfg.epsilon_autoencoder, epsilon2=cfg.epsilon2, trainers=trainers,
              partition_seed=cfg.seed)
    kw.update({field: cfg[key] for key, fields in HYPERPARAMETERS.items() for field in fields})
    kw.update(paper)
    kw.update({k: cfg[k] for k in ("noise_reuse", "delta_x_convention") if cfg[k]})
    checks.one_of(cfg.variant, VARIANTS, "variant", "the stobatch experiment")
    if cfg.variant == "original":
        return sb.StoBatchOptions.original(**kw)
    if cfg.variant == "paper":
        return sb.StoBatchOptions(release="batch_shared", **kw)
    design = {k: cfg[k] for k in ("inputs", "labels", "input_mechanism", "input_basis", "input_dims", "input_clip",
                                  "delta", "clip_gradient", "smoothing_std")}
    return sb.StoBatchOptions(**kw, **design)


@experiment("stobatch")
def stobatch_experiment(cfg, run: Run, *, stop_after_epoch: int | None = None) -> dict:
    """StoBatch (``method="stobatch"``) or a baseline (``"pixeldp"``, ``"securesgd"``, ``"nonprivate"``) on the
    same network (:func:`dpbook.stobatch.network_for`), then conventional and certified accuracy on clean and
    attacked test points (:func:`dpbook.evaluation.evaluate`).

    Launched by ``torchrun --nproc_per_node N -m dpbook run stobatch``, each process is one StoBatch trainer
    (:mod:`dpbook.distributed`); rank 0 writes checkpoints and the result. Every epoch is checkpointed
    (:func:`.stobatch_trainers.train_stobatch` keeps the noise table, so a resumed run keeps its noise). The
    original variant is evaluated with the code's inference protocol and with fresh noise. Unsound modes warn
    and the result records ``guarantee: none`` (:mod:`dpbook.guarantees`).
    """
    from .. import evaluation
    from .. import stobatch as sb

    checks.one_of(cfg.method, STOBATCH_METHODS, "method", "the stobatch experiment")
    guarantee = guarantees.check_settings(cfg) if cfg.method == "stobatch" else guarantees.check_settings(
        {"norm": cfg.norm})
    rank, size = world() if cfg.method == "stobatch" else (0, 1)
    dev = device()
    torch.manual_seed(cfg.seed)
    parts = stobatch_data(cfg)
    train, test = parts["train"], parts["test"]
    in_shape, n_classes = tuple(train.x.shape[1:]), len(train.classes)
    # the paper's Tiny ImageNet network starts from ImageNet weights (paper, section 5); the others have none
    model = sb.network_for(in_shape, n_classes, norm=cfg.norm, pretrained=cfg.hyperparameters == "paper").to(dev)
    state = run.load_checkpoint()
    if state:
        print(f"resuming {run.experiment} from epoch {state['epoch']}")
    setup = trainers.Setup(cfg=cfg, run=run, model=model, parts=parts, x=train.x.to(dev), y=train.y.to(dev),
                           n_classes=n_classes, device=dev, state=state,
                           history=state["history"] if state else [], start=state["epoch"] if state else 0,
                           rank=rank, world=size, stop_after_epoch=stop_after_epoch)
    t0 = time.perf_counter()
    deployed, info, epochs = trainers.TRAINERS[cfg.method](setup)
    if rank != 0:
        return {"metrics": {}, "timings": {}}
    train_seconds = time.perf_counter() - t0

    validation = _validation_accuracy(cfg, deployed, parts.get("validation"), dev)
    evaluations, curves, eot = {}, {}, {}
    n_test = min(cfg.n_test or len(test), len(test)) if cfg.test else 0
    xt, yt = test.x[:n_test].to(dev), test.y[:n_test].to(dev)
    for protocol, dep in (deployed.items() if cfg.test else ()):
        print(f"evaluating ({protocol} inference) on {n_test} test points: {cfg.n_draws} votes each, attacks "
              f"{', '.join(cfg.attacks)} at sizes {cfg.attack_sizes}, {cfg.eot} noise draws per attack gradient",
              flush=True)
        rows = evaluation.evaluate(dep, xt, yt, attack_names=cfg.attacks, sizes=cfg.attack_sizes,
                                   steps=cfg.test_attack_steps, eot=cfg.eot, n_draws=cfg.n_draws, eta=cfg.eta)
        evaluations[protocol] = {"rows": rows, "average_over_attacks": evaluation.average_over_attacks(rows)}
        print(f"  clean conventional accuracy {rows[0]['conventional']:.4f}; averaged over attacks: "
              + ", ".join(f"mu {mu}: {v['conventional']:.3f}" for mu, v in
                          evaluations[protocol]["average_over_attacks"].items()), flush=True)
    if cfg.test and setup.radius:
        curves = certified_curves(cfg, next(iter(deployed.values())), setup.radius, xt, yt, n_classes,
                                  setup.smoothing_std)
    if cfg.test and cfg.eot_study:
        eot = eot_study(cfg, next(iter(deployed.values())), xt, yt)
    metrics = {"validation_accuracy": validation, "validation_use": VALIDATION_USE,
               "epsilon": info.get("privacy", {}).get("epsilon"), "epochs": epochs, "history": setup.history,
               "trainers": size, **info, **guarantee}
    timings = {"train_seconds": train_seconds, "seconds_per_epoch": [h["seconds"] for h in setup.history]}
    if cfg.test:
        main_protocol = next(iter(evaluations))
        metrics = {"test_accuracy": evaluations[main_protocol]["rows"][0]["conventional"], **metrics,
                   "certified_curves": curves, "eot_study": eot, "evaluation": evaluations,
                   "main_protocol": main_protocol, "n_test": n_test}
        timings["evaluation_seconds"] = time.perf_counter() - t0 - train_seconds
    return run.finish(metrics=metrics, timings=timings, resumed_from_epoch=setup.start)


VALIDATION_USE = ("cut from the private training split; the design of chapter 42's search and nothing else is "
                  "chosen on it (its accuracy is measured on the trained model, a use of private data the stated "
                  "epsilon does not cover: the caveat of chapter 21)")


def _validation_accuracy(cfg, deployed: dict, validation, dev) -> float | None:
    """Clean conventional accuracy of the first deployed protocol on the first ``n_validation`` validation
    points, ``validation_draws`` votes each; None without a validation split."""
    from .. import evaluation

    if validation is None or len(validation) == 0:
        return None
    n = min(cfg.n_validation or len(validation), len(validation))
    dep = next(iter(deployed.values()))
    counts = evaluation.votes(dep, validation.x[:n].to(dev), n_draws=cfg.validation_draws)
    accuracy = float((counts.argmax(1).cpu() == validation.y[:n]).float().mean())
    print(f"validation accuracy {accuracy:.4f} ({n} points, {cfg.validation_draws} votes each)", flush=True)
    return accuracy


def certified_curves(cfg, deployed, radius: dict, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                     smoothing_std: float) -> dict:
    """Certified accuracy against radius (Cohen et al. 2019's curves) on the clean test points: for each
    certificate of ``radius`` (name -> bounds -> (l2, l_inf) radii), the fraction correct *and* certified at
    each radius of ``cfg.l2_radii`` and ``cfg.linf_radii``; with the Monte-Carlo cap of the l2 radius."""
    from .. import evaluation, robustness
    from .. import stobatch as sb

    bounds = robustness.vote_bounds(evaluation.votes(deployed, x, n_draws=cfg.n_draws), eta=cfg.eta)
    correct = bounds.prediction == y.cpu().numpy()
    out = {"l2_radii": list(cfg.l2_radii), "linf_radii": list(cfg.linf_radii), "n_draws": cfg.n_draws,
           "eta": cfg.eta, "clean_accuracy": float(correct.mean()),
           "l2_cap": sb.radius_cap(smoothing_std, n_draws=cfg.n_draws, eta=cfg.eta, n_classes=n_classes)
           if smoothing_std else None, "curves": {}}
    for name, fn in radius.items():
        l2, linf = fn(bounds)
        out["curves"][name] = {
            "l2": robustness.certified_accuracy(correct, l2, np.asarray(cfg.l2_radii)).tolist(),
            "linf": robustness.certified_accuracy(correct, linf, np.asarray(cfg.linf_radii)).tolist(),
            "median_l2_radius_of_correct": float(np.median(l2[correct])) if correct.any() else 0.0}
    return out


def eot_study(cfg, deployed, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy under PGD at the middle attack size against the number of noise draws per attack gradient
    (``cfg.eot_study``) on the first ``cfg.eot_points`` test points: where more draws stop lowering accuracy,
    the attack's expectation over the noise has converged."""
    from .. import evaluation

    mu = sorted(cfg.attack_sizes)[len(cfg.attack_sizes) // 2]
    n = min(cfg.eot_points, len(x))
    rows = {}
    for draws in cfg.eot_study:
        r = evaluation.evaluate(deployed, x[:n], y[:n], attack_names=("pgd",), sizes=(mu,),
                                steps=cfg.test_attack_steps, eot=draws, n_draws=cfg.n_draws, eta=cfg.eta)
        rows[str(draws)] = r[-1]["conventional"]
        print(f"  EOT {draws} draws: accuracy under PGD at mu {mu}: {rows[str(draws)]:.4f}", flush=True)
    return {"attack": "pgd", "mu_a": mu, "n_points": n, "accuracy": rows}


def at_budget(epsilon: float, **settings) -> dict:
    """The finished (or a new) stobatch run at total budget ``epsilon``, split evenly between the auto-encoder
    and the output layer (eps_AE = eps2 = epsilon / 2) as chapters 42 and 91 compare them."""
    from . import run

    return run("stobatch", reuse=True, epsilon_autoencoder=epsilon / 2, epsilon2=epsilon / 2, **settings)
