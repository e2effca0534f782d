"""conf/scheduler: learning-rate schedules, stepped alike with one or many updates per Lightning step."""

import csv

import lightning as L
import pytest
from hydra.utils import instantiate
from lightning.pytorch.tuner import Tuner

from hgmldl.commands.train import build_module, run


def lr_column(run_dir):
    with open(run_dir / "history.csv") as file:
        return [float(row["lr"]) for row in csv.DictReader(file)]


@pytest.mark.parametrize("n", [1, 4])
def test_step_decay_halves_the_learning_rate_every_epoch(make_cfg, tmp_path, n):
    cfg = make_cfg(f"steps_per_execution={n}", "scheduler=step", "scheduler.scheduler.step_size=1", "callbacks=default")
    cfg.trainer.max_epochs = 3
    run(cfg)
    assert lr_column(tmp_path / "run") == pytest.approx([1e-3, 5e-4, 2.5e-4])


@pytest.mark.parametrize("n", [1, 4])
def test_reduce_on_plateau_reads_val_loss_after_each_epoch(make_cfg, tmp_path, n):
    # An improvement must beat the best val_loss by 10 (absolute, as Keras' min_delta): only the first epoch does,
    # so with patience 0 the second epoch's validation divides the learning rate by 10.
    cfg = make_cfg(
        f"steps_per_execution={n}",
        "scheduler=reduce_on_plateau",
        "scheduler.scheduler.patience=0",
        "scheduler.scheduler.threshold=10",
        "callbacks=default",
    )
    cfg.trainer.max_epochs = 3
    run(cfg)
    assert lr_column(tmp_path / "run") == pytest.approx([1e-3, 1e-3, 1e-4])


@pytest.mark.parametrize("name", ["exponential", "cosine"])
def test_each_schedule_lowers_the_learning_rate(make_cfg, tmp_path, name):
    run(make_cfg(f"scheduler={name}", "callbacks=default"))
    first, second = lr_column(tmp_path / "run")
    assert first == pytest.approx(1e-3) and second < first


def test_no_scheduler_by_default_and_no_lr_column(make_cfg, tmp_path):
    cfg = make_cfg("callbacks=default")
    assert not cfg.scheduler
    run(cfg)
    with open(tmp_path / "run" / "history.csv") as file:
        assert "lr" not in next(csv.reader(file))


@pytest.mark.filterwarnings("ignore:`max_epochs` was not set")  # a Trainer as Lightning's tuning docs build it
def test_lightnings_learning_rate_finder_runs_on_the_module(make_cfg, tmp_path):
    cfg = make_cfg("steps_per_execution=1", "model=softmax")
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    module = build_module(cfg)
    finder = Tuner(trainer).lr_find(module, datamodule=instantiate(cfg.data), num_training=20)
    assert len(finder.results["lr"]) == 20 and finder.suggestion() > 0
    assert module.lr == finder.suggestion() and module.hparams.optimizer["lr"] == module.lr  # what a checkpoint keeps
