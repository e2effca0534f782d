"""File writes that a crash or a kill cannot leave half done, and the check that a run can write at all."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hgmldl.errors import UserError

# What a run needs at least: two checkpoints of the largest book model with Adam's state (~5 MB each), their
# temporary copies, logs and pictures, with room to spare.
MIN_FREE_BYTES = 100 * 2**20


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file beside `path` and renames it over `path` once written and synced (atomic on POSIX).

    A crash or a kill at any moment leaves either the previous complete file or the new one, never a mix; at
    worst a hidden `.<name>.<pid>.tmp` beside it. A failed write (disk full) is one line naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with suppress(OSError):  # none was made if the folder could not be
            tmp.unlink()
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror or error}") from error
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with open_atomic(path) as file:
        file.write(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through `open_atomic`.

    Lightning's own writes the checkpoint to a file in the system's temp folder and moves it over the target:
    atomic only when that folder and the run folder share a file system (a copy otherwise), never synced to disk,
    and a kill leaves the temp file behind in /tmp.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with open_atomic(path, "wb") as file:
            torch.save(checkpoint, file)


def check_output_dir(path: str | os.PathLike, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fails at once, rather than at the first checkpoint an epoch later, when `path` cannot be written to."""
    folder = Path(path).absolute()
    while not folder.exists():  # the nearest part that exists decides: the run folder itself is made later
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write to {path}: {folder} is a file, not a folder; choose another hydra.run.dir")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write to {path}: {folder} is not writable; choose another hydra.run.dir")
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise UserError(
            f"only {free / 2**20:.0f} MB free on the disk of {path}; a run needs at least "
            f"{min_free_bytes / 2**20:.0f} MB: free some space or choose another hydra.run.dir"
        )


def check_readable(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a one-line error if there is no non-empty file to read there."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty")
    return path
