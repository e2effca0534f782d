"""StepsPerExecution on modules written as Lightning's docs teach: each trains at N = 1 and at N = 5, which does not
divide the epoch's 13 minibatches, to the same weights, global_step and logged epoch metrics, or is refused with one
line before any update."""

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hgmldl.errors import UserError
from hgmldl.steps_per_execution import StepsPerExecution

pytestmark = [
    # The modules take plain in-process DataLoaders, as Lightning's docs' examples do.
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
    # SkipsSomeMinibatches returns None on purpose, which Lightning notes at N = 1.
    pytest.mark.filterwarnings("ignore:`training_step` returned `None`"),
]

N = 5
EPOCHS = 3
BATCHES = 13  # 100 samples in minibatches of 8


class LitRegressor(L.LightningModule):
    """Lightning's docs' first module: a small network, a loss in training_step, self.log, one optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class ReturnsDict(LitRegressor):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log_dict({"train_mae": F.l1_loss(self.net(x), y)}, on_epoch=True)
        return {"loss": loss, "size": len(x)}


class SkipsSomeMinibatches(LitRegressor):
    def training_step(self, batch, batch_idx):
        return None if batch_idx % 4 == 3 else super().training_step(batch, batch_idx)


class TransfersBatches(LitRegressor):
    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x * 2, y

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x - 1, y


class WarmUp(LitRegressor):
    """Lightning's documented learning-rate warm-up: an overridden optimizer_step."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        optimizer.step(closure=optimizer_closure)
        for group in optimizer.param_groups:
            group["lr"] = min(1.0, (self.trainer.global_step + 1) / 20) * 0.01


class KeepsGradients(LitRegressor):
    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        if batch_idx % 2 == 0:
            optimizer.zero_grad()


class ClipsItsOwnWay(LitRegressor):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=0.05, gradient_clip_algorithm="value")


class LogsGradientNorms(LitRegressor):
    def on_before_optimizer_step(self, optimizer):
        self.log("grad_norm", torch.linalg.vector_norm(self.net[0].weight.grad), on_step=False, on_epoch=True)


class StepScheduler(LitRegressor):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 2}}


class EpochSchedulers(LitRegressor):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        every_other = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.9)
        return [optimizer], [{"scheduler": every_other, "frequency": 2}, {"scheduler": plateau, "monitor": "val_loss"}]


class ManualOptimization(LitRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.manual_backward(loss)
        optimizer.step()


class TwoOptimizers(ManualOptimization):
    def configure_optimizers(self):
        return torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[3].parameters(), lr=0.1)


class PlateauEveryStep(LitRegressor):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": plateau, "interval": "step", "monitor": "train_loss"},
        }


SAME = [
    ("self.log without batch_size", LitRegressor, {}),
    ("a dict returned, log_dict, on_step and prog_bar", ReturnsDict, {}),
    ("None returned for some minibatches", SkipsSomeMinibatches, {}),
    ("batch-transfer hooks", TransfersBatches, {}),
    ("gradient_clip_val", LitRegressor, {"gradient_clip_val": 0.05}),
    ("gradient_clip_algorithm=value", LitRegressor, {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}),
    ("configure_gradient_clipping overridden", ClipsItsOwnWay, {}),
    ("optimizer_step overridden (warm-up)", WarmUp, {}),
    ("optimizer_zero_grad overridden", KeepsGradients, {}),
    ("on_before_optimizer_step logging", LogsGradientNorms, {}),
    ("step scheduler with frequency 2", StepScheduler, {}),
    ("epoch schedulers: frequency 2 and ReduceLROnPlateau", EpochSchedulers, {}),
    ("val_check_interval=0.5", LitRegressor, {"val_check_interval": 0.5, "limit_train_batches": 10}),
    ("integer val_check_interval", LitRegressor, {"val_check_interval": 5, "limit_train_batches": 10}),
    ("max_steps mid-epoch", LitRegressor, {"max_steps": 30}),
    ("log_every_n_steps", LitRegressor, {"log_every_n_steps": 7}),
]

REFUSED = [
    ("manual optimization", ManualOptimization, {}, "needs automatic optimization"),
    ("two optimizers", TwoOptimizers, {}, "needs automatic optimization"),
    ("accumulate_grad_batches", LitRegressor, {"accumulate_grad_batches": 2}, "does not accumulate gradients"),
    ("ReduceLROnPlateau every step", PlateauEveryStep, {}, "does not step ReduceLROnPlateau every step"),
    ("clipping with on_before_optimizer_step", LogsGradientNorms, {"gradient_clip_val": 0.1}, "clips gradients before"),
    ("validation every 6 minibatches", LitRegressor, {"val_check_interval": 0.5}, "a multiple of 5 that divides"),
    ("validation every 5 of 13 minibatches", LitRegressor, {"val_check_interval": 5}, "a multiple of 5 that divides"),
]


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(100, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=50)


def fit(module_class, options: dict, n: int, folder, *callbacks: L.Callback):
    L.seed_everything(0, verbose=False)
    module = module_class()
    train, val = loaders()
    settings = {
        "max_epochs": EPOCHS,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
    }
    trainer = L.Trainer(
        enable_model_summary=False,
        callbacks=[*callbacks, StepsPerExecution(n)],
        logger=CSVLogger(folder),
        **settings | options,
    )
    trainer.fit(module, train, val)
    return module, trainer


