"""The one-command GPU check: the GPU benchmarks at the paper's sizes, then 100-200 steps of every paper experiment.

    python benchmarks/gpu_check.py              # on one NVIDIA GPU, from the repository root: under 8 minutes
    python benchmarks/gpu_check.py --reduced    # tiny sizes, end to end, to know it works (2 CPU cores: ~30 s)
    bash benchmarks/gpu_check.sh                # the same from any folder; arguments pass through

What it runs, in this order, each part with a deadline:

* the benchmarks at the paper's sizes (their own scripts, their own results files; ``accounting.py`` and
  ``stobatch_scaling.py`` time CPU work and are not part of it): ``gep_step.py`` (non-private
  SGD, DP-SGD, Biased-GEP and GEP on ResNet20-GN at the paper's batch of 1,000 with 2,000 public examples and
  k = 1,000 bases), ``mi.py`` (KSG at n = 100,000, d = 100, on the GPU), ``certify.py`` (Monte-Carlo votes for
  100 and 1,000 inputs x 1,000 draws, on the GPU);
* the experiments of the ``paper`` profile through ``dpbook.experiments.run(name, profile="paper", ...)``:
  GEP on CIFAR-10 (ResNet20-GN, k = 1,000, batch 1,000) and on SVHN with extra, Shredder on MNIST (LeNet-5),
  StoBatch on MNIST and CIFAR-10 (the default sound design with the paper's hyperparameters) and on Tiny
  ImageNet (ResNet-18, the per-example release design). Only sizes are chosen (epochs, examples, evaluation
  points and votes) so that training runs 100-200 steps; the algorithm, network, batch size and k are the
  paper profile's (Shredder also accepts every noise sample, ``accept_drop=1``: random pixels leave no accuracy
  to keep). Each training step is timed (CUDA synchronised) by wrapping the function that performs it
  (``dpbook.gep.GEP.step``, ``dpbook.stobatch.above.dpsgd_step``, ``dpbook.stobatch.step.train_step``,
  ``dpbook.shredder.train_noise`` per run), which records and changes nothing else. The Tiny ImageNet part, the
  heaviest (two batches of 4,500 64x64 images a step, 10-step attacks), comes last and takes whatever time the
  others left; if that is not enough for its 100 steps, its entry says how many it timed.

``--reduced`` shrinks further, to run anywhere in seconds: a few examples and steps, small batches (set
explicitly, so they win over StoBatch's paper table), one attack step, k = 30, the small CNN in ``gep_step.py``,
and the Tiny ImageNet micro-batches from 20 to 2 (on a CPU each costs seconds).

The experiments read fake data: files in the datasets' real formats at their real image sizes, with random pixels
(:mod:`dpbook.data.fake`; the GPU box has no datasets and no internet). Step times and memory depend on shapes,
not on pixel values; the accuracies of these runs mean nothing, and their results files go to a temporary folder
that is deleted at the end, never to ``results/``. Torchvision's ImageNet weights for the Tiny ImageNet ResNet-18
are used when they are in torch's cache; otherwise its weights stay random (the same cost), and the file says so.

What it writes: each benchmark's ``<name>-<gpu>.json`` and ``gpu_check-<gpu>.json`` (``<gpu>``: the GPU's name as a
slug, e.g. ``nvidia-h200``; ``cpu-<N>cores`` without one) in ``benchmarks/results/`` (``--results DIR`` or
``$DPBOOK_BENCH_RESULTS`` moves it; ``--reduced`` writes to a new temporary folder unless told where).
``gpu_check-<gpu>.json`` holds the environment (:func:`dpbook.runs.environment`) and the device, and per part its
status (``ok``, ``overran`` its deadline, ``error``, ``skipped`` with the reason, ``interrupted``), wall seconds,
peak GPU memory, and for experiments the steps, seconds per step (median after the first, which includes warm-up)
and the first step's seconds. It is rewritten after every part, so an interruption loses nothing already measured.

Time budget: ``--budget`` seconds in all (default 460, so under 8 minutes with start-up). Each part has a share;
time a part leaves unused passes to the next ones. A part still running at its deadline is stopped and recorded as
``overran`` with what it measured until then (the steps timed so far); a part with no time left is ``skipped``.
Rerun one part alone with more time to see it finish: ``--parts stobatch-tinyimagenet --budget 900`` replaces
that part's entry in the file and keeps the others (each entry says when it ran, ``ran_at``).

Before anything runs, the check imports what the parts need and lists what is missing with the pip package to
install (the GPU box has no internet: bring wheels, ``pip download -r requirements.txt -d wheels`` on a connected
machine, then ``pip install --no-index --find-links wheels -r requirements.txt``); parts whose needs are missing
are skipped and recorded as such, the others run. Exit status: 0 when every part ran (``ok`` or ``overran``), 1
otherwise, 2 when dpbook itself cannot be imported.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: importable module -> pip package that provides it
PIP = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "dp_accounting": "dp-accounting",
       "backpack": "backpack-for-pytorch", "PIL": "pillow", "torchvision": "torchvision", "tqdm": "tqdm"}
#: what every part needs (dpbook imports scipy everywhere)
CORE = ("torch", "numpy", "scipy")

DATA_NOTE = ("fake data: the datasets' real file formats at their real image sizes, random pixels "
             "(dpbook.data.fake); step times and memory depend on shapes, not on pixel values; the accuracies of "
             "these runs mean nothing")


class Overran(BaseException):
    """Raised in the running part when its deadline passes (a BaseException, so no ``except Exception`` in the
    experiment swallows it)."""


# ---------------------------------------------------------------------------------------------------------
# Timing a training step from outside: a wrapper that records, and changes nothing else
# ---------------------------------------------------------------------------------------------------------


class StepTimer:
    """Wraps ``owner.name`` (a function of a module or a method of a class) while active: each call is timed
    between two CUDA synchronisations; ``steps_of(args, kwargs, result)`` says how many training steps a call
    made (default 1)."""

    def __init__(self, owner, name: str, steps_of: Callable | None = None):
        self.owner, self.name, self.steps_of = owner, name, steps_of
        self.calls: list[tuple[float, int]] = []  # (seconds, steps) per call

    def __enter__(self):
        import torch

        original = getattr(self.owner, self.name)  # AttributeError: the code moved; the part says so

        def sync():
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        @functools.wraps(original)
        def timed(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            result = original(*args, **kwargs)
            sync()
            self.calls.append((time.perf_counter() - t0, self.steps_of(args, kwargs, result) if self.steps_of else 1))
            return result

        self.original = original
        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.original)

    def summary(self) -> dict:
        """Steps timed, seconds per step (the median over the calls after the first, which carries the warm-up;
        a call of several steps counts as its mean), the first call's seconds and the total."""
        steps = sum(n for _, n in self.calls)
        per_step = [s / n for s, n in self.calls if n]
        steady = per_step[1:] or per_step
        owner = (self.owner.__name__ if isinstance(self.owner, types.ModuleType) else
                 f"{self.owner.__module__}.{self.owner.__qualname__}" if isinstance(self.owner, type) else
                 type(self.owner).__name__)
        return {"timed": f"{owner}.{self.name}", "steps": steps,
                "seconds_per_step": statistics.median(steady) if steady else None,
                "seconds_per_step_mean": statistics.fmean(steady) if steady else None,
                "first_call_seconds": self.calls[0][0] if self.calls else None,
                "seconds_in_steps": sum(s for s, _ in self.calls)}


