"""One LightningModule for every book model: Keras' compile(loss='sparse_categorical_crossentropy',
metrics=['accuracy'], steps_per_execution=N) followed by fit / evaluate / predict."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from hgmldl.models import NUM_CLASSES, keras_init_

# Keras' History names: loss / accuracy while training, val_* on validation data, test_* from evaluate(test).
STAGE_PREFIX = {"train": "", "val": "val_", "test": "test_"}


class Classifier(L.LightningModule):
    """Builds its network, optimizer and learning-rate schedule from the plain config dicts it saves as
    hyperparameters, so a checkpoint alone rebuilds the model (Keras' `load_model`):
    `Classifier.load_from_checkpoint(path)`.

    `training_step` is Keras' `train_step`: one minibatch, one loss, and Lightning's automatic optimization does
    backward() and optimizer.step(). With Keras' `steps_per_execution=N` > 1, each Lightning step is a list of N
    minibatches and `execute_steps` runs that same training step on each, with one optimizer update per minibatch:
    Lightning's per-step cost (hooks, logging, progress bar) is then paid once per N updates, and batch-level
    hooks run every N updates, as Keras documents for its own option.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        steps_per_execution: int = 1,
        init: str = "keras",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(model)
        if init == "keras":
            keras_init_(self.net)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")
        # Channels-last (NHWC) convolution kernels: oneDNN's and cuDNN's fast layout (docs/performance.md). The
        # inputs have one channel, so they are in that layout already. After the initialisation, which fills the
        # tensors in memory order.
        self.net.to(memory_format=torch.channels_last)
        if compile:  # torch.compile in place, so the state_dict keys stay those of the plain network
            self.net.compile()
        self.steps_per_execution = steps_per_execution
        self.automatic_optimization = steps_per_execution == 1
        self.example_input_array = torch.zeros(1, 1, 28, 28)  # gives ModelSummary Keras' output-shape column
        # The epoch means, keyed by their History names (loss, accuracy, val_loss, …).
        self.epoch_metrics = nn.ModuleDict()
        for prefix in STAGE_PREFIX.values():
            self.epoch_metrics[f"{prefix}loss"] = MeanMetric()
            self.epoch_metrics[f"{prefix}accuracy"] = MulticlassAccuracy(
                NUM_CLASSES, average="micro", validate_args=False
            )
        self._recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits; `predict_step` turns them into Keras' softmax probabilities."""
        return self.net(images)

    @property
    def lr(self) -> float:
        """The optimizer's learning rate, as a field that Lightning's learning-rate finder (Tuner.lr_find) reads
        and sets: `optimizer.lr` in the config."""
        return self.hparams.optimizer["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.hparams.optimizer["lr"] = value

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        # Lightning's lr_scheduler dict: the scheduler plus when to step it (interval, monitor).
        schedule = dict(self.hparams.scheduler)
        schedule["scheduler"] = instantiate(schedule["scheduler"], optimizer=optimizer)
        if not self.automatic_optimization:  # on_train_epoch_end hands it the monitored value, not Lightning
            schedule.pop("monitor", None)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Keras' train_step: the minibatch's loss, from which Lightning computes the gradients and the update."""
        if isinstance(batch, list):  # steps_per_execution > 1: a list of minibatches, see execute_steps
            return self.execute_steps(batch)
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.record(loss, logits, labels)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.record(F.cross_entropy(logits, labels), logits, labels)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Keras' predict: one row of class probabilities per image."""
        return torch.softmax(self(batch[0]), dim=1)

    def execute_steps(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Keras' steps_per_execution: the textbook training step and one optimizer update for each minibatch,
        under manual optimization (Lightning makes one update per step only under its automatic optimization).
        Returns the minibatches' losses, which callbacks see as `outputs["loss"]` (TerminateOnNaN checks them)."""
        optimizer = self.optimizers()
        if self.trainer.max_steps >= 0:  # max_steps counts updates, not executions
            minibatches = minibatches[: self.trainer.max_steps - self.trainer.global_step]
        step_scheduler = self._scheduler_interval() == "step"
        losses = []
        for index, minibatch in enumerate(minibatches):
            loss = self.training_step(minibatch, index)
            optimizer.zero_grad()
            if self._plain_updates:
                plain_update(optimizer, loss)
            else:
                self.manual_backward(loss)
                optimizer.step()
            if step_scheduler:
                self.lr_schedulers().step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def on_fit_start(self) -> None:
        self._plain_updates = not self.automatic_optimization and plain_updates_are_exact(self.trainer, self)

    def on_train_epoch_end(self) -> None:
        # After the epoch's validation, where Lightning steps epoch schedulers, so ReduceLROnPlateau sees val_loss.
        if self._scheduler_interval() == "epoch":
            scheduler, monitor = self.lr_schedulers(), self.hparams.scheduler.get("monitor")
            if monitor:  # ReduceLROnPlateau
                scheduler.step(self.trainer.callback_metrics[monitor])
            else:
                scheduler.step()

    def _scheduler_interval(self) -> str | None:
        """When this module steps the learning-rate scheduler itself: Lightning does it only under automatic
        optimization."""
        if self.automatic_optimization or not self.hparams.scheduler:
            return None
        return self.hparams.scheduler["interval"]

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keeps the step's loss and predictions for the epoch's metrics. They are added to the torchmetrics
        objects once per Lightning step (`on_*_batch_end`): once per minibatch costs as much as a small model's
        whole update."""
        self._recorded.append((loss.detach(), logits.detach().argmax(dim=1), labels))

    def _update_metrics(self, stage: str) -> None:
        losses, predictions, labels = zip(*self._recorded, strict=True)
        self._recorded.clear()
        prefix = STAGE_PREFIX[stage]
        sizes = torch.tensor([len(batch) for batch in labels], device=self.device)
        self.epoch_metrics[f"{prefix}loss"].update(torch.stack(losses), weight=sizes)
        self.epoch_metrics[f"{prefix}accuracy"].update(torch.cat(predictions), torch.cat(labels))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._update_metrics("train")

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_metrics("val")

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update_metrics("test")

    def on_train_epoch_start(self) -> None:
        self._log_epoch_metrics("train")
        if self.hparams.scheduler:  # the epoch's learning rate: a TensorBoard curve and history.csv's lr column
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, stage: str) -> None:
        """Hands the metric objects to Lightning once per epoch: the steps only update them, and at the epoch end
        Lightning computes, logs and resets them, reduced across processes under DDP. Logging them from every step
        gives the same numbers but costs milliseconds per call (Lightning moves the whole metric to the device)."""
        prefix = STAGE_PREFIX[stage]
        for name in (f"{prefix}loss", f"{prefix}accuracy"):
            self.log(name, self.epoch_metrics[name], on_step=False, on_epoch=True, prog_bar=True)
        # A metric named `step` becomes the loggers' x-axis: epochs, as in the book's History plots.
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True)


def plain_updates_are_exact(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether `plain_update` computes what Lightning's public manual_backward() + optimizer.step() compute: one
    device (DDP needs manual_backward for its gradient all-reduce), no gradient scaler, and no hook overridden
    that those calls would run."""
    precision = trainer.precision_plugin
    hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
    return (
        type(trainer.strategy) is SingleDeviceStrategy
        and (type(precision) is MixedPrecision or not is_overridden("optimizer_step", precision, Precision))
        and getattr(precision, "scaler", None) is None
        and not any(is_overridden(hook, module, L.LightningModule) for hook in hooks)
        and not any(is_overridden(hook, cb, L.Callback) for cb in trainer.callbacks for hook in hooks)
    )


def plain_update(optimizer: LightningOptimizer, loss: torch.Tensor) -> None:
    """backward() and the torch optimizer's own step(), counted as Lightning counts its updates (`global_step`).

    Lightning's public route passes every update through the strategy, the precision plugin and each callback's
    hooks; at batch 32 that costs as much as a small model's whole update (docs/performance.md). The counting uses
    LightningOptimizer's private `_on_before_step` / `_on_after_step`, tested on the `lightning` versions that
    pyproject.toml admits (tests/test_steps_per_execution.py fails when they change).
    """
    loss.backward()
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()
