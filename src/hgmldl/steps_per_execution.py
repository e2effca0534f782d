"""Keras' `compile(steps_per_execution=N)` for Lightning: N optimizer updates per Lightning step, as a callback.

Lightning spends about as long on its own work per step (hooks, logging, the progress bar) as a small model spends
on a whole update at batch 32 (docs/performance.md). `StepsPerExecution(N)` in the Trainer's callbacks pays that
once per N updates: it gives the module a training step that takes Lightning's `dataloader_iter` and runs the
module's own textbook `training_step` on each of the next N minibatches, with one optimizer update each, under
Lightning's manual optimization. Batch-level hooks run every N updates, as Keras documents for its own option; their
`batch_idx` is the last minibatch's, so progress bars count updates. N = 1 is plain Lightning: the callback does
nothing. The module, the data module and the other callbacks do not know N; this file is the one seam:

- `StepsPerExecution.trainer_options`: the Trainer options Lightning counts in its own steps, converted from
  updates, and those that need one update per step refused with one line;
- the learning-rate schedule, stepped here (Lightning steps it only under automatic optimization), in the
  callback's own hooks, so a module that overrides its epoch hooks keeps it;
- `plain_update` (the one private Lightning API on the training path) with its guard `plain_updates_are_exact`.
"""

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig

from hgmldl.errors import UserError

# `dataloader_iter` is the public route Lightning 2.6 gives a step to take several minibatches; Lightning calls it
# experimental and warns that hooks see the last minibatch's batch_idx, which is what this callback wants.
warnings.filterwarnings("ignore", message=r"Found `dataloader_iter` argument in the `training_step`")
warnings.filterwarnings("ignore", message=r"You are using the `dataloader_iter` step flavor")


class StepsPerExecution(L.Callback):
    """`Trainer(callbacks=[StepsPerExecution(50)])`: 50 optimizer updates per Lightning step, each the module's own
    `training_step` on one minibatch; the numbers are those of one update per step (tests/test_steps_per_execution.py).
    After fit the module keeps the execution step and manual optimization, as a Keras model keeps its `compile`
    settings: Lightning reads `trainer.global_step` from the counter of the module's current optimization mode, so
    it keeps counting updates. A Trainer with this callback sets the module anew; `StepsPerExecution(1)` makes it
    plain Lightning again."""

    def __init__(self, steps: int) -> None:
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise UserError(
                f"steps_per_execution must be an integer >= 1 (1: one optimizer update a step), got {steps!r}"
            )
        self.steps = steps

    def trainer_options(self, trainer: DictConfig, callbacks: DictConfig) -> dict[str, Any]:
        """The Trainer options that Lightning counts in its own steps, converted from updates, where one Lightning
        step runs N updates; those that need one update per step are refused with one line."""
        n = self.steps
        if n == 1:
            return {}
        for name, node in callbacks.items():  # ModelCheckpoint checks its count after each Lightning step
            every = node.get("every_n_train_steps") if isinstance(node, DictConfig) else None
            if every and every % n:
                raise UserError(
                    f"callbacks.{name}.every_n_train_steps={every} is not a multiple of steps_per_execution={n}: "
                    f"Lightning counts it after every {n} updates; give a multiple of {n} or steps_per_execution=1"
                )
        for key, default in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
            if trainer.get(key, default) not in (default, 0):
                raise UserError(
                    f"trainer.{key} needs steps_per_execution=1 (Lightning does it only with one update per step, "
                    f"under automatic optimization): add steps_per_execution=1"
                )
        options = {}
        interval = trainer.get("val_check_interval")
        if isinstance(interval, int):
            if interval % n:
                raise UserError(
                    f"trainer.val_check_interval={interval} updates is not a whole number of steps of "
                    f"steps_per_execution={n} updates: give a multiple of {n}, a fraction of the epoch, or "
                    "steps_per_execution=1"
                )
            options["val_check_interval"] = interval // n
        every = trainer.get("log_every_n_steps")
        if isinstance(every, int):  # as in Keras, step-level logging cannot happen more often than once per execution
            if every > n and every % n:
                raise UserError(
                    f"trainer.log_every_n_steps={every} updates is not a whole number of steps of "
                    f"steps_per_execution={n} updates: give a multiple of {n} or steps_per_execution=1"
                )
            options["log_every_n_steps"] = max(1, every // n)
        return options

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has read configure_optimizers as for automatic optimization, which keeps the scheduler's
        # `monitor` (ReduceLROnPlateau) for on_train_epoch_end, and before the loops restore a checkpoint.
        if isinstance(getattr(pl_module.training_step, "__self__", None), StepsPerExecution):
            del pl_module.training_step  # the execution step of an earlier fit
            pl_module.automatic_optimization = True
        if self.steps == 1:
            return
        pl_module.automatic_optimization = False
        self.module, self.training_step = pl_module, pl_module.training_step
        self.plain = plain_updates_are_exact(trainer, pl_module)
        # An instance attribute: Lightning looks the step up on the module, and the `dataloader_iter` parameter
        # makes Lightning hand over the epoch's iterator instead of one minibatch.
        pl_module.training_step = self.execute

    def execute(self, dataloader_iter: Iterator[tuple[Any, int, int]]) -> torch.Tensor:
        """One Lightning step: the textbook training step and one optimizer update for each of the next N
        minibatches. Returns their losses, which callbacks see as `outputs["loss"]` (TerminateOnNaN checks them)."""
        module, trainer = self.module, self.module.trainer
        optimizer = module.optimizers()
        steps = self.steps
        if trainer.max_steps >= 0:  # max_steps counts updates, not executions
            steps = min(steps, trainer.max_steps - trainer.global_step)
        configs = trainer.lr_scheduler_configs
        step_scheduler = configs[0].scheduler if configs and configs[0].interval == "step" else None
        losses = []
        convert = trainer.precision_plugin.convert_input  # what Lightning does to each batch it hands a step
        for batch, batch_idx, _ in itertools.islice(dataloader_iter, steps):
            loss = self.training_step(convert(batch), batch_idx)
            optimizer.zero_grad()
            if self.plain:
                plain_update(optimizer, loss)
            else:
                module.manual_backward(loss)
                optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation, where Lightning steps epoch schedulers, so ReduceLROnPlateau sees val_loss.
        if self.steps == 1 or not trainer.lr_scheduler_configs:
            return
        config = trainer.lr_scheduler_configs[0]
        if config.interval == "epoch":
            if config.monitor:  # ReduceLROnPlateau
                config.scheduler.step(trainer.callback_metrics[config.monitor])
            else:
                config.scheduler.step()


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
