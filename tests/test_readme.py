"""The READMEs as a reader uses them: their Python code runs as written, README.ko.md shows the same code as
README.md, and every link points at a file and a heading that exist."""

import io
import re
import tokenize
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, make_idx_dataset

READMES = [ROOT / "README.md", ROOT / "README.ko.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def without_comments(code: str) -> str:
    """The code a reader runs: comments (the only lines the Korean README translates) and blank lines dropped."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type != tokenize.COMMENT]
    return "\n".join(line.rstrip() for line in tokenize.untokenize(tokens).splitlines() if line.strip())


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens (Hangul kept)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_korean_readme_shows_the_same_code() -> None:
    english, korean = (list(map(without_comments, python_blocks(path))) for path in READMES)
    assert english and korean == english


@pytest.mark.parametrize("path", READMES, ids=[path.name for path in READMES])
def test_links_point_at_files_and_headings_that_exist(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file) if file else path
        if not linked.exists():
            broken.append(target)
        elif fragment:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
            if fragment not in map(anchor, headings):
                broken.append(target)
    assert not broken


@pytest.mark.filterwarnings("ignore:The number of training batches")  # 13 on the generated data; the real has 1500
def test_python_code_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block of README.md, unchanged, in a folder where the data modules' default root (`data/`) holds
    generated Fashion-MNIST, as a reader's folder holds the real one."""
    make_idx_dataset(tmp_path / "data" / "FashionMNIST" / "raw", gz=False, seed=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "agg")
    blocks = python_blocks(READMES[0])
    for code in blocks:
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        history = namespace["history"]
        assert history.history["val_loss"]  # both blocks end with Keras' History of the run they trained
    assert len(blocks) == 2
