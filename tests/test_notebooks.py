"""Every notebook in experiments/notebooks/ runs top to bottom in a fresh kernel, as a reader runs it, on generated
data: each runs in its own folder, where the data module's default root (`data/`) holds generated IDX files, so
the notebooks carry no test settings. Two run at a time, each kernel on one core of a 2-core machine.

The saved notebooks are checked as a reader sees them: the book's output and hgmldl's, no test plumbing, no
Lightning notices, one set-up cell shared by all, an "Open in Colab" badge, and outputs from one run top to bottom
(as `make notebooks` saves them), not cells pasted in or re-run afterwards."""

import asyncio
import copy
import os
import re
from datetime import datetime
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT, make_idx_dataset
from tests.test_keras_import import BOOK_CNN, cnn_arrays, write_keras

NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))
AT_A_TIME = 2
# What Lightning prints on its own; hgmldl filters these (hgmldl/__init__.py).
LIGHTNING_NOTICES = ("GPU available", "TPU available", "HPU available", "`Trainer.fit` stopped", "Seed set to")


def prepare(folder: Path) -> None:
    """The files a reader's machine would have: Fashion-MNIST and MNIST where the data modules look first, and the
    book's best-cnn-model.keras beside the notebook (a synthetic one), which 08-3 reads instead of downloading it."""
    make_idx_dataset(folder / "data" / "FashionMNIST" / "raw", gz=False, seed=1)
    make_idx_dataset(folder / "data" / "MNIST" / "raw", gz=False, seed=2)
    write_keras(folder / "best-cnn-model.keras", cnn_arrays(np.random.default_rng(3)), BOOK_CNN)


async def execute(path: Path, folder: Path, slots: asyncio.Semaphore) -> nbformat.NotebookNode:
    prepare(folder)
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "agg"}
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    async with slots:
        await client.async_execute(env=env)
    return notebook


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, nbformat.NotebookNode | BaseException]:
    """Each notebook executed in a fresh kernel (in its own folder), or the error that stopped it."""

    async def run_all() -> list[nbformat.NotebookNode | BaseException]:
        slots = asyncio.Semaphore(AT_A_TIME)
        folders = [tmp_path_factory.mktemp(path.stem) for path in NOTEBOOKS]
        runs = (execute(path, folder, slots) for path, folder in zip(NOTEBOOKS, folders, strict=True))
        return await asyncio.gather(*runs, return_exceptions=True)

    return dict(zip(NOTEBOOKS, asyncio.run(run_all()), strict=True))


def text_outputs(notebook: nbformat.NotebookNode, stream: str | None = None) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if stream is None or output.get("name") == stream
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path, executed: dict[Path, nbformat.NotebookNode | BaseException]) -> None:
    notebook = executed[path]
    if isinstance(notebook, BaseException):
        raise notebook
    outputs = text_outputs(notebook)
    if "fit(" in "".join(cell.source for cell in notebook.cells):
        assert "Epoch 1/" in outputs  # hgmldl's epoch lines reach the notebook
    assert not [notice for notice in LIGHTNING_NOTICES if notice in outputs]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_saved_notebook_shows_only_what_a_reader_needs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert not re.search(r"\bTEST\b|HGMLDL_TEST", sources)  # no test settings a reader would copy
    assert "OMP_NUM_THREADS" not in sources  # the machine the outputs came from is not the reader's
    assert not [notice for notice in LIGHTNING_NOTICES if notice in text_outputs(notebook)]


def assert_one_run(notebook: nbformat.NotebookNode) -> None:
    """The code cells were executed once each, top to bottom, in one kernel: execution counts 1, 2, 3… in cell
    order, and each cell started after the cell above it had replied (the times nbclient records in
    metadata.execution, as `make notebooks` runs it)."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    times = [cell.metadata.get("execution", {}) for cell in code]
    assert all("iopub.execute_input" in time and "shell.execute_reply" in time for time in times), "not run by nbclient"
    for number in range(1, len(times)):
        started = datetime.fromisoformat(times[number]["iopub.execute_input"])
        assert started >= datetime.fromisoformat(times[number - 1]["shell.execute_reply"]), (
            f"code cell {number + 1} ran before code cell {number} had finished"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_saved_notebook_is_one_run_top_to_bottom(path: Path) -> None:
    assert_one_run(nbformat.read(path, as_version=4))


def test_one_run_check_catches_a_cell_run_afterwards() -> None:
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    pasted = copy.deepcopy(notebook)  # the set-up cell re-run after the others, its outputs saved in place
    first = next(cell for cell in pasted.cells if cell.cell_type == "code")
    first.metadata.execution = dict(code[-1].metadata.execution)
    with pytest.raises(AssertionError, match="ran before"):
        assert_one_run(pasted)
    renumbered = copy.deepcopy(notebook)  # a cell run twice
    next(cell for cell in renumbered.cells if cell.cell_type == "code").execution_count = len(code) + 1
    with pytest.raises(AssertionError):
        assert_one_run(renumbered)


def test_every_notebook_starts_with_the_same_set_up_cell() -> None:
    first = {path.name: nbformat.read(path, as_version=4).cells[1].source for path in NOTEBOOKS}
    assert len(set(first.values())) == 1, first.keys()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_opens_in_colab_from_the_address_its_set_up_cell_installs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    (address,) = re.findall(r'^REPOSITORY = "https://github\.com/(.+)"$', notebook.cells[1].source, re.MULTILINE)
    colab = f"https://colab.research.google.com/github/{address}/blob/main/experiments/notebooks/{path.name}"
    badge = f"[![Colab에서 열기](https://colab.research.google.com/assets/colab-badge.svg)]({colab})"
    assert badge in notebook.cells[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_asks_colab_for_a_gpu(path: Path) -> None:
    """As the book's notebooks do: Colab opens it on a GPU runtime (its "Change runtime type" reads these keys)."""
    metadata = nbformat.read(path, as_version=4).metadata
    assert metadata.get("accelerator") == "GPU" and metadata.get("colab", {}).get("gpuType") == "T4"


