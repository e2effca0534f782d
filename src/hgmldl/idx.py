"""IDX, the file format of MNIST and Fashion-MNIST, read and checked with numpy alone.

The data modules check the files they lay out with it; the scripts and tests read them with it, the book's Keras
code (scripts/keras_book.py) too. That code runs in TensorFlow's processes, where importing torch after TensorFlow
crashes (a segmentation fault with TensorFlow 2.21 and torch 2.14): nothing here imports torch.
"""

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from hgmldl.errors import UserError

# The four IDX files every MNIST-format dataset ships: (images, labels) for the training and the test set.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX headers: 0x00000803 = ubyte × 3 dims, 0x00000801 = ubyte × 1 dim (the last byte counts the dimensions).
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file, raw or .gz: (N, 28, 28) images or (N,) labels, as keras.datasets'
    load_data() returns them; a damaged file is one UserError that names it."""
    data = read_bytes(path)
    magic = IMAGES_MAGIC if data[:4] == IMAGES_MAGIC.to_bytes(4, "big") else LABELS_MAGIC
    shape = check_header(path, data, len(data), magic)
    return np.frombuffer(data, np.uint8, offset=header_size(magic)).reshape(shape)


def find_idx(folder: Path, name: str) -> Path | None:
    """The IDX file `name` in `folder`, raw or .gz, or None."""
    return next((path for path in (folder / name, folder / f"{name}.gz") if path.is_file()), None)


def read_bytes(path: Path) -> bytes:
    """The bytes of `path`, decompressed if its name ends in .gz (at most 47 MB for these files)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            return file.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read {path}: {error}; the file is corrupt or truncated") from error


def check_idx_file(path: Path, magic: int, item_shape: tuple[int, ...], data: bytes | None = None) -> int:
    """The number of items in a raw IDX file, checked from its header and its size without reading the rest; or in
    `data`, the bytes already read from `path` (a .gz decompressed)."""
    if data is not None:
        return check_header(path, data, len(data), magic, item_shape)[0]
    try:
        with open(path, "rb") as file:
            header = file.read(header_size(magic))
        size = path.stat().st_size
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from error
    return check_header(path, header, size, magic, item_shape)[0]


def check_header(
    path: Path, header: bytes, size: int, magic: int, item_shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The shape of the array in an IDX file of `size` bytes that starts with `header`, checked against the kind
    expected (`magic`, and `item_shape` if given); else a UserError that says what is wrong with the file."""
    length = header_size(magic)
    if len(header) < length:
        raise UserError(f"{path} is too short for an IDX header ({size} bytes); the file is truncated or corrupt")
    found_magic, count, *shape = struct.unpack(f">{length // 4}I", header[:length])
    if found_magic != magic:
        raise UserError(f"{path}: magic number {found_magic} is not {magic}; this is not an IDX file of this kind")
    if item_shape is not None and tuple(shape) != item_shape:
        raise UserError(f"{path}: images are {'x'.join(map(str, shape))}, expected {'x'.join(map(str, item_shape))}")
    expected = length + count * math.prod(shape)
    if size != expected:
        raise UserError(f"{path} is {size} bytes, its header promises {expected}; the file is truncated or corrupt")
    return (count, *shape)


def header_size(magic: int) -> int:
    """Bytes before the data: the magic number and one 4-byte size per dimension."""
    return 4 * (1 + (magic & 0xFF))
