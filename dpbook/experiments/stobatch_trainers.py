"""The trainers of the stobatch experiment, one per method; each returns what it deploys for evaluation.

Every trainer takes a :class:`Setup` (settings, run, network, data, checkpoint) and returns
``(deployed, info, epochs)``: ``deployed`` maps an inference protocol to a :class:`dpbook.evaluation.Deployed`
predictor, ``info`` holds the privacy and noise numbers the result records.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..runs import Run
from ..training import fit
from .loop import private_epochs, restore, save_and_check


@dataclass
class Setup:
    """What every trainer receives: settings, run, the network (on ``device``), the splits, the private
    training data on the device, the checkpoint to resume from (or ``None``) and the distributed rank."""
    cfg: Any
    run: Run
    model: torch.nn.Module
    parts: dict
    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    device: torch.device
    state: dict | None = None
    history: list = field(default_factory=list)
    start: int = 0
    rank: int = 0
    world: int = 1
    stop_after_epoch: int | None = None

    def save(self, epoch: int, extra: dict) -> None:
        """Checkpoint the model, epoch, history and ``extra`` (rank 0 writes); stop if asked to."""
        save_and_check(self.run, epoch, {"model": self.model.state_dict(), "epoch": epoch, "history": self.history,
                                         **extra}, self.stop_after_epoch, write=self.rank == 0)


def train_stobatch(s: Setup) -> tuple[dict, dict, int]:
    """StoBatch (Phan et al., ICML 2020, Algorithm 1): the fixed partition of disjoint batches with the
    budget's noise (:func:`dpbook.stobatch.prepare`), one trainer per process; the privacy numbers are
    :func:`dpbook.stobatch.privacy_report`'s. Schedule and attack randomness of epoch e come from seed + e."""
    from .. import stobatch as sb
    from .stobatch_experiment import paper_key, stobatch_options

    cfg, model, dev = s.cfg, s.model, s.device
    options = stobatch_options(cfg, s.world)
    epochs = cfg.epochs or sb.PAPER_EPOCHS[paper_key(cfg.dataset)]
    sb_run = sb.prepare(model, len(s.x), options)
    optimizers = sb.make_optimizers(model, options)
    if s.world > 1:
        from .. import distributed

        distributed.broadcast_run(model, sb_run)
        train_epoch = functools.partial(distributed.train_epoch, rank=s.rank, world=s.world)
    else:
        train_epoch = sb.train_epoch
    if s.state:
        model.load_state_dict(s.state["model"])
        for opt, saved in zip(optimizers, s.state["optimizers"]):
            opt.load_state_dict(saved)
        sb_run.noise = sb.NoiseTable(**{k: v.to(dev) for k, v in s.state["noise"].items()})
        sb_run.sigma_max_seen, sb_run.steps = s.state["sigma_max_seen"], s.state["steps"]
    print(f"stobatch ({cfg.variant}) on {cfg.dataset}: {len(s.x)} examples in {len(sb_run.partition)} batches "
          f"of {options.batch_size}, {s.world} trainer(s), {epochs} epochs; noise scales b_x = "
          f"{sb_run.budget.input_scale:.4g}, b_h = {sb_run.budget.latent_scale:.4g}, chi = "
          f"{sb_run.budget.output_scale:.4g}; claimed epsilon {sb.privacy_report(sb_run)['epsilon']:.4g}", flush=True)
    for epoch in range(s.start, epochs):
        t = time.perf_counter()
        schedule_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        attack_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + epoch + 10_000 * (s.rank + 1))
        stats = train_epoch(model, optimizers, sb_run, s.x, s.y, schedule_generator=schedule_gen,
                            attack_generator=attack_gen)
        s.history.append({"epoch": epoch + 1, **{k: stats[k] for k in ("loss", "ae_loss", "output_loss",
                                                                       "train_accuracy", "adv_accuracy")},
                          "seconds": time.perf_counter() - t})
        print(f"epoch {epoch + 1}/{epochs}: train accuracy {stats['train_accuracy']:.4f} (benign batch, its "
              f"noise), adversarial {stats['adv_accuracy']:.4f} ({s.history[-1]['seconds']:.1f} s)", flush=True)
        s.save(epoch + 1, {"optimizers": [o.state_dict() for o in optimizers], "sigma_max_seen":
                           sb_run.sigma_max_seen, "steps": sb_run.steps,
                           "noise": {k: getattr(sb_run.noise, k).cpu() for k in ("x", "h", "chi")}})
    if s.rank != 0:
        return {}, {}, epochs
    info = {"privacy": sb.privacy_report(sb_run),
            "options": {k: v for k, v in vars(options).items() if not isinstance(v, tuple)}}
    protocols = ("fresh",) if cfg.variant == "principled" else ("original", "fresh")
    deployed = {p: sb.deployed(model, sb_run, inference=p, mode=cfg.certify_mode) for p in protocols}
    return deployed, info, epochs


