"""The notebooks' first cell (the set-up cell, the same in all six) in a fresh environment where hgmldl is not
installed, as a reader's fresh Jupyter or Colab kernel: it installs hgmldl from the checkout with pip's output in the
cell, and the next cell's `import hgmldl` works in the same kernel, without a restart; a wrong source gets one
sentence, not an exception.

The fresh environment is a `python -m venv --without-pip` whose one .pth file lists this environment's
site-packages, so torch, Lightning, pip and setuptools are there without gigabytes of installing, and pip finds every
dependency already satisfied (offline: PIP_NO_INDEX, and setuptools from there instead of an isolated build). A .pth
line adds a folder to sys.path without reading the .pth files inside it, so this environment's editable hgmldl stays
invisible: the child checks that before it runs the cell."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT, fresh_venv, offline_pip_env

SET_UP_CELL = nbformat.read(ROOT / "experiments" / "notebooks" / "07-1.ipynb", as_version=4).cells[1].source

# Runs the cell as a kernel does: what it prints goes to sys.stdout, which the notebook shows; output that bypasses
# sys.stdout (a subprocess writing to the process's own descriptors) never reaches a Jupyter cell, and not `shown`.
CHILD = """
import contextlib, importlib.util, io, json, sys
before = importlib.util.find_spec("hgmldl")
assert before is None, f"hgmldl is importable before the cell runs: {before.origin}"
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    exec(sys.stdin.read(), {"__name__": "__main__"})
try:
    import hgmldl
    where = hgmldl.__file__
except ImportError:
    where = None
print(json.dumps({"shown": shown.getvalue(), "hgmldl": where}))
"""


@pytest.fixture
def fresh_python(tmp_path: Path) -> Path:
    return fresh_venv(tmp_path / "venv")  # one per test: the cell installs into it


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what a clone of this repository holds (what pip and hgmldl read), with the notebooks' folder."""
    copy = tmp_path / "hgmldl-checkout"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "notebooks")
    for name in ("src", "conf", "experiments"):
        shutil.copytree(ROOT / name, copy / name, ignore=skip)
    (copy / "experiments" / "notebooks").mkdir()
    return copy


def run_cell(python: Path, cell: str, folder: Path) -> dict:
    """The cell run by `python` in `folder` (the kernel's working directory): what it showed, where hgmldl is after."""
    done = subprocess.run(
        [str(python), "-c", CHILD],
        input=cell,
        cwd=folder,
        env=offline_pip_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def with_source(source: str) -> str:
    """The cell with its one editable line set as a reader sets it."""
    cell, count = re.subn(r'^SOURCE = ".*"$', f"SOURCE = {source!r}", SET_UP_CELL, flags=re.MULTILINE)
    assert count == 1, "the set-up cell has one `SOURCE = ...` line"
    return cell


def test_installs_the_checkout_the_notebook_sits_in(fresh_python: Path, checkout: Path) -> None:
    result = run_cell(fresh_python, SET_UP_CELL, checkout / "experiments" / "notebooks")
    assert "Successfully installed hgmldl" in result["shown"]  # pip's own lines, in the cell
    assert "Requirement already satisfied: torch" in result["shown"]
    assert result["hgmldl"] == str(checkout / "src" / "hgmldl" / "__init__.py")  # importable now, from the checkout


def test_a_wrong_source_gets_one_sentence(fresh_python: Path, tmp_path: Path) -> None:
    # Colab: the notebook alone in /content, so "../.." holds no repository
    (tmp_path / "content").mkdir()
    for cell in (SET_UP_CELL, with_source(str(tmp_path / "nowhere"))):
        result = run_cell(fresh_python, cell, tmp_path / "content")
        assert result["hgmldl"] is None
        (line,) = result["shown"].splitlines()
        assert "SOURCE" in line and "https://github.com/<계정>/hgmldl.git" in line, line


def test_a_git_address_is_cloned_then_installed(fresh_python: Path, checkout: Path, tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
    subprocess.run([*git, "add", "."], cwd=checkout, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkout"], cwd=checkout, check=True)
    content = tmp_path / "content"
    content.mkdir()
    result = run_cell(fresh_python, with_source(checkout.as_uri()), content)
    assert "Cloning into" in result["shown"] and "Successfully installed hgmldl" in result["shown"]
    assert result["hgmldl"] == str(content / "hgmldl" / "src" / "hgmldl" / "__init__.py")
    bad = run_cell(fresh_venv(tmp_path / "venv2"), with_source((tmp_path / "missing").as_uri()), tmp_path)
    assert bad["hgmldl"] is None and bad["shown"].splitlines()[-1].startswith("file://")