def epoch_metrics(trainer: L.Trainer) -> dict[str, list[float]]:
    """Each epoch-level column of the CSV log (the *_epoch and validation ones), in order."""
    with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
        rows = list(csv.DictReader(file))
    columns = [name for name in rows[0] if name.endswith("_epoch") or name.startswith(("val_", "grad_norm"))]
    return {name: [float(row[name]) for row in rows if row[name]] for name in columns}


@pytest.mark.parametrize(("module_class", "options"), [case[1:] for case in SAME], ids=[case[0] for case in SAME])
def test_n_updates_per_step_train_what_one_does(module_class, options, tmp_path):
    assert_trains_as_one_update_per_step(module_class, options, N, tmp_path)


def test_fifty_updates_per_step_more_than_an_epoch_train_what_one_does(tmp_path):
    assert_trains_as_one_update_per_step(LitRegressor, {}, 50, tmp_path)


def assert_trains_as_one_update_per_step(module_class, options: dict, n: int, tmp_path) -> None:
    plain, plain_trainer = fit(module_class, options, 1, tmp_path / "n1")
    module, trainer = fit(module_class, options, n, tmp_path / f"n{n}")
    assert trainer.global_step == plain_trainer.global_step > 0
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(module.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    metrics, plain_metrics = epoch_metrics(trainer), epoch_metrics(plain_trainer)
    assert metrics.keys() == plain_metrics.keys() and plain_metrics
    for name, values in plain_metrics.items():
        assert metrics[name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
    # Given back: the module is plain Lightning again, and global_step still counts the updates.
    assert module.automatic_optimization and {"training_step", "log"}.isdisjoint(vars(module))


@pytest.mark.parametrize(
    ("module_class", "options", "message"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_what_cannot_run_is_refused_in_one_line_before_any_update(module_class, options, message, tmp_path):
    ending = Ending()
    with pytest.raises(UserError, match=message) as refusal:
        fit(module_class, options, N, tmp_path, ending)
    assert "\n" not in str(refusal.value) and str(refusal.value).startswith(f"StepsPerExecution({N})")
    assert ending.global_step == 0
    L.seed_everything(0, verbose=False)
    for name, tensor in module_class().state_dict().items():  # fit's module as it was built
        torch.testing.assert_close(ending.state_dict[name], tensor, msg=name)


class Ending(L.Callback):
    def on_exception(self, trainer, pl_module, exception):
        self.global_step, self.state_dict = trainer.global_step, pl_module.state_dict()


def test_gradient_accumulation_scheduler_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not accumulate gradients"):
        fit(LitRegressor, {}, N, tmp_path, GradientAccumulationScheduler({0: 2}))


def test_model_checkpoint_saves_after_the_same_updates(tmp_path):
    saved = {}
    for n in (1, N):
        checkpoint = ModelCheckpoint(tmp_path / f"n{n}", every_n_train_steps=4, save_top_k=-1, filename="{step}")
        _, trainer = fit(LitRegressor, {"enable_checkpointing": True}, n, tmp_path / f"log{n}", checkpoint)
        saved[n] = {path.name for path in (tmp_path / f"n{n}").iterdir()}
    assert saved[N] == saved[1] == {f"step={step}.ckpt" for step in range(4, EPOCHS * BATCHES + 1, 4)}


def test_a_trainer_without_the_callback_trains_the_module_as_plain_lightning(tmp_path):
    module, trainer = fit(LitRegressor, {}, N, tmp_path / "first")
    assert trainer.global_step == EPOCHS * BATCHES
    again = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    again.fit(module, *loaders())
    assert again.global_step == BATCHES and math.isfinite(again.callback_metrics["train_loss"])


# The resumed run saves into the folder it resumes from, as train.py's resume= does.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize(("first", "then"), [(N, 1), (1, N)])
def test_a_checkpoint_resumed_with_another_n_goes_on_counting_updates(tmp_path, first, then):
    checkpoint = ModelCheckpoint(tmp_path / "checkpoints", save_last=True)
    module, trainer = fit(LitRegressor, {"max_epochs": 1, "enable_checkpointing": True}, first, tmp_path, checkpoint)
    assert trainer.global_step == BATCHES
    checkpoint = ModelCheckpoint(tmp_path / "checkpoints", save_last=True)  # as the checkpoint was made with
    resumed = L.Trainer(
        max_epochs=EPOCHS, callbacks=[StepsPerExecution(then), checkpoint], logger=False, enable_progress_bar=False
    )
    resumed.fit(LitRegressor(), *loaders(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert resumed.global_step == EPOCHS * BATCHES


class ScalingDataModule(L.LightningDataModule):
    def train_dataloader(self):
        return loaders()[0]

    def val_dataloader(self):
        return loaders()[1]

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x * 3, y

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x + 1, y


def test_a_data_modules_transfer_hooks_run_for_every_minibatch():
    weights = []
    for n in (1, N):
        L.seed_everything(0, verbose=False)
        module = LitRegressor()
        trainer = L.Trainer(
            max_epochs=2,
            callbacks=[StepsPerExecution(n)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(module, datamodule=ScalingDataModule())
        weights.append(module.net[0].weight.detach())
    torch.testing.assert_close(weights[1], weights[0])
