"""Keras' `compile(steps_per_execution=N)` for Lightning: N optimizer updates per Lightning step, as a callback.

Lightning spends about as long on its own work per step (hooks, logging, the progress bar) as a small model spends
on a whole update at batch 32 (docs/performance.md). `StepsPerExecution(N)` in the Trainer's callbacks pays that
once per N updates: while fit runs, it gives the module a training step that takes Lightning's `dataloader_iter` and,
for each of the next N minibatches, does what Lightning's automatic optimization does with one: the batch-transfer
hooks, the module's own `training_step` (its `self.log` calls included), `optimizer_zero_grad`, the backward pass,
gradient clipping, `optimizer_step`, and the step-interval schedulers. Batch-level hooks (`on_train_batch_start/end`)
run once per N updates, as Keras documents for its own option. What it cannot do as Lightning does, it refuses in
one line when fit starts (docs/training.md has the table). N = 1 is plain Lightning: the callback does nothing.

This file is the one seam: the module, the data module and the other callbacks do not know N. It holds the private
Lightning APIs on the training path, each in one small function with its test: the update counting of
`plain_update` (an update without Lightning's per-update plumbing, where nothing needs it) and
`counted_as_automatic_optimization_counts`, `start_logging_minibatch`, `synchronize_update_counts`, and
`checkpoint_every_n_train_steps`.
"""

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler, ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

from hgmldl.errors import UserError

# `dataloader_iter` is the public route Lightning 2.6 gives a step to take several minibatches; Lightning calls it
# experimental and warns that hooks see the last minibatch's batch_idx, which is what this callback wants.
warnings.filterwarnings("ignore", message=r"Found `dataloader_iter` argument in the `training_step`")
warnings.filterwarnings("ignore", message=r"You are using the `dataloader_iter` step flavor")
# Lightning notes that under manual optimization a checkpoint every k steps holds the weights after the update, which
# is what automatic optimization saves too; executions end on those update counts, so it saves the N = 1 weights.
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps")

# The hooks an update runs (the module's and the callbacks', then the module's alone); where none is overridden,
# `plain_update` does the update without Lightning's plumbing.
UPDATE_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
MODULE_UPDATE_HOOKS = ("backward", "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping")


