"""TensorBoard's HParams tab: one row per run with the choices a reader compares, under the names they type, beside
the final numbers.

Lightning's `log_hyperparams` (torch's `hparams()`) writes an experiment summary into every run; from the sessions
alone TensorBoard finds the choices that differ between a sweep's runs and shows them first, where an experiment
summary lists them alphabetically and the table's first five columns hide the swept keys. So each run writes only
its session's start and end, here.
"""

import contextlib
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import FileWriter
from torch.utils.tensorboard.summary import hparams, scalar

FINAL_METRICS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")


def hyperparameters(cfg: DictConfig) -> dict[str, str | float | int]:
    """The run's choices as HParams columns. A column holds one type: lists (one width per layer) and absent keys
    are text, an absent key (a softmax model's hidden_units and activation) a plain `none` that the tab's filter
    shows as written (it escapes non-ASCII text, a dash as `\\u2013`)."""
    model, optimizer = cfg.model, cfg.optimizer

    def text(value: Any) -> str:
        return "none" if value is None else str(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)

    return {
        "model": model._target_.rsplit(".", 1)[-1],
        "hidden_units": text(model.get("hidden_units")),
        "activation": text(model.get("activation")),
        "dropout": float(model.get("dropout") or 0.0),
        "optimizer": optimizer._target_.rsplit(".", 1)[-1] + (" nesterov" if optimizer.get("nesterov") else ""),
        "learning_rate": float(optimizer.lr),
        "batch_size": cfg.data.batch_size,
        "epochs": cfg.trainer.max_epochs,
        "seed": cfg.seed,
    }


def log_hyperparameters(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """The HParams row of each TensorBoard logger. The final numbers are scalars too (the tab reads them from
    there): named final/*, they make one collapsed group in the Scalars tab instead of four one-point charts among
    the curves."""
    final = {f"final/{name}": metrics[name] for name in FINAL_METRICS if name in metrics}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):  # fit() closed the logger's writer: a file of its own, closed now
            _experiment, session_start, session_end = hparams(hyperparameters(cfg), final)
            with contextlib.closing(FileWriter(logger.log_dir)) as writer:
                for name, value in final.items():
                    writer.add_summary(scalar(name, value))
                writer.add_summary(session_start)
                writer.add_summary(session_end)
