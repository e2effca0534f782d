"""Hydra wiring: typed schemas for the keys users type most, and the `experiment` group from experiments/."""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Init(Enum):
    keras = "keras"  # glorot-uniform kernels, zero biases: what the book's numbers need
    torch = "torch"  # PyTorch's own kaiming-uniform defaults


@dataclass
class DataSchema:
    """conf/data/*.yaml: a typo or a wrong type in data.* fails when the config is composed."""

    _target_: str = MISSING
    root: str = "data"
    idx_dir: str | None = None
    batch_size: int = 32
    eval_batch_size: int = 1000
    batches_per_step: int = 50
    seed: int = "${seed}"  # type: ignore[assignment]  # interpolation, resolved to an int
    download: bool = True


@dataclass
class TrainSchema:
    """conf/train.yaml's own keys; the group nodes are checked by their own schemas or by the code they build."""

    seed: int = 42
    init: Init = Init.keras
    ckpt_path: str | None = None
    output_dir: str = MISSING
    data: Any = MISSING
    model: Any = MISSING
    activation: Any = field(default_factory=dict)
    optimizer: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = field(default_factory=dict)
    logger: Any = None


def register_configs(experiments_dir: Path) -> None:
    """Stores the schemas and every experiments/*.yaml as option of the group `experiment`.

    ConfigStore rather than hydra.searchpath keeps the group's name `experiment` and makes
    `-m experiment='glob(*)'` work on hydra-core 1.3 (a search path renames the group after the folder).
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="data", name="schema", node=DataSchema)
    for path in sorted(experiments_dir.glob("*.yaml")):
        store.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")
