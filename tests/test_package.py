"""hgmldl as pip installs it: the wheel carries conf/ and the presets, its commands are installed, and everything works
from a folder that is not the checkout, writing data and runs there, not into site-packages."""

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_checkout, fresh_venv, make_idx_dataset, offline_pip_env

# What a user types after `pip install hgmldl` in a notebook or script of their own, in their own folder.
USER_SCRIPT = """
import json, sys
import hgmldl
data = [f"data.idx_dir={sys.argv[1]}", "data.download=false"]
history = hgmldl.fit("model=softmax", "trainer.max_epochs=1", *data)
best = history.run_dir / "checkpoints" / "best.ckpt"
evaluated = hgmldl.evaluate(best, *data)
model = hgmldl.load(best)
print(json.dumps({
    "hgmldl": hgmldl.__file__,
    "run_dir": str(history.run_dir.resolve()),
    "val_accuracy": history.metrics["val_accuracy"],
    "evaluated": evaluated["val_accuracy"],
    "layers": [type(layer).__name__ for layer in model.net],
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with hgmldl's wheel installed, not editable; its python."""
    folder = tmp_path_factory.mktemp("package")
    wheels = folder / "wheels"
    env = offline_pip_env()
    source = copy_checkout(folder / "hgmldl")  # setuptools builds in the source folder (build/)
    build = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)]
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", *build], env=env, check=True, timeout=300)
    python = fresh_venv(folder / "venv")
    (wheel,) = wheels.glob("hgmldl-*.whl")
    install = [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, env=env, check=True, timeout=300)
    return python


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty folder outside the checkout, as a user's own project folder."""
    folder = tmp_path / "my-project"
    folder.mkdir()
    return folder


def test_the_wheel_carries_every_config_and_preset(installed: Path) -> None:
    (package,) = installed.parents[1].glob("lib/python*/site-packages/hgmldl")
    shipped = {path.relative_to(package).as_posix() for path in package.rglob("*.yaml")}
    in_checkout = {f"conf/{path.relative_to(ROOT / 'conf').as_posix()}" for path in (ROOT / "conf").rglob("*.yaml")}
    presets = {f"experiments/{path.name}" for path in (ROOT / "experiments").glob("*.yaml")}
    assert shipped == in_checkout | presets


def test_the_python_api_works_from_any_folder(installed: Path, elsewhere: Path, tmp_path: Path) -> None:
    idx_dir = make_idx_dataset(tmp_path / "idx")
    done = subprocess.run(
        [str(installed), "-c", USER_SCRIPT, str(idx_dir)],
        cwd=elsewhere,
        env=offline_pip_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert Path(result["hgmldl"]).is_relative_to(installed.parents[1])  # the wheel's hgmldl, not the checkout's
    assert Path(result["run_dir"]).is_relative_to(elsewhere / "outputs")
    assert (Path(result["run_dir"]) / "metrics.json").exists()
    assert (elsewhere / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert result["evaluated"] == pytest.approx(result["val_accuracy"])
    assert result["layers"] == ["Flatten", "Linear"]  # model=softmax, rebuilt from the checkpoint alone


def test_the_installed_train_command_works_from_any_folder(installed: Path, elsewhere: Path, tmp_path: Path) -> None:
    idx_dir = make_idx_dataset(tmp_path / "idx")
    command = [
        str(installed.parent / "hgmldl-train"),
        "experiment=ch7_1_softmax",  # a preset, found inside the installed package
        "trainer.max_epochs=1",
        f"data.idx_dir={idx_dir}",
        "data.download=false",
        "hydra.run.dir=runs/softmax",
    ]
    done = subprocess.run(command, cwd=elsewhere, env=offline_pip_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "test_accuracy" in done.stdout.splitlines()[-1]  # the result line
    metrics = json.loads((elsewhere / "runs" / "softmax" / "metrics.json").read_text())
    assert set(metrics) >= {"val_accuracy", "test_accuracy"}
    assert (elsewhere / "runs" / "softmax" / "train.log").exists()  # Hydra names the job after the command
    assert json.loads((elsewhere / "runs" / "softmax" / "metrics.json").read_text())["epochs"] == 1


def test_one_place_names_the_repository() -> None:
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_and_name = repository.removeprefix("https://github.com/")
    for readme in ("README.md", "README.ko.md"):
        text = (ROOT / readme).read_text()
        assert f"https://colab.research.google.com/github/{owner_and_name}/blob/main/experiments/notebooks/" in text
        assert f"git+{repository}" in text, f"{readme} shows how to pip install hgmldl from its address"
    for notebook in sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        badge = (
            f"https://colab.research.google.com/github/{owner_and_name}/blob/main/experiments/notebooks/{notebook.name}"
        )
        assert badge in "".join(cells[0]["source"]), f"{notebook.name}: its Colab badge"
        assert f'REPOSITORY = "{repository}"' in "".join(cells[1]["source"]), f"{notebook.name}: the set-up cell"
