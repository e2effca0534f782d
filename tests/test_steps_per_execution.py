"""Keras' steps_per_execution: N updates per Lightning step compute what N Lightning steps compute."""

import contextlib
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from hgmldl.commands import train
from hgmldl.commands.train import run
from hgmldl.data import FashionMNISTDataModule
from hgmldl.history import read_history
from hgmldl.models import softmax
from hgmldl.module import Classifier
from hgmldl.optimizers import KerasRMSprop
from hgmldl.steps_per_execution import StepsPerExecution, plain_update

# The generated data of tests/conftest.py: 400 training images in minibatches of 32.
UPDATES_PER_EPOCH = 13


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["dropout_mlp", "cnn"])
def test_one_and_fifty_steps_per_execution_train_the_same_weights_and_history(make_cfg, tmp_path, model):
    # Dropout draws from the same generator in the same order, so even the masks agree.
    runs = {}
    for n in (1, 50):
        cfg = make_cfg(f"model={model}", f"steps_per_execution={n}", "callbacks=default", output_dir=tmp_path / f"n{n}")
        if model == "cnn":
            cfg.trainer.limit_train_batches = 4
        metrics = run(cfg).metrics
        weights = torch.load(tmp_path / f"n{n}" / "checkpoints" / "last.ckpt", weights_only=True)
        runs[n] = metrics, weights, read_history(tmp_path / f"n{n}" / "history.csv")
    (metrics_1, weights_1, history_1), (metrics_50, weights_50, history_50) = runs[1], runs[50]
    assert weights_1["global_step"] == weights_50["global_step"] == 2 * (4 if model == "cnn" else UPDATES_PER_EPOCH)
    for name, tensor in weights_1["state_dict"].items():
        torch.testing.assert_close(weights_50["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for row_1, row_50 in zip(history_1, history_50, strict=True):
        for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert row_50[column] == pytest.approx(row_1[column], rel=1e-5, abs=1e-6), column
    assert metrics_50["test_accuracy"] == pytest.approx(metrics_1["test_accuracy"], abs=1e-6)


class EpochHooksOverridden(Classifier):
    """A user's subclass that overrides every epoch hook without calling super()."""

    def on_train_epoch_start(self):
        pass

    def on_train_epoch_end(self):
        pass

    def on_validation_epoch_start(self):
        pass

    def on_validation_epoch_end(self):
        pass


@pytest.mark.parametrize("n", [1, 4])
def test_overriding_the_epoch_hooks_changes_neither_the_schedule_nor_the_metrics(make_cfg, tmp_path, monkeypatch, n):
    histories = {}
    for module_class in (Classifier, EpochHooksOverridden):
        monkeypatch.setattr(train, "Classifier", module_class)
        output_dir = tmp_path / module_class.__name__
        cfg = make_cfg(
            f"steps_per_execution={n}",
            "scheduler=step",
            "scheduler.scheduler.step_size=1",
            "callbacks=default",
            "trainer.max_epochs=3",
            output_dir=output_dir,
        )
        train.run(cfg)
        histories[module_class] = read_history(output_dir / "history.csv")
    plain, overridden = histories[Classifier], histories[EpochHooksOverridden]
    learning_rates = [float(row["lr"]) for row in plain]
    assert learning_rates[1] < learning_rates[0] and learning_rates[2] < learning_rates[1]  # StepLR every epoch
    for row, row_overridden in zip(plain, overridden, strict=True):
        for column in ("lr", "loss", "accuracy", "val_loss", "val_accuracy"):
            assert row[column] and row_overridden[column] == row[column], column


def test_plain_update_counts_as_lightnings_own_step_does():
    """plain_update relies on LightningOptimizer's private step counting: this fails when Lightning changes it.

    Lightning's manual loop installs the two hooks that count global_step; the test installs counters in their
    place and checks plain_update calls each once, around the torch optimizer's own step()."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = LightningOptimizer(torch.optim.SGD([weight], lr=0.5))
    calls = []
    optimizer._on_before_step = lambda: calls.append(("before", weight.detach().clone()))
    optimizer._on_after_step = lambda: calls.append(("after", weight.detach().clone()))
    plain_update(optimizer, (weight**2).sum())  # gradient 2w: w - 0.5 * 2w = 0
    assert [name for name, _ in calls] == ["before", "after"]
    torch.testing.assert_close(calls[0][1], torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(calls[1][1], torch.zeros(2))


class StopAfterOneEpoch(L.Callback):
    def __init__(self, ending: str) -> None:
        self.ending = ending

    def on_train_epoch_end(self, trainer, pl_module):
        if self.ending == "failed":
            raise RuntimeError("stopped")


@pytest.mark.parametrize("ending", ["finished", "failed"])
def test_after_fit_steps_per_execution_1_makes_the_module_plain_lightning_again(idx_dir, tmp_path, ending):
    # hgmldl.fit's model trained on in a Trainer of your own, whether the fit with the callback finished or failed:
    # trainer.global_step counted the updates, and StepsPerExecution(1) gives back Lightning's own step, one
    # minibatch and one update per step.
    data = FashionMNISTDataModule(root=str(tmp_path / "data"), idx_dir=str(idx_dir), download=False)
    module = Classifier(partial(softmax), partial(KerasRMSprop))
    quiet = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    trainer = L.Trainer(max_epochs=1, callbacks=[StepsPerExecution(4), StopAfterOneEpoch(ending)], **quiet)
    with contextlib.suppress(RuntimeError):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == UPDATES_PER_EPOCH
    steps = CountSteps()
    trainer = L.Trainer(max_epochs=1, callbacks=[StepsPerExecution(1), steps], **quiet)
    trainer.fit(module, datamodule=data)
    assert module.automatic_optimization and "training_step" not in vars(module)
    assert trainer.global_step == steps.count == UPDATES_PER_EPOCH


class CountSteps(L.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.count += 1
