"""Empirical lower bounds on epsilon: the statistics of privacy auditing.

An audit inserts *canaries* into training, each with probability 1/2 (independently), computes a score per
canary from the trained model (higher: "looks included"), and turns the guesses into a statement that holds
for *every* (epsilon, delta)-DP algorithm: if the guesses are too good, the claimed epsilon is false.

* **One run** (Steinke, Nasr and Jagielski, NeurIPS 2023): m canaries in a single training run; the auditor
  guesses "in" for the k+ highest scores and "out" for the k- lowest, abstaining on the rest. For an
  (epsilon, delta)-DP algorithm the number V of correct guesses among r = k+ + k- satisfies

      P[V >= v] <= P[Bin(r, q) >= v] + 2 m delta max_{i = 1..v} P[v - i <= Bin(r, q) < v] / i,
      q = e^eps / (1 + e^eps)                                  (:func:`one_run_p_value`)

  and the lower bound at confidence 1 - beta is the largest epsilon whose p-value is below beta
  (:func:`one_run_epsilon`).
* **Many runs** (Jagielski, Ullman and Oprea, NeurIPS 2020): a membership test on the outputs of many
  independent runs, with and without one canary. Any test has FNR + e^eps FPR >= 1 - delta (and the same with
  the roles swapped), so with Clopper-Pearson upper bounds on the two error rates

      eps >= max( ln((1 - delta - FNR_ub) / FPR_ub), ln((1 - delta - FPR_ub) / FNR_ub) )
                                                                (:func:`many_run_epsilon`).

Both bounds are *lower* bounds: a sound configuration never has one above its claim (beyond the stated
failure probability), and a bound far below the claim says the audit is too weak to tell, not that the claim
is tight.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, stats

from . import checks, privacy
from .robustness import clopper_pearson


def one_run_p_value(m: int, r: int, v: int, *, epsilon: float, delta: float = 0.0) -> float:
    """Probability, under (``epsilon``, ``delta``)-DP, of at least ``v`` correct guesses out of ``r`` on ``m``
    canaries (the bound of the module docstring; Steinke et al. 2023, Theorem 3.1 and its delta > 0 form)."""
    where = "one_run_p_value()"
    checks.check(0 <= v <= r <= m, "(m, r, v)", where, "counts with 0 <= correct guesses v <= guesses r <= canaries m",
                 (m, r, v))
    checks.check(epsilon >= 0, "epsilon", where, ">= 0", epsilon)
    checks.check(0 <= delta <= 1, "delta", where, "in [0, 1]", delta)
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))                      # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)        # P[Bin = v-1], P[Bin = v-2], ..., P[Bin = 0]
    spread = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i P[v - i <= Bin < v] / i
    return min(tail + 2 * m * delta * spread, 1.0)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float = 0.0, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at level 1 - ``confidence`` by :func:`one_run_p_value`: with probability at
    least ``confidence`` the algorithm is not (eps, delta)-DP for any smaller eps. 0 when nothing is rejected."""
    beta = 1.0 - confidence
    checks.check(0 < beta < 1, "confidence", "one_run_epsilon()", "in (0, 1)", confidence)
    p = lambda eps: one_run_p_value(m, r, v, epsilon=eps, delta=delta) - beta  # noqa: E731 (increasing in eps)
    if p(0.0) >= 0:
        return 0.0
    hi = 1.0
    while p(hi) < 0:
        if hi > 1e3:
            return math.inf  # every guess right and delta = 0: no finite epsilon explains it
        hi *= 2
    return float(optimize.brentq(p, 0.0, hi, xtol=1e-10))


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses: ``r`` made, ``v`` correct, from ``k_plus`` "in" and ``k_minus`` "out"."""

    m: int
    r: int
    v: int
    k_plus: int
    k_minus: int


def guess(scores: np.ndarray, included: np.ndarray, *, k_plus: int, k_minus: int) -> Guesses:
    """Guess "in" for the ``k_plus`` highest scores and "out" for the ``k_minus`` lowest (ties broken by
    position); count the correct guesses against ``included`` (bool per canary)."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    checks.check(scores.ndim == 1, "scores", "guess()", "1-D, one score per canary", scores.shape)
    checks.check(included.shape == scores.shape, "included", "guess()", f"of the shape of scores, {scores.shape}",
                 included.shape)
    m = len(scores)
    checks.check(k_plus >= 0, "k_plus", "guess()", ">= 0", k_plus)
    checks.check(k_minus >= 0, "k_minus", "guess()", ">= 0", k_minus)
    checks.check(k_plus + k_minus <= m, "k_plus + k_minus", "guess()", f"<= the number of canaries m = {m}",
                 k_plus + k_minus)
    order = np.argsort(-scores, kind="stable")
    v = int(included[order[:k_plus]].sum() + (~included[order[m - k_minus:]]).sum())
    return Guesses(m=m, r=k_plus + k_minus, v=v, k_plus=k_plus, k_minus=k_minus)


