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
    radius: dict = field(default_factory=dict)  # name -> bounds -> (l2, l_inf) certified radii (inference.radii)
    smoothing_std: float = 0.0    # the Gaussian noise the radii are computed for (the Monte-Carlo cap)

    def save(self, epoch: int, extra: dict) -> None:
        """Checkpoint the model, epoch, history and ``extra`` (rank 0 writes); stop if asked to."""
        save_and_check(self.run, epoch, {"model": self.model.state_dict(), "epoch": epoch, "history": self.history,
                                         **extra}, self.stop_after_epoch, write=self.rank == 0)

    def drop_secrets(self) -> None:
        """Once training is over, rewrite the checkpoint without the DP noise, the released data and the
        noise generators' draws (``SECRET_KEYS``): they only served to resume, and must not outlive the run."""
        path = self.run.checkpoint_path
        if self.rank == 0 and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=False)
            self.run.save_checkpoint({k: v for k, v in state.items() if k not in SECRET_KEYS})


#: checkpoint entries that hold DP noise or what it protects, dropped when training ends
SECRET_KEYS = ("noise", "release")


def train_per_example(s: Setup, options, epochs: int) -> tuple[dict, dict, int]:
    """A sound StoBatch design (``release="per_example"``): the training set released once
    (:func:`dpbook.stobatch.release_for`; rank 0 draws it and, with several processes, broadcasts it), then
    either the StoBatch steps on the released inputs and labels (``labels="randomized_response"``), or theta_1
    on public or released images and DP-SGD above it (``labels="dpsgd"``, :mod:`dpbook.stobatch.above`).
    Deployed with smoothing noise and certified through the l2 radius (:func:`dpbook.stobatch.per_example_deployed`)."""
    from .. import stobatch as sb

    dev = s.device
    if options.labels == "dpsgd" and s.world > 1:
        raise ValueError("DP-SGD above the DP layer runs in one process; launch without torchrun (or use "
                         "--labels randomized_response, whose trainers run one per process)")
    if options.labels == "dpsgd" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in s.model.modules()):
        raise ValueError("DP-SGD above the DP layer needs per-example normalisation, but this network has BatchNorm "
                         "(the Tiny ImageNet ResNet-18 has no GroupNorm version): use --inputs released --labels "
                         "randomized_response, whose training is post-processing of the release")
    public = s.parts["public"].x.to(dev)
    release = None
    if options.inputs == "released":
        if s.state:  # the public plan again, and the release drawn before the interruption
            saved = s.state["release"]
            release = sb.release_plan(options, public, n_classes=s.n_classes)
            release.x, release.y = saved["x"].to(dev), None if saved["y"] is None else saved["y"].to(dev)
        else:
            release = sb.release_for(options, s.x, s.y, public, n_classes=s.n_classes)
        if s.world > 1:
            from .. import distributed

            distributed.broadcast_tensors([release.x] + ([release.y] if release.y is not None else []))
    keep = {"release": {"x": release.x.cpu(), "y": None if release.y is None else release.y.cpu()}} if release else {}
    if options.labels == "randomized_response":
        deployed, info = _per_example_rr(s, options, epochs, release, keep)
    else:
        deployed, info = _per_example_dpsgd(s, options, epochs, release, public, keep)
    s.drop_secrets()
    if s.rank != 0:
        return {}, {}, epochs
    info["options"] = {k: v for k, v in vars(options).items() if not isinstance(v, tuple)}
    return deployed, info, epochs


@torch.no_grad()
def _accuracy(model, dataset) -> float:
    """Noiseless accuracy of ``model`` on a (public) dataset."""
    was = model.training
    model.eval()
    x = dataset.x.to(next(model.parameters()).device)
    acc = float((model(x).argmax(1).cpu() == dataset.y).float().mean())
    model.train(was)
    return acc


def _deploy(s: Setup, options, release):
    from .. import stobatch as sb

    coder = release.coder if release is not None else None
    dep, s.radius = sb.per_example_deployed(s.model, std=options.smoothing_std, coder=coder)
    s.smoothing_std = options.smoothing_std
    return {"fresh": dep}


