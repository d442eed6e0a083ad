"""StoBatch training: a run's state (partition, budget, noise), the optimisers, steps with T trainers
simulated in one process, epochs, and the privacy report of a run.

A step gives each of T trainers its own benign batch and adversarial source batch (disjoint, from
:func:`dpbook.stobatch.epoch_schedule`), averages their gradients and steps Adam on theta_1 and Adam or SGD
on theta_2, as the original code averages its towers' gradients (``StoBatchCIFAR10/StoBatch_cifar10.py``
of ``haiphanNJIT/StoBatch``). :mod:`dpbook.distributed` runs the same step with one process per trainer.
``notebooks/41_stobatch_algorithm.ipynb`` (section 6) runs one step, then a short training.

Privacy (Phan et al., ICML 2020): every batch spends eps1 + eps1/gamma_x + eps1/gamma + eps2 (nats,
delta = 0), and the run the same by parallel composition over the disjoint batches (:func:`privacy_report`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .. import checks, privacy
from ..models import StoBatchNet
from .batching import NoiseTable, draw_noise, epoch_schedule, partition, zero_noise
from .budget import Budget, input_sensitivity, project_spectral_norm_, solve_budget, spectral_norm
from .objective import batch_pair_loss
from .options import StoBatchOptions
from .release import Release


@dataclass
class StoBatchRun:
    """State of a training run made by :func:`prepare`: partition, budget, noise, the sigma_max bound."""

    partition: torch.Tensor     # (n_batches, m) example indices
    budget: Budget
    noise: NoiseTable
    sigma_bound: float          # sigma_max(theta_1) that gamma uses
    sigma_max_seen: float       # largest sigma_max(theta_1) observed after a step
    options: StoBatchOptions
    steps: int = 0
    release: Release | None = None   # release="per_example": the released training set


def prepare(model: StoBatchNet, n_examples: int, options: StoBatchOptions, *,
            generator: torch.Generator | None = None, release: Release | None = None) -> StoBatchRun:
    """Partition, budget (gamma from the *current* theta_1, e.g. after loading pretrained weights) and noise.

    ``release="batch_shared"``: the paper's noise table, one draw per batch. ``"per_example"``: ``release``
    (:func:`dpbook.stobatch.release_for`) holds each example's noisy input and label; the batches carry no
    further noise (a table of zeros), and the steps must be given the released ``release.x, release.y``.

    ``generator``: DP noise generator; default OS-seeded on the model's device, or the public
    ``options.noise_seed`` (warns :class:`dpbook.privacy.UnsafeSeedWarning`).
    """
    w = model.first.weight
    per_example = options.release == "per_example"
    checks.check((release is not None) == per_example, "release", "prepare()",
                 "given exactly when options.release='per_example'", type(release).__name__,
                 "Release the training set first: dpbook.stobatch.release_for(options, x, y, x_public, ...).")
    if per_example:
        checks.check(release.y is not None and len(release.x) == n_examples, "release", "prepare()",
                     f"released inputs and labels of the {n_examples} examples", len(release.x))
    if generator is None:
        generator = privacy.noise_generator(w.device, seed=options.noise_seed)
    sigma = options.sigma_max_bound or spectral_norm(w)
    if options.theta1_constraint == "project" and not per_example:
        project_spectral_norm_(w, sigma)
    budget = solve_budget(epsilon_autoencoder=options.epsilon_autoencoder, epsilon2=options.epsilon2,
                          delta_R=model.first.delta_R(options.beta_includes_channels), batch_size=options.batch_size,
                          sigma_max=sigma, hidden=model.hidden,
                          delta_x=input_sensitivity(model.first.input_shape, options.delta_x_convention))
    parts = partition(n_examples, options.batch_size, seed=options.partition_seed, device=w.device)
    if per_example:  # the noise is in the released examples; nothing is shared by a batch
        return StoBatchRun(parts, budget, zero_noise(model), sigma, spectral_norm(w), options, release=release)
    n_tables = len(parts) if options.noise_reuse == "per_batch" else 1
    noise = draw_noise(n_tables, budget=budget, input_shape=model.first.input_shape,
                       latent_shape=model.first.latent_shape, n_classes=model.n_classes,
                       channel_shared=options.channel_shared_input_noise, generator=generator,
                       device=w.device, dtype=w.dtype)
    return StoBatchRun(parts, budget, noise, sigma, spectral_norm(w), options)


def make_optimizers(model: StoBatchNet, options: StoBatchOptions) -> list[torch.optim.Optimizer]:
    """Adam on theta_1; Adam or SGD on theta_2 (the CIFAR-10 code uses SGD)."""
    if options.release == "per_example" and options.labels == "dpsgd":  # theta_1 is trained before, then fixed
        return [torch.optim.Adam(model.rest.parameters(), lr=options.lr_theta2)]
    theta2 = (torch.optim.Adam if options.theta2_optimizer == "adam" else torch.optim.SGD)
    return [torch.optim.Adam(model.first.parameters(), lr=options.lr_theta1),
            theta2(model.rest.parameters(), lr=options.lr_theta2)]


def accumulate_trainer(model: StoBatchNet, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor, benign_id: int,
                       adversarial_id: int, *, trainers: int,
                       attack_generator: torch.Generator | None = None) -> list[dict]:
    """One trainer's share of a step: :func:`dpbook.stobatch.batch_pair_loss` on benign batch ``benign_id``
    and adversarial source ``adversarial_id`` with their noise, divided by the number of ``trainers``,
    backward into ``p.grad`` (which accumulates). With ``micro_batches`` = k both batches are cut into k
    chunks whose losses, weighted by their share of the batch, accumulate to the full batch's gradient (up to
    BatchNorm's statistics and one attack size per chunk). Returns the chunks' stats."""
    opts, stats = run.options, []
    ib, ia = run.partition[benign_id], run.partition[adversarial_id]
    for cb, ca in zip(ib.tensor_split(opts.micro_batches), ia.tensor_split(opts.micro_batches)):
        loss, s = batch_pair_loss(model, x[cb], y[cb], x[ca], y[ca], run.noise[benign_id],
                                  run.noise[adversarial_id], opts, attack_generator=attack_generator)
        (loss * len(cb) / (len(ib) * trainers)).backward()
        stats.append({"loss": loss.detach(), **s})
    return stats


def finish_step(model: StoBatchNet, optimizers, run: StoBatchRun) -> None:
    """The optimisers step; theta_1 is projected to sigma_max <= ``run.sigma_bound``
    (``theta1_constraint="project"``), or its sigma_max is recorded for :func:`privacy_report` (``"none"``)."""
    for opt in optimizers:
        opt.step()
    if run.options.theta1_constraint == "project" and run.release is None:
        project_spectral_norm_(model.first.weight, run.sigma_bound)
    run.sigma_max_seen = max(run.sigma_max_seen, spectral_norm(model.first.weight))
    run.steps += 1


def mean_stats(stats: list[dict]) -> dict:
    """Mean of each statistic over chunks and trainers, with one host sync."""
    means = torch.stack([torch.stack([s[k].float() for s in stats]).mean() for k in stats[0]])
    return dict(zip(stats[0], means.tolist()))


def running_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """BatchNorm's running means and variances (floating-point buffers; the step counters are the same for
    every trainer). Trainers of one step start from the same values and end with their average."""
    return [b for name, b in model.named_buffers() if b.is_floating_point()]


def train_step(model: StoBatchNet, optimizers, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor,
               benign_ids: torch.Tensor, adversarial_ids: torch.Tensor, *,
               attack_generator: torch.Generator | None = None,
               attack_generators: list[torch.Generator] | None = None) -> dict:
    """One StoBatch step with the trainers simulated in this process. Trainer t takes benign batch
    ``benign_ids[t]`` and adversarial source ``adversarial_ids[t]`` (:func:`accumulate_trainer`), so the
    gradients are averaged over trainers; then :func:`finish_step`. ``attack_generators`` gives each trainer
    its own attack randomness (what :mod:`dpbook.distributed` reproduces with one process per trainer);
    otherwise all trainers share ``attack_generator``. Each trainer starts from the step's BatchNorm running
    statistics, and the step ends with their average over trainers (:func:`running_buffers`), so that no
    trainer sees another's batches through them.
    """
    trainers = len(benign_ids)
    gens = attack_generators if attack_generators is not None else [attack_generator] * trainers
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    buffers = running_buffers(model)
    start = [b.clone() for b in buffers]
    total = [torch.zeros_like(b) for b in buffers]
    stats = []
    for t, (b, a) in enumerate(zip(benign_ids.tolist(), adversarial_ids.tolist())):  # one turn per trainer
        for buf, s0 in zip(buffers, start):  # every trainer starts the step from the same statistics
            buf.copy_(s0)
        stats += accumulate_trainer(model, run, x, y, b, a, trainers=trainers, attack_generator=gens[t])
        for acc, buf in zip(total, buffers):
            acc += buf
    for buf, acc in zip(buffers, total):  # then they are averaged, as the distributed trainers do
        buf.copy_(acc / trainers)
    finish_step(model, optimizers, run)
    return mean_stats(stats)


def train_epoch(model: StoBatchNet, optimizers, run: StoBatchRun, x: torch.Tensor, y: torch.Tensor, *,
                schedule_generator: torch.Generator | None = None,
                attack_generator: torch.Generator | None = None) -> dict:
    """One epoch: :func:`dpbook.stobatch.epoch_schedule`, then :func:`train_step` per step. Returns the mean
    stats, the step count and the privacy numbers of :func:`privacy_report`."""
    model.train()
    benign, adversarial = epoch_schedule(len(run.partition), trainers=run.options.trainers,
                                         generator=schedule_generator)
    stats = [train_step(model, optimizers, run, x, y, b, a, attack_generator=attack_generator)
             for b, a in zip(benign, adversarial)]
    return epoch_report(stats, run)


def epoch_report(stats: list[dict], run: StoBatchRun) -> dict:
    """The mean of the steps' stats, the step count and :func:`privacy_report` (what an epoch returns)."""
    mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    return {**mean, "steps": len(stats), **privacy_report(run)}


