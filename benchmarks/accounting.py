"""Time the privacy accountants side by side: RDP vs PLD, for epsilon and for calibrating sigma.

    python benchmarks/accounting.py            # prints a table and ratios, saves benchmarks/results/

Accounting runs on the CPU (dp-accounting is numpy), once per training run or once per logged step, so
what matters is whether PLD's tighter answer is affordable where RDP's is used today.
"""
from __future__ import annotations

from common import best_time, save_results

from dpbook import privacy

CASES = [  # (label, noise multiplier, sample rate, steps): MNIST-sized DP-SGD and GEP's CIFAR-10 run
    ("MNIST DP-SGD, 60 epochs", 1.1, 256 / 60_000, 14_062),
    ("GEP CIFAR-10, 200 epochs", 2.09 / 2**0.5, 0.02, 10_000),
]


def main():
    rows = []
    for label, noise_multiplier, q, steps in CASES:
        kw = dict(noise_multiplier=noise_multiplier, sample_rate=q, steps=steps, delta=1e-5)
        eps_rdp, t_rdp = best_time(lambda: privacy.epsilon(**kw), repeat=3)
        for h in (1e-3, 1e-4):
            eps_pld, t_pld = best_time(lambda: privacy.epsilon(**kw, accountant="pld", pld_discretization=h), repeat=3)
            rows.append(dict(case=label, what=f"epsilon, PLD h={h:g} vs RDP", rdp_seconds=t_rdp,
                             pld_seconds=t_pld, ratio=t_pld / t_rdp, eps_rdp=eps_rdp, eps_pld=eps_pld))
        target = round(eps_rdp, 1)
        s_rdp, t_cal_rdp = best_time(lambda: privacy.calibrate_sigma(target_epsilon=target, delta=1e-5,
                                                                   sample_rate=q, steps=steps), repeat=1)
        s_pld, t_cal_pld = best_time(lambda: privacy.calibrate_sigma(target_epsilon=target, delta=1e-5,
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
    save_results("accounting", rows, cpu_only=True)


if __name__ == "__main__":
    main()
