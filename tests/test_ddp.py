"""trainer=ddp on a CPU: two processes (gloo) of one run, in one folder, with one set of metrics."""

import csv
import json
import math
import os
import socket
import subprocess
import sys

import lightning as L
import pytest
import torch

from hgmldl.data import FashionMNISTDataModule
from hgmldl.module import Classifier
from tests.conftest import ROOT

STEPS_PER_EXECUTION = [1, 3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, idx_dir):
    """One two-process run per steps_per_execution, started together (each process pays seconds of imports), each
    in its own folder and on its own port; {steps_per_execution: (folder, process)}."""
    started = {}
    for steps_per_execution in STEPS_PER_EXECUTION:
        folder = tmp_path_factory.mktemp(f"ddp{steps_per_execution}")
        ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
        data = [
            f"data.idx_dir={idx_dir}",
            f"data.root={folder / 'data'}",
            "data.download=false",
            f"steps_per_execution={steps_per_execution}",
        ]
        options = ["model=dropout_mlp", "callbacks=default", "logger=csv", "trainer.max_epochs=2"]
        weights = [
            "++callbacks.weights._target_=tests.rank_weights.SaveWeights",
            f"++callbacks.weights.folder={folder}",
        ]
        process = subprocess.Popen(
            [sys.executable, "train.py", f"hydra.run.dir={folder / 'run'}", *ddp, *data, *options, *weights],
            cwd=ROOT,
            env=os.environ | {"MASTER_PORT": str(free_port())},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[steps_per_execution] = folder, process
    yield started
    for _, process in started.values():
        process.kill()


@pytest.mark.parametrize("steps_per_execution", STEPS_PER_EXECUTION)
def test_two_process_cpu_ddp_fit_logs_one_set_of_metrics(ddp_runs, idx_dir, steps_per_execution):
    tmp_path, process = ddp_runs[steps_per_execution]
    run_dir = tmp_path / "run"
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    # The gradients were averaged over both processes at every update: both end with the same weights.
    rank0, rank1 = (torch.load(tmp_path / f"weights_rank{rank}.pt") for rank in (0, 1))
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=name)
    # Each epoch line and the result line are printed once, by rank 0.
    printed = stdout + stderr
    assert printed.count("Epoch 1/2 ") == printed.count("Epoch 2/2 ") == printed.count("test_accuracy ") == 1
    # Lightning re-ran train.py for rank 1 with hydra.run.dir=<the same folder>: one folder, one .hydra.
    assert sorted(path.name for path in tmp_path.glob("[!w]*")) == ["data", "run"]
    assert sorted(path.name for path in run_dir.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    assert not (run_dir / ".hydra" / "multirun.yaml").exists() and len(list(run_dir.rglob("config.yaml"))) == 1
    # Rank 0 alone wrote history.csv and the logger's metrics.csv: one row per epoch.
    with open(run_dir / "history.csv") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]
    with open(run_dir / "metrics.csv") as file:
        assert [row["step"] for row in csv.DictReader(file) if row["val_loss"]] == ["0", "1"]  # step: the epoch
    # Each process trained on its own half: 200 of the 400 training images, 7 updates of 32 per epoch.
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * math.ceil(400 / 2 / 32)
    # val_loss and val_accuracy were reduced over both halves of the validation set: one process evaluating the
    # same weights on all of it finds the same numbers.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    datamodule = FashionMNISTDataModule(root=str(tmp_path / "data"), idx_dir=str(idx_dir), download=False)
    [val] = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert metrics["val_loss"] == pytest.approx(val["val_loss"], rel=1e-5)
    assert metrics["val_accuracy"] == pytest.approx(val["val_accuracy"], abs=1e-6)
