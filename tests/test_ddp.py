"""trainer=ddp: two processes (gloo on a CPU, NCCL on two GPUs) of one run, in one folder, with one set of metrics."""

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

RUNS = [(1, "every_epoch"), (3, "keras")]  # (steps_per_execution, data.shuffle)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, idx_dir, request):
    """One two-process run per (steps_per_execution, shuffle), started together (each process pays seconds of
    imports), each in its own folder and on its own port; {(steps_per_execution, shuffle): (folder, process)}.
    On the device the tests' `cuda` marker names (--accelerator), as the `accelerator` fixture gives it."""
    accelerator = request.config.getoption("accelerator")
    if accelerator == "gpu" and torch.cuda.device_count() < 2:
        pytest.skip("two processes need two GPUs; this machine has one (scripts/gpu_check.py runs DDP on it)")
    started = {}
    for steps_per_execution, shuffle in RUNS:
        folder = tmp_path_factory.mktemp(f"ddp{steps_per_execution}")
        ranks = folder / "ranks"
        ranks.mkdir()
        ddp = ["trainer=ddp", f"trainer.accelerator={accelerator}", "trainer.devices=2"]
        data = [
            f"data.idx_dir={idx_dir}",
            f"data.root={folder / 'data'}",
            "data.download=false",
            f"steps_per_execution={steps_per_execution}",
            f"data.shuffle={shuffle}",
        ]
        options = ["model=dropout_mlp", "callbacks=default", "logger=csv", "trainer.max_epochs=2"]
        weights = ["++callbacks.weights._target_=tests.rank_weights.SaveWeights", f"++callbacks.weights.folder={ranks}"]
        weights += ["++callbacks.order._target_=tests.rank_weights.SaveOrder", f"++callbacks.order.folder={ranks}"]
        process = subprocess.Popen(
            [sys.executable, "train.py", f"hydra.run.dir={folder / 'run'}", *ddp, *data, *options, *weights],
            cwd=ROOT,
            env=os.environ | {"MASTER_PORT": str(free_port())},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[steps_per_execution, shuffle] = folder, process
    yield started
    for _, process in started.values():
        process.kill()


@pytest.mark.cuda  # two GPUs under --accelerator=gpu
@pytest.mark.parametrize(("steps_per_execution", "shuffle"), RUNS)
def test_two_process_ddp_fit_logs_one_set_of_metrics(ddp_runs, idx_dir, accelerator, steps_per_execution, shuffle):
    tmp_path, process = ddp_runs[steps_per_execution, shuffle]
    run_dir, ranks = tmp_path / "run", tmp_path / "ranks"
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    # The gradients were averaged over both processes at every update: both end with the same weights.
    rank0, rank1 = (torch.load(ranks / f"weights_rank{rank}.pt") for rank in (0, 1))
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=name)
    # Each epoch line and the result line are printed once, by rank 0.
    printed = stdout + stderr
    assert printed.count("Epoch 1/2 ") == printed.count("Epoch 2/2 ") == printed.count("test_accuracy ") == 1
    # Lightning re-ran train.py for rank 1 with hydra.run.dir=<the same folder>: one folder, one .hydra.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "ranks", "run"]
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
    # Both halves are rank::2 of one permutation of the 400, drawn with torch's generator from the seed (42) —
    # epoch 0's in every epoch for keras, (seed + epoch)'s for every_epoch — and each step got its half's samples.
    orders = [torch.load(ranks / f"order_rank{rank}.pt") for rank in (0, 1)]
    for epoch in (0, 1):
        seed = 42 if shuffle == "keras" else 42 + epoch
        permutation = torch.randperm(400, generator=torch.Generator().manual_seed(seed))
        for rank, order in enumerate(orders):
            assert torch.equal(order["indices"][epoch], permutation[rank::2])
            assert torch.equal(order["labels"][epoch], order["train_labels"][permutation[rank::2]])
    # val_loss and val_accuracy were reduced over both halves of the validation set: one process evaluating the
    # same weights on all of it finds the same numbers.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    datamodule = FashionMNISTDataModule(root=str(tmp_path / "data"), idx_dir=str(idx_dir), download=False)
    [val] = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert metrics["val_loss"] == pytest.approx(val["val_loss"], rel=1e-5)
    assert metrics["val_accuracy"] == pytest.approx(val["val_accuracy"], abs=1e-6)
