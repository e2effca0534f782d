"""One LightningModule for every book model: Keras' compile(loss='sparse_categorical_crossentropy',
metrics=['accuracy']) followed by fit / evaluate / predict."""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from hgmldl.errors import UserError
from hgmldl.metrics import SampleMean, hit_per_sample, loss_per_sample
from hgmldl.models import INPUT_SHAPE, keras_init_

Recipe = dict[str, Any] | Callable[..., Any]


def recipe_config(recipe: Recipe) -> dict[str, Any]:
    """What builds the network or the optimizer, as the config dict Hydra's `instantiate` takes: a dict passes
    through (what train.py gives), and `partial(mlp, 100, "sigmoid")` becomes
    `{"_target_": "hgmldl.models.mlp", "hidden_units": 100, "activation": "sigmoid", "dropout": 0.0}`, the dict
    `model=mlp activation=sigmoid` composes, with every default written out, as Keras' get_config() does."""
    if isinstance(recipe, dict):
        return recipe
    if not callable(recipe) or isinstance(recipe, nn.Module):
        kind = type(recipe).__name__
        raise UserError(
            f"Classifier takes recipes, not a built {kind}: partial(mlp, 100, 'relu') rather than mlp(100, 'relu'), "
            "partial(KerasAdam) rather than KerasAdam(params), so that its checkpoint can build the model again"
        )
    if isinstance(recipe, functools.partial):
        function, args, kwargs = recipe.func, recipe.args, recipe.keywords
    else:
        function, args, kwargs = recipe, (), {}
    arguments = inspect.signature(function).bind_partial(*args, **kwargs)
    arguments.apply_defaults()
    values = {name: list(value) if isinstance(value, tuple) else value for name, value in arguments.arguments.items()}
    return {"_target_": f"{function.__module__}.{function.__qualname__}", **values}  # tuples as YAML lists


# Keras' History names: loss / accuracy while training, val_* on validation data, test_* from evaluate(test).
STAGE_PREFIX = {"train": "", "val": "val_", "test": "test_"}


class Classifier(L.LightningModule):
    """Keras' `model.compile(optimizer=…, loss='sparse_categorical_crossentropy', metrics=['accuracy'])` on a
    network: `Classifier(partial(mlp, 100, "relu"), partial(KerasAdam))`. It takes recipes, not built objects (a
    `functools.partial`, or the config dicts train.py passes), and saves them as hyperparameters, so a checkpoint
    alone rebuilds the model: `Classifier.load_from_checkpoint(path)`, or `hgmldl.load(path)` with one-line errors.

    `training_step` is Keras' `train_step`: one minibatch, one loss, from which Lightning's automatic optimization
    does backward() and optimizer.step(). The speed comes from outside, as Keras' `compile` option does: the Trainer
    callback `StepsPerExecution` (docs/training.md) runs this same step on N minibatches per Lightning step.
    """

    def __init__(
        self,
        model: Recipe,
        optimizer: Recipe,
        scheduler: dict[str, Any] | None = None,
        init: str = "keras",
        compile: bool = False,
    ) -> None:
        super().__init__()
        model, optimizer = recipe_config(model), recipe_config(optimizer)
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
        self.example_input_array = torch.zeros(1, *INPUT_SHAPE)  # gives ModelSummary Keras' output-shape column
        # The epoch means, keyed by their History names (loss, accuracy, val_loss, …).
        self.epoch_metrics = nn.ModuleDict()
        for prefix in STAGE_PREFIX.values():
            self.epoch_metrics[f"{prefix}loss"] = SampleMean(loss_per_sample)
            self.epoch_metrics[f"{prefix}accuracy"] = SampleMean(hit_per_sample)

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
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Keras' train_step: the minibatch's loss, from which Lightning computes the gradients and the update."""
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log_epoch_means("train", loss, logits, labels)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log_epoch_means("val", F.cross_entropy(logits, labels), logits, labels)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log_epoch_means("test", F.cross_entropy(logits, labels), logits, labels)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Keras' predict: one row of class probabilities per image."""
        return torch.softmax(self(batch[0]), dim=1)

    def log_epoch_means(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds the minibatch to the epoch's loss and accuracy (Keras' History), which Lightning computes, logs and
        resets at the epoch's end. A metric object needs logging once per epoch, so it is logged with the epoch's
        first minibatch: each `self.log` costs about as much as a small model's update (docs/performance.md)."""
        prefix = STAGE_PREFIX[stage]
        loss_mean, accuracy = self.epoch_metrics[f"{prefix}loss"], self.epoch_metrics[f"{prefix}accuracy"]
        first = loss_mean.update_count == 0
        loss_mean.add(loss.detach(), labels)
        accuracy.add(logits.detach(), labels)
        if not first or self._trainer is None:  # no Trainer: a step called by hand
            return
        self.log(f"{prefix}loss", loss_mean, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log(f"{prefix}accuracy", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        # A metric named `step` becomes the loggers' x-axis: epochs, as in the book's History plots. Only while
        # fitting: trainer.validate and trainer.test report the scores alone, as Keras' evaluate does.
        if self.trainer.state.fn == "fit":
            self.log("step", float(self.current_epoch), on_step=False, on_epoch=True, batch_size=len(labels))
        if stage == "train" and self.hparams.scheduler:  # the epoch's learning rate: history.csv's lr column
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr", lr, on_step=False, on_epoch=True, batch_size=len(labels))
