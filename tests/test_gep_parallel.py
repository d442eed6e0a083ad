"""Data-parallel GEP and DP-SGD: two gloo processes reach the parameters of one process with the same seeds."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpbook.gep import parallel

ROOT = Path(__file__).resolve().parents[1]


def launch(out, *extra):
    """torchrun with 2 CPU processes (gloo) of ``python -m dpbook.gep``; their saved states."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpbook.gep", "selftest", "--out", str(out), *extra]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("mode,batch_size", [("gep", 16), ("dpsgd", 16), ("biased", 16), ("gep", 1)])
def test_two_gloo_processes_match_one_process(tmp_path, mode, batch_size):
    """Every rank's DP generator has a seed of its own: the processes can only agree with the one process if
    rank 0's batches and noise reach them. Batch size 1 makes shares (and batches) empty."""
    ranks = launch(tmp_path, "--mode", mode, "--steps", "3", "--seed", "0", "--batch-size", str(batch_size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, x, y, public_x = parallel.selftest_problem(0)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        engine = parallel.selftest_engine(model, public_x, len(x), mode=mode, seed=0, distributed=False,
                                          batch_size=batch_size)
        batches = parallel.run_steps(model, engine, x, y, 3, batch_size)
    finally:
        torch.set_num_threads(threads)
    for r in ranks:  # both processes stepped through the one process's batches, with its accounting
        assert all(torch.equal(a, b) for a, b in zip(r["batches"], batches))
        assert r["epsilon"] == pytest.approx(engine.epsilon(), rel=1e-12)
    for a, b in zip(ranks[0]["bases"], ranks[1]["bases"]):
        assert torch.equal(a, b)  # the same anchor subspace in every process
    for a, b in zip(ranks[0]["bases"], engine.bases):
        torch.testing.assert_close(a @ a.T, b @ b.T, rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():
        assert not torch.equal(p, start[name])  # training moved the weights
        assert torch.equal(ranks[0]["parameters"][name], ranks[1]["parameters"][name])
        torch.testing.assert_close(ranks[0]["parameters"][name], p.detach(), rtol=1e-5, atol=1e-6)
    if batch_size == 1:
        assert any(len(b) < 2 for b in batches)  # some process had an empty share


def test_distributed_engine_outside_torchrun_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    model, x, y, public_x = parallel.selftest_problem(0)
    with pytest.raises(RuntimeError, match="torchrun"):
        parallel.selftest_engine(model, public_x, len(x), mode="gep", seed=0, distributed=True)


def test_gep_experiment_under_torchrun_writes_one_result(tmp_path):
    """``torchrun --nproc_per_node 2 -m dpbook run gep``: two data-parallel processes, rank 0 writes the result,
    the budget is the single process's."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "DPBOOK_PROFILE": "smoke",
           "DPBOOK_RESULTS": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpbook", "run", "gep", "--epochs", "2"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = (tmp_path / "gep").glob("*.json")
    metrics = json.loads(path.read_text())["metrics"]
    assert metrics["epsilon"] == pytest.approx(8.0, rel=1e-3)
    assert metrics["test_accuracy"] > 0.3  # digits: 10 classes, it learnt in two epochs


def test_scaling_benchmark_reports_throughput(tmp_path):
    """The path benchmarks/gep_scaling.py times: torchrun with 1 and 2 processes of ``-m dpbook.gep throughput``."""
    import json

    env = {**os.environ, "DPBOOK_BENCH_RESULTS": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gep_scaling.py"), "--modes", "gep", "--steps", "2",
           "--examples", "200", "--batch-size", "16", "--public", "8", "--bases", "8", "--size", "12"]
    done = subprocess.run(cmd, env=env, cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("gep_scaling-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["examples_per_second"] > 0 and r["steps"] == 2 for r in rows)
    assert rows[0]["speedup_over_first"] == 1.0
