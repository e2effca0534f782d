"""One LightningModule for every book model: Keras' compile(loss='sparse_categorical_crossentropy',
metrics=['accuracy']) followed by fit / evaluate / predict."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
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
    """Builds its network and optimizer from the plain config dicts it saves as hyperparameters, so a
    checkpoint alone rebuilds the model (Keras' `load_model`): `Classifier.load_from_checkpoint(path)`.

    Training uses manual optimization: each Lightning step receives a list of minibatches and makes one
    optimizer update per minibatch, exactly as Keras' fit does with batch_size=32, while Lightning's per-step
    cost (hooks, logging) is paid once per list (see `TensorBatches` and scripts/benchmark.py).
    """

    def __init__(
        self, model: dict[str, Any], optimizer: dict[str, Any], init: str = "keras", compile: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = instantiate(model)
        if init == "keras":
            keras_init_(self.net)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")
        # Channels-last (NHWC) convolution kernels: oneDNN's and cuDNN's fast layout; a CNN epoch took 12-37 % less
        # time on this project's 2-core CPU. The inputs have one channel, so they are in that layout already; 2-D
        # Dense weights are untouched. After the initialisation, which fills the tensors in memory order.
        self.net.to(memory_format=torch.channels_last)
        if compile:  # torch.compile in place, so the state_dict keys stay those of the plain network
            self.net.compile()
        self.automatic_optimization = False
        self.example_input_array = torch.zeros(1, 1, 28, 28)  # gives ModelSummary Keras' output-shape column
        # The epoch means, keyed by their History names (loss, accuracy, val_loss, …).
        self.epoch_metrics = nn.ModuleDict()
        for prefix in STAGE_PREFIX.values():
            self.epoch_metrics[f"{prefix}loss"] = MeanMetric()
            self.epoch_metrics[f"{prefix}accuracy"] = MulticlassAccuracy(
                NUM_CLASSES, average="micro", validate_args=False
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits; `predict_step` turns them into Keras' softmax probabilities."""
        return self.net(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.hparams.optimizer, params=self.parameters())

    def on_fit_start(self) -> None:
        # manual_backward() and LightningOptimizer.step() pass every update through the strategy, the precision
        # plugin and each callback's on_before/after_backward and on_before_optimizer_step hooks: ~0.1 ms, as long
        # as a whole softmax update on a CPU. On one device, without gradient scaling and with none of these hooks
        # overridden, they have nothing to do, so a plain backward() and the torch optimizer's own step() compute
        # exactly the same; Lightning still counts every update (global_step).
        precision = self.trainer.precision_plugin
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        self._plain_updates = (
            type(self.trainer.strategy) is SingleDeviceStrategy
            and (type(precision) is MixedPrecision or not is_overridden("optimizer_step", precision, Precision))
            and getattr(precision, "scaler", None) is None
            and not any(is_overridden(hook, self, L.LightningModule) for hook in hooks)
            and not any(is_overridden(hook, cb, L.Callback) for cb in self.trainer.callbacks for hook in hooks)
        )

    def training_step(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Returns the minibatches' losses: callbacks see them as `outputs["loss"]` (TerminateOnNaN checks them)."""
        optimizer = self.optimizers()
        losses, predictions = [], []
        for images, labels in minibatches:
            logits = self.net(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            if self._plain_updates:
                loss.backward()
                optimizer._on_before_step()  # Lightning's own step counting, as optimizer.step() would do it
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                self.manual_backward(loss)
                optimizer.step()
            losses.append(loss.detach())
            predictions.append(logits.detach().argmax(dim=1))
        sizes = torch.tensor([len(labels) for _, labels in minibatches], device=self.device)
        labels = torch.cat([labels for _, labels in minibatches])
        losses = torch.stack(losses)
        self._record("train", losses, sizes, torch.cat(predictions), labels)
        return losses

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(self(batch[0]), dim=1)

    def _evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, labels = batch
        logits = self(images)
        size = torch.tensor([len(labels)], device=self.device)
        self._record(stage, F.cross_entropy(logits, labels)[None], size, logits.argmax(dim=1), labels)

    def _record(
        self,
        stage: str,
        losses: torch.Tensor,
        sizes: torch.Tensor,
        predictions: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        """Accumulates the epoch's mean loss and accuracy (logged once per epoch, see `_log_epoch_metrics`)."""
        prefix = STAGE_PREFIX[stage]
        self.epoch_metrics[f"{prefix}loss"].update(losses, weight=sizes)
        self.epoch_metrics[f"{prefix}accuracy"].update(predictions, labels)

    def on_train_epoch_start(self) -> None:
        self._log_epoch_metrics("train")

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
