"""The commands as Python functions, for notebooks: Keras' `history = model.fit(...)`, `evaluate`, `predict` and
`load_model`, and `visualize`, `show_data` and `summarize`.

Each function takes the command line's overrides (`"model=cnn"`, `"trainer.max_epochs=5"`), composes conf/ with
Hydra's Compose API exactly as the command does, and calls the command's own function. A UserError is raised, and
a notebook shows it as one `error: …` line.
"""

import contextlib
import datetime
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hgmldl.commands import evaluate as evaluate_command
from hgmldl.commands import predict as predict_command
from hgmldl.commands import show_data as show_data_command
from hgmldl.commands import summarize as summarize_command
from hgmldl.commands import train
from hgmldl.commands import visualize as visualize_command
from hgmldl.config import CONFIG_DIR, check_config, register_configs
from hgmldl.errors import UserError
from hgmldl.history import keras_history, read_history
from hgmldl.images import split_images
from hgmldl.module import Classifier


@dataclass
class History:
    """What Keras' `fit` returns, plus the run's folder and its metrics.json.

    `history["val_loss"]` is the list of per-epoch values (`plt.plot(history.history['val_loss'])`), `epoch` the
    0-based epoch numbers, `model` the trained Classifier: the best epoch's weights where EarlyStopping restored
    them, else the last epoch's, the weights metrics.json was evaluated with.
    """

    history: dict[str, list[float]]
    epoch: list[int]
    model: Classifier
    metrics: dict[str, Any]
    run_dir: Path


def fit(*overrides: str, output_dir: str | Path | None = None) -> History:
    """`python train.py <overrides>` from Python: `hgmldl.fit("experiment=ch7_3_callbacks", output_dir="runs/7-3")`.

    The run writes the folder train.py writes (checkpoints, history.csv, metrics.json, .hydra/, train.log) into
    `output_dir`, by default a new outputs/<date>/<time>, relative to the current directory.
    """
    cfg = compose_config("train", overrides, output_dir)
    if cfg.get("baseline") is not None:  # 7-1's scikit-learn baseline trains no network
        raise UserError("fit trains networks; run the baseline with python train.py experiment=ch7_1_sgd_baseline")
    check_config(cfg)  # before the folder is made: a bad value or folder is one line, as with train.py
    run_dir = Path(cfg.output_dir)
    # What Hydra saves for train.py: resume=<run dir> and summarize.py read them.
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    with job_logging(run_dir / "train.log"):
        metrics, model, _ = train.run(cfg)
    rows = read_history(run_dir / "history.csv")
    return History(
        history=keras_history(rows),
        epoch=[int(row["epoch"]) for row in rows],
        model=model.eval(),
        metrics=metrics,
        run_dir=run_dir,
    )


def evaluate(ckpt_path: str | Path, *overrides: str, output_dir: str | Path | None = None) -> dict[str, Any]:
    """`python evaluate.py ckpt_path=… <overrides>`: val and test loss and accuracy, and per-class accuracy."""
    cfg = compose_config("evaluate", overrides, output_dir, ckpt_path=str(ckpt_path))
    with job_logging(Path(cfg.output_dir) / "evaluate.log"):
        return evaluate_command.run(cfg)


def predict(ckpt_path: str | Path, *overrides: str, output_dir: str | Path | None = None) -> dict[str, Any]:
    """`python predict.py ckpt_path=… <overrides>` (`"index=0"`, `"split=val"`, `"image=photo.png"`, `"classes=ko"`):
    the class, its ten probabilities and prediction.png."""
    cfg = compose_config("predict", overrides, output_dir, ckpt_path=str(ckpt_path))
    with job_logging(Path(cfg.output_dir) / "predict.log"):
        return predict_command.run(cfg)


def visualize(ckpt_path: str | Path, *overrides: str, output_dir: str | Path | None = None) -> dict[str, Any]:
    """`python visualize.py ckpt_path=… <overrides>`: 8-3's pictures of a CNN; returns conv1's kernel statistics."""
    cfg = compose_config("visualize", overrides, output_dir, ckpt_path=str(ckpt_path))
    with job_logging(Path(cfg.output_dir) / "visualize.log"):
        return visualize_command.run(cfg)


def show_data(*overrides: str, output_dir: str | Path | None = None) -> list[int]:
    """`python show_data.py <overrides>`: samples.png and the number of training images per class."""
    cfg = compose_config("show_data", overrides, output_dir)
    with job_logging(Path(cfg.output_dir) / "show_data.log"):
        return show_data_command.run(cfg)


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """`python summarize.py sweep_dir=…`: a sweep folder's summary.csv, summary.md and curves.png; returns the rows."""
    return summarize_command.summarize(sweep_dir)


def load_data(split: str = "train", *overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, 1, 28, 28, scaled to [0, 1]) and labels of one split of the configured dataset (`"data=mnist"`,
    `"data.idx_dir=…"`): `train` the whole training file as Keras' load_data() returns it, `val` the book's
    val_scaled (the 12,000 that train_test_split(test_size=0.2, random_state=42) holds out), `test` the test file."""
    cfg = compose_config("train", overrides, output_dir=None)
    return split_images(instantiate(cfg.data), split)


def compose_config(name: str, overrides: Sequence[str], output_dir: str | Path | None, **values: str) -> DictConfig:
    """conf/<name>.yaml with the overrides, as the command composes it; Hydra's errors become one-line UserErrors.

    The paths are set after composing, so they need no quoting for Hydra's override grammar.
    """
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:  # ValueError: `logger=null`
        raise UserError(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None
    finally:
        GlobalHydra.instance().clear()
    for key, value in values.items():
        cfg[key] = value
    cfg.output_dir = str(output_dir or datetime.datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S-%f"))
    return cfg


@contextlib.contextmanager
def job_logging(log_file: Path) -> Iterator[None]:
    """What Hydra's job logging does for the commands: the run's lines (hgmldl's and Lightning's) in a log file.
    On the console they print as everywhere (hgmldl/__init__.py)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    loggers = [logging.getLogger("hgmldl"), logging.getLogger("lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
