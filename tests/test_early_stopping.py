"""Keras' EarlyStopping(patience, restore_best_weights=True) driven by scripted validation losses: the epoch it
stops in, the epoch it calls best, and the weights it leaves, also across a resume."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hgmldl.callbacks import EarlyStopping


class Scripted(L.LightningModule):
    """Its one weight is the number of the last epoch trained; each epoch's val_loss is read from a script."""

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.val_losses = val_losses
        self.epoch_weight = nn.Parameter(torch.tensor(-1.0))
        self.automatic_optimization = False

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        with torch.no_grad():
            self.epoch_weight.fill_(self.current_epoch)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.val_losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)))


def fit(val_losses, max_epochs, tmp_path, ckpt_path=None):
    """Keras' EarlyStopping(monitor='val_loss', patience=2, restore_best_weights=True), and last.ckpt every epoch."""
    module = Scripted(val_losses)
    stopping = EarlyStopping(monitor="val_loss", mode="min", patience=2, restore_best_weights=True)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[stopping, ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
        accelerator="cpu",
        logger=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, stopping, trainer


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best(tmp_path):
    module, stopping, trainer = fit([1.0, 0.5, 0.6, 0.7, 0.1, 0.1], max_epochs=6, tmp_path=tmp_path)
    assert stopping.stopped_epoch == 3  # epochs 2 and 3 did not improve on epoch 1's 0.5
    assert trainer.current_epoch == 4  # epochs 0-3 ran; the 0.1 of epoch 4 was never seen
    assert stopping.best_epoch == 1
    assert module.epoch_weight.item() == 1  # the weights at the end of epoch 1, not of epoch 3


def test_restores_the_best_epoch_also_when_it_never_stops_early(tmp_path):
    module, stopping, _ = fit([1.0, 0.5, 0.6], max_epochs=3, tmp_path=tmp_path)
    assert stopping.stopped_epoch == 0  # Keras' 0: ran every epoch
    assert stopping.best_epoch == 1
    assert module.epoch_weight.item() == 1  # Keras 3 restores at the end of training, stopped or not


def test_a_run_resumed_between_the_best_epoch_and_the_stop_stops_and_restores_as_if_uninterrupted(tmp_path):
    val_losses = [1.0, 0.5, 0.6, 0.7, 0.1]
    fit(val_losses, max_epochs=3, tmp_path=tmp_path)  # ends after epoch 2: best was 1, one epoch without improvement
    module, stopping, _ = fit(val_losses, max_epochs=5, tmp_path=tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert stopping.stopped_epoch == 3
    assert stopping.best_epoch == 1
    assert module.epoch_weight.item() == 1  # epoch 1's weights, which only the checkpoint still held


def test_without_restore_the_last_epochs_weights_stay():
    module = Scripted([1.0, 0.5, 0.6, 0.7])
    stopping = EarlyStopping(monitor="val_loss", mode="min", patience=2)  # Keras' default: no restore
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[stopping],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert stopping.stopped_epoch == 3 and module.epoch_weight.item() == 3
