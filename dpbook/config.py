"""Profiles, named settings and the compute device.

One code path runs at three sizes. The active *profile* is read from the environment variable
``DPBOOK_PROFILE``:

=========  ==========================================  ===============================
profile    meant for                                   budget
=========  ==========================================  ===============================
smoke      CI (nbval) and unit tests                   seconds per notebook
laptop     committed book outputs, readers on a CPU    minutes per notebook, 2 cores
paper      readers with a GPU                          the papers' settings, hours
=========  ==========================================  ===============================

When ``DPBOOK_PROFILE`` is unset the profile is ``paper`` if CUDA is available, else ``laptop``.

Every experiment and every notebook reads its sizes from :func:`settings`; nothing hard-codes them.
The presets live in :data:`PRESETS`, one entry per name: a ``base`` dictionary of defaults (one comment
per key) and, per profile, only the keys that differ (the nanoGPT habit).

Example
-------
>>> import os; os.environ["DPBOOK_PROFILE"] = "smoke"
>>> settings("baseline").dataset
'digits'
>>> settings("baseline", epochs=2).epochs
2
"""
from __future__ import annotations

import os
import platform
from typing import Any

PROFILES = ("smoke", "laptop", "paper")

# ---------------------------------------------------------------------------------------------------
# Presets. Later chapters add their entries here, so that one table shows every size the book uses.
# ---------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # notebooks/01_dp_primer.ipynb: accounting only, no training.
    "dp_primer": {
        "base": dict(
            delta=1e-5,               # target delta of every (epsilon, delta) statement in the chapter
            sample_rate=256 / 60_000,  # q of an MNIST-sized DP-SGD run with batch 256
            epochs=60,                # length of the DP-SGD run whose epsilon we plot
            sigmas=(0.7, 1.0, 1.5, 2.0),  # noise multipliers compared in the epsilon-vs-steps figure
            n_curve_points=25,        # points per epsilon-vs-steps curve (RDP)
            n_pld_points=8,           # points on the RDP-vs-PLD comparison (PLD is the slow one)
            pld_discretization=1e-3,  # value_discretization_interval of the PLD accountant
            n_laplace_trials=20_000,  # repetitions of the Laplace counting query in the histograms
            minutes=1.0,              # expected run time of the notebook on this profile's hardware
        ),
        "smoke": dict(epochs=10, n_curve_points=6, n_pld_points=3,
                      n_laplace_trials=2_000, minutes=0.3),
        "laptop": dict(),
        "paper": dict(n_pld_points=12, pld_discretization=1e-4, minutes=2.0),
    },
    # notebooks/30_mutual_information.ipynb: kNN estimators validated on Gaussians, scale, speed.
    "mutual_information": {
        "base": dict(
            n_samples=5_000,                      # rows per estimate in the dimension study
            dims=(1, 2, 5, 10, 20, 50, 100),      # dimensions d of x and of y (d correlated pairs)
            rhos=(0.5, 0.9),                      # correlation of each pair
            sample_sizes=(250, 500, 1_000, 2_000, 5_000, 10_000),  # n in the sample-size study
            repeats=3,                            # independent samples per point (mean and spread)
            n_permutations=20,                    # permutations in the independence test
            speed_n=2_000,                        # rows in the in-notebook speed comparison
            minutes=1.5,                          # expected run time (laptop: ~70 s on 2 cores)
        ),
        "smoke": dict(n_samples=800, dims=(1, 5, 20), sample_sizes=(200, 400, 800), repeats=1,
                      n_permutations=5, speed_n=300, minutes=0.5),
        "laptop": dict(),
        "paper": dict(n_samples=20_000, sample_sizes=(250, 1_000, 4_000, 16_000, 64_000), repeats=5,
                      n_permutations=100, speed_n=5_000, minutes=5.0),
    },
    # notebooks/40_certified_robustness.ipynb: attacks, PixelDP certificates, randomized smoothing.
    "certified_robustness": {
        "base": dict(
            dataset="fashion-mnist",  # real data; pixels scaled to [0, 1]
            max_train=20_000,         # training examples used (0: all)
            validation=2_000,         # held out of the training split
            epochs=3,                 # passes over the training examples, for each noisy network
            batch_size=128,           # Adam batch
            lr=1e-3,                  # Adam learning rate
            input_scale=0.25,         # b_x: Laplace scale of the input noise (pixels in [0, 1])
            latent_scale=1.0,         # b_h: Laplace scale of the noise after the first convolution
            gaussian_sigma=0.25,      # sigma of the Gaussian-input network (randomized smoothing)
            n_test=300,               # test points certified
            n_draws=1_000,            # Monte-Carlo votes per point
            eta=0.05,                 # failure probability of the certificate
            attack_sizes=(0.02, 0.05, 0.1),  # l_inf sizes of the attack table
            attack_steps=20,          # iterations of I-FGSM, MIM and PGD
            eot=8,                    # noise draws per gradient when attacking the noisy network
            attack_draws=500,         # votes to decide whether an attacked point's prediction changed
            minutes=8.0,              # expected run time (laptop: ~8 min on 2 cores, mostly Monte-Carlo votes)
        ),
        "smoke": dict(dataset="digits", max_train=0, validation=100, epochs=25, lr=3e-3, n_test=40, n_draws=100,
                      attack_steps=5, eot=2, attack_draws=50, minutes=0.5),
        "laptop": dict(),
        "paper": dict(max_train=0, validation=5_000, epochs=10, n_test=1_000, n_draws=2_000, attack_steps=100,
                      eot=32, attack_draws=1_000, minutes=20.0),
    },
    # notebooks/20_gep_algorithm.ipynb: GEP's steps on per-sample gradients of a real network.
    "gep_algorithm": {
        "base": dict(
            dataset="fashion-mnist",  # real data, standard-scaled as in the GEP code
            warmup_steps=200,         # non-private Adam steps (batch 128) before we look at gradients
            n_private=256,            # rows of the private gradient matrix G
            public=512,               # public anchors m (random labels, as the code)
            n_groups=3,               # equal contiguous groups
            n_bases=256,              # k of the step-by-step part
            bases_sweep=(4, 8, 16, 32, 64, 128, 256, 512),  # k in the projection-error study
            power_iters=(1, 2, 4),    # t in the power-iteration study
            clip_embedding=5.0,       # S_0 (the code's default)
            clip_residual=2.0,        # S_1
            epsilon=8.0,              # budget whose sigma we show (5 epochs of batch 256, as the experiments)
            delta=1e-5,
            epochs=5,
            batch_size=256,
            engine_steps=40,          # GEP steps of the drop-in training loop
            minutes=2.5,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", warmup_steps=60, n_private=64, public=128, n_bases=32,
                      bases_sweep=(4, 8, 16, 32, 64, 128), batch_size=64, epochs=2, engine_steps=10, minutes=0.3),
        "laptop": dict(),
        "paper": dict(minutes=2.0),
    },
    # notebooks/21_gep_experiments.ipynb: the gep experiment at several budgets, the accounting audit, speed.
    "gep_experiments": {
        "base": dict(
            epsilons=(2.0, 8.0),                  # target epsilons of the trained runs (settings("gep") for the rest)
            methods=("dpsgd", "biased", "gep"),   # compared methods, same network, epochs and public data
            refresh_every=10,                     # K of the refresh-every-K study (GEP only)
            audit=(("cifar10", 2.0), ("cifar10", 5.0), ("cifar10", 8.0), ("mnist", 8.0),
                   ("svhn", 2.0), ("svhn", 5.0), ("svhn", 8.0)),  # paper settings of the accounting audit
            pld_discretization=1e-4,              # of the PLD accountant in the audit
            minutes=2.0,                          # with the runs' results present; training them all: ~80 min
        ),
        "smoke": dict(audit=(("cifar10", 8.0), ("svhn", 8.0)), pld_discretization=1e-3, minutes=1.0),
        "laptop": dict(),
        "paper": dict(minutes=5.0),
    },
    # dpbook.experiments.gep_experiment: GEP, Biased-GEP or DP-SGD trained to a privacy target.
    "gep": {
        "base": dict(
            method="gep",             # "gep", "biased" (Biased-GEP) or "dpsgd"
            dataset="fashion-mnist",  # any name of dpbook.data.DATASETS
            model="small-cnn",        # any name of dpbook.models.MODELS; "auto": resnet20-gn for colour images
            epsilon=8.0,              # target epsilon
            delta=1e-5,               # target delta
            accounting="joint",       # "joint" (sound) or "original" (the code's 2x RDP, legacy conversion)
            epochs=5,                 # passes (1/q Poisson steps each); 0: the paper's for dataset and epsilon
            batch_size=256,           # expected batch size B = q N
            sampling="poisson",       # "poisson" (what the accountant assumes) or "shuffle" (the code's batches)
            public=512,               # public anchor examples m
            public_source="heldout",  # "heldout" (cut from the training split), "cifar100", or an images file
            public_labels="random",   # "random" (drawn once, code), "redraw" (every refresh, paper), "real"
            validation=0,             # held-out validation examples (none: last-epoch accuracy is reported)
            extra=False,              # SVHN only: add the 531,131 "extra" images to the private data (paper)
            max_train=0,              # private examples used (0: all)
            n_bases=256,              # total basis size k
            grouping="equal",         # "equal" contiguous chunks (code) or "layers" (paper: one per block)
            n_groups=3,               # number of equal chunks
            clip_embedding=5.0,       # S_0
            clip_residual=2.0,        # S_1 (DP-SGD's clipping norm)
            lr=0.1,                   # SGD learning rate (momentum 0.9; x0.1 at 50% and 75% of the steps)
            weight_decay=2e-4,        # as in the code
            refresh_every=1,          # recompute the anchor subspace every this many steps
            backend="func",           # per-sample gradients: "func" or "backpack"
            scale="standard",         # pixel scaling
            seed=0,                   # initialisation, public labels and splits (never the DP noise)
            minutes=8.0,              # expected run time (laptop GEP: 0.41 s per step, 232 steps per epoch)
        ),
        "smoke": dict(dataset="digits", epochs=2, batch_size=64, public=200, n_bases=64, minutes=0.2),
        "laptop": dict(),
        "paper": dict(dataset="cifar10", model="auto", epochs=0, batch_size=1000, public=2_000,
                      n_bases=1000, minutes=600.0),
    },
    # notebooks/31_shredder_algorithm.ipynb: the split, the noise layer, one run, a small pool.
    "shredder_algorithm": {
        "base": dict(
            dataset="fashion-mnist",  # resized to 32x32, pixels in [0, 1]
            validation=5_000,         # acceptance split
            max_train=20_000,         # training examples (the base network and the noise runs)
            public_threshold=5,       # public task: label > 5
            base_epochs=3,            # Adam epochs of the base LeNet-5
            base_lr=1e-3,
            laplace_scale=20.0,       # b of the Laplace initialisation of n
            pairing="ratio",          # pairing term of the runs ("ratio", "difference" or "none")
            pairing_weight=1.01,      # its lambda (the comparison uses 0.01 for "difference")
            lr=1e-2,                  # Adam on (w, n); 1e-3 in the code, too slow on Fashion-MNIST
            batch_size=256,
            epochs=40,                # of the step-by-step run
            min_epochs=28,
            accept_drop=0.03,
            pool_runs=3,              # independent runs of the small pool
            minutes=2.0,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", validation=300, max_train=0, base_epochs=15, base_lr=3e-3, laplace_scale=3.0,
                      lr=1e-2, batch_size=64, epochs=12, min_epochs=3, minutes=0.3),
        "laptop": dict(),
        "paper": dict(max_train=0, base_epochs=10, pool_runs=10, minutes=5.0),
    },
    # notebooks/32_shredder_experiments.ipynb: the shredder experiment over noise scales.
    "shredder_experiments": {
        "base": dict(
            laplace_scales=(3.0, 10.0, 20.0),  # b of the sweep (settings("shredder") for everything else)
            additive_control=True,             # also run additive-only noise (w = 1) at the largest b
            minutes=1.0,                       # with the runs' results present; training them: ~20 min
        ),
        "smoke": dict(laplace_scales=(3.0, 20.0), minutes=1.0),
        "laptop": dict(),
        "paper": dict(minutes=2.0),
    },
    # dpbook.experiments.shredder_experiment: a pool of learned noise and its measurements.
    "shredder": {
        "base": dict(
            dataset="fashion-mnist",  # images resized to 32x32, pixels in [0, 1] (the code's MNIST transform)
            validation=5_000,         # held out of the training split: base-network and noise acceptance
            max_train=0,              # training examples used (0: all)
            public_threshold=5,       # public task: label > 5 (the code's "digit > 5"); private: the label
            cut="relu5",              # edge = LeNet-5 up to c5 + ReLU, activation (120, 1, 1)
            base_epochs=5,            # Adam epochs of the frozen base networks (public and 10-class)
            base_lr=1e-3,
            base_batch_size=128,
            laplace_scale=20.0,       # b of n's Laplace(0, b) initialisation (the code's "std20")
            multiplicative=True,      # learn w too (v2); False: additive noise only (v1, ASPLOS)
            pairing="ratio",          # "ratio" (the commit that made the released pool), "difference" (HEAD), "none"
            pairing_weight=1.01,      # lambda of the pairing term (1.01 with "ratio", 0.01 with "difference")
            lr=1e-3,                  # Adam on (w, n) (the code's)
            batch_size=256,
            epochs=40,                # at most this many epochs per noise-training run
            min_epochs=28,            # accept no earlier than this (the code: epoch > 27)
            accept_drop=0.03,         # accept when validation accuracy >= clean validation accuracy - this
            reset_optimizer_each_epoch=False,  # True: re-create Adam every epoch, as the code
            pool_size=10,             # accepted samples wanted (the released pool has 149)
            max_runs=30,              # give up after this many runs
            mi_samples=4_000,         # test images in the MI estimates (n/2 joint points for ite_dkl)
            mi_k=3,                   # neighbours of the MI estimators
            mi_seeds=5,               # permutation seeds of the ite_dkl estimates (mean and sd)
            adversary_train=20_000,   # training examples of the adversary MLP (0: all)
            adversary_draws=2,        # noise draws per training example the adversary sees
            adversary_epochs=20,
            seed=0,                   # splits, initialisations, evaluation draws
            minutes=4.0,              # expected run time (laptop, 2 cores)
        ),
        "smoke": dict(dataset="digits", validation=300, base_epochs=15, base_lr=3e-3, base_batch_size=64,
                      lr=1e-2, batch_size=64, epochs=12, min_epochs=3, pool_size=3, max_runs=6, mi_samples=300,
                      mi_seeds=2, adversary_train=0, adversary_epochs=30, minutes=0.3),
        # Fashion-MNIST's activations are smaller (mean a^2 0.08 against about 0.2 on MNIST): at the code's
        # lr, w cannot grow enough in 40 epochs, and runs are rejected (notebooks/32_shredder_experiments).
        "laptop": dict(lr=1e-2),
        "paper": dict(dataset="mnist", base_epochs=10, pool_size=149, max_runs=1_000, mi_samples=10_000,
                      mi_seeds=10, adversary_train=0, adversary_epochs=30, minutes=60.0),
    },
    # dpbook.experiments.baseline: the non-private reference network of a dataset.
    "baseline": {
        "base": dict(
            dataset="fashion-mnist",  # any name of dpbook.data.DATASETS
            model="small-cnn",        # any name of dpbook.models.MODELS
            epochs=8,                 # passes over the training split
            batch_size=128,           # examples per optimiser step
            lr=1e-3,                  # Adam learning rate
            weight_decay=0.0,         # Adam weight decay
            validation=5_000,         # examples held out of the training split for model selection
            max_train=0,              # use at most this many training examples (0: all)
            scale="standard",         # pixel scaling: "unit" [0,1], "symmetric" [-1,1], "standard" z-score
            seed=0,                   # initialisation and batch order (not a privacy seed: nothing is private)
            minutes=2.5,              # expected run time (laptop: 8 epochs of ~16 s on 2 cores)
        ),
        "smoke": dict(dataset="digits", epochs=3, batch_size=64, validation=200, minutes=0.1),
        "laptop": dict(),
        "paper": dict(epochs=30, minutes=3.0),
    },
}


