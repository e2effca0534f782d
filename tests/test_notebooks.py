"""Every notebook in experiments/notebooks/ runs top to bottom: on generated data for one epoch (HGMLDL_TEST, which
each notebook's second cell reads), in a fresh kernel, so a notebook that no longer runs fails here."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path, idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = [
        f"data.idx_dir={idx_dir}",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    monkeypatch.setenv("HGMLDL_TEST", " ".join(short))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    if "hgmldl.fit(" in "".join(cell.source for cell in notebook.cells):
        assert "Epoch 1/1" in outputs  # the History callback's epoch lines reach the notebook
