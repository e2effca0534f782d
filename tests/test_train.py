"""End-to-end training on generated data: files written, best weights restored, checkpoints reload."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar

from hgmldl.commands.train import build_trainer, run
from hgmldl.history import read_history
from hgmldl.module import Classifier
from tests.conftest import ROOT, make_idx_dataset

MODELS = ["softmax", "mlp", "deep_mlp", "dropout_mlp", "cnn", "dense512"]


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_short_fit_of_every_model_writes_history_and_metrics(make_cfg, tmp_path, model):
    cfg = make_cfg(f"model={model}", "trainer.limit_train_batches=2", "callbacks=default")
    metrics = run(cfg).metrics
    rows = read_history(tmp_path / "run" / "history.csv")
    assert [row["epoch"] for row in rows] == [0, 1]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time"}
    assert all(0 <= row["val_accuracy"] <= 1 and row["loss"] > 0 for row in rows)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert saved["epochs"] == 2
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy", "params", "wall_time"} <= set(saved)


def test_training_learns_the_generated_task(make_cfg):
    metrics = run(make_cfg("model=mlp", "trainer.max_epochs=3", "callbacks=default")).metrics
    assert metrics["val_accuracy"] > 0.9


@pytest.mark.cuda
def test_restore_best_weights_leaves_the_best_checkpoints_weights(make_cfg, tmp_path, accelerator):
    # A learning rate this high makes val_loss bounce, so the best epoch is rarely the last one.
    cfg = make_cfg("model=mlp", "optimizer=sgd", "optimizer.lr=2.0", "trainer.max_epochs=6")
    metrics, module, trainer = run(cfg)
    rows = read_history(tmp_path / "run" / "history.csv")
    best_epoch = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    assert metrics["best_epoch"] == best_epoch
    assert metrics["val_loss"] == pytest.approx(rows[best_epoch]["val_loss"], rel=1e-5)
    # The weights run() evaluated are those of best.ckpt, rebuilt from the file alone.
    best = Classifier.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    for name, tensor in best.state_dict().items():  # run() returns that module, and the Trainer that fitted it
        torch.testing.assert_close(module.state_dict()[name].cpu(), tensor, rtol=0, atol=0, msg=name)
    assert trainer.current_epoch == metrics["epochs"]
    trainer = L.Trainer(accelerator=accelerator, logger=False, enable_progress_bar=False, enable_model_summary=False)
    [val] = trainer.validate(best, datamodule=instantiate(cfg.data), verbose=False)
    assert val["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)


@pytest.mark.cuda
def test_checkpoint_alone_rebuilds_the_trained_model(make_cfg, tmp_path, accelerator):
    # Keras' load_model: last.ckpt alone rebuilds the book's CNN with the weights run() evaluated at the end.
    cfg = make_cfg("model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks=default")
    metrics = run(cfg).metrics
    loaded = Classifier.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert sum(p.numel() for p in loaded.parameters()) == 333_526  # the book's summary()
    trainer = L.Trainer(accelerator=accelerator, logger=False, enable_progress_bar=False, enable_model_summary=False)
    [test] = trainer.test(loaded, datamodule=instantiate(cfg.data), verbose=False)
    assert test["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    assert test["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def train_py(run_dir, idx_dir, *overrides):
    """`python train.py` on the generated data, one epoch, into `run_dir`, as a user runs it."""
    data = [f"data.idx_dir={idx_dir}", f"data.root={run_dir / 'data'}", "data.download=false"]
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *data, "trainer.max_epochs=1", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_train_py_runs_end_to_end_and_prints_the_books_output_and_no_third_party_warnings(tmp_path, idx_dir):
    """What `make train` does and shows, on the generated data: the default run (7-3's dropout model) writes its
    files; the console has the summary of the network's layers, the epoch lines and the result, no Lightning
    advertisement, no third-party deprecation warning (the filters in hgmldl/__init__.py), and no metric objects
    in the summary."""
    result = train_py(tmp_path, idx_dir)
    console = result.stdout + result.stderr
    assert "Total params: 79,510" in console
    assert "Epoch 1/1" in console
    last = result.stdout.strip().splitlines()[-1]
    assert "val_accuracy" in last and "test_accuracy" in last, last  # the run ends with its numbers
    for noise in ("Warning", "litlogger", "litmodels", "LeafSpec", "epoch_metrics", "MeanMetric", "already configured"):
        assert noise not in console
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "overrides",
    [
        # The default callbacks' EarlyStopping and best.ckpt watch val_loss: left out, as Keras' without
        # validation_data; no val_accuracy to return to a sweeper.
        ["data.val_fraction=0", "model=softmax"],
        ["experiment=dlp2_ch2_mnist"],  # DLP ch. 2 trains on all 60,000: the same, on MNIST-format files
    ],
)
def test_train_py_without_validation_ends_with_the_test_numbers(tmp_path, idx_dir, overrides):
    result = train_py(tmp_path, idx_dir, *overrides)
    last = result.stdout.strip().splitlines()[-1]
    assert "test_accuracy" in last and "test_loss" in last and "val_" not in last, last
    assert "val_accuracy" not in json.loads((tmp_path / "metrics.json").read_text())
    if "model=softmax" in overrides:
        assert "callbacks.model_checkpoint, callbacks.early_stopping watch val_* and are left out" in result.stdout


def test_missing_data_is_one_line_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"hydra.run.dir={tmp_path}",
            f"data.root={tmp_path / 'none'}",
            "data.download=false",
            "data=mnist",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MNIST IDX files not found") and "data.idx_dir=" in last
    assert "Traceback" not in result.stderr


def damage(folder):
    """A folder whose images file is cut short, as an interrupted download leaves it."""
    images = make_idx_dataset(folder, num_train=30, num_test=10, gz=False) / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    return f"{images} is 1000 bytes, its header promises 23536; the file is truncated or corrupt"


NAMED_FOLDERS = {  # what is wrong with the folder named by data.idx_dir: (make it, the error line's text)
    "not there": lambda folder: (
        f"data.idx_dir={folder}: no such folder; give the one with the four IDX files (.gz or raw)"
    ),
    "damaged": damage,
}


@pytest.mark.parametrize("case", NAMED_FOLDERS)
def test_a_named_idx_dir_is_used_or_named_never_replaced_by_another_copy(tmp_path, case):
    root = tmp_path / "data"
    copy = make_idx_dataset(root / "FashionMNIST" / "raw", num_train=30, num_test=10, gz=False)  # it could train on
    held = {path.name: path.read_bytes() for path in copy.iterdir()}
    named = tmp_path / "named"
    message = NAMED_FOLDERS[case](named)
    result = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", f"data.root={root}", f"data.idx_dir={named}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert {path.name: path.read_bytes() for path in copy.iterdir()} == held  # the copy is left as it was


def test_tensorboard_curves_use_keras_names_and_epochs(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(make_cfg("model=softmax", "logger=tensorboard", "trainer.max_epochs=3", "callbacks=default"))
    scalars: dict[str, list[int]] = {}
    for events in sorted((tmp_path / "run").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert scalars[name] == [0, 1, 2], name  # one point per epoch, x-axis in epochs like History plots


class Stream:
    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(("stdout_is_a_terminal", "bar"), [(True, True), (False, False)])
def test_the_progress_bar_shows_where_its_output_goes_to_a_terminal(make_cfg, monkeypatch, stdout_is_a_terminal, bar):
    # Lightning's bar writes to stdout: `python train.py > log.txt` in a terminal gets no bar in its file.
    monkeypatch.setattr(sys, "stdout", Stream(stdout_is_a_terminal))
    monkeypatch.setattr(sys, "stderr", Stream(not stdout_is_a_terminal))
    trainer = build_trainer(make_cfg("trainer.enable_progress_bar=null"))
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar) is bar
