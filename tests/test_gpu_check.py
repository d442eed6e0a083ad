"""The one-command GPU check (``benchmarks/gpu_check.py``): its reduced mode end to end on the CPU, its clock,
and the machine names of the benchmarks' results files.

The reduced run is the command a reader types (``python benchmarks/gpu_check.py --reduced``), in a process of
its own with the GPU hidden, writing into a temporary folder: every benchmark and every paper experiment must
run, with positive timings, and the results file must describe the device.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import gpu_check  # noqa: E402


def test_reduced_check_runs_every_part_on_the_cpu_and_records_positive_timings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DPBOOK_BENCH_RESULTS", "DPBOOK_DATA", "DPBOOK_RESULTS")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--reduced", "--cpu", "--results", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    (path,) = tmp_path.glob("gpu_check-*.json")
    check = json.loads(path.read_text())
    assert path.name == f"gpu_check-cpu-{os.cpu_count()}cores.json"
    assert check["mode"] == "reduced" and check["finished"] and check["missing_modules"] == {}
    assert check["device"]["type"] == "cpu" and check["environment"]["device"].startswith("cpu")
    assert "random pixels" in check["data"]
    assert list(check["parts"]) == [p.name for p in gpu_check.PARTS]
    for name, part in check["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
        assert part["seconds"] > 0 and part["deadline_seconds"] > 0, name
        if part["kind"] == "benchmark":  # each benchmark's own file, with the same rows
            rows = json.loads((tmp_path / part["results_file"]).read_text())["rows"]
            assert rows == part["rows"] and any(r.get("seconds", 0) > 0 for r in rows), name
        else:
            assert part["steps"] >= 2 and part["seconds_per_step"] > 0 and part["first_call_seconds"] > 0, name
            assert part["seconds_in_steps"] <= part["seconds"], name
    assert check["parts"]["gep-cifar10"]["run"]["model"] == "resnet20-gn"
    assert check["parts"]["stobatch-tinyimagenet"]["timed"] == "dpbook.stobatch.step.train_step"
    assert f"saved {path}" in done.stdout
    assert not list(tmp_path.glob("*/*.json"))  # the experiments' own results went to a temporary folder


def test_parts_run_against_the_clock_and_every_outcome_is_recorded(tmp_path):
    """A part past its deadline is stopped and recorded as ``overran`` with the steps it timed; a failing part is
    ``error`` and the next one runs; a part whose modules are missing is ``skipped`` with the pip package; the
    file on disk holds each part as soon as it ends, and keeps the parts of an earlier check that did not rerun."""
    worker = SimpleNamespace(step=lambda: time.sleep(0.02))
    on_disk = []

    def forever(ctx):
        with gpu_check.StepTimer(worker, "step") as ctx.timer:
            while True:
                worker.step()

    def broken(ctx):
        raise RuntimeError("no such kernel")

    def later(ctx):
        on_disk.append(json.loads((tmp_path / "check.json").read_text())["parts"])
        return {"value": 1}

    parts = [gpu_check.Part("first", "benchmark", 1, lambda ctx: {"value": 0}),
             gpu_check.Part("slow", "experiment", 2, forever),
             gpu_check.Part("broken", "benchmark", 1, broken),
             gpu_check.Part("needs", "benchmark", 1, lambda ctx: {}, needs=("backpack",)),
             gpu_check.Part("later", "benchmark", 1, later)]
    ctx = gpu_check.Context(reduced=True, data=tmp_path, runs=tmp_path, missing={"backpack": ["needs"]})
    check = gpu_check.Check(tmp_path / "check.json", {"mode": "test"}, parts={"earlier": {"status": "ok"}})

    result = gpu_check.run_all(parts, ctx, check, budget=3.0, log=lambda text: None)

    status = {name: p["status"] for name, p in result["parts"].items()}
    assert status == {"earlier": "ok", "first": "ok", "slow": "overran", "broken": "error", "needs": "skipped",
                      "later": "ok"}
    slow = result["parts"]["slow"]
    assert 0.5 < slow["seconds"] < 2.5 and slow["deadline_seconds"] < 2.5 and slow["steps"] >= 10
    assert slow["seconds_per_step"] == pytest.approx(0.02, abs=0.02)
    assert worker.step.__name__ == "<lambda>"  # the timer took its wrapper away
    assert "no such kernel" in result["parts"]["broken"]["error"]
    assert "pip install backpack-for-pytorch" in result["parts"]["needs"]["reason"]
    assert set(on_disk[0]) == {"earlier", "first", "slow", "broken", "needs"}  # saved before the last part began
    assert json.loads((tmp_path / "check.json").read_text()) == json.loads(json.dumps(result, default=str))


@pytest.mark.parametrize("part", [p for p in gpu_check.PARTS if p.kind == "experiment"], ids=lambda p: p.name)
def test_every_experiment_part_sets_settings_the_paper_profile_has(part):
    """The full sizes run only on a GPU box; a renamed setting must fail here, not there."""
    from dpbook import config

    for sizes in (part.run.full, part.run.reduced):
        settings = config.settings(part.run.experiment, profile_name="paper", **(sizes() if callable(sizes) else sizes))
        assert settings.overridden


def test_results_files_are_named_after_the_gpu_and_can_be_redirected(monkeypatch, tmp_path):
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common.torch.cuda, "get_device_name", lambda index=0: "NVIDIA GeForce RTX 4090")
    assert common.machine() == "nvidia-geforce-rtx-4090"
    assert common.machine(cpu_only=True) == f"cpu-{os.cpu_count()}cores"
    monkeypatch.setattr(common, "environment", lambda: {"device": "test"})
    monkeypatch.setenv("DPBOOK_BENCH_RESULTS", str(tmp_path / "out"))
    path = common.save_results("example", [{"seconds": 1.0}])
    assert path == tmp_path / "out" / "example-nvidia-geforce-rtx-4090.json"
    assert json.loads(path.read_text())["rows"] == [{"seconds": 1.0}]
