"""Fault injection against the real entry points: every failure ends in exit code 1, one `error:` line on stderr and
no traceback, and no file a run leaves behind is corrupt, even when the run is killed at a random moment.

Each subprocess pays ~5 s of imports, so the error cases start together and are checked one by one.
"""

import csv
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from hgmldl.api import compose_config
from hgmldl.commands.train import build_trainer, run
from hgmldl.errors import UserError
from hgmldl.files import AtomicCheckpointIO, write_text_atomic
from hgmldl.module import Classifier
from tests.conftest import ROOT, make_idx_dataset, write_idx

pytestmark = pytest.mark.faults

NON_FINITE = "<nan or inf>"  # which one comes first depends on the CPU's rounding
ENV = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}


class RaiseLearningRate(L.Callback):
    """Sets the learning rate to `lr` from epoch `epoch` on: a run that diverges after some good epochs."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = self.lr


def start(script, *overrides):
    return subprocess.Popen(
        [sys.executable, script, *overrides],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_outputs_intact(run_dir):
    """Every checkpoint loads with weights_only=True, history.csv and metrics.json parse, no temp file is left.
    Returns the number of checkpoints checked."""
    checkpoints = list(run_dir.rglob("*.ckpt"))
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()), path
    if (run_dir / "history.csv").exists():
        with open(run_dir / "history.csv") as file:
            rows = list(csv.reader(file))
        assert rows[0] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time"]  # Keras' History keys
        assert [row[0] for row in rows[1:]] == [str(epoch) for epoch in range(len(rows) - 1)]
        assert all(len(row) == len(rows[0]) and [float(value) for value in row] for row in rows[1:])
    if (run_dir / "metrics.json").exists():
        json.loads((run_dir / "metrics.json").read_text())
    return len(checkpoints)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, idx_dir):
    """Starts every error case at once; {case: (process, run dir, expected last line of stderr)}."""
    tmp = tmp_path_factory.mktemp("faults")
    broken = make_idx_dataset(tmp / "broken", num_train=30, num_test=10)
    write_idx(broken / "t10k-labels-idx1-ubyte.gz", torch.full((10,), 10).numpy(), 2049)
    (tmp / "notes.ckpt").write_text("not a checkpoint\n")
    (tmp / "file").write_text("")

    missing = f"error: checkpoint {tmp}/missing.ckpt does not exist"
    not_a_checkpoint = f"error: {tmp}/notes.ckpt is not a checkpoint (not a file torch.save wrote)"
    diverged = (
        "the learning rate is probably too high, lower optimizer.lr (now 1000); history.csv and the checkpoints "
        "keep the epochs before"
    )
    # case: (script, overrides, the last line of stderr)
    cases = {
        "out of range": ("train.py", {"optimizer.lr": 0}, "error: optimizer.lr must be a number > 0, got 0"),
        "broken IDX file": (
            "train.py",
            {"data.idx_dir": broken},
            f"error: {broken}/t10k-labels-idx1-ubyte.gz: label 10 is outside 0-9; the file is corrupt",
        ),
        "not a checkpoint": ("train.py", {"ckpt_path": f"{tmp}/notes.ckpt"}, not_a_checkpoint),
        "output folder under a file": (
            "train.py",
            {"hydra.run.dir": f"{tmp}/file/run"},
            f"error: cannot write to {tmp}/file/run: {tmp}/file is a file, not a folder; choose another hydra.run.dir",
        ),
        "loss diverges at once": (
            "train.py",
            {"model": "deep_mlp", "optimizer": "sgd", "optimizer.lr": 1e3},
            f"error: the training loss became {NON_FINITE} in epoch 1: {diverged}",
        ),
        "loss diverges in epoch 2": (
            "train.py",
            {
                "model": "deep_mlp",
                "optimizer": "sgd",
                "callbacks": "default",
                "+callbacks.raise_lr._target_": "tests.test_faults.RaiseLearningRate",
                "+callbacks.raise_lr.epoch": 1,
                "+callbacks.raise_lr.lr": 1e3,
            },
            f"error: the training loss became {NON_FINITE} in epoch 2: {diverged}",
        ),
        "evaluate.py": ("evaluate.py", {"ckpt_path": f"{tmp}/missing.ckpt"}, missing),
        "predict.py": ("predict.py", {"ckpt_path": f"{tmp}/notes.ckpt"}, not_a_checkpoint),
    }
    started = {}
    for case, (script, overrides, message) in cases.items():
        # The small generated data everywhere: a check that let a wrong value through would train on it briefly.
        arguments = {
            "hydra.run.dir": tmp / case / "run",
            "data.idx_dir": idx_dir,
            "data.root": tmp / case / "data",
            "data.download": "false",
        } | overrides
        process = start(script, *(f"{key}={value}" for key, value in arguments.items()))
        started[case] = process, Path(arguments["hydra.run.dir"]), message
    yield started
    for process, _, _ in started.values():
        process.kill()


CASES = [
    "out of range",
    "broken IDX file",
    "not a checkpoint",
    "output folder under a file",
    "loss diverges at once",
    "loss diverges in epoch 2",
    "evaluate.py",
    "predict.py",
]


@pytest.mark.parametrize("case", CASES)
def test_fault_ends_in_one_line_and_leaves_no_broken_file(runs, case):
    process, run_dir, message = runs[case]
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert re.fullmatch(re.escape(message).replace(re.escape(NON_FINITE), "(nan|inf)"), lines[-1]), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    if run_dir.exists():
        assert not list(run_dir.rglob("*.tmp"))
        assert_outputs_intact(run_dir)


def test_diverging_run_keeps_its_good_epochs(runs):
    process, run_dir, _ = runs["loss diverges in epoch 2"]
    process.wait(timeout=300)
    with open(run_dir / "history.csv") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0"]
    best = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and not (run_dir / "metrics.json").exists()
    for name, tensor in best.state_dict().items():
        assert torch.isfinite(tensor).all() and torch.equal(tensor, last["state_dict"][name])


def test_nothing_is_written_when_the_loss_diverges_in_the_first_epoch(runs):
    process, run_dir, _ = runs["loss diverges at once"]
    process.wait(timeout=300)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "history.csv").exists()


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the resume, in the run's folder
def test_runs_killed_mid_write_or_at_random_moments_leave_loadable_files_and_resume(tmp_path, idx_dir):
    """SIGKILL three runs once they have a checkpoint: two the moment a new checkpoint's temp file appears (inside
    a write), one at a random moment within the next 2 s. Every train.py start-up costs seconds of imports, so the
    resume that follows runs in this process."""
    rng = random.Random()
    run_dirs = [tmp_path / f"run{i}" for i in range(3)]
    mid_write = 2  # the first two runs are killed inside a write, the others at a random moment
    overrides = [
        "model=dense512",  # 5 MB checkpoints (weights + Adam's moments) and short epochs: long writes, often
        "callbacks=default",
        "trainer.max_epochs=1000",
        f"data.idx_dir={idx_dir}",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
    ]
    processes = [start("train.py", f"hydra.run.dir={run_dir}", *overrides) for run_dir in run_dirs]
    kill_at = [math.inf] * len(processes)
    deadline = time.monotonic() + 300
    try:
        while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
            now = time.monotonic()
            for i, (process, run_dir) in enumerate(zip(processes, run_dirs, strict=True)):
                checkpoints = run_dir / "checkpoints"
                if kill_at[i] == math.inf and (checkpoints / "last.ckpt").exists():
                    if i >= mid_write:
                        kill_at[i] = now + rng.uniform(0, 2.0)
                    elif any(checkpoints.glob(".*.tmp")):
                        kill_at[i] = now
                if now >= kill_at[i]:
                    process.send_signal(signal.SIGKILL)
            time.sleep(0.005)
    finally:
        for process in processes:
            process.kill()
    for process in processes:
        _, stderr = process.communicate()
        assert process.returncode == -signal.SIGKILL, stderr
    assert any(any(run_dir.glob("checkpoints/.*.tmp")) for run_dir in run_dirs[:mid_write])  # a kill hit a write
    assert sum(assert_outputs_intact(run_dir) for run_dir in run_dirs) >= 2 * len(run_dirs)  # best + last each

    # The work is not lost: the first run resumes from its last.ckpt and finishes (the config train.py composed).
    last = run_dirs[0] / "checkpoints" / "last.ckpt"
    epochs = torch.load(last, weights_only=True)["epoch"] + 2
    overrides[2] = f"trainer.max_epochs={epochs}"
    cfg = compose_config("train", [f"ckpt_path={last}", *overrides], output_dir=run_dirs[0])
    assert run(cfg).metrics["epochs"] == epochs
    assert_outputs_intact(run_dirs[0])
    assert json.loads((run_dirs[0] / "metrics.json").read_text())["epochs"] == epochs


def test_same_seed_gives_the_same_history_on_cpu(make_cfg, tmp_path):
    histories = []
    for name in ("first", "second"):
        run(make_cfg(output_dir=tmp_path / name))
        with open(tmp_path / name / "history.csv") as file:
            histories.append([{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(file)])
    assert histories[0] == histories[1] and len(histories[0]) == 2


def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    write_text_atomic(path, "epoch\n0\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError, match=f"^cannot write {path}: No space left on device$"):
        write_text_atomic(path, "epoch\n0\n1\n")
    with pytest.raises(UserError, match=f"^cannot write {tmp_path}/best.ckpt: No space left on device$"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "best.ckpt")
    assert path.read_text() == "epoch\n0\n" and sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_trainer_writes_checkpoints_by_renaming_a_file_beside_them(make_cfg, tmp_path, monkeypatch):
    # Lightning's own writer renames a file from the system's temp folder: a copy when that is another file system.
    assert isinstance(build_trainer(make_cfg()).strategy.checkpoint_io, AtomicCheckpointIO)
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renames.append((Path(src).parent, dst)) or replace(src, dst))
    path = tmp_path / "checkpoints" / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, path)
    assert renames == [(path.parent, path)] and torch.load(path, weights_only=True) == {"epoch": 3}
