"""The notebooks' first cell (the set-up cell, the same in all six) in a fresh environment where hgmldl is not
installed, as a reader's fresh Jupyter or Colab kernel: in a checkout it installs that checkout (editable), elsewhere
or in Colab it installs hgmldl from the repository's address (here a local clone, put in place of the address), in
both cases quietly, as the book's `!pip install -q` (a few lines, not pip's log), and the next cell's
`import hgmldl` works in the same kernel, without a restart; it ends with the device training will use, and in
Colab without a GPU how to switch; a cell that cannot install shows pip's message and stops the notebook with one
sentence, not a traceback.

The fresh environment is a `python -m venv --without-pip` whose one .pth file lists this environment's
site-packages, so torch, Lightning, pip and setuptools are there without gigabytes of installing, and pip finds every
dependency already satisfied (offline: PIP_NO_INDEX, and setuptools from there instead of an isolated build). A .pth
line adds a folder to sys.path without reading the .pth files inside it, so this environment's editable hgmldl stays
invisible: the child checks that before it runs the cell."""

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch

from tests.conftest import ROOT, copy_checkout, fresh_venv, make_idx_dataset, offline_pip_env

SET_UP_CELL = nbformat.read(ROOT / "experiments" / "notebooks" / "07-1.ipynb", as_version=4).cells[1].source
REPOSITORY = "https://github.com/hgmldl/hgmldl"  # the address the cell installs from outside a checkout

# Runs the cell as a kernel does: what it prints goes to sys.stdout, which the notebook shows; output that bypasses
# sys.stdout (a subprocess writing to the process's own descriptors) never reaches a Jupyter cell, and not `shown`.
# `colab` makes the kernel look like Colab's, where the module google.colab is imported.
CHILD = """
import contextlib, importlib.util, io, json, sys, types
before = importlib.util.find_spec("hgmldl")
assert before is None, f"hgmldl is importable before the cell runs: {before.origin}"
if sys.argv[1:] == ["colab"]:
    sys.modules["google.colab"] = types.ModuleType("google.colab")
shown, error = io.StringIO(), None
with contextlib.redirect_stdout(shown):
    try:
        exec(sys.stdin.read(), {"__name__": "__main__"})
    except Exception as raised:  # what the notebook would show under the cell, and stop at
        # IPython shows _render_traceback_()'s lines in place of the traceback where an exception has it
        shown_instead = raised._render_traceback_() if hasattr(raised, "_render_traceback_") else None
        error = {"kind": type(raised).__name__, "message": str(raised), "shown_instead": shown_instead}
try:
    import hgmldl
    where = hgmldl.__file__
except ImportError:
    where = None
print(json.dumps({"shown": shown.getvalue(), "error": error, "hgmldl": where}))
"""


@pytest.fixture
def fresh_python(tmp_path: Path) -> Path:
    return fresh_venv(tmp_path / "venv")  # one per test: the cell installs into it


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return copy_checkout(tmp_path / "hgmldl-checkout")


