"""The callbacks Lightning lacks: Keras' EarlyStopping restore_best_weights, History (as history.csv) and TerminateOnNaN, the random
state in checkpoints, per-class accuracy with the confusion matrix for evaluate.py, the book's pictures in
TensorBoard."""

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import early_stopping
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from hgmldl.errors import UserError
from hgmldl.figures import (
    plot_confusion_matrix,
    plot_filters,
    plot_history,
    plot_samples,
    save_figure,
)
from hgmldl.history import HISTORY_COLUMNS, keras_history, write_history
from hgmldl.models import NUM_CLASSES

log = logging.getLogger(__name__)


class EarlyStopping(early_stopping.EarlyStopping):
    """Lightning's EarlyStopping plus Keras' `restore_best_weights`.

    Keras 3 keeps a copy of the weights of the best epoch and puts it back when training ends, whether or not
    it stopped early; Lightning declined the option (Lightning-AI/pytorch-lightning#1395), so this adds it.
    The copy lives in memory and in the callback's checkpoint state, so a resumed run restores it too.
    """

    def __init__(self, *args: Any, restore_best_weights: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restore_best_weights = restore_best_weights
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1

    # Lightning checks at the end of the training epoch when validation runs every epoch, else after validation.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remember_best(super().on_train_epoch_end, trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remember_best(super().on_validation_end, trainer, pl_module)

    def _remember_best(self, check: Any, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best_before = self.best_score.clone()
        check(trainer, pl_module)
        if not trainer.sanity_checking and not torch.equal(self.best_score, best_before):
            self.best_epoch = trainer.current_epoch
            if self.restore_best_weights:
                self.best_weights = {name: t.detach().clone() for name, t in pl_module.state_dict().items()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)
            log.info(  # 1-based like Keras' message and the epoch lines; best_epoch itself is 0-based like History
                "Restored the weights from the end of the best epoch: %d (%s %.4f)",
                self.best_epoch + 1,
                self.monitor,
                self.best_score,
            )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch", -1)
        self.best_weights = state_dict.get("best_weights")


class HistoryCSV(L.Callback):
    """Keras' History record as `history.csv` (`hgmldl.History` is what hgmldl.fit returns): one row per epoch of loss, accuracy, val_loss, val_accuracy, written to `history.csv`
    after every epoch (atomically), and one Keras `verbose=2` line per epoch in the log; `curves.png` at the end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = 0.0
        self._validated = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch without validation (check_val_every_n_epoch, or max_steps reached mid-epoch) has no val_* of
        # its own: the trainer's metrics still hold the last validation's.
        metrics = {
            name: value for name, value in trainer.callback_metrics.items() if self._validated or "val_" not in name
        }
        row = {"epoch": trainer.current_epoch, "time": round(time.perf_counter() - self._epoch_start, 3)}
        row |= {name: float(metrics[name]) for name in HISTORY_COLUMNS if name in metrics}
        self.rows.append(row)
        if not trainer.is_global_zero:  # under DDP: one file, one line per epoch
            return
        write_history(self.path, self.rows)
        columns = [name for name in HISTORY_COLUMNS if name in row]
        scores = " - ".join(
            f"{name}: {row[name]:.4g}" if name == "lr" else f"{name}: {row[name]:.4f}" for name in columns[1:-1]
        )
        log.info("Epoch %d/%d - %.1fs - %s", row["epoch"] + 1, trainer.max_epochs, row["time"], scores)

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras' `History.history`: `plt.plot(history_callback.history["val_loss"])`."""
        return keras_history(self.rows)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The book's 7-3 plots of this run, beside history.csv.
        if trainer.is_global_zero and self.rows:
            save_figure(plot_history({"": self.rows}), self.path.with_name("curves.png"))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = state_dict["rows"]


class TerminateOnNaN(L.Callback):
    """Keras' TerminateOnNaN, ending the run with an error at the first NaN or infinite training loss.

    It stops within the Lightning step where the loss diverged, before a checkpoint or history.csv can record
    the broken weights, so both keep the epochs before it: with steps_per_execution=N it sees the step's last loss,
    which a diverged update earlier in the step has made NaN too. Costs one device sync per step.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            bad = loss.item()
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            raise UserError(
                f"the training loss became {bad} in epoch {trainer.current_epoch + 1}: the learning rate is "
                f"probably too high, lower optimizer.lr (now {lr:g}); history.csv and the checkpoints keep the "
                "epochs before"
            )


class RandomState(L.Callback):
    """Keeps torch's random generator in every checkpoint, so that a resumed run draws the same dropout masks as
    an uninterrupted one: Lightning restores weights, optimizer, loops and callbacks, but not the generator."""

    def state_dict(self) -> dict[str, Any]:
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["cpu"])
        if state_dict["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])


class ClassMetrics(L.Callback):
    """Per-class accuracy and the confusion matrix of each validation and test run, as torchmetrics computes them
    (summed over the batches, and over the processes under DDP): what evaluate.py adds to Keras' evaluate.

    After `trainer.validate` / `trainer.test`, `results["val"]` / `results["test"]` hold both, on the CPU.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.metrics = MetricCollection(
            {
                "per_class_accuracy": MulticlassAccuracy(num_classes, average=None),
                "confusion_matrix": MulticlassConfusionMatrix(num_classes),
            }
        )
        self.results: dict[str, dict[str, torch.Tensor]] = {}

    def _update(self, pl_module: L.LightningModule, batch: Any) -> None:
        images, labels = batch
        self.metrics.to(labels.device).update(pl_module(images).argmax(dim=1), labels)

    def _compute(self, stage: str) -> None:
        self.results[stage] = {name: value.cpu() for name, value in self.metrics.compute().items()}
        self.metrics.reset()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._update(pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._compute("val")

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        self._update(pl_module, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compute("test")


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    return next((layer for layer in net.modules() if isinstance(layer, nn.Conv2d)), None)


class TensorBoardImages(L.Callback):
    """The book's pictures in TensorBoard beside the scalars (`logger=tensorboard_full`): the first training
    images once, conv1's filters and every parameter's histogram after each epoch, and the test set's confusion
    matrix after `trainer.test`. The histograms slow every epoch down (docs/performance.md), hence a preset of its own."""

    def __init__(self, num_samples: int = 10) -> None:
        self.num_samples = num_samples
        self.writer: Any = None
        self.test_metrics = ClassMetrics()  # the test confusion matrix

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Kept here: the run may detach its loggers before the final validate/test (hgmldl.commands.train.run does).
        self.writer = trainer.logger.experiment if trainer.is_global_zero and trainer.logger else None
        if self.writer is None:
            return
        datamodule = trainer.datamodule
        images, labels = datamodule.train_images[: self.num_samples], datamodule.train_labels[: self.num_samples]
        names = datamodule.classes["en"]
        self.writer.add_figure("samples", plot_samples(images, labels.tolist(), names), 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.writer is None:
            return
        epoch = trainer.current_epoch
        conv = first_conv(pl_module)
        if conv is not None:
            self.writer.add_figure("conv1_filters", plot_filters(conv.weight), epoch)
        for name, parameter in pl_module.named_parameters():
            self.writer.add_histogram(name, parameter, epoch)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        self.test_metrics.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.test_metrics.on_test_epoch_end(trainer, pl_module)  # on every process: under DDP it gathers them all
        if self.writer is not None:
            names = trainer.datamodule.classes["en"]
            matrix = self.test_metrics.results["test"]["confusion_matrix"]
            self.writer.add_figure("confusion_matrix", plot_confusion_matrix(matrix, names, "test"))
            self.writer.flush()