def _per_example_rr(s: Setup, options, epochs: int, release, keep: dict):
    from .. import stobatch as sb

    cfg, model = s.cfg, s.model
    sb_run = sb.prepare(model, len(s.x), options, release=release)
    optimizers = sb.make_optimizers(model, options)
    train_epoch = sb.train_epoch
    if s.world > 1:
        from .. import distributed

        distributed.broadcast_run(model, sb_run)
        train_epoch = functools.partial(distributed.train_epoch, rank=s.rank, world=s.world)
    if s.state:
        model.load_state_dict(s.state["model"])
        for opt, saved in zip(optimizers, s.state["optimizers"]):
            opt.load_state_dict(saved)
        sb_run.steps = s.state["steps"]
    p = sb.privacy_report(sb_run)
    print(f"stobatch (per-example release, randomized-response labels) on {cfg.dataset}: {len(s.x)} examples in "
          f"{len(sb_run.partition)} batches of {options.batch_size}; input noise {release.input_scale:.4g} on "
          f"{p['input_dims']} public directions (clip {p['input_clip']:.3g}), labels kept with probability "
          f"{sb.keep_probability(options.epsilon2, s.n_classes):.3f}; epsilon {p['epsilon']:.4g} at delta "
          f"{p['delta']:g} (replace-one)", flush=True)
    stobatch_epochs(s, optimizers, sb_run, release.x, release.y, epochs, train_epoch,
                    "accuracy on the released labels", lambda: keep)
    return _deploy(s, options, release), {"privacy": p}


def _per_example_dpsgd(s: Setup, options, epochs: int, release, public: torch.Tensor, keep: dict):
    import dataclasses

    from .. import privacy
    from .. import stobatch as sb

    cfg, model, n, m = s.cfg, s.model, len(s.x), options.batch_size
    steps_per_epoch = n // m
    parts = dataclasses.replace(release.parts if release else sb.Parts(n_classes=s.n_classes), dataset_size=n,
                                batch_size=m, steps=epochs * steps_per_epoch)
    parts = sb.accounting.calibrate(parts, "dpsgd_multiplier", delta=options.delta,
                                    target_epsilon=options.epsilon_autoencoder + options.epsilon2)
    report = release.privacy(parts) if release else sb.accounting.report(parts, delta=options.delta)
    images = release.x if release is not None else s.x
    smoothing = 0.0 if release is not None else options.smoothing_std  # released images carry their own noise
    torch.manual_seed(cfg.seed)
    if s.state:
        model.first.requires_grad_(False)
        model.load_state_dict(s.state["model"])
    else:
        ae = sb.above.pretrain_autoencoder(model, release.x if release is not None else public,
                                           epochs=cfg.autoencoder_epochs, lr=options.lr_theta1)
        print(f"theta_1 trained on {'the released' if release is not None else 'the public'} images: "
              f"auto-encoder loss {ae[0]:.4g} -> {ae[-1]:.4g}", flush=True)
    optimizer = sb.make_optimizers(model, options)[0]
    if s.state:
        optimizer.load_state_dict(s.state["optimizer"])
    noise_gen = privacy.noise_generator(s.device)
    print(f"stobatch (per-example, DP-SGD above the DP layer) on {cfg.dataset}: {n} examples, batches of {m} "
          f"drawn without replacement, {parts.steps} steps, noise multiplier {parts.dpsgd_multiplier:.3f} (of 2C, "
          f"C = {options.clip_gradient}); epsilon {report['epsilon']:.4g} at delta {options.delta:g} (replace-one)",
          flush=True)
    for epoch in range(s.start, epochs):
        t = time.perf_counter()
        attack_gen = torch.Generator(device=s.device).manual_seed(cfg.seed * 1000 + epoch)
        stats = [sb.above.dpsgd_step(model, optimizer, images[idx], s.y[idx], options,
                                     multiplier=parts.dpsgd_multiplier, smoothing_std=smoothing,
                                     noise_generator=noise_gen, attack_generator=attack_gen)
                 for idx in (sb.above.draw_batch(n, m, generator=noise_gen) for _ in range(steps_per_epoch))]
        public_accuracy = _accuracy(model, s.parts["public"])  # monitored on public data only
        s.history.append({"epoch": epoch + 1, "public_accuracy": public_accuracy,
                          "adversarial_share": sum(st["adversarial_share"] for st in stats) / len(stats),
                          "seconds": time.perf_counter() - t})
        print(f"epoch {epoch + 1}/{epochs}: accuracy on the public split {public_accuracy:.4f} "
              f"({s.history[-1]['seconds']:.1f} s)", flush=True)
        s.save(epoch + 1, {"optimizer": optimizer.state_dict(), **keep})
    return _deploy(s, options, release), {"privacy": report}