def train_noisy_or_plain(s: Setup) -> tuple[dict, dict, int]:
    """PixelDP (Lecuyer et al., 2019: fresh Laplace noise at the input and the first layer, certified with the
    same certificate) or the non-private network, trained with Adam."""
    from .. import baselines, evaluation

    cfg, model = s.cfg, s.model
    scales = dict(input_scale=cfg.pixeldp_input_scale, latent_scale=cfg.pixeldp_latent_scale)
    pixeldp = cfg.method == "pixeldp"
    net = baselines.pixeldp_network(model, **scales) if pixeldp else baselines.plain_network(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.baseline_lr)
    restore(s.state, model, optimizer)  # the noisy network wraps the model's own modules: its weights are the model's

    def checkpoint(epoch: int, hist: list) -> None:
        s.history[:] = hist
        s.save(epoch, {"optimizer": optimizer.state_dict()})

    fit(net, s.parts["train"], epochs=cfg.epochs, batch_size=cfg.baseline_batch_size, lr=cfg.baseline_lr,
        seed=cfg.seed, optimizer=optimizer, start_epoch=s.start, history=s.history, on_epoch_end=checkpoint)
    net.eval()
    deployed = {"fresh": baselines.pixeldp_deployed(model, **scales, mode=cfg.certify_mode) if pixeldp
                else evaluation.Deployed(predict=net, n_classes=s.n_classes, deterministic=True)}
    return deployed, {"noise": scales} if pixeldp else {}, cfg.epochs


def train_securesgd(s: Setup) -> tuple[dict, dict, int]:
    """SecureSGD: DP-SGD through the GEP engine (mode ``"dpsgd"``, RDP accountant) on inputs that carry their
    own heterogeneous Gaussian (HGM) noise draw, theta_1 projected to spectral norm <= 1 after every step so
    the certificate's sensitivity holds."""
    from .. import baselines, gep, privacy
    from .. import stobatch as sb

    cfg, model, dev = s.cfg, s.model, s.device
    epochs, n = cfg.epochs, len(s.x)
    q = cfg.baseline_batch_size / n
    steps = epochs * privacy.steps_per_epoch(n, cfg.baseline_batch_size)
    noise_multiplier = gep.calibrate(target_epsilon=cfg.securesgd_epsilon, delta=cfg.securesgd_delta,
                                     sample_rate=q, steps=steps, mode="dpsgd")
    sb.project_spectral_norm_(model.first.weight, 1.0)
    hgm = baselines.hgm_sigma(epsilon_r=cfg.hgm_epsilon_r, delta_r=cfg.hgm_delta_r, bound=cfg.hgm_bound,
                              sensitivity=baselines.conv_l2_sensitivity(model.first))
    r = baselines.redistribution(model, s.parts["public"].x.to(dev), s.parts["public"].y.to(dev))
    packed = baselines.PackedNoise(model, r).to(dev)
    engine = gep.GEP(packed, torch.zeros(0, 1, device=dev), n_classes=s.n_classes, mode="dpsgd",
                     clip_residual=cfg.securesgd_clip, noise_multiplier=noise_multiplier, sample_rate=q,
                     dataset_size=n, delta=cfg.securesgd_delta)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.securesgd_lr, momentum=0.9)
    restore(s.state, model, optimizer, engine)
    if s.state:
        packed.sqrt_r.copy_(s.state["sqrt_r"])
    print(f"securesgd on {cfg.dataset}: q = {q:.4g}, {steps} steps, noise multiplier {noise_multiplier:.3f} for "
          f"(epsilon = {cfg.securesgd_epsilon}, delta = {cfg.securesgd_delta}); HGM sigma {hgm:.4g}", flush=True)
    noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)

    def step(idx: torch.Tensor) -> None:
        engine.step(baselines.pack(s.x[idx], model.first.latent_shape, hgm, noise_gen), s.y[idx])
        optimizer.step()
        sb.project_spectral_norm_(model.first.weight, 1.0)  # keeps the certificate's sensitivity

    private_epochs(s.run, model=model, optimizer=optimizer, engine=engine, step=step, n=n,
                   batch_size=cfg.baseline_batch_size, epochs=epochs, start=s.start, history=s.history, device=dev,
                   extra_state=lambda: {"sqrt_r": packed.sqrt_r}, stop_after_epoch=s.stop_after_epoch)
    model.eval()
    deployed = {"fresh": baselines.securesgd_deployed(model, packed.sqrt_r.square(), hgm)}
    info = {"privacy": {"epsilon": engine.epsilon(), "delta": cfg.securesgd_delta,
                        "noise_multiplier": noise_multiplier, "sample_rate": q, "steps": steps},
            "noise": {"hgm_sigma": hgm, "r_min": float(packed.sqrt_r.min() ** 2)}}
    return deployed, info, epochs


#: method -> trainer; the order is the stobatch experiment's ``STOBATCH_METHODS``.
TRAINERS = {"stobatch": train_stobatch, "pixeldp": train_noisy_or_plain, "securesgd": train_securesgd,
            "nonprivate": train_noisy_or_plain}