# ---------------------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    reduced: bool
    data: Path                     # fake data ($DPBOOK_DATA while experiments run)
    runs: Path                     # the experiments' results files (temporary)
    written: set = field(default_factory=set)
    missing: dict = field(default_factory=dict)  # module -> parts that need it (:func:`check_imports`)
    timer: StepTimer | None = None  # the running experiment's, read even when it overran
    notes: dict = field(default_factory=dict)  # what the running part recorded so far, kept even when it overran


@dataclass
class Part:
    name: str
    kind: str                      # "benchmark" or "experiment"
    share: float                   # seconds of the full check's budget
    run: Callable[[Context], dict]
    needs: tuple[str, ...] = ()
    what: str = ""


def benchmark(script: str, full: list[str], reduced: list[str]) -> Callable[[Context], dict]:
    """A part that calls ``benchmarks/<script>.py``'s ``main(argv)`` and reads back the file it saved."""

    def run(ctx: Context) -> dict:
        import torch
        from common import machine, results_dir

        argv = reduced if ctx.reduced else full
        module = importlib.import_module(script)
        threads = torch.get_num_threads()
        try:
            module.main(argv)
        finally:
            torch.set_num_threads(threads)  # mi.py sets one thread for its like-for-like CPU timings
        path = results_dir() / f"{script}-{machine()}.json"
        return {"command": " ".join(["python", f"benchmarks/{script}.py", *argv]), "results_file": path.name,
                "rows": json.loads(path.read_text())["rows"]}

    return run


