"""Every way the IDX files can be wrong ends in one UserError naming the file and the problem."""

import gzip
import logging
import socket

import numpy as np
import pytest
import torchvision

import hgmldl.data
from hgmldl.data import FashionMNISTDataModule
from hgmldl.errors import UserError
from tests.conftest import make_idx_dataset, write_idx


def data_module(tmp_path, source=None, download=False, named=True):
    """Finds its files only in `source`, named by `idx_dir` or in place of Debian's folder (which this machine may
    have)."""
    data = FashionMNISTDataModule(
        root=str(tmp_path / "root"), idx_dir=str(source) if source and named else None, download=download
    )
    data.system_dirs = (str(source),) if source and not named else ()
    return data


def truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


def truncate_gz_content(path, size):
    """A well-formed .gz whose IDX content is cut short: the header promises more images than follow."""
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:size]))


# (what is wrong in the source folder, the message with {src} = source folder and {raw} = where it is copied to)
BROKEN_SOURCES = {
    "truncated gz": (
        lambda src: truncate(src / "train-images-idx3-ubyte.gz", 200),
        "cannot read {src}/train-images-idx3-ubyte.gz: Compressed file ended before the end-of-stream marker was "
        "reached; the file is corrupt or truncated",
    ),
    "not gzip": (
        lambda src: (src / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>404</html>"),
        "cannot read {src}/t10k-labels-idx1-ubyte.gz: Not a gzipped file (b'<h'); the file is corrupt or truncated",
    ),
    "truncated data": (
        lambda src: truncate_gz_content(src / "t10k-images-idx3-ubyte.gz", 16 + 9 * 28 * 28),  # 9 of 10 images
        "{src}/t10k-images-idx3-ubyte.gz is 7072 bytes, its header promises 7856; the file is truncated or corrupt",
    ),
    "too short for a header": (
        lambda src: (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08")),
        "{src}/train-labels-idx1-ubyte.gz is too short for an IDX header (3 bytes); the file is truncated or corrupt",
    ),
    "wrong image size": (
        lambda src: write_idx(src / "train-images-idx3-ubyte.gz", np.zeros((30, 32, 32)), 2051),
        "{src}/train-images-idx3-ubyte.gz: images are 32x32, expected 28x28",
    ),
    "count mismatch": (
        lambda src: write_idx(src / "train-labels-idx1-ubyte.gz", np.zeros(29), 2049),
        "{src}/train-images-idx3-ubyte.gz holds 30 images but {src}/train-labels-idx1-ubyte.gz holds 29 labels",
    ),
    "label outside 0-9": (
        lambda src: write_idx(src / "t10k-labels-idx1-ubyte.gz", np.full(10, 10), 2049),
        "{src}/t10k-labels-idx1-ubyte.gz: label 10 is outside 0-9; the file is corrupt",
    ),
}


@pytest.mark.parametrize("case", BROKEN_SOURCES)
def test_broken_idx_file_in_the_named_folder_is_named_with_its_problem_before_any_copy(tmp_path, case):
    break_source, message = BROKEN_SOURCES[case]
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    break_source(source)
    data = data_module(tmp_path, source)
    with pytest.raises(UserError) as error:
        data.prepare_data()
    assert str(error.value) == message.format(src=source)
    assert not data.raw_dir.exists()  # checked before it is copied: a copy root held would be left as it was


def test_a_broken_copy_is_checked_again_on_the_next_run_not_trusted(tmp_path, caplog):
    """Debian's folder (not a named one) is copied first and checked in place: a broken copy is not trusted later."""
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    write_idx(source / "train-labels-idx1-ubyte.gz", np.full(30, 12), 2049)
    data = data_module(tmp_path, source, named=False)
    for _ in range(2):
        with pytest.raises(UserError) as error:
            data.prepare_data()
        assert str(error.value) == (
            f"{data.raw_dir}/train-labels-idx1-ubyte: label 12 is outside 0-9; the file is corrupt (copied from {source})"
        )
    assert "rebuilding it from the IDX sources" in caplog.text


def test_a_named_folder_missing_a_file_is_named_not_completed_from_another_copy(tmp_path):
    data = data_module(tmp_path, make_idx_dataset(tmp_path / "other", num_train=30, num_test=10), named=False)
    data.prepare_data()  # root now holds a whole copy
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10, gz=False)
    (source / "t10k-labels-idx1-ubyte").unlink()
    (source / "train-images-idx3-ubyte").unlink()
    with pytest.raises(UserError) as error:
        data_module(tmp_path, source).prepare_data()
    assert str(error.value) == (
        f"data.idx_dir={source}: train-images-idx3-ubyte, t10k-labels-idx1-ubyte (raw or .gz) not there; "
        "give the folder with the four IDX files"
    )


def test_an_interrupted_copy_is_rebuilt_with_a_warning(tmp_path, caplog):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    data = data_module(tmp_path, source, named=False)
    data.prepare_data()
    images = data.raw_dir / "train-images-idx3-ubyte"
    truncate(images, 1000)  # what a copy killed half-way by an older version, or by hand, leaves
    (data.raw_dir / ".train-labels-idx1-ubyte.4242.tmp").write_bytes(b"\x00")  # a kill during an atomic write
    with caplog.at_level(logging.WARNING):
        data.prepare_data()
    assert caplog.messages == [
        f"{images} is 1000 bytes, its header promises 23536; the file is truncated or corrupt: "
        "rebuilding it from the IDX sources"
    ]
    assert images.read_bytes() == gzip.decompress((source / "train-images-idx3-ubyte.gz").read_bytes())


def test_a_folder_where_a_file_belongs_is_named(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    data = data_module(tmp_path, source)
    data.raw_dir.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (data.raw_dir / name).write_bytes(b"")
    (data.raw_dir / "t10k-labels-idx1-ubyte").mkdir()  # unreadable as a file, even for root
    with pytest.raises(UserError) as error:
        data.prepare_data()
    assert str(error.value) == f"cannot write {data.raw_dir}/t10k-labels-idx1-ubyte: Is a directory"


def test_missing_data_without_network_fails_fast_and_says_what_to_install(tmp_path, monkeypatch):
    # A server that accepts connections and never answers: a network that drops packets, without the wait.
    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.getsockname()[1]}/"])
    monkeypatch.setattr(hgmldl.data, "DOWNLOAD_TIMEOUT", 0.2)
    data = data_module(tmp_path, download=True)
    with server, pytest.raises(UserError) as error:
        data.prepare_data()
    assert str(error.value) == (
        f"FashionMNIST IDX files not found in {data.raw_dir}: run `apt-get install dataset-fashion-mnist` "
        "or point data.idx_dir=<folder with the four IDX files (.gz or raw)> (the download failed: timed out)"
    )
    assert socket.getdefaulttimeout() is None


def test_a_data_root_under_a_file_is_named(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    (tmp_path / "file").write_text("")
    data = FashionMNISTDataModule(root=str(tmp_path / "file" / "root"), idx_dir=str(source), download=False)
    with pytest.raises(UserError) as error:
        data.prepare_data()
    assert str(error.value) == f"cannot write {data.raw_dir}/train-images-idx3-ubyte: Not a directory"
