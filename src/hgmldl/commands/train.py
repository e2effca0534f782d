"""Training as the book does it: fit with validation, keep the best epoch, then evaluate on val and test."""

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from hgmldl.baseline import cross_validate_baseline
from hgmldl.callbacks import EarlyStopping
from hgmldl.config import check_config, command
from hgmldl.errors import UserError, one_line_errors
from hgmldl.files import write_text_atomic
from hgmldl.hparams import log_hyperparameters
from hgmldl.keras_export import check_exportable, save_keras
from hgmldl.module import Classifier
from hgmldl.resume import (
    check_resumable,
    interrupted_message,
    requeued_checkpoint,
    resume_checkpoint,
    resume_overrides,
    slurm_plugins,
)
from hgmldl.steps_per_execution import StepsPerExecution

log = logging.getLogger(__name__)


class Trained(NamedTuple):
    """What run() trained: `metrics.json`'s numbers, the module they were evaluated with (the best epoch's weights
    where EarlyStopping restored them) and its Trainer."""

    metrics: dict[str, Any]
    module: Classifier
    trainer: L.Trainer


def run(cfg: DictConfig) -> Trained:
    """Trains the configured network, writes `metrics.json` and returns what it trained."""
    check_config(cfg)
    if cfg.keras:  # what the file cannot hold, refused before training rather than after it
        model, optimizer = (OmegaConf.to_container(node, resolve=True) for node in (cfg.model, cfg.optimizer))
        check_exportable(model, optimizer, cfg.keras)
    start = time.perf_counter()
    set_up_process(cfg.seed)
    module, datamodule, trainer = build(cfg)
    fit(module, datamodule, trainer, cfg)
    metrics = evaluate(module, datamodule, trainer, has_validation(cfg))
    metrics["wall_time"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:  # under DDP every process gets here: one file, one line
        report(metrics, module, trainer, cfg)
    return Trained(metrics, module, trainer)


def set_up_process(seed: int) -> None:
    """The process-wide settings a run needs: the seed, and two that keep a CPU fast."""
    L.seed_everything(seed, workers=True, verbose=False)
    # RMSprop's and Adagrad's running averages decay into float32 denormals, which a CPU computes far more slowly
    # (docs/performance.md); TensorFlow flushes them to zero as well, so the numbers stay Keras'.
    torch.set_flush_denormal(True)
    if not torch.cuda.is_available():
        # `import lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (fork safety on GPU machines); without a GPU it
        # only makes torch 2.14's optimizer.step() retry loading NVML on every update (docs/performance.md).
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def build(cfg: DictConfig) -> tuple[Classifier, L.LightningDataModule, L.Trainer]:
    """The module, the data module and the Trainer the config describes."""
    if not has_validation(cfg):
        check_without_validation(cfg)
    return build_module(cfg), instantiate(cfg.data), build_trainer(cfg)


def fit(module: Classifier, datamodule: L.LightningDataModule, trainer: L.Trainer, cfg: DictConfig) -> None:
    """Keras' fit, from scratch, from `ckpt_path` / `resume`, or from a requeued SLURM job's own last.ckpt; an
    interrupted run ends with exit status 1."""
    ckpt_path = requeued_checkpoint(cfg.output_dir) or cfg.ckpt_path
    ckpt_path = ckpt_path or (resume_checkpoint(cfg.resume) if cfg.get("resume") else None)
    if ckpt_path not in (None, "last"):  # "last": Lightning's keyword for the run folder's own last.ckpt
        check_resumable(module, ckpt_path)
    try:
        with lightning_errors():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        # Lightning ends Ctrl-C and SIGTERM (a cluster's pre-emption) after the current step, tidily, with an exit;
        # last.ckpt is still the end of the last whole epoch, from which a resumed run goes on exactly.
        if trainer.interrupted and trainer.is_global_zero:
            log.warning(interrupted_message(cfg.output_dir, trainer.current_epoch))
        raise SystemExit(1) from None


def evaluate(
    module: Classifier, datamodule: L.LightningDataModule, trainer: L.Trainer, validation: bool
) -> dict[str, Any]:
    """Keras' evaluate() after fit, on val and test, with the module's best epoch's weights if EarlyStopping
    restored them; and the epochs trained, where EarlyStopping stopped, and the number of parameters."""
    with detached_loggers(trainer):
        val = trainer.validate(module, datamodule=datamodule, verbose=False)[0] if validation else {}
        test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    early_stopping = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    return {
        **{name: val[name] for name in ("val_loss", "val_accuracy") if validation},
        "test_loss": test["test_loss"],
        "test_accuracy": test["test_accuracy"],
        "epochs": trainer.current_epoch,
        "stopped_epoch": early_stopping.stopped_epoch if early_stopping else 0,  # Keras' 0-based index, 0 = ran all
        "best_epoch": early_stopping.best_epoch if early_stopping else trainer.current_epoch - 1,
        "params": sum(p.numel() for p in module.parameters()),
    }


@contextlib.contextmanager
def detached_loggers(trainer: L.Trainer) -> Iterator[None]:
    """The Trainer without its loggers for the final evaluation: their val curves already hold every epoch, and
    metrics.json holds these numbers."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        yield
    finally:
        trainer.loggers = loggers


def report(metrics: dict[str, Any], module: Classifier, trainer: L.Trainer, cfg: DictConfig) -> None:
    """metrics.json, the `keras=` file, the run's row in TensorBoard's HParams tab, and the run's last line."""
    write_text_atomic(f"{cfg.output_dir}/metrics.json", json.dumps(metrics, indent=2) + "\n")
    if cfg.keras:  # a relative path is in the run folder, beside checkpoints/, so a sweep's runs keep one each
        log.info("Keras' model.save: %s", save_keras(module, Path(cfg.output_dir) / cfg.keras))
    log_hyperparameters(trainer.loggers, cfg, metrics)
    scores = [f"{name} {metrics[name]:.4f}" for name in ("val_accuracy", "test_accuracy") if name in metrics]
    losses = [f"{name} {metrics[name]:.4f}" for name in ("val_loss", "test_loss") if name in metrics]
    log.info("%s  (%s, %d epochs, %s)", "  ".join(scores), ", ".join(losses), metrics["epochs"], cfg.output_dir)


def build_module(cfg: DictConfig) -> Classifier:
    return Classifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None,
        init=cfg.init.name,
        compile=cfg.compile,
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the configured callbacks and logger.

    The progress bar is TQDM's, and only in a terminal: Lightning 2.6 defaults to Rich's bar, which fills log
    files and CI logs with unreadable redraws; there the HistoryCSV callback prints one line per epoch instead.
    """
    # Without validation data (data.val_fraction=0) what watches val_* has nothing to watch: as Keras' callbacks do
    # when fit() has no validation_data, they are left out with a warning, and last.ckpt is the checkpoint.
    validation = has_validation(cfg)
    left_out = [f"callbacks.{name}" for name, node in cfg.callbacks.items() if watches_validation(node)]
    if not validation and left_out:
        log.warning(
            "No validation data (data.val_fraction=0): %s watch val_* and are left out; last.ckpt is the checkpoint",
            ", ".join(left_out),
        )
    callbacks = [instantiate(node) for node in cfg.callbacks.values() if validation or not watches_validation(node)]
    progress_bar = cfg.trainer.enable_progress_bar
    if progress_bar is None:  # Lightning's bar writes to stdout: a terminal gets it, a file or CI log does not
        progress_bar = sys.stdout.isatty()
    if progress_bar:  # TQDM's, where Lightning would take Rich's, which the `rich` dependency makes importable
        callbacks.append(TQDMProgressBar())
    callbacks.append(StepsPerExecution(cfg.steps_per_execution))  # Keras' compile(steps_per_execution=N)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    check_strategy(cfg.trainer)
    options: dict[str, Any] = {"plugins": [*instantiate(cfg.trainer.plugins or []), *slurm_plugins()]}
    if not validation:
        options |= {"limit_val_batches": 0, "num_sanity_val_steps": 0}  # no validation loop at all
    with lightning_errors():
        return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, enable_progress_bar=progress_bar, **options)


def has_validation(cfg: DictConfig) -> bool:
    """data.val_fraction=0 (DLP ch. 2) trains on every training image: no validation data, no val_* metrics."""
    return cfg.data.val_fraction > 0


def watches_validation(node: Any) -> bool:
    return str(node.get("monitor") or "").startswith("val_")


def check_without_validation(cfg: DictConfig) -> None:
    """data.val_fraction=0 leaves no validation data: a scheduler that watches a val_* metric is refused before
    training (the callbacks that watch one are left out, build_trainer)."""
    if cfg.get("scheduler") and watches_validation(cfg.scheduler):
        raise UserError(
            f"data.val_fraction=0 leaves no validation data for scheduler.monitor={cfg.scheduler.monitor} to watch: "
            "use a scheduler without monitor (step, exponential, cosine, none) or a data.val_fraction > 0"
        )


# Strategies that run the training in processes of their own: the model, the callbacks' state and the trainer's
# counters of the calling process stay as they were, so what run() writes afterwards would be wrong.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def check_strategy(trainer: DictConfig) -> None:
    """Refuses the strategies whose training run() could not see."""
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy.startswith(SPAWNING_STRATEGIES):
        raise UserError(
            f"trainer.strategy={strategy} trains in spawned processes, whose results train.py cannot see: use "
            "trainer=ddp (Lightning starts train.py once per device)"
        )


@contextlib.contextmanager
def lightning_errors() -> Iterator[None]:
    """Lightning's answer to an option it cannot use (a MisconfigurationException, or a ValueError from the
    Trainer's constructor) as one `error:` line."""
    try:
        yield
    except InstantiationException as error:
        raise UserError(f"trainer: {error.__cause__ or error}") from None
    except MisconfigurationException as error:
        raise UserError(f"trainer: {error}") from None


@command("train")
def train(cfg: DictConfig) -> float | None:
    # 7-1's scikit-learn baseline trains no network, so it never takes the Lightning path
    metrics = cross_validate_baseline(cfg) if cfg.get("baseline") is not None else run(cfg).metrics
    return metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None  # what a Hydra sweeper maximises


def main() -> None:
    """`python train.py …` at the top of the checkout, `hgmldl-train …` where pip installed hgmldl."""
    sys.argv[1:] = one_line_errors(resume_overrides)(sys.argv[1:])  # resume=<run dir>: that run's config, in its folder
    train()
