"""Time the privacy accountants side by side: RDP vs PLD, for epsilon and for calibrating sigma.

    python benchmarks/accounting.py            # prints a table and ratios, saves benchmarks/results/

Accounting runs on the CPU (dp-accounting is numpy), once per training run or once per logged step, so
what matters is whether PLD's tighter answer is affordable where RDP's is used today.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dpbook import privacy
from dpbook.runs import environment

CASES = [  # (label, noise multiplier, sample rate, steps): MNIST-sized DP-SGD and GEP's CIFAR-10 run
    ("MNIST DP-SGD, 60 epochs", 1.1, 256 / 60_000, 14_062),
    ("GEP CIFAR-10, 200 epochs", 2.09 / 2**0.5, 0.02, 10_000),
]


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, min(times)


def main():
    rows = []
    for label, sigma, q, steps in CASES:
        kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
        eps_rdp, t_rdp = best_of(lambda: privacy.epsilon(**kw))
        for h in (1e-3, 1e-4):
            eps_pld, t_pld = best_of(lambda: privacy.epsilon(**kw, accountant="pld", pld_discretization=h))
            rows.append(dict(case=label, what=f"epsilon, PLD h={h:g} vs RDP", rdp_seconds=t_rdp,
                             pld_seconds=t_pld, ratio=t_pld / t_rdp, eps_rdp=eps_rdp, eps_pld=eps_pld))
        target = round(eps_rdp, 1)
        s_rdp, t_cal_rdp = best_of(lambda: privacy.calibrate_sigma(target_epsilon=target, delta=1e-5,
                                                                   sample_rate=q, steps=steps), repeat=1)
        s_pld, t_cal_pld = best_of(lambda: privacy.calibrate_sigma(target_epsilon=target, delta=1e-5,
                                                                   sample_rate=q, steps=steps, accountant="pld",
                                                                   pld_discretization=1e-3), repeat=1)
        rows.append(dict(case=label, what=f"calibrate sigma to eps={target}, PLD h=1e-3 vs RDP",
                         rdp_seconds=t_cal_rdp, pld_seconds=t_cal_pld, ratio=t_cal_pld / t_cal_rdp,
                         sigma_rdp=s_rdp, sigma_pld=s_pld))
    print(f"{'case':<26} {'what':<44} {'RDP s':>8} {'PLD s':>8} {'PLD/RDP':>8}")
    for r in rows:
        extra = (f"eps {r['eps_rdp']:.3f} vs {r['eps_pld']:.3f}" if "eps_rdp" in r
                 else f"sigma {r['sigma_rdp']:.3f} vs {r['sigma_pld']:.3f}")
        print(f"{r['case']:<26} {r['what']:<44} {r['rdp_seconds']:8.3f} {r['pld_seconds']:8.3f} "
              f"{r['ratio']:8.1f}   {extra}")
    out = Path(__file__).parent / "results" / f"accounting-cpu-{os.cpu_count()}cores.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
