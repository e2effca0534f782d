"""scripts/gpu_check.py: without CUDA one `error:` line; its dry run on a CPU writes the JSON and the table, and a
part that fails is recorded while the others run."""

import json
import subprocess
import sys

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
    assert result.stderr.strip().splitlines()[-1].startswith("error: torch sees no CUDA GPU here, and ")
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_dry_run_writes_both_files_and_records_a_failed_part(gpu_check, monkeypatch, tmp_path, idx_dir, capsys):
    def broken(self):
        raise RuntimeError("pytest stopped")

    monkeypatch.setattr(gpu_check.Check, "tests", broken)
    out = tmp_path / "out"
    options = ["--only", "tests", "models", "--models", "softmax"]
    gpu_check.main(["--dry-run", "--idx-dir", str(idx_dir), "--out", str(out), *options])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}: not ok: tests"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and list(report["parts"]) == ["tests", "models"]
    tests, models = report["parts"]["tests"], report["parts"]["models"]
    assert tests["status"] == "error" and tests["error"] == "RuntimeError: pytest stopped"
    # Each model: the CPU reference, then the GPU's stand-ins (the CPU, in bf16 where it computes bf16) at N=1, 50.
    assert models["status"] == "ok" and list(models["cpu"]) == ["softmax"]
    bf16 = "cpu_bf16" if gpu_check.cpu_has_native_bf16() else None
    combinations = [(run["model"], run["trainer"], run["steps_per_execution"]) for run in models["runs"]]
    assert combinations == [(m, t, n) for m in ["softmax"] for t in ("cpu", bf16) for n in (1, 50)]
    for run in models["runs"]:
        if run["trainer"] is None:
            assert run["skipped"] == "this CPU computes no bf16 in hardware (dry run)"
            continue
        assert run["updates"] == 2  # trainer.limit_train_batches=2: the dry run's epoch
        assert run["updates_per_s"] == pytest.approx(2 / run["epoch_s"], rel=0.05) and run["peak_gpu_mib"] is None
        assert run["within"] is (abs(run["val_accuracy"] - models["cpu"][run["model"]]["val_accuracy"]) <= 0.01)
        if run["trainer"] == "cpu" and run["steps_per_execution"] == 50:  # the reference's own config and seed
            assert run["delta_vs_cpu"] == 0
    table = (out / "gpu_check.md").read_text()
    assert "| tests | error | " in table and "RuntimeError: pytest stopped |" in table
    assert "| models | ok | " in table and "| softmax | cpu | 50 | " in table
    assert "## The tests marked `cuda`" not in table  # a part that failed has no section, only its row


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
    assert parts["ddp"]["processes"] == 1 and parts["ddp"]["metrics"]["epochs"] == 2
    [bench] = parts["benchmark"]["results"]
    assert bench["model"] == "softmax" and bench["hgmldl"]["updates"] == bench["plain"]["updates"] > 0
    assert set(bench["over_plain"]) >= {"hgmldl", "hgmldl_n1", "hgmldl_n500"}
    table = (out / "gpu_check.md").read_text()
    for heading in ("## The tests marked", "## Every model", "## ch8_2_cnn", "## DDP", "## scripts/benchmark.py"):
        assert heading in table
