"""A callback for tests/test_ddp.py: each DDP process saves the weights it ended with, to compare the ranks."""

from pathlib import Path

import lightning as L
import torch


class SaveWeights(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.state_dict(), self.folder / f"weights_rank{trainer.global_rank}.pt")