def train_stobatch(s: Setup) -> tuple[dict, dict, int]:
    """StoBatch (Phan et al., ICML 2020, Algorithm 1): the fixed partition of disjoint batches with the
    budget's noise (:func:`dpbook.stobatch.prepare`), one trainer per process; the privacy numbers are
    :func:`dpbook.stobatch.privacy_report`'s. Schedule and attack randomness of epoch e come from seed + e."""
    from .. import stobatch as sb
    from .stobatch_experiment import paper_key, stobatch_options

    cfg, model, dev = s.cfg, s.model, s.device
    options = stobatch_options(cfg, s.world)
    epochs = cfg.epochs or sb.PAPER_EPOCHS[paper_key(cfg.dataset)]
    if options.release == "per_example":
        return train_per_example(s, options, epochs)
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
    stobatch_epochs(s, optimizers, sb_run, s.x, s.y, epochs, train_epoch, "train accuracy (its batch's noise)",
                    lambda: {"sigma_max_seen": sb_run.sigma_max_seen,
                             "noise": {k: getattr(sb_run.noise, k).cpu() for k in ("x", "h", "chi")}})
    s.drop_secrets()
    if s.rank != 0:
        return {}, {}, epochs
    info = {"privacy": sb.privacy_report(sb_run),
            "options": {k: v for k, v in vars(options).items() if not isinstance(v, tuple)}}
    protocols = ("original", "fresh") if cfg.variant == "original" else ("fresh",)
    deployed = {p: sb.deployed(model, sb_run, inference=p, mode=cfg.certify_mode) for p in protocols}
    return deployed, info, epochs


def stobatch_epochs(s: Setup, optimizers, sb_run, x: torch.Tensor, y: torch.Tensor, epochs: int, train_epoch,
                    accuracy_label: str, extra_state) -> None:
    """Epochs ``s.start .. epochs - 1`` of StoBatch steps on ``(x, y)``: schedule and attack randomness of epoch e
    from seed + e (each rank its own attacks), the history, a checkpoint per epoch with ``extra_state()``."""
    cfg = s.cfg
    for epoch in range(s.start, epochs):
        t = time.perf_counter()
        schedule_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        attack_gen = torch.Generator(device=s.device).manual_seed(cfg.seed * 1000 + epoch + 10_000 * (s.rank + 1))
        stats = train_epoch(s.model, optimizers, sb_run, x, y, schedule_generator=schedule_gen,
                            attack_generator=attack_gen)
        s.history.append({"epoch": epoch + 1, **{k: stats[k] for k in ("loss", "ae_loss", "output_loss",
                                                                       "train_accuracy", "adv_accuracy")},
                          "seconds": time.perf_counter() - t})
        print(f"epoch {epoch + 1}/{epochs}: {accuracy_label} {stats['train_accuracy']:.4f}, adversarial "
              f"{stats['adv_accuracy']:.4f} ({s.history[-1]['seconds']:.1f} s)", flush=True)
        s.save(epoch + 1, {"optimizers": [o.state_dict() for o in optimizers], "steps": sb_run.steps,
                           **extra_state()})


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
    if pixeldp:
        from .. import stobatch as sb

        s.radius = sb.inference.radii("laplace", cfg.pixeldp_input_scale, s.x[0].numel())
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