def best_one_run_epsilon(scores: np.ndarray, included: np.ndarray, *, delta: float = 0.0,
                         confidence: float = 0.95, ks: tuple[int, ...] | None = None) -> tuple[float, Guesses]:
    """The one-run bound over several guess counts k (k+ = k- = k each), Bonferroni-corrected over the
    ``ks`` tried so that the maximum still holds at ``confidence``. Returns (epsilon lower bound, guesses)."""
    m = len(scores)
    ks = ks or tuple(k for k in (m // 50, m // 20, m // 10, m // 5, m // 2) if k >= 1)
    level = 1.0 - (1.0 - confidence) / len(ks)
    results = []
    for k in ks:
        g = guess(scores, included, k_plus=k, k_minus=k)
        results.append((one_run_epsilon(g.m, g.r, g.v, delta=delta, confidence=level), g))
    return max(results, key=lambda t: t[0])


def many_run_epsilon(false_positives: int, negatives: int, false_negatives: int, positives: int, *,
                     delta: float = 0.0, confidence: float = 0.95) -> float:
    """Lower bound on epsilon from a membership test's errors over independent runs (Jagielski et al. 2020):
    ``false_positives`` of ``negatives`` runs without the canary, ``false_negatives`` of ``positives`` with it.
    Clopper-Pearson upper bounds on both rates, each at (1 - confidence) / 2."""
    alpha = (1.0 - confidence) / 2
    _, fpr = clopper_pearson(false_positives, negatives, alpha)
    _, fnr = clopper_pearson(false_negatives, positives, alpha)
    fpr, fnr = float(fpr), float(fnr)
    bounds = [math.log((1 - delta - a) / b) for a, b in ((fnr, fpr), (fpr, fnr)) if b > 0 and 1 - delta - a > 0]
    return max([0.0, *bounds])


# ---------------------------------------------------------------------------------------------------
# Canaries through the training code paths
# ---------------------------------------------------------------------------------------------------
def _included(m: int, generator: torch.Generator) -> torch.Tensor:
    """Each of ``m`` canaries in with probability 1/2 (the auditor's coin: an ordinary seeded generator)."""
    return torch.rand(m, generator=generator) < 0.5


def gradient_canaries(*, mode: str, n_canaries: int, steps: int, sample_rate: float, noise_multiplier: float,
                      clip_embedding: float = 5.0, clip_residual: float = 2.0, seed: int = 0,
                      generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """White-box gradient canaries through :func:`dpbook.gep.privatize` over a whole run of ``steps`` steps.

    Canary j is a per-example gradient on coordinates of its own, so the canaries never interact: DP-SGD
    (``mode="dpsgd"``): C e_j; GEP: S_0 e_{2j} + S_1 e_{2j+1} with the anchor subspace spanned by the e_{2j},
    so its embedding and its residual are both at their clipping norms (the worst case of the joint
    mechanism). At every step each included canary joins the Poisson batch with probability q, and the
    batch's rows go through ``privatize`` with the DP noise generator. The auditor sees every released step
    (white box) and scores canary j by the log likelihood ratio of "in" against "out" for the subsampled
    Gaussian, summed over steps:

        score_j = sum_t log(1 - q + q exp(sum_parts mu x_t - mu^2 / 2)),  x_t = released part / (sigma S),
        mu = 1 / sigma per part (its Neyman-Pearson statistic).

    Returns (scores ``(m,)``, included ``(m,)`` bool).
    """
    from . import gep

    checks.one_of(mode, ("dpsgd", "gep"), "mode", "gradient_canaries()")
    checks.sample_rate(sample_rate, "gradient_canaries()")
    m, q, sigma = n_canaries, sample_rate, noise_multiplier
    coin = torch.Generator().manual_seed(seed)
    included = _included(m, coin)
    j = torch.arange(m)
    if mode == "dpsgd":  # canary j: C e_j
        p, entries, bases, groups = m, [(j, clip_residual)], [], []
        parts = [("residual", j, clip_residual)]
    else:                # canary j: S_0 e_{2j} + S_1 e_{2j+1}, the subspace spanned by the e_{2j}
        p, entries = 2 * m, [(2 * j, clip_embedding), (2 * j + 1, clip_residual)]
        basis = torch.zeros(p, m)
        basis[2 * j, j] = 1.0
        bases, groups = [basis], [slice(0, p)]
        parts = [("embedding", j, clip_embedding), ("residual", 2 * j + 1, clip_residual)]

    def canary_rows(ids: torch.Tensor) -> torch.Tensor:
        """The per-example gradients of the sampled canaries ``ids``, ``(len(ids), p)``."""
        rows = torch.zeros(len(ids), p)
        for coordinate, value in entries:  # one or two entries per canary
            rows[torch.arange(len(ids)), coordinate[ids]] = value
        return rows

    gen = generator if generator is not None else privacy.noise_generator()
    log_q, log_1q, mu = math.log(q), (math.log1p(-q) if q < 1 else -math.inf), 1.0 / sigma
    scores = torch.zeros(m, dtype=torch.float64)
    for _ in range(steps):
        batch = included & (torch.rand(m, generator=coin) < q)   # Poisson sampling of the included canaries
        out = gep.privatize(canary_rows(batch.nonzero()[:, 0]), bases, groups, mode=mode,
                            clip_embedding=clip_embedding, clip_residual=clip_residual, noise_multiplier=sigma,
                            expected_batch_size=1.0, generator=gen)
        exponent = sum(mu * getattr(out, name)[idx] / (sigma * clip) - mu ** 2 / 2 for name, idx, clip in parts)
        scores += torch.logaddexp(torch.full_like(exponent, log_1q), log_q + exponent).double()
    return scores.numpy(), included.numpy()


def split_threshold_epsilon(scores: np.ndarray, included: np.ndarray, *, delta: float = 0.0,
                            confidence: float = 0.95, n_thresholds: int = 200, two_sided: bool = False) -> dict:
    """The many-run bound with a threshold test on independent canary trials: the threshold is chosen on the
    first half (best empirical bound over ``n_thresholds`` quantiles), the bound is computed on the second
    half with :func:`many_run_epsilon`, so the choice does not bias it. ``two_sided``: the direction of the
    test (canary scores high or low) is chosen on the first half too."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    half = len(scores) // 2
    sign = 1.0
    if two_sided and included[:half].any() and (~included[:half]).any():
        sign = 1.0 if scores[:half][included[:half]].mean() >= scores[:half][~included[:half]].mean() else -1.0
    scores = sign * scores

    def errors(s, inc, t):
        return int((s[~inc] >= t).sum()), int((~inc).sum()), int((s[inc] < t).sum()), int(inc.sum())

    s1, i1 = scores[:half], included[:half]
    candidates = np.quantile(s1, np.linspace(0.5, 1.0, n_thresholds, endpoint=False))
    best = max(candidates, key=lambda t: many_run_epsilon(*errors(s1, i1, t), delta=delta, confidence=0.5))
    fp, neg, fn, pos = errors(scores[half:], included[half:], best)
    return {"epsilon_lower": many_run_epsilon(fp, neg, fn, pos, delta=delta, confidence=confidence),
            "threshold": float(best), "false_positives": fp, "negatives": neg, "false_negatives": fn,
            "positives": pos, "confidence": confidence, "direction": sign}


def stobatch_output_canaries(model, options, *, n_trials: int, seed: int = 0) -> dict:
    """Canaries in StoBatch's output layer: the functional mechanism through the code path.

    Each trial is one training run's first release of the output layer: the gradient in W of
    :func:`dpbook.stobatch.output_loss` on a batch of m examples, with the noise chi that
    :func:`dpbook.stobatch.prepare` draws for the run under ``options`` (per batch from the OS, or the
    original's one draw from the public seed). With probability 1/2 the canary (h = a fixed sign pattern in
    {-1, 1}^|h|, label 0) replaces the batch's first example. ``output_loss`` is the batch's Taylor loss plus the
    noise term ``fm_term(W, chi)``, so the released gradient is A(batch) + d fm_term / dW, with A computed once
    per batch by autograd.

    The auditor knows everything public. If ``options.noise_seed`` is set, it reruns ``prepare`` with that
    seed, recovers chi exactly and scores the distance of the release from the "out" gradient; otherwise it
    scores the Laplace log likelihood ratio sum(|g - A_out| - |g - A_in|) / b.
    Returns ``{"scores", "included", "knows_noise", "claimed_epsilon2"}``.
    """
    import torch.nn.functional as F

    from . import stobatch as sb

    coin = torch.Generator().manual_seed(seed)
    included = _included(n_trials, coin)
    m, hidden, k = options.batch_size, model.hidden, model.n_classes
    h = torch.rand(m, hidden, generator=coin) * 2 - 1
    y = F.one_hot(torch.randint(0, k, (m,), generator=coin), k).float()
    h_in, y_in = h.clone(), y.clone()
    h_in[0] = torch.where(torch.rand(hidden, generator=coin) < 0.5, -1.0, 1.0)
    y_in[0] = F.one_hot(torch.tensor(0), k).float()
    w0 = model.head.weight.detach().cpu().clone()

    def data_gradient(hh, yy):  # d/dW of the Taylor loss of the batch, without the noise term
        w = w0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sb.output_loss(hh @ w.T, yy, w, torch.zeros(hidden, k), fm_noise_form="linear",
                                                  taylor_on=options.taylor_on), w)
        return g

    def noise_gradient(chi):  # d/dW of the functional mechanism's term fm_term(W, chi)
        w = w0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sb.fm_term(w, chi, form=options.fm_noise_form), w)
        return g

    a_out, a_in = data_gradient(h, y), data_gradient(h_in, y_in)

    def run_noise():  # the chi of the run's first batch, exactly as training draws it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", privacy.UnsafeSeedWarning)
            run = sb.prepare(model, 2 * m, options)
        return run.noise[0].chi.detach().cpu(), run.budget

    knows = options.noise_seed is not None
    scores = torch.empty(n_trials, dtype=torch.float64)
    for t in range(n_trials):
        chi, budget = run_noise()
        g = (a_in if included[t] else a_out) + noise_gradient(chi)  # the released gradient of output_loss
        if knows:
            chi_known, _ = run_noise()  # the auditor reruns prepare with the public seed
            scores[t] = float((g - a_out - noise_gradient(chi_known)).abs().sum())
        else:
            scores[t] = float(((g - a_out).abs() - (g - a_in).abs()).sum() / budget.output_scale)
    return {"scores": scores.numpy(), "included": included.numpy(), "knows_noise": knows,
            "claimed_epsilon2": options.epsilon2}