def fake(ctx: Context, dataset: str) -> None:
    """Write the fake files of ``dataset`` once: the real counts on a GPU (more Tiny ImageNet images per class, so
    that an epoch has two steps; fewer SVHN images, the extra split's size making the steps), a few otherwise."""
    from dpbook.data import fake as f

    if dataset in ctx.written:
        return
    small = ctx.reduced
    if dataset == "mnist":
        f.write_mnist(ctx.data, *((300, 60) if small else (60_000, 10_000)))
    elif dataset == "cifar10":
        f.write_cifar10(ctx.data, *((200, 20) if small else (50_000, 10_000)))
    elif dataset == "cifar100":  # GEP's public anchors under the paper profile: the first images of its test split
        f.write_cifar100(ctx.data, *((10, 40) if small else (500, 10_000)))
    elif dataset == "svhn":
        f.write_svhn(ctx.data, {"train": 120, "extra": 40, "test": 20} if small else
                     {"train": 30_000, "extra": 30_000, "test": 10_000})
    elif dataset == "tinyimagenet":
        f.write_tinyimagenet(ctx.data, *((5, 1) if small else (650, 50)))
    ctx.written.add(dataset)


@contextlib.contextmanager
def shrunk_paper_table(dataset: str, note: dict, reduced: bool, **sizes):
    """``--reduced``: the paper table's sizes for ``dataset`` (:data:`dpbook.stobatch.PAPER_SETTINGS`) shrunk to
    ``sizes`` while the part runs, as tests/test_paper_dry_runs.py shrinks them. With ``hyperparameters="paper"``
    the table sets batch size and attack steps, and a different value set in the settings is refused."""
    from dpbook import stobatch

    table = stobatch.PAPER_SETTINGS[dataset]
    if reduced:
        note["paper_settings_shrunk"] = sizes
        stobatch.PAPER_SETTINGS[dataset] = {**table, **sizes}
    try:
        yield
    finally:
        stobatch.PAPER_SETTINGS[dataset] = table


def small_paper_table(dataset: str, **sizes) -> Callable[[dict, bool], contextlib.AbstractContextManager]:
    """The ``extra`` context of a StoBatch part: :func:`shrunk_paper_table` with these sizes."""
    return lambda note, reduced: shrunk_paper_table(dataset, note, reduced, **sizes)


@contextlib.contextmanager
def tinyimagenet_network(note: dict, reduced: bool):
    """Torchvision's ResNet-18 ImageNet weights when they are in torch's cache (the box cannot download them);
    otherwise ``resnet18`` gets random weights, and ``note`` says so. ``reduced``: batches of 4 in 2 micro-batches
    (not 4,500 in 20) and 1-step attacks (:func:`shrunk_paper_table`): on a CPU each micro-batch costs seconds."""
    import torch
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists()
    note["imagenet_weights"] = "from torch's cache" if cached else (
        "not in torch's cache (no download here): random weights, same shapes and cost")
    real = torchvision.models.resnet18
    if not cached:
        torchvision.models.resnet18 = lambda weights=None, **kw: real(weights=None, **kw)
    try:
        with shrunk_paper_table("tinyimagenet", note, reduced, batch_size=4, micro_batches=2, attack_steps=1):
            yield
    finally:
        torchvision.models.resnet18 = real


def experiment(name: str, datasets: tuple[str, ...], timed: Callable[[], tuple], full: dict | Callable[[], dict],
               reduced: dict | Callable[[], dict],
               extra: Callable[[dict, bool], contextlib.AbstractContextManager] | None = None
               ) -> Callable[[Context], dict]:
    """A part that writes the fake ``datasets``, then runs ``experiments.run(name, profile="paper", **settings)``
    with its training step timed by :class:`StepTimer` (``timed()`` -> (owner, attribute[, steps_of])). The
    settings (``full`` or ``reduced``, or a function that returns them) hold sizes only, plus the design of a
    run that the paper profile does not pick itself; ``extra(entry, reduced)`` is a context to run it in."""

    def run(ctx: Context) -> dict:
        from dpbook import experiments

        t0 = time.perf_counter()
        for dataset in datasets:
            fake(ctx, dataset)
        settings = reduced if ctx.reduced else full
        out = ctx.notes
        out.update(data_seconds=time.perf_counter() - t0, experiment=name,
                   settings=settings() if callable(settings) else settings)
        ctx.timer = StepTimer(*timed())
        with ctx.timer, extra(out, ctx.reduced) if extra else contextlib.nullcontext():
            result = experiments.run(name, profile="paper", results=str(ctx.runs), **out["settings"])
        config, metrics = result["config"], result["metrics"]
        out["run"] = {**{k: config[k] for k in ("dataset", "method", "batch_size", "n_bases", "public_source")
                         if k in config},
                      **{k: metrics[k] for k in ("model", "epochs", "steps", "epsilon") if k in metrics}}
        return out

    run.experiment, run.full, run.reduced = name, full, reduced  # for tests/test_gpu_check.py
    return run


