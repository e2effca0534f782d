"""Callbacks for tests/test_ddp.py: each DDP process saves the weights it ended with and the training order it
was given, to compare the ranks."""

from pathlib import Path

import lightning as L
import torch


class SaveWeights(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.state_dict(), self.folder / f"weights_rank{trainer.global_rank}.pt")


class SaveOrder(L.Callback):
    """Per epoch: the sample indices the rank's sampler gave, and the labels its training steps received."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.indices: list[torch.Tensor] = []
        self.labels: list[list[torch.Tensor]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.indices.append(torch.tensor(list(trainer.train_dataloader.sampler)))  # after Lightning's set_epoch
        self.labels.append([])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Wraps the module's own step, which StepsPerExecution (set up after this callback) runs per minibatch.
        training_step = pl_module.training_step

        def recording_step(batch, batch_idx):
            self.labels[-1].append(batch[1])
            return training_step(batch, batch_idx)

        pl_module.training_step = recording_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        order = {
            "indices": self.indices,
            "labels": [torch.cat(labels) for labels in self.labels],
            "train_labels": trainer.datamodule.train_labels,
        }
        torch.save(order, self.folder / f"order_rank{trainer.global_rank}.pt")
