"""Shared fixtures: small generated IDX datasets and configs composed exactly as the commands compose them."""

import gzip
import importlib
import os

# One torch thread per process (this one, and the train.py processes and notebook kernels it starts, which inherit
# it): the test models are tiny, and on a 2-core machine a second thread per process only contends with the others.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import struct
import sysconfig
import venv
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from hgmldl.api import compose_config
from hgmldl.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

register_configs()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--accelerator",
        default="cpu",
        choices=("cpu", "gpu"),
        help="where the tests marked `cuda` train (gpu: a CUDA GPU, as scripts/gpu_check.py runs them); the rest "
        "always train on the CPU",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("accelerator") == "gpu" and not torch.cuda.is_available():
        raise pytest.UsageError("--accelerator=gpu needs a CUDA GPU, and torch sees none: leave it out here")


@pytest.fixture
def accelerator(request: pytest.FixtureRequest) -> str:
    """The device of a test marked `cuda` (cpu, or gpu under --accelerator=gpu); cpu for every other test."""
    return request.config.getoption("accelerator") if request.node.get_closest_marker("cuda") else "cpu"


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Imports a module of scripts/ into this process, for what a subprocess cannot pretend (scripts/ is no package:
    its modules import each other from their folder)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Writes an IDX file (gzipped if the name ends in .gz): big-endian magic, dimensions, then the bytes."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(folder: Path, num_train: int = 500, num_test: int = 100, gz: bool = True, seed: int = 0) -> Path:
    """A learnable stand-in for (Fashion-)MNIST: each class lights its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 60, (count, 28, 28))
        rows = 2 * labels[:, None] + np.arange(4, 7)  # image i lights rows 2 * label + 4 … + 6
        images[np.arange(count)[:, None, None], rows[:, :, None], np.arange(4, 24)] += 180
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, 2051)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, 2049)
    return folder


def fresh_venv(folder: Path) -> Path:
    """A fresh venv without hgmldl whose dependencies are this environment's; its python.

    Its one .pth file lists this environment's site-packages, so torch, Lightning, pip and setuptools are there
    without gigabytes of installing. A .pth line adds a folder to sys.path without reading the .pth files inside it,
    so this environment's editable hgmldl stays invisible."""
    venv.create(folder, with_pip=False)
    (site,) = (folder / "lib").glob("python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin" / "python"


def copy_checkout(folder: Path) -> Path:
    """A copy of what a clone of this repository holds that pip and hgmldl read (the notebooks' folder empty), so
    that building hgmldl leaves nothing in this checkout."""
    folder.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "notebooks")
    for name in ("src", "conf", "experiments"):
        shutil.copytree(ROOT / name, folder / name, ignore=skip)
    (folder / "experiments" / "notebooks").mkdir()
    return folder


def offline_pip_env() -> dict[str, str]:
    """The environment for a fresh venv's pip: this one's, less PYTHONPATH, and offline (every dependency is
    already there, and setuptools builds hgmldl without an isolated build that would download it)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return env | {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def app_cfg(idx_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(conf/<name>.yaml, overrides) as the command composes it (hgmldl.api.compose_config), on the generated
    data, writing to tmp_path/out."""

    def make(name: str, *overrides: str, output_dir: Path | None = None) -> DictConfig:
        data = [f"data.root={tmp_path / 'data'}", f"data.idx_dir={idx_dir}", "data.download=false"]
        return compose_config(name, [*data, *overrides], output_dir or tmp_path / "out")

    return make


@pytest.fixture
def make_cfg(app_cfg: Callable[..., DictConfig], tmp_path: Path, accelerator: str) -> Callable[..., DictConfig]:
    """compose(overrides) of conf/train.yaml, shrunk to seconds: generated data, no network, tmp output."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        shrunk = [
            "steps_per_execution=4",
            "trainer.max_epochs=2",
            f"trainer.accelerator={accelerator}",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "logger=csv",
        ]
        return app_cfg("train", *shrunk, *overrides, output_dir=output_dir or tmp_path / "run")

    return make