# What each notebook teaches in PyTorch's own idioms, beside hgmldl's helpers: code every one of these cells holds.
PYTORCH_IDIOMS = {
    "07-1.ipynb": ["DataLoader(", "optimizer.zero_grad()", "loss.backward()", "optimizer.step()", ".to(device)"],
    "07-3.ipynb": ["torch.save(history.model.net.state_dict()", ".load_state_dict(torch.load(", ".to(device)"],
    "08-2.ipynb": ["model.to(device)", "plot_model(net, show_shapes=True)"],
    "08-3.ipynb": ["named_children()", "register_forward_hook(", "hook.remove()"],
    # Deep Learning with Python §2.2-2.4 cell for cell, and §2.5's update_weights on torch's SGD
    "dlp2-02.ipynb": [
        ".ndim",
        ".dtype",
        "train_images[4]",
        "train_images[:, 7:-7, 7:-7]",
        "train_images[128 * n : 128 * (n + 1)]",
        "def naive_relu(",
        "def naive_add(",
        "time.perf_counter()",
        ".unsqueeze(0)",
        "def naive_add_matrix_and_vector(",
        "torch.maximum(x, y)",
        "def naive_vector_dot(",
        "def naive_matrix_vector_dot(",
        "def naive_matrix_dot(",
        "x.reshape(6, 1)",
        "x.T",
        "torch.autograd.grad(y, x)",
        "torch.autograd.grad(y.sum(), [W, b]",
        "torch.optim.SGD(naive_model.weights, lr=1e-3)",
    ],
}


@pytest.mark.parametrize("name", PYTORCH_IDIOMS)
def test_notebook_runs_pytorchs_own_idioms(name: str) -> None:
    notebook = nbformat.read(ROOT / "experiments" / "notebooks" / name, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert not [idiom for idiom in PYTORCH_IDIOMS[name] if idiom not in code]


def cell_text(notebook: nbformat.NotebookNode | BaseException, source: str) -> str:
    """The text a notebook's code cell printed, found by a line of its source."""
    if isinstance(notebook, BaseException):  # the notebook stopped: its error says where
        raise notebook
    (cell,) = [cell for cell in notebook.cells if cell.cell_type == "code" and source in cell.source]
    return "".join(output.get("text", "") for output in cell.outputs)


def test_plain_pytorch_loop_trains_as_the_trainer_did(executed: dict) -> None:
    """07-1's loop of DataLoader, zero_grad/backward/step gives the Trainer cell's History, epoch for epoch: the same
    initial weights, minibatches, order and update, run here on generated data."""
    notebook = executed[ROOT / "experiments" / "notebooks" / "07-1.ipynb"]
    differences = re.findall(r"^(\w+): 가장 큰 차이 (\S+)$", cell_text(notebook, "plain_history = {"), re.MULTILINE)
    assert [key for key, _ in differences] == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(float(difference) < 1e-5 for _, difference in differences), differences


def test_state_dict_and_forward_hooks_agree_with_hgmldls_helpers(executed: dict) -> None:
    folder = ROOT / "experiments" / "notebooks"
    weights = executed[folder / "07-3.ipynb"]  # torch.save/load_state_dict scores as hgmldl's load_weights
    accuracies = [
        cell_text(weights, source).splitlines()[-1]
        for source in ('load_weights(model, save_load_run / "model.safetensors")', ".load_state_dict(torch.load(")
    ]
    assert accuracies[0] == accuracies[1] and 0 < float(accuracies[0]) <= 1
    hooks = executed[folder / "08-3.ipynb"]  # the forward hooks' maps are feature_extractor's
    assert cell_text(hooks, "register_forward_hook(").endswith("feature_extractor와 같은 값: True True\n")


def test_plot_model_draws_each_layer_with_its_output_shape() -> None:
    """08-2's keras.utils.plot_model(model, show_shapes=True): the input and the CNN's eleven layers, in order,
    each with the shape the book's summary gives it (channels first)."""
    from hgmldl.figures import plot_model
    from hgmldl.models import cnn

    (axes,) = plot_model(cnn(), show_shapes=True).axes
    boxes = [text.get_text() for text in axes.texts if text.get_text()]  # the arrows are empty annotations
    assert boxes[0] == "input (Input)\n(None, 1, 28, 28)"
    assert boxes[1] == "0 (Conv2d)\n(None, 32, 28, 28)" and boxes[6] == "5 (MaxPool2d)\n(None, 64, 7, 7)"
    assert boxes[7:] == [
        "6 (Flatten)\n(None, 3136)",
        "7 (Linear)\n(None, 100)",
        "8 (ReLU)\n(None, 100)",
        "9 (Dropout)\n(None, 100)",
        "10 (Linear)\n(None, 10)",
    ]
    (plain,) = plot_model(cnn()).axes  # without show_shapes: the names alone
    assert [text.get_text() for text in plain.texts if text.get_text()][1] == "0 (Conv2d)"
    saved = nbformat.read(ROOT / "experiments" / "notebooks" / "08-2.ipynb", as_version=4)
    pictures = [cell for cell in saved.cells if cell.cell_type == "code" and "plot_model(net" in cell.source]
    assert len(pictures) == 2 and all("image/png" in cell.outputs[0].get("data", {}) for cell in pictures)
