"""scripts/gpu_check.py: without CUDA one `error:` line and nothing written; its dry run on a CPU writes gpu_check.json
after every part, records a part that fails while the others run, and prints a line per part and per run."""

import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT

GPU_CHECK = [sys.executable, "scripts/gpu_check.py"]


@pytest.fixture
def gpu_check(script):
    """scripts/gpu_check.py imported into this process (its dry run, without a second start-up)."""
    return script("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the script measures it instead")
def test_without_cuda_it_stops_with_one_error_line(tmp_path):
    result = subprocess.run([*GPU_CHECK, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: torch sees no CUDA GPU here: ")
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_dry_run_records_a_failed_part_and_runs_the_next(gpu_check, monkeypatch, tmp_path, idx_dir, capsys):
    def broken(self):
        raise RuntimeError("pytest stopped")

    monkeypatch.setattr(gpu_check.Check, "tests", broken)
    out = tmp_path / "out"
    options = ["--only", "tests", "models", "--models", "softmax"]
    gpu_check.main(["--dry-run", "--idx-dir", str(idx_dir), "--out", str(out), *options])
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and list(report["parts"]) == ["tests", "models"]
    tests, models = report["parts"]["tests"], report["parts"]["models"]
    assert tests["status"] == "error" and tests["error"] == "RuntimeError: pytest stopped"
    # Each model: the CPU reference, then the GPU's stand-ins (the CPU, in bf16 where it computes bf16) at N=1, 50.
    assert models["status"] == "ok" and list(models["cpu"]) == ["softmax"]
    trainers = ["cpu", "cpu_bf16"] if gpu_check.cpu_has_native_bf16() else ["cpu"]
    combinations = [(run["model"], run["trainer"], run["steps_per_execution"]) for run in models["runs"]]
    assert combinations == [("softmax", trainer, n) for trainer in trainers for n in (1, 50)]
    reference = models["cpu"]["softmax"]
    for run in [reference, *models["runs"]]:
        assert run["updates"] == 2  # trainer.limit_train_batches=2: the dry run's epoch
        assert run["updates_per_s"] == pytest.approx(2 / run["epoch_s"], rel=0.05)
    for run in models["runs"]:
        delta = run["val_accuracy"] - reference["val_accuracy"]
        assert run["delta_vs_cpu"] == pytest.approx(delta, abs=1e-4) and run["within"] is (abs(delta) <= 0.01)
    [same] = [run for run in models["runs"] if (run["trainer"], run["steps_per_execution"]) == ("cpu", 50)]
    assert same["delta_vs_cpu"] == 0  # the reference's own config and seed
    # The summary at the end: a line per part (its status and error), a line per run (its one-line values).
    printed = capsys.readouterr().out.strip().splitlines()
    summary = printed[-(2 + len(models["runs"]) + 1) :]
    assert summary[0] == f"tests: status=error seconds={tests['seconds']} error=RuntimeError: pytest stopped"
    assert summary[1] == f"models: status=ok seconds={models['seconds']}"
    assert summary[2].startswith("  model=softmax trainer=cpu steps_per_execution=1 val_accuracy=")
    assert summary[2].endswith(" within=True") and "traceback" not in "".join(summary)
    assert summary[-1] == f"wrote {out / 'gpu_check.json'}: not ok: tests"


def test_a_run_cut_short_keeps_the_parts_before_it(gpu_check, monkeypatch, tmp_path, idx_dir):
    def killed(self):
        raise KeyboardInterrupt  # as a timeout's signal ends the process: nothing catches it

    monkeypatch.setattr(gpu_check.Check, "tests", lambda self: {"checks": {"exit status 0": True}})
    monkeypatch.setattr(gpu_check.Check, "models", killed)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--dry-run", "--idx-dir", str(idx_dir), "--out", str(out), "--only", "tests", "models"])
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert list(parts) == ["tests"] and parts["tests"]["status"] == "ok"


def test_no_part_starts_after_the_budget(gpu_check, monkeypatch, tmp_path, idx_dir):
    def slow(self):
        time.sleep(1.5)
        return {}

    monkeypatch.setattr(gpu_check.Check, "tests", slow)
    out = tmp_path / "out"
    options = ["--budget", "1", "--only", "tests", "models"]
    gpu_check.main(["--dry-run", "--idx-dir", str(idx_dir), "--out", str(out), *options])
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["tests"]["status"] == "ok" and parts["tests"]["seconds"] >= 1.5
    assert parts["models"] == {"status": "skipped", "seconds": 0, "skipped": "over the time budget"}


@pytest.mark.slow  # every part: pytest's collection, train.py processes for DDP and the benchmark
def test_dry_run_of_every_part_as_a_command(tmp_path, idx_dir):
    out = tmp_path / "out"
    options = ["--models", "softmax", "--bench-models", "softmax", "--seeds", "1"]
    command = [*GPU_CHECK, "--dry-run", "--idx-dir", str(idx_dir), "--out", str(out), *options]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith("every part ok")
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(
        ("tests", "models", "cnn", "ddp", "benchmark"), "ok"
    )
    assert "tests collected" in parts["tests"]["last_line"]
    assert parts["cnn"]["seeds"] == [42] and parts["cnn"]["results_md_row"].startswith("| ch8_2_cnn | ")
    assert parts["ddp"]["processes"] == 1 and parts["ddp"]["epochs"] == 2
    [bench] = parts["benchmark"]["runs"]
    assert bench["model"] == "softmax" and bench["hgmldl"]["updates"] == bench["plain"]["updates"] > 0
    assert {"hgmldl_n1", "hgmldl_n500"} <= set(bench) and bench["hgmldl_over_plain"] == bench["ratio"]
    for name in parts:
        assert f"\n{name}: status=ok seconds=" in result.stdout
