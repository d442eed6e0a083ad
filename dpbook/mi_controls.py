"""Mutual information between Shredder's inputs and what is sent, with controls that can catch artefacts.

A kNN estimate of I(image; representation) can fall for reasons that lose no information: a rescale, or an
offset that takes few values (the pool's n_J moves points into far-apart clusters and changes every
neighbourhood, while ``a`` stays recoverable). :func:`mi_controls` therefore estimates the MI of what is sent
next to lossless controls (``a + n_J``, global and per-channel rescales) and, besides the unconditional
estimate, the MI given the pool draw J, which offsets that merely label the draw cannot lower. Used by
``dpbook.experiments.shredder_attacks`` beside the attackers of :mod:`dpbook.leakage`.
"""
from __future__ import annotations

import math

import torch

MI_ESTIMATORS = {  # name: options of dpbook.mi.mutual_information
    "ite_raw": dict(method="ite_dkl", standardize=False),       # the original's protocol
    "ite_block": dict(method="ite_dkl", standardize="block"),   # each block divided by its overall std
    "ite_dim": dict(method="ite_dkl", standardize="dim"),       # every column z-scored
    "ksg_dim": dict(method="ksg", standardize="dim"),           # every column z-scored
}


def mi_controls(images: torch.Tensor, clean: torch.Tensor, sent: dict, draws: torch.Tensor,
                pool_w: torch.Tensor, pool_n: torch.Tensor, *, k: int = 3, seeds: int = 3,
                jitter: float = 1e-6, min_rows: int = 20, device=None) -> dict:
    """kNN estimates of I(image; representation) in nats for what is sent and for controls that expose
    artefacts, unconditionally and given the pool draw J.

    Representations (rows paired with ``images`` ``(N, ...)``; ``draws`` ``(N,)`` is J of each row):

    * ``clean``: ``a`` ``(N, D)``; each entry of ``sent`` (e.g. ``exact``, ``resample_w``): what the cloud gets;
    * ``offset_control``: ``a + n_J``. Lossless: J is read off the offset and ``a = sent - n_J``, so any
      "reduction" an estimator reports for it is an artefact of the estimator, not lost information;
    * ``rescale_global``: ``c a`` with ``c = std(sent) / std(a)`` over the whole block (matched to the global
      scale, which the offsets dominate: block standardisation undoes it by construction);
    * ``rescale_local``: ``g * a`` with ``g_c = sqrt(mean_j w_jc^2)``: each channel scaled like its within-draw
      spread in what is sent (like for like with the noisy block's local geometry), without the offsets.

    Estimators (:data:`MI_ESTIMATORS`): the original's ITE kNN-KL on raw blocks, on block-standardised blocks
    and on z-scored columns, and KSG on z-scored columns; ITE's permutation changes with the seed (mean and sd
    over ``seeds``). ``given_draw`` is I(X; . | J) (:func:`dpbook.mi.conditional_mutual_information`): the
    estimate within each draw, weighted by the draw's frequency, standardised within the draw. J is
    independent of X, so I(X; sent) >= I(X; sent | J) - log M: a measure that conditions on J cannot be lowered
    by offsets that merely label the draw. With columns z-scored within a draw (``ite_dim``, ``ksg_dim``), a
    per-channel gain is undone too (a sign flip leaves distances unchanged), so the exact sampler, the offset
    control and ``rescale_local`` must give the clean value, and only noise that varies within a draw (the
    redrawn w of ``resample_w``) can lower it. Compare conditional estimates with conditional estimates: a
    draw holds about N / M rows.
    """
    from . import mi

    x = images.flatten(1).double()
    a = clean.flatten(1).double()
    j = draws.to(a.device)
    first = next(iter(sent.values())).flatten(1).double()
    gain = pool_w.flatten(1).double().to(a.device).pow(2).mean(0).sqrt()
    reps = {"clean": a, **{name: s.flatten(1).double() for name, s in sent.items()},
            "offset_control": a + pool_n.flatten(1).double().to(a.device)[j],
            "rescale_global": a * float(first.std() / a.std()),
            "rescale_local": a * gain}
    common = dict(k=k, jitter=jitter, device=device)
    out = {"unconditional": {}, "given_draw": {}}
    for name, y in reps.items():
        row, given = {}, {}
        for est, options in MI_ESTIMATORS.items():
            runs = range(seeds) if est.startswith("ite") else range(1)
            values = [mi.mutual_information(x, y, seed=s, **options, **common) for s in runs]
            row[est] = _mean_sd(values)
            if est != "ite_raw":  # standardisation within a draw removes its offset: raw would not be comparable
                values = [mi.conditional_mutual_information(x, y, j, min_rows=min_rows, seed=1000 * s,
                                                            **options, **common).estimate for s in runs]
                given[est] = _mean_sd(values)
        out["unconditional"][name], out["given_draw"][name] = row, given
    counts = torch.bincount(j.cpu(), minlength=len(pool_n))
    out["protocol"] = {"n": len(x), "d_image": x.shape[1], "d_activation": a.shape[1], "k": k, "seeds": seeds,
                       "jitter": jitter, "draws": len(pool_n), "rows_per_draw_min": int(counts.min()),
                       "rows_per_draw_max": int(counts.max()), "log_M": math.log(len(pool_n)), "units": "nats"}
    return out


def _mean_sd(values: list) -> dict:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd}
