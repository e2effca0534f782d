"""Keras' `compile(steps_per_execution=N)` for a LightningModule: N optimizer updates per Lightning step.

Lightning spends about as long on its own work per step (hooks, logging, the progress bar) as a small model spends
on a whole update at batch 32 (docs/performance.md). With N > 1 the data module hands each Lightning step a list of
N minibatches, and `execute_steps` runs the module's own textbook `training_step` on each, with one optimizer
update per minibatch, under Lightning's manual optimization: Lightning's per-step cost is paid once per N updates,
and batch-level hooks run every N updates, as Keras documents for its own option. N = 1 is plain Lightning.

What that takes besides the loop, all here: the learning-rate schedule stepped by the module (Lightning steps it
only under automatic optimization), the epoch metrics buffered per step, and `plain_update` (the one private
Lightning API on the training path) with its guard `plain_updates_are_exact`.
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

# Keras' History names: loss / accuracy while training, val_* on validation data, test_* from evaluate(test).
STAGE_PREFIX = {"train": "", "val": "val_", "test": "test_"}


class StepsPerExecution:
    """A LightningModule mixin (`class Classifier(StepsPerExecution, L.LightningModule)`). The module saves
    `steps_per_execution` and `scheduler` (Lightning's lr_scheduler dict, or None) as hyperparameters, holds
    its epoch metrics in `epoch_metrics` by their History names, and passes each step's loss and predictions
    to `record`; its `training_step` hands a list of minibatches to `execute_steps`."""

    hparams: Any
    epoch_metrics: torch.nn.ModuleDict

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._plain_updates = False

    @property
    def steps_per_execution(self) -> int:
        return self.hparams.get("steps_per_execution", 1)

    @property
    def automatic_optimization(self) -> bool:
        """Lightning makes one update per step only under its automatic optimization: N > 1 needs manual."""
        return self.steps_per_execution == 1

    def execute_steps(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The textbook training step and one optimizer update for each minibatch. Returns the minibatches'
        losses, which callbacks see as `outputs["loss"]` (TerminateOnNaN checks them)."""
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
        gives the same numbers but costs more than a small model's update per call (Lightning moves the whole
        metric to the device)."""
        prefix = STAGE_PREFIX[stage]
        for name in (f"{prefix}loss", f"{prefix}accuracy"):
            self.log(name, self.epoch_metrics[name], on_step=False, on_epoch=True, prog_bar=True)
        # A metric named `step` becomes the loggers' x-axis: epochs, as in the book's History plots. Only while
        # fitting: trainer.validate and trainer.test report the scores alone, as Keras' evaluate does.
        if self.trainer.state.fn == "fit":
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