class Settings(dict):
    """A read-only dictionary whose keys are also attributes: ``s.epochs == s["epochs"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no setting {key!r}; available: {', '.join(sorted(self))}") from None

    def _readonly(self, *args, **kwargs):
        raise TypeError("Settings are read-only; pass overrides to dpbook.settings(name, key=value)")

    __setitem__ = __delitem__ = __setattr__ = update = pop = clear = setdefault = _readonly  # type: ignore


def profile() -> str:
    """The active profile: ``DPBOOK_PROFILE`` if set, else ``paper`` with CUDA and ``laptop`` without.

    Raises:
        ValueError: ``DPBOOK_PROFILE`` names no profile; the message lists the valid ones.
    """
    name = os.environ.get("DPBOOK_PROFILE", "").strip().lower()
    if not name:
        return "paper" if _cuda_available() else "laptop"
    if name not in PROFILES:
        raise ValueError(
            f"DPBOOK_PROFILE must be one of {', '.join(PROFILES)}; got {os.environ['DPBOOK_PROFILE']!r}. "
            f"Example: DPBOOK_PROFILE=smoke python -m dpbook run baseline"
        )
    return name


def settings(name: str, *, profile_name: str | None = None, **overrides: Any) -> Settings:
    """The settings of experiment or notebook ``name`` under the active profile.

    Args:
        name: a key of :data:`PRESETS` (``"baseline"``, ``"dp_primer"``, ...).
        profile_name: use this profile instead of the active one.
        **overrides: replace single settings; an unknown key raises, so a typo cannot pass silently.

    Returns:
        Settings: ``base`` updated by the profile's entries, then by ``overrides``.
    """
    if name not in PRESETS:
        raise KeyError(f"no settings named {name!r}; known: {', '.join(sorted(PRESETS))}")
    prof = profile_name or profile()
    if prof not in PROFILES:
        raise ValueError(f"profile_name must be one of {', '.join(PROFILES)}; got {prof!r}")
    preset = PRESETS[name]
    merged = dict(preset["base"])
    merged.update(preset.get(prof, {}))
    unknown = sorted(set(overrides) - set(merged))
    if unknown:
        raise KeyError(
            f"unknown setting(s) {', '.join(unknown)} for {name!r}; valid: {', '.join(sorted(merged))}"
        )
    merged.update(overrides)
    return Settings(merged)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device():
    """The tensor device: ``DPBOOK_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:1``), else CUDA when available."""
    import torch

    name = os.environ.get("DPBOOK_DEVICE", "").strip()
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"DPBOOK_DEVICE={name!r} but CUDA is not available; unset it or use 'cpu'")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_description() -> str:
    """A one-line description of :func:`device`: GPU name, or CPU model and thread count."""
    import torch

    dev = device()
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def describe_run(name: str | None = None) -> str:
    """Print and return what this run is: package version, profile, device, torch, data, expected time.

    Every notebook's first code cell calls this with its own settings name, so each rendered page says
    which profile and device produced it.
    """
    import torch

    from . import __version__

    prof = profile()
    source = "DPBOOK_PROFILE" if os.environ.get("DPBOOK_PROFILE") else "default: " + (
        "CUDA found" if _cuda_available() else "no CUDA")
    lines = [
        f"dpbook {__version__} | profile {prof} ({source}) | torch {torch.__version__}",
        f"device: {device_description()}",
    ]
    if name is not None:
        s = settings(name)
        if "dataset" in s:
            from .data import locate

            lines.append(f"data: {s.dataset} ({locate(s.dataset)})")
        lines.append(f"expected run time of {name!r} under {prof!r}: about {s.minutes:g} min")
    text = "\n".join(lines)
    print(text)
    return text