class StepsPerExecution(L.Callback):
    """`Trainer(callbacks=[StepsPerExecution(50)])`: 50 optimizer updates per Lightning step, each one as Lightning's
    automatic optimization makes it, on any LightningModule (tests/test_steps_per_execution_conformance.py holds the
    table of modules and Trainer options it is checked on). When fit ends or fails, the module is plain Lightning
    again."""

    def __init__(self, steps: int) -> None:
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise UserError(
                f"steps_per_execution must be an integer >= 1 (1: one optimizer update a step), got {steps!r}"
            )
        self.steps = steps
        self.module: L.LightningModule | None = None  # while fit runs: the module, its own step and log
        self.batch: Any = None  # the minibatch being trained on

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has read configure_optimizers as for automatic optimization, before the loops restore a
        # checkpoint and before the first minibatch.
        if self.steps == 1:
            return
        refuse_what_cannot_run(trainer, pl_module, self.steps)
        self.log_every_n_steps = trainer.log_every_n_steps
        # Lightning counts log_every_n_steps in its own steps: at most one log per execution, as in Keras, and at
        # least as often as asked.
        trainer.log_every_n_steps = max(1, trainer.log_every_n_steps // self.steps)
        self.val_check_batch = None
        self.checkpoint_every = [
            every for every in (checkpoint_every_n_train_steps(c) for c in trainer.checkpoint_callbacks) if every
        ]
        self.plain = plain_updates_are_exact(trainer, pl_module)
        self.transfer = batch_transfer(trainer, pl_module)
        self.steps_schedulers = any(config.interval == "step" for config in trainer.lr_scheduler_configs)
        self.clips = trainer.gradient_clip_val or is_overridden("configure_gradient_clipping", pl_module)
        self.module, self.training_step, self.log = pl_module, pl_module.training_step, pl_module.log
        self.own_attributes = {
            name: vars(pl_module)[name] for name in ("training_step", "log") if name in vars(pl_module)
        }
        pl_module.automatic_optimization = False
        # Instance attributes: Lightning looks the step up on the module, and the `dataloader_iter` parameter makes
        # Lightning hand over the epoch's iterator instead of one minibatch. `log` fills in `batch_size`, which
        # Lightning cannot infer from an iterator.
        pl_module.training_step = self.execute
        pl_module.log = self.log_minibatch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize_update_counts(trainer)  # a checkpoint saved with another N, restored just before this hook

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has just worked out how many minibatches lie between validations. It counts them in its own
        # steps, and validates after an epoch's last execution in any case: a validation inside the epoch comes
        # after the same minibatch as with N = 1 where both counts are whole numbers of executions.
        if self.module is None or trainer.val_check_batch == self.val_check_batch:
            return
        every, batches = trainer.val_check_batch, trainer.num_training_batches
        if isinstance(every, int) and (every < batches or trainer.check_val_every_n_epoch is None):
            if every % self.steps or batches % every or trainer.check_val_every_n_epoch is None:
                raise UserError(
                    f"StepsPerExecution({self.steps}): val_check_interval asks for a validation every {every} of the "
                    f"epoch's {batches} minibatches; it needs a multiple of {self.steps} that divides the epoch: "
                    "change val_check_interval or the number of steps per execution"
                )
            trainer.val_check_batch = every // self.steps
        self.val_check_batch = trainer.val_check_batch

    def execute(self, dataloader_iter: Iterator[tuple[Any, int, int]]) -> Any:
        """One Lightning step: for each of the next N minibatches, one update as automatic optimization makes it.
        Returns what the last minibatch's `training_step` returned, as callbacks see a step's `outputs`."""
        trainer = self.module.trainer
        steps = self.steps
        if trainer.max_steps >= 0:  # max_steps counts updates, not executions
            steps = min(steps, trainer.max_steps - trainer.global_step)
        for every in self.checkpoint_every:  # end on ModelCheckpoint's update counts, so it saves where N = 1 does
            steps = min(steps, every - trainer.global_step % every)
        output, optimizer = None, self.module.optimizers()
        convert = trainer.precision_plugin.convert_input
        for i, (batch, batch_idx, _) in enumerate(itertools.islice(dataloader_iter, steps)):
            if i == 1:  # Lightning did this for the execution's first minibatch; later ones change nothing
                start_logging_minibatch(trainer)
            self.batch = self.transfer(convert(batch)) if self.transfer else convert(batch)
            output = self.update(trainer, optimizer, self.batch, batch_idx)
            if self.steps_schedulers:
                self.step_schedulers(trainer, "step", batch_idx + 1)
        return detached(output)

    def update(self, trainer: L.Trainer, optimizer: LightningOptimizer, batch: Any, batch_idx: int) -> Any:
        """One minibatch's update, in automatic optimization's order: training_step, optimizer_zero_grad, backward,
        clipping, the optimizer's step. Returns what training_step returned."""
        if self.plain:
            output = self.training_step(batch, batch_idx)
            plain_update(optimizer, loss_of(output))
            return output
        module, output = self.module, None

        def closure() -> torch.Tensor | None:
            nonlocal output
            output = self.training_step(batch, batch_idx)
            loss = loss_of(output)
            module.optimizer_zero_grad(trainer.current_epoch, batch_idx, optimizer)
            if loss is not None:
                module.manual_backward(loss)
                if self.clips:
                    module.configure_gradient_clipping(
                        optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                    )
            return loss

        with counted_as_automatic_optimization_counts(optimizer):
            module.optimizer_step(trainer.current_epoch, batch_idx, optimizer, closure)
        return output

    def log_minibatch(self, name: str, value: Any, *args: Any, batch_size: int | None = None, **kwargs: Any) -> None:
        """The module's `self.log` while fit runs, with the batch size Lightning infers from the minibatch."""
        if batch_size is None and self.module.trainer.training:  # Lightning's rule: 1 where there is no minibatch
            batch_size = 1 if self.batch is None else extract_batch_size(self.batch)
        self.log(name, value, *args, batch_size=batch_size, **kwargs)

    def step_schedulers(self, trainer: L.Trainer, interval: str, count: int, plateau: bool = False) -> None:
        """Lightning's stepping of the schedulers of one interval (steps: after each update; epochs: at the epoch's
        end), each on its `frequency`, through the module's `lr_scheduler_step` hook."""
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency or config.reduce_on_plateau != plateau:
                continue
            metric = trainer.callback_metrics.get(config.monitor) if plateau else None
            if plateau and metric is None:
                if config.strict:
                    raise UserError(
                        f"the scheduler watches {config.monitor}, which is not logged; logged: "
                        f"{', '.join(trainer.callback_metrics) or 'nothing'}"
                    )
                continue
            self.module.lr_scheduler_step(config.scheduler, metric)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation, so that ReduceLROnPlateau sees val_loss; Lightning steps no scheduler under
        # manual optimization.
        if self.module is not None:
            self.step_schedulers(trainer, "epoch", trainer.current_epoch + 1)
            self.step_schedulers(trainer, "epoch", trainer.current_epoch + 1, plateau=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.give_back(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.give_back(trainer)

    def give_back(self, trainer: L.Trainer) -> None:
        """The module as it came, plain Lightning, and the Trainer's options as the user set them."""
        if self.module is None:
            return
        del self.module.training_step, self.module.log
        vars(self.module).update(self.own_attributes)  # a wrapper a user had put there
        self.module.automatic_optimization = True
        synchronize_update_counts(trainer)
        trainer.log_every_n_steps = self.log_every_n_steps
        self.module = self.batch = None


def refuse_what_cannot_run(trainer: L.Trainer, module: L.LightningModule, n: int) -> None:
    """One line for each setting whose updates this callback cannot make as Lightning makes them one per step."""
    use = "use StepsPerExecution(1) (steps_per_execution=1), one update per Lightning step"
    if not module.automatic_optimization:
        raise UserError(
            f"StepsPerExecution({n}) needs automatic optimization; this module steps its own optimizers: {use}"
        )
    if is_param_in_hook_signature(module.training_step, "dataloader_iter", explicit=True):
        raise UserError(f"StepsPerExecution({n}): this module's training_step takes dataloader_iter itself: {use}")
    if len(trainer.optimizers) != 1:
        raise UserError(
            f"StepsPerExecution({n}) needs exactly one optimizer; configure_optimizers gave "
            f"{len(trainer.optimizers)}: {use}"
        )
    if trainer.accumulate_grad_batches != 1 or any(
        isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks
    ):
        raise UserError(f"StepsPerExecution({n}) does not accumulate gradients (accumulate_grad_batches): {use}")
    if not isinstance(trainer.strategy, SingleDeviceStrategy | DDPStrategy):
        raise UserError(
            f"StepsPerExecution({n}) runs on one device or under DDP, not {type(trainer.strategy).__name__}: {use}"
        )
    if any(c.interval == "step" and c.reduce_on_plateau for c in trainer.lr_scheduler_configs):
        raise UserError(f"StepsPerExecution({n}) does not step ReduceLROnPlateau every step: {use}")
    if trainer.gradient_clip_val or is_overridden("configure_gradient_clipping", module):
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise UserError(f"StepsPerExecution({n}) does not clip gradients under a gradient scaler (16-mixed): {use}")
        if hook_overridden("on_before_optimizer_step", trainer, module):
            raise UserError(
                f"StepsPerExecution({n}) clips gradients before on_before_optimizer_step, where Lightning clips "
                f"after it: {use}"
            )


def checkpoint_every_n_train_steps(callback: Any) -> int:
    """ModelCheckpoint's `every_n_train_steps`, which it keeps private; 0 for other checkpoint callbacks."""
    return callback._every_n_train_steps if isinstance(callback, ModelCheckpoint) else 0


TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def batch_transfer(trainer: L.Trainer, module: L.LightningModule) -> Callable[[Any], Any] | None:
    """What Lightning does to each minibatch before it hands it to a step, after precision's conversion: the three
    batch-transfer hooks, each the data module's where it overrides it, else the module's, as Lightning picks them.
    None where that changes nothing: no hook overridden, on the CPU, where a DataLoader's tensors are (Lightning's
    own call of the hooks costs a tenth of a small model's update)."""
    datamodule = trainer.datamodule
    hooks, overridden = [], False
    for name in TRANSFER_HOOKS:
        owner = datamodule if datamodule is not None and is_overridden(name, datamodule) else module
        hooks.append(getattr(owner, name))
        overridden = overridden or is_overridden(name, owner)
    device = trainer.strategy.root_device
    if device.type == "cpu" and not overridden:
        return None
    before, to_device, after = hooks
    return lambda batch: after(to_device(before(batch, 0), device, 0), 0)


def loss_of(output: Any) -> torch.Tensor | None:
    """The loss in what `training_step` returned: a tensor, a dict with "loss", or None to skip the minibatch."""
    if isinstance(output, dict):
        if "loss" not in output:
            raise UserError("training_step returned a dict without a 'loss' key: return the loss, or {'loss': loss}")
        return output["loss"]
    if output is None or isinstance(output, torch.Tensor):
        return output
    raise UserError(f"training_step must return a tensor, a dict with 'loss' or None, not {type(output).__name__}")


def detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return {**output, "loss": output["loss"].detach()}
    return output


def hook_overridden(hook: str, trainer: L.Trainer, module: L.LightningModule) -> bool:
    return is_overridden(hook, module, L.LightningModule) or any(
        is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks
    )


def plain_updates_are_exact(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether `plain_update` computes what Lightning's own update computes: one device (DDP needs manual_backward
    for its gradient all-reduce), no gradient scaler, no clipping, and no hook overridden that the update runs."""
    precision = trainer.precision_plugin
    return (
        type(trainer.strategy) is SingleDeviceStrategy
        and (type(precision) is MixedPrecision or not is_overridden("optimizer_step", precision, Precision))
        and getattr(precision, "scaler", None) is None
        and not trainer.gradient_clip_val
        and not any(hook_overridden(hook, trainer, module) for hook in UPDATE_HOOKS)
        and not any(is_overridden(hook, module, L.LightningModule) for hook in MODULE_UPDATE_HOOKS)
    )


def plain_update(optimizer: LightningOptimizer, loss: torch.Tensor | None) -> None:
    """The torch optimizer's own zero_grad() and step() around backward(), counted as Lightning counts its updates
    (`global_step`).

    Lightning's public route passes every update through the strategy, the precision plugin and each callback's
    hooks; at batch 32 that costs as much as a small model's whole update (docs/performance.md). The counting uses
    LightningOptimizer's private `_on_before_step` / `_on_after_step`, tested on the `lightning` versions that
    pyproject.toml admits (tests/test_steps_per_execution.py fails when they change).
    """
    torch_optimizer = optimizer.optimizer
    torch_optimizer.zero_grad()
    if loss is not None:
        loss.backward()
    optimizer._on_before_step()
    torch_optimizer.step()
    optimizer._on_after_step()


@contextlib.contextmanager
def counted_as_automatic_optimization_counts(optimizer: LightningOptimizer) -> Iterator[None]:
    """The update counted around the module's `optimizer_step` hook, as automatic optimization counts it, so that
    the hook reads `trainer.global_step` as it does there; manual optimization counts inside `optimizer.step()`.
    The same private LightningOptimizer counting as `plain_update`."""
    before, after = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = lambda: None
    before()
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after
    after()


def start_logging_minibatch(trainer: L.Trainer) -> None:
    """What Lightning's logging does at each minibatch's start: past the epoch's first minibatch, `self.log` adds
    to the epoch's sums rather than starting them anew when the logging hook changes (training_step,
    on_before_optimizer_step, …). Lightning's private logger connector, tested on the `lightning` versions that
    pyproject.toml admits (tests/test_steps_per_execution_conformance.py)."""
    trainer._logger_connector.on_batch_start(None)


def synchronize_update_counts(trainer: L.Trainer) -> None:
    """Lightning keeps two counts of updates, automatic and manual optimization's, and `trainer.global_step` reads
    the one of the module's current mode. Both take the larger, so that global_step stays the number of updates
    when the mode changes: at the end of a fit with this callback, or on resuming a checkpoint saved with another N.
    Private loop state, tested on the `lightning` versions that pyproject.toml admits."""
    loop = trainer.fit_loop.epoch_loop
    counts = (
        loop.automatic_optimization.optim_progress.optimizer.step.total,
        loop.manual_optimization.optim_step_progress.total,
    )
    updates = max(count.completed for count in counts)
    for count in counts:
        count.ready = count.completed = updates
