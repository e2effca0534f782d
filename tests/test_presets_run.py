"""Every preset runs end to end, as the experiment group's docstring promises: one `python train.py -m
experiment='glob(*)'` on the generated data, shrunk to one short epoch per preset."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # a minute or two: fifteen short trainings in one process
def test_every_preset_trains_and_evaluates_in_one_glob_sweep(tmp_path, idx_dir):
    presets = sorted(path.stem for path in (ROOT / "experiments").glob("*.yaml"))
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=glob(*)",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"data.root={tmp_path / 'data'}",
            f"data.idx_dir={idx_dir}",  # the generated images stand in for MNIST as well
            "data.download=false",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ran = {}  # each job's folder is named by its overrides, the preset among them
    for path in (tmp_path / "sweep").glob("*/metrics.json"):
        [preset] = [part.split("=")[1] for part in path.parent.name.split(",") if part.startswith("experiment=")]
        ran[preset] = json.loads(path.read_text())
    assert sorted(ran) == presets
    for name, metrics in ran.items():
        # DLP's preset trains without validation (val_fraction 0) and reports the test set; 7-1's baseline has no test
        assert 0 <= metrics.get("val_accuracy", metrics.get("test_accuracy")) <= 1, name
