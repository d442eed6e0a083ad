"""Two StoBatch trainers as two gloo processes reach the parameters of the one-process simulation."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpbook import distributed, stobatch

ROOT = Path(__file__).resolve().parents[1]


def launch(out, *extra):
    """torchrun with 2 CPU processes (gloo) of ``python -m dpbook.distributed selftest``; their saved states."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpbook.distributed", "selftest", "--out", str(out), "--seed", "0", *extra]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_two_gloo_processes_match_the_single_process_simulation(tmp_path):
    ranks = [r["parameters"] for r in launch(tmp_path, "--steps", "2")]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same reduction order, so the same rounding
    try:
        model, optimizers, run, x, y = distributed.selftest_problem(0, trainers=2)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        schedule_gen, attack_gens = distributed.selftest_generators(0, 2)
        benign, adversarial = stobatch.epoch_schedule(len(run.partition), trainers=2, generator=schedule_gen)
        model.train()
        for step in range(2):
            stobatch.train_step(model, optimizers, run, x, y, benign[step], adversarial[step],
                                attack_generators=attack_gens)
    finally:
        torch.set_num_threads(threads)
    for name, p in model.named_parameters():
        assert not torch.equal(p, start[name]) or not p.requires_grad  # training moved the weights
        for r in range(2):
            torch.testing.assert_close(ranks[r][name], p.detach(), rtol=1e-5, atol=1e-6)


def test_rank_zeros_noise_reaches_every_rank(tmp_path):
    """With OS-seeded noise every rank draws its own table; after the broadcast all use rank 0's, so each
    batch still has exactly one noise draw, and the ranks stay in step."""
    a, b = launch(tmp_path, "--steps", "1", "--os-noise")
    for na, nb in zip(a["noise"], b["noise"]):
        assert torch.equal(na, nb)
    for name in a["parameters"]:
        assert torch.equal(a["parameters"][name], b["parameters"][name])


def test_throughput_command_reports_examples_per_second():
    """The path benchmarks/stobatch_scaling.py times: 2 processes, OS-seeded noise broadcast from rank 0."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpbook.distributed", "throughput", "--dataset", "digits", "--batch-size", "100", "--steps", "2",
           "--attack-steps", "1"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("THROUGHPUT ")]
    assert len(lines) == 1  # rank 0 only
    result = json.loads(lines[0][len("THROUGHPUT "):])
    assert result["processes"] == 2 and result["steps"] == 2 and result["examples_per_second"] > 0
    assert result["examples_per_second"] * result["seconds"] == pytest.approx(2 * 2 * 100 * 2)