def _gep_step():
    from dpbook import gep

    return gep.GEP, "step"


def _stobatch_dpsgd_step():
    from dpbook.stobatch import above

    return above, "dpsgd_step"


def _stobatch_step():
    from dpbook.stobatch import step

    return step, "train_step"


def _shredder_run():
    """``train_noise`` per noise-training run; its steps: full batches per epoch x epochs trained."""
    from dpbook import shredder

    return shredder, "train_noise", lambda args, kw, sample: sample.epoch * (len(args[1]) // kw["batch_size"])


def _tin_design() -> dict:
    """The sound per-example design that runs on the Tiny ImageNet ResNet-18 (it has BatchNorm): released PCA-32
    inputs and randomized-response labels, at the paper profile's budget (as tests/test_paper_dry_runs.py)."""
    from dpbook import config
    from dpbook.experiments import stobatch_designs

    s = config.settings("stobatch", profile_name="paper")
    return {**stobatch_designs.design_settings("release PCA-32 Gaussian + RR labels (1/2 to inputs)",
                                               s.epsilon_autoencoder + s.epsilon2), "norm": "batch"}


#: evaluation after training, shrunk (the paper: 1,000 test points x 1,000 votes, 100-step attacks x 7 sizes)
EVALUATION = dict(n_validation=200, validation_draws=10, n_test=100, n_draws=100, attack_sizes=(0.1,),
                  test_attack_steps=10, eot=1, eot_study=())
EVALUATION_REDUCED = dict(n_validation=4, validation_draws=2, n_test=4, n_draws=8, attack_sizes=(0.1,),
                          test_attack_steps=1, eot=1, eot_study=())


def stobatch_default_part(dataset: str, what: str) -> Part:
    """The StoBatch default design (public auto-encoder, DP-SGD above) with the paper's hyperparameters on
    ``dataset``: 5 epochs at full size; reduced, 48 examples in batches of 16 with 1-step attacks."""
    return Part(f"stobatch-{dataset}", "experiment", 45, experiment(
        "stobatch", (dataset,), _stobatch_dpsgd_step, dict(dataset=dataset, epochs=5, **EVALUATION),
        dict(dataset=dataset, epochs=1, public=20, validation=20, max_train=48, autoencoder_epochs=1,
             **EVALUATION_REDUCED), extra=small_paper_table(dataset, batch_size=16, attack_steps=1)),
        needs=("dp_accounting", "tqdm"), what=what)


PARTS = [
    Part("gep_step", "benchmark", 90, benchmark(
        "gep_step", ["--batch", "1000", "--public", "2000", "--bases", "1000", "--networks", "resnet20-gn"],
        ["--batch", "8", "--public", "16", "--bases", "8", "--repeat", "1", "--refresh", "2",
         "--networks", "small-cnn"]), needs=("backpack", "dp_accounting"),
         what="one step of non-private SGD, DP-SGD, Biased-GEP and GEP side by side"),
    Part("mi", "benchmark", 30, benchmark(
        "mi", ["--n", "100000", "--dims", "100", "--repeat", "2", "--skip-slow", "--skip-cpu"],
        ["--n", "400", "--dims", "2", "--repeat", "1", "--skip-slow"]), what="KSG mutual information"),
    Part("certify", "benchmark", 25, benchmark(
        "certify", ["--cases", "100x1000,1000x1000", "--skip-cpu"], ["--cases", "2x16"]),
         what="Monte-Carlo certification votes per second"),
    # anchors: 2,000 CIFAR-100 test images; 50,000 - 5,000 validation = 45,000 private examples, q = 1,000 /
    # 45,000: 45 steps an epoch
    Part("gep-cifar10", "experiment", 80, experiment(
        "gep", ("cifar10", "cifar100"), _gep_step, dict(epochs=3),
        dict(epochs=1, public=40, validation=20, max_train=105, batch_size=35, n_bases=30)),
         needs=("dp_accounting", "tqdm"),
         what="GEP, CIFAR-10, ResNet20-GN, k = 1,000, batch 1,000, 2,000 public"),
    # 30,000 train - 5,000 validation + 30,000 extra = 55,000 private: 55 steps an epoch
    Part("gep-svhn", "experiment", 50, experiment(
        "gep", ("svhn", "cifar100"), _gep_step, dict(dataset="svhn", extra=True, delta=1e-6, epochs=2),
        dict(dataset="svhn", extra=True, delta=1e-6, epochs=1, public=40, validation=20, max_train=65,
             batch_size=35, n_bases=30)), needs=("dp_accounting", "tqdm"),
         what="GEP, SVHN with extra, ResNet20-GN, k = 1,000, batch 1,000"),
    # one noise-training run of one epoch on 40,000 activations in batches of 256: 156 steps
    Part("shredder-mnist", "experiment", 35, experiment(
        "shredder", ("mnist",), _shredder_run,
        dict(max_train=40_000, base_epochs=1, pool_size=1, max_runs=1, epochs=1, min_epochs=1, accept_drop=1.0,
             mi_samples=2_000, mi_seeds=2, adversary_train=10_000, adversary_epochs=1),
        dict(validation=60, base_epochs=1, pool_size=1, max_runs=1, epochs=1, min_epochs=1, accept_drop=1.0,
             batch_size=64, mi_samples=40, mi_seeds=2, adversary_epochs=1)), needs=("tqdm",),
         what="Shredder noise training, MNIST, LeNet-5 cut at relu5, batch 256 (every run accepted: "
              "accept_drop=1, since no accuracy on random pixels means anything)"),
    # 60,000 - 1,000 public - 5,000 validation = 54,000 examples in batches of 2,499: 21 steps an epoch
    stobatch_default_part("mnist", "StoBatch default design (public auto-encoder, DP-SGD above), MNIST, paper "
                                   "hyperparameters (batch 2,499, 100-step attacks)"),
    # 50,000 - 6,000 = 44,000 examples in batches of 1,851: 23 steps an epoch
    stobatch_default_part("cifar10", "StoBatch default design, CIFAR-10 crops, paper hyperparameters (batch 1,851)"),
    # 30 classes x 650 = 19,500 - 1,000 public - 500 validation = 18,000 examples: 4 batches of 4,500, 2 steps an
    # epoch; every epoch's checkpoint holds the released images (18,000 x 3x64x64 float32, 0.9 GB), outside the
    # timed steps but inside the part's time
    Part("stobatch-tinyimagenet", "experiment", 60, experiment(
        "stobatch", ("tinyimagenet",), _stobatch_step,
        lambda: dict(_tin_design(), dataset="tinyimagenet", epochs=50, validation=500, attacks=("fgsm", "pgd"),
                     **{**EVALUATION, "n_test": 50, "n_draws": 50}),
        # 16 examples (after 40 public and 4 validation): 4 batches of 4 (2 micro-batches of 2), 2 steps
        lambda: dict(_tin_design(), dataset="tinyimagenet", epochs=1, public=40, validation=4, max_train=16,
                     attacks=("fgsm",),
                     **{**EVALUATION_REDUCED, "n_validation": 2, "n_test": 2, "n_draws": 4}),
        extra=tinyimagenet_network), needs=("dp_accounting", "tqdm", "PIL", "torchvision"),
         what="StoBatch per-example release design, Tiny ImageNet (30 classes, 64x64), ResNet-18, paper "
              "hyperparameters (batch 4,500 in 20 micro-batches, 10-step attacks)"),
]


# ---------------------------------------------------------------------------------------------------------
# Running the parts against the clock, saving as it goes
# ---------------------------------------------------------------------------------------------------------


class Check:
    """The results file of one check, rewritten (atomically) after every change; ``parts``: entries of an earlier
    check of the same file to keep (a rerun of some parts replaces only those)."""

    def __init__(self, path: Path, header: dict, parts: dict | None = None):
        self.path, self.data = path, {**header, "parts": dict(parts or {})}

    def record(self, name: str, entry: dict) -> None:
        self.data["parts"][name] = {**entry, "ran_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def _stop(signum, frame):
    raise Overran()


def run_part(part: Part, ctx: Context, deadline: float) -> dict:
    """Run ``part`` with at most ``deadline`` seconds; return its entry (status, seconds, what it measured)."""
    import torch

    entry = describe(part, deadline_seconds=round(deadline, 1))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ctx.timer, ctx.notes = None, {}
    timed_by_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if timed_by_alarm:
        previous = signal.signal(signal.SIGALRM, _stop)
        signal.setitimer(signal.ITIMER_REAL, deadline)
    t0 = time.perf_counter()
    try:
        entry.update(part.run(ctx))
        entry["status"] = "ok"
    except Overran:
        entry["status"] = "overran"
        entry["note"] = f"stopped at its deadline of {deadline:.0f} s; what it measured until then is kept"
    except KeyboardInterrupt:
        entry["status"] = "interrupted"
    except Exception as err:  # recorded, and the next part runs
        entry["status"] = "error"
        entry["error"] = f"{type(err).__name__}: {err}"
        entry["traceback"] = traceback.format_exc(limit=-6)
    finally:
        if timed_by_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        entry["seconds"] = time.perf_counter() - t0
        entry["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        entry["peak_gpu_memory_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
        entry.update(ctx.notes)
        if ctx.timer is not None:
            entry.update(ctx.timer.summary())
    return entry


def run_all(parts: list[Part], ctx: Context, check: Check, budget: float, log=print) -> dict:
    """Run ``parts`` in order within ``budget`` seconds, each until its deadline: the time left minus the shares
    of the parts after it (so a part gets its share of the budget plus what earlier parts left unused)."""
    scale = budget / sum(p.share for p in parts)
    start = time.perf_counter()
    for i, part in enumerate(parts):
        left = budget - (time.perf_counter() - start)
        deadline = left - scale * sum(p.share for p in parts[i + 1:])
        missing = [m for m in part.needs if m in ctx.missing]
        if missing:
            entry = describe(part, status="skipped", reason="missing " + ", ".join(
                f"{m} (pip install {PIP[m]})" for m in missing))
        elif deadline <= 0.05:
            entry = describe(part, status="skipped", reason="time budget spent")
        else:
            sizes = " [reduced: tiny sizes]" if ctx.reduced else ""
            log(f"[{time.perf_counter() - start:6.1f} s] {part.name}: {part.what}{sizes} (deadline {deadline:.0f} s)")
            entry = run_part(part, ctx, deadline)
        check.record(part.name, entry)
        log(f"[{time.perf_counter() - start:6.1f} s] {part.name}: {line(entry)}")
        if entry["status"] == "interrupted":
            for later in parts[i + 1:]:
                check.record(later.name, describe(later, status="skipped", reason="interrupted"))
            raise KeyboardInterrupt
    check.data["total_seconds"] = time.perf_counter() - start
    check.data["finished"] = True
    check.save()
    return check.data


def describe(part: Part, **more) -> dict:
    """The entry of ``part`` before it runs: its kind and what it runs."""
    return {"kind": part.kind, "what": part.what, **more}


def line(entry: dict) -> str:
    """One line of what a part measured."""
    text = entry["status"]
    if entry.get("reason"):
        text += f" ({entry['reason']})"
    if entry.get("error"):
        text += f": {entry['error']}"
    if "seconds" in entry:
        text += f", {entry['seconds']:.1f} s"
    if entry.get("steps"):
        text += f", {entry['steps']} steps at {entry['seconds_per_step']:.4g} s/step"
    if entry.get("peak_gpu_memory_mb") is not None:
        text += f", peak GPU memory {entry['peak_gpu_memory_mb']:,.0f} MiB"
    if entry.get("results_file"):
        text += f", wrote {entry['results_file']}"
    return text


def check_imports(parts: list[Part], log=print) -> dict:
    """Import every module the parts need; return {missing module: the parts that need it}."""
    missing = {}
    for module in sorted({m for p in parts for m in p.needs} | set(CORE)):
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a broken install
            users = [p.name for p in parts if module in p.needs] or ["everything"]
            missing[module] = users
            log(f"MISSING {module}: {type(err).__name__}: {err}. Install it with  pip install {PIP[module]}  "
                f"(no internet on the box: bring the wheel); needed by {', '.join(users)}")
    return missing


def device_description() -> dict:
    """The device the check runs on, in more detail than the environment's one line."""
    import torch

    if not torch.cuda.is_available():
        return {"type": "cpu", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(0)
    return {"type": "cuda", "name": p.name, "memory_gib": p.total_memory / 2**30,
            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true",
                        help="tiny sizes (few steps, small batches, small k): the whole check in ~30 s on 2 CPU "
                             "cores")
    parser.add_argument("--cpu", action="store_true", help="hide the GPU (CUDA_VISIBLE_DEVICES='')")
    parser.add_argument("--results", help="folder of the results files (default: $DPBOOK_BENCH_RESULTS or "
                                          "benchmarks/results; with --reduced a new temporary folder)")
    parser.add_argument("--budget", type=float, help="seconds for all parts (default 460; --reduced: 300)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], help="run only these parts")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts CUDA
    for path in (str(ROOT), str(HERE)):  # dpbook from this checkout; the benchmark scripts and common.py
        if path not in sys.path:
            sys.path.insert(0, path)
    started = time.perf_counter()
    try:
        import torch  # noqa: F401

        from dpbook import experiments  # noqa: F401  (dpbook and what it imports everywhere)
        from dpbook.runs import environment
    except Exception as err:
        print(f"cannot import dpbook and what it needs everywhere: {type(err).__name__}: {err}\nInstall the "
              f"environment first: "
              f"pip install -r requirements.txt && pip install -e .  (no internet: from wheels you bring)")
        return 2
    if args.results:
        os.environ["DPBOOK_BENCH_RESULTS"] = str(Path(args.results).resolve())
    elif args.reduced and not os.environ.get("DPBOOK_BENCH_RESULTS"):
        os.environ["DPBOOK_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="gpu_check-reduced-")
    from common import machine, results_dir

    parts = [p for p in PARTS if not args.parts or p.name in args.parts]
    budget = args.budget or (300.0 if args.reduced else 460.0)
    out = results_dir() / f"gpu_check-{machine()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    device = device_description()
    print(f"GPU check ({'reduced' if args.reduced else 'paper sizes'}): {env['device']}, torch {env['torch']}, "
          f"{env['cpu_count']} CPUs; budget {budget:.0f} s for {len(parts)} parts; writing {out}")
    if device["type"] == "cpu" and not args.reduced:
        print("no CUDA GPU: at the paper's sizes this would take hours on a CPU. Run with --reduced here, or on "
              "a machine with an NVIDIA GPU.")
        return 1
    print(f"experiments read {DATA_NOTE}")
    mode = "reduced" if args.reduced else "paper sizes"
    earlier = json.loads(out.read_text()) if args.parts and out.exists() else {}
    check = Check(out, {"tool": "benchmarks/gpu_check.py", "mode": mode, "budget_seconds": budget,
                        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "device": device, "environment": env, "data": DATA_NOTE, "finished": False},
                  parts=earlier.get("parts") if earlier.get("mode") == mode else None)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Context(reduced=args.reduced, data=Path(tmp) / "data", runs=Path(tmp) / "results",
                      missing=check_imports(parts))
        check.data["missing_modules"] = ctx.missing
        check.save()
        ctx.data.mkdir()
        before = {k: os.environ.get(k) for k in ("DPBOOK_DATA", "DPBOOK_RESULTS")}
        os.environ.update(DPBOOK_DATA=str(ctx.data), DPBOOK_RESULTS=str(ctx.runs))
        try:
            data = run_all(parts, ctx, check, budget)
        except KeyboardInterrupt:
            print(f"interrupted; what was measured is in {out}")
            return 130
        finally:
            for k, v in before.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    print(f"\n{'part':<24} {'status':<9} {'seconds':>8} {'steps':>6} {'s/step':>9} {'peak MiB':>9}")
    for name, e in data["parts"].items():
        memory = e.get("peak_gpu_memory_mb")
        print(f"{name:<24} {e['status']:<9} {e.get('seconds', 0):8.1f} {e.get('steps') or '':>6} "
              f"{format(e['seconds_per_step'], '.4g') if e.get('seconds_per_step') else '':>9} "
              f"{format(memory, ',.0f') if memory is not None else '':>9}")
    print(f"total {time.perf_counter() - started:.0f} s; saved {out}")
    return 0 if all(data["parts"][p.name]["status"] in ("ok", "overran") for p in parts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