def run_cell(python: Path, cell: str, folder: Path, colab: bool = False) -> dict:
    """The cell run by `python` in `folder` (the kernel's working directory): what it showed, the exception it
    raised, where hgmldl is after."""
    done = subprocess.run(
        [str(python), "-c", CHILD, *(["colab"] if colab else [])],
        input=cell,
        cwd=folder,
        env=offline_pip_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def with_repository(address: str) -> str:
    """The cell with the repository's address replaced, as a test of the published cell does."""
    assert SET_UP_CELL.count(f'"{REPOSITORY}"') == 1, "the set-up cell names the repository's address once"
    return SET_UP_CELL.replace(f'"{REPOSITORY}"', repr(address))


def test_installs_the_checkout_the_notebook_sits_in(fresh_python: Path, checkout: Path) -> None:
    result = run_cell(fresh_python, SET_UP_CELL, checkout / "experiments" / "notebooks")
    assert result["error"] is None
    # two lines, as the book's quiet `!pip install -q`: where it installed from, and the device
    assert result["shown"].splitlines() == [f"hgmldl을 이 저장소에서 설치했습니다: {checkout}", "훈련에 쓸 장치: CPU"]
    assert result["hgmldl"] == str(checkout / "src" / "hgmldl" / "__init__.py")  # importable now, from the checkout


def test_outside_a_checkout_installs_from_the_repository(fresh_python: Path, checkout: Path, tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
    subprocess.run([*git, "add", "."], cwd=checkout, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkout"], cwd=checkout, check=True)
    content = tmp_path / "content"  # Colab's working folder: the notebook alone, no repository around it
    content.mkdir()
    # file://localhost/…: pip's requirement parser refuses a git+file:/// address, whose host is empty
    clone = f"file://localhost{checkout}"
    idx_dir = make_idx_dataset(tmp_path / "idx")
    next_cell = f"""
import hgmldl
history = hgmldl.fit("model=softmax", "trainer.max_epochs=1", "data.idx_dir={idx_dir}", "data.download=false")
print("trained:", history.history["val_accuracy"], history.run_dir)
"""
    result = run_cell(fresh_python, with_repository(clone) + next_cell, content)
    assert result["error"] is None, result["shown"]
    assert result["shown"].splitlines()[:2] == [f"hgmldl을 설치했습니다: {clone}", "훈련에 쓸 장치: CPU"]
    (site,) = (tmp_path / "venv" / "lib").glob("python*/site-packages")
    assert result["hgmldl"] == str(site / "hgmldl" / "__init__.py")  # a plain install (not -e), importable now
    trained = result["shown"].splitlines()[-1]  # the next cell trained, from the installed package's configs
    assert trained.startswith("trained: [0.") and " outputs/" in trained  # the run folder in the notebook's own
    assert (content / "outputs").is_dir() and list((content / "outputs").rglob("metrics.json"))


@pytest.mark.parametrize("where", ["colab in a checkout", "a folder outside a checkout"])
def test_a_cell_that_cannot_install_stops_with_one_sentence(
    where: str, fresh_python: Path, checkout: Path, tmp_path: Path
) -> None:
    # Colab installs from the address even where ../../pyproject.toml happens to exist (an -e install would succeed)
    folder = checkout / "experiments" / "notebooks" if where.startswith("colab") else tmp_path
    missing = f"file://localhost{tmp_path / 'missing'}"
    result = run_cell(fresh_python, with_repository(missing), folder, colab=where.startswith("colab"))
    assert missing in result["shown"]  # pip's lines, naming the address it tried
    assert result["hgmldl"] is None
    message = result["error"]["message"]
    assert result["error"]["kind"] == "SetupError" and message.endswith("다시 실행하세요.") and message.count(".") == 1
    assert result["error"]["shown_instead"] == [message]  # the notebook shows this sentence, not a traceback


# The cell's last part, from the import of the torch it installed: the device it reports.
DEVICE_PART = SET_UP_CELL[SET_UP_CELL.index("import torch") :]


@pytest.mark.parametrize(
    ("colab", "gpu", "shown"),
    [
        (
            True,
            None,
            [
                "훈련에 쓸 장치: CPU",
                "코랩에서 GPU를 쓰려면 [런타임] > [런타임 유형 변경]에서 GPU를 고른 뒤 이 셀부터 다시 실행하세요.",
            ],
        ),
        (True, "Tesla T4", ["훈련에 쓸 장치: Tesla T4"]),
        (False, None, ["훈련에 쓸 장치: CPU"]),  # outside Colab, a CPU is no mistake
    ],
    ids=["colab without a GPU", "colab with a GPU", "a CPU elsewhere"],
)
def test_the_cell_names_the_device_and_in_colab_how_to_get_a_gpu(monkeypatch, capsys, colab, gpu, shown) -> None:
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    namespace = {"sys": sys}
    exec(DEVICE_PART, namespace)
    assert capsys.readouterr().out.splitlines() == shown
    assert namespace["device"].type == ("cuda" if gpu else "cpu")  # the `device` the notebooks' .to(device) use
