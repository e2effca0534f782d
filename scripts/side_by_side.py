"""What scripts/benchmark.py adds to the `python train.py` processes it starts (as `+callbacks.…` overrides): the
benchmark's floor, a plain PyTorch loop written for speed, run between hgmldl's epochs in the same process
(SideBySide), and the turn-taking of the other hgmldl sides (TakeTurns), each in a process of its own.

Only one side computes at a time: hgmldl 0, plain 0, each guest's epoch 0, hgmldl 1, … The others wait on a pipe.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from hgmldl.models import keras_init_


def clock(device: torch.device) -> float:
    """Seconds, once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PlainLoop:
    """The benchmark's floor, what a careful hand-written loop does: tensors in memory, one `randperm` per epoch, each minibatch gathered
    with `index_select` (cheaper here than gathering the whole epoch and slicing it), channels-last convolutions,
    zero_grad/backward/step per minibatch, loss and correct count summed on the device, a large-batch evaluation.
    Same model, Keras initialisation, optimizer settings, data and batch sizes as the hgmldl run it sits in."""

    def __init__(self, module: L.LightningModule, datamodule: L.LightningDataModule, seed: int) -> None:
        self.data = datamodule
        self.device = datamodule.train_images.device
        torch.manual_seed(seed)
        self.net = keras_init_(instantiate(module.hparams.model)).to(self.device, memory_format=torch.channels_last)
        self.optimizer = instantiate(module.hparams.optimizer, params=self.net.parameters())
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.updates = 0

    def epoch(self) -> dict[str, float]:
        """One training epoch and one validation pass; returns the four History numbers."""
        batch_size, eval_batch_size = self.data.batch_size, self.data.eval_batch_size
        images, labels = self.data.train_images, self.data.train_labels
        order = torch.randperm(len(labels), device=self.device, generator=self.generator)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.net.train()
        for indices in order.split(batch_size):
            x, y = images.index_select(0, indices), labels.index_select(0, indices)
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            self.updates += 1
        history = {"loss": float(loss_sum) / len(labels), "accuracy": float(correct) / len(labels)}
        self.net.eval()
        with torch.inference_mode():
            val_loss, val_correct = 0.0, 0
            for x, y in zip(
                self.data.val_images.split(eval_batch_size), self.data.val_labels.split(eval_batch_size), strict=True
            ):
                logits = self.net(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(dim=1) == y).sum()
        count = len(self.data.val_labels)
        return history | {"val_loss": float(val_loss) / count, "val_accuracy": float(val_correct) / count}


class EpochClock(L.Callback):
    """Times the epochs of one hgmldl run start to start (training, validation, checkpoint, History, logging:
    everything the Trainer does) and keeps each epoch's val_accuracy; writes them to `out` when training ends.
    `between_epochs` runs outside the timed windows."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.timings: dict[str, list] = {"epoch_seconds": [], "val_accuracy": []}
        self.epoch_started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.end_epoch(trainer, pl_module)
        self.between_epochs(trainer, pl_module)
        self.epoch_started = clock(pl_module.device)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end_epoch(trainer, pl_module)
        self.out.write_text(json.dumps(self.result(trainer, pl_module), indent=2) + "\n")

    def end_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timings["epoch_seconds"].append(clock(pl_module.device) - self.epoch_started)
        self.timings["val_accuracy"].append(float(trainer.callback_metrics["val_accuracy"]))

    def between_epochs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before each epoch, the first included."""

    def result(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return self.timings | {"updates": trainer.global_step}


class SideBySide(EpochClock):
    """The host: after each of hgmldl's epochs, one plain-loop epoch (hgmldl 0, plain 0, hgmldl 1, plain 1, …), then
    each guest process (`guests`: pairs of file descriptors, one to give it its turn, one it answers on) runs one
    epoch of its own while this one waits. The plain loop draws dropout from a forked RNG, so hgmldl's trajectory is
    the one `train.py` alone gives."""

    def __init__(self, out: str, guests: list[list[int]] | None = None) -> None:
        super().__init__(out)
        self.guests = [(int(turn), int(done)) for turn, done in guests or []]
        self.first_step_at: float | None = None
        self.plain: dict[str, list] = {"epoch_seconds": [], "val_accuracy": []}
        self.loop: PlainLoop | None = None
        self.hgmldl_peak_rss_mb = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()  # wall clock: compared with the launch time in the parent process

    def end_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """hgmldl's epoch is timed: now the plain loop's epoch, then each guest's."""
        super().end_epoch(trainer, pl_module)
        if self.loop is None:  # hgmldl's peak through set-up and a whole epoch, before the loop allocates anything
            self.hgmldl_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.loop is None:
                self.loop = PlainLoop(pl_module, trainer.datamodule, seed=trainer.datamodule.seed)
            started = clock(pl_module.device)
            history = self.loop.epoch()
            self.plain["epoch_seconds"].append(clock(pl_module.device) - started)
        self.plain["val_accuracy"].append(history["val_accuracy"])
        for turn, done in self.guests:
            os.write(turn, b"t")
            if not os.read(done, 1):
                raise RuntimeError("a side-by-side process ended early; its log is in the benchmark's work folder")

    def result(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {
            "first_step_at": self.first_step_at,
            "hgmldl_peak_rss_mb": self.hgmldl_peak_rss_mb,
            "device": str(pl_module.device),
            "threads": torch.get_num_threads(),
            "tensorflow_imported": "tensorflow" in sys.modules,
            "hgmldl": super().result(trainer, pl_module),
            "plain": self.plain | {"updates": self.loop.updates},
        }


class TakeTurns(EpochClock):
    """A guest hgmldl run (bf16, one update per step, …): says when it is ready, then waits for its turn before each
    epoch and says when the epoch is done, so it computes only while SideBySide's process waits."""

    def __init__(self, out: str, turn_fd: int, done_fd: int) -> None:
        super().__init__(out)
        self.turn_fd, self.done_fd = turn_fd, done_fd

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.write(self.done_fd, b"r")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        os.write(self.done_fd, b"d")

    def between_epochs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            os.write(self.done_fd, b"d")
        if not os.read(self.turn_fd, 1):
            raise RuntimeError("the hgmldl run this one takes turns with has ended")
