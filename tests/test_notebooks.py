"""Every notebook in experiments/notebooks/ runs top to bottom: on generated data for one epoch (HGMLDL_TEST, which
each notebook's second cell reads), in a fresh kernel, so a notebook that no longer runs fails here.

A kernel spends most of its time importing and training on one core: two notebooks run at a time, each in its own
kernel with its own data folder, so that a 2-core machine is busy on both."""

import asyncio
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))
AT_A_TIME = 2


async def execute(path: Path, idx_dir: Path, folder: Path, slots: asyncio.Semaphore) -> nbformat.NotebookNode:
    short = [
        f"data.idx_dir={idx_dir}",
        f"data.root={folder / 'data'}",
        "data.download=false",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    env = os.environ | {
        "HGMLDL_TEST": " ".join(short),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MPLBACKEND": "agg",
    }
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    async with slots:
        await client.async_execute(env=env)
    return notebook


@pytest.fixture(scope="module")
def executed(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, nbformat.NotebookNode | Exception]:
    """Each notebook executed in a fresh kernel (in its own folder), or the error that stopped it."""

    async def run_all() -> list[nbformat.NotebookNode | BaseException]:
        slots = asyncio.Semaphore(AT_A_TIME)
        folders = [tmp_path_factory.mktemp(path.stem) for path in NOTEBOOKS]
        runs = (execute(path, idx_dir, folder, slots) for path, folder in zip(NOTEBOOKS, folders, strict=True))
        return await asyncio.gather(*runs, return_exceptions=True)

    return dict(zip(NOTEBOOKS, asyncio.run(run_all()), strict=True))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path, executed: dict[Path, nbformat.NotebookNode | Exception]) -> None:
    notebook = executed[path]
    if isinstance(notebook, BaseException):
        raise notebook

    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    if "hgmldl.fit(" in "".join(cell.source for cell in notebook.cells):
        assert "Epoch 1/1" in outputs  # the History callback's epoch lines reach the notebook
