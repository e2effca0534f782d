"""Hydra wiring: typed schemas for the keys users type most, the `experiment` group from experiments/, and the
checks that reject a bad value before any data is loaded."""

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from hgmldl.data import SHUFFLES, FashionMNISTDataModule
from hgmldl.errors import UserError, one_line_errors
from hgmldl.files import check_output_dir
from hgmldl.hardware import check_cpu_bf16
from hgmldl.slurm import slurm_job_or

# conf/ and the presets' experiments/: inside the package where pip installed it (the wheel maps both into it,
# pyproject.toml's package-dir), else at the top of the checkout, beside src/.
_PACKAGE = Path(__file__).resolve().parent
_TOP = _PACKAGE if (_PACKAGE / "conf").is_dir() else _PACKAGE.parents[1]
CONFIG_DIR = _TOP / "conf"
PRESETS_DIR = _TOP / "experiments"


class Init(Enum):
    keras = "keras"  # glorot-uniform kernels, zero biases: what the book's numbers need
    torch = "torch"  # PyTorch's own kaiming-uniform defaults


def data_schema() -> type:
    """conf/data/*.yaml's keys, types and defaults: the data module's arguments, so that they are written once (in
    hgmldl.data), and a typo or a wrong type in data.* fails when the config is composed."""
    arguments = list(inspect.signature(FashionMNISTDataModule.__init__).parameters.values())[1:]
    fields = [(argument.name, argument.annotation, field(default=argument.default)) for argument in arguments]
    return make_dataclass("DataSchema", [("_target_", str, field(default=MISSING)), *fields])


@dataclass
class TrainSchema:
    """The types of conf/train.yaml's own keys, whose values (the defaults) are in that file; the group nodes are
    checked by their own schemas or by the code they build."""

    seed: int = MISSING
    init: Init = MISSING
    steps_per_execution: int = MISSING
    compile: bool = MISSING
    ckpt_path: str | None = MISSING
    resume: str | None = MISSING
    keras: str | None = MISSING
    optimized_metric: str | None = MISSING
    output_dir: str = MISSING
    data: Any = MISSING
    model: Any = MISSING
    activation: Any = field(default_factory=dict)
    optimizer: Any = MISSING
    scheduler: Any = field(default_factory=dict)
    trainer: Any = MISSING
    callbacks: Any = field(default_factory=dict)
    logger: Any = None
    baseline: Any = None  # an estimator config: train.py cross-validates it instead of training (7-1's SGD baseline)
    book: Any = None  # a preset's book numbers and bands: scripts/reproduce.py reads them, training does not


def register_configs() -> None:
    """Stores the schemas and every experiments/*.yaml as option of the group `experiment`, and registers the
    resolver of train.py's run folder.

    ConfigStore rather than hydra.searchpath keeps the group's name `experiment` and makes
    `-m experiment='glob(*)'` work on hydra-core 1.3 (a search path renames the group after the folder).
    """
    OmegaConf.register_new_resolver("slurm_job_or", slurm_job_or, replace=True)  # conf/train.yaml's run folder
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(name="data_schema", node=data_schema())  # a base of conf/data/*.yaml, not a dataset to choose
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        store.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")


def command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """A command's entry point (`python train.py …`, the installed `hgmldl-train …`): `@hydra.main` over
    conf/<config_name>.yaml with the presets registered, and a UserError printed as one `error:` line. Hydra names the
    job (train.log, …) after the module the decorated function is in."""

    def decorator(main: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        register_configs()
        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            one_line_errors(main)
        )

    return decorator


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _widths(value: Any) -> bool:
    widths = list(value) if isinstance(value, ListConfig | list) else [value]
    return bool(widths) and all(_integer(width) and width >= 1 for width in widths)


METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")  # metrics.json's numbers a sweeper can rank


# (key, test, what is allowed): the values a schema's types cannot bound. Keys a config does not have (a softmax
# model has no dropout, callbacks=default no early stopping) are skipped.
def _batch_limit(value: Any) -> bool:
    return value is None or (_integer(value) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)


ALLOWED_VALUES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: _integer(v) and 0 <= v < 2**32, "an integer from 0 to 4294967295 (numpy's seed range)"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0"),
    ("model.dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.hidden_units", _widths, "an integer >= 1, or a list of them (one per hidden layer)"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.val_fraction", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1) (0: no validation data)"),
    ("data.shuffle", lambda v: v in SHUFFLES, f"one of {', '.join(SHUFFLES)}"),
    ("data.eval_batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("trainer.max_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("trainer.max_steps", lambda v: _integer(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (no limit)"),
    # 0 would train nothing, and run() would still report the untrained model's numbers
    ("trainer.limit_train_batches", _batch_limit, "an integer >= 1 (minibatches) or a fraction in (0, 1]"),
    ("optimized_metric", lambda v: v is None or v in METRICS, f"null or one of {', '.join(METRICS)}"),
    ("callbacks.early_stopping.patience", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
]


def check_config(cfg: DictConfig) -> None:
    """Raises UserError naming the key and its allowed values, before anything is built or loaded."""
    absent = object()
    for key, allowed, description in ALLOWED_VALUES:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is not absent and not allowed(value):
            raise UserError(f"{key} must be {description}, got {value!r}")
    check_cpu_bf16(cfg.trainer)
    check_output_dir(cfg.output_dir)