def privacy_report(run: StoBatchRun) -> dict:
    """The budget from the accountant, never a constant.

    ``release="per_example"``: :meth:`dpbook.stobatch.Release.privacy` (RDP, replace-one, all parts). The
    paper's mechanism (``"batch_shared"``):

    ``epsilon``: the paper's claim, eps1 + eps1/gamma_x + eps1/gamma + eps2 per batch, composed in parallel over
    the disjoint batches. ``epsilon_recheck``: the same with the largest sigma_max(theta_1) seen (the noise
    stays calibrated to ``sigma_bound``, so only eps1/gamma changes; equal to ``epsilon`` under projection).
    With ``noise_reuse="global_once"`` the batches share one noise draw, and parallel composition does not
    obviously hold (whoever knows the other batches can estimate the noise from them; ``book/stobatch.md``):
    the number is the paper's claim, not a proof (:func:`dpbook.stobatch.unsound_modes` says so).
    """
    if run.release is not None:
        return run.release.privacy()
    n_batches = len(run.partition)
    recheck = dataclasses.replace(run.budget, sigma_max=max(run.sigma_max_seen, run.sigma_bound))
    return {"epsilon": privacy.compose_parallel([run.budget.total] * n_batches)[0],
            "epsilon_recheck": privacy.compose_parallel([recheck.total] * n_batches)[0],
            **run.budget.terms, "sigma_bound": run.sigma_bound,
            "sigma_max_seen": run.sigma_max_seen, "input_scale": run.budget.input_scale,
            "latent_scale": run.budget.latent_scale, "output_scale": run.budget.output_scale}
