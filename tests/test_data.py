"""The book's split, the IDX file search order, and tensor batches in the order data.shuffle names."""

import gzip
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.model_selection import train_test_split
from torch.utils.data import DistributedSampler

from hgmldl.data import (
    SHUFFLES,
    FashionMNISTDataModule,
    KerasSeededSampler,
    MNISTDataModule,
    TensorBatches,
    book_split,
)
from hgmldl.errors import UserError
from hgmldl.idx import read_idx
from hgmldl.module import Classifier
from tests.conftest import make_idx_dataset, write_idx


@pytest.mark.parametrize("num_samples", [60_000, 500, 101])
def test_split_is_sklearns_train_test_split(num_samples):
    train, val = book_split(num_samples)
    sk_train, sk_val = train_test_split(np.arange(num_samples), test_size=0.2, random_state=42)
    np.testing.assert_array_equal(train, sk_train)
    np.testing.assert_array_equal(val, sk_val)


def test_book_split_sizes_on_60000():
    train, val = book_split(60_000)
    assert len(train) == 48_000 and len(val) == 12_000 and len(np.union1d(train, val)) == 60_000


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_is_laid_out_for_torchvision(tmp_path, gz):
    source = make_idx_dataset(tmp_path / "src", num_train=50, num_test=20, gz=gz)
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    assert sorted(p.name for p in data.raw_dir.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (40, 10, 20)
    assert data.train_images.shape == (40, 1, 28, 28) and data.train_images.dtype == torch.float32
    assert data.train_images.min() >= 0 and data.train_images.max() <= 1
    # The pixels are the file's bytes / 255, in the book's split order.
    raw = read_idx(source / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    train, _ = book_split(50)
    torch.testing.assert_close(data.train_images[:, 0], torch.from_numpy(raw[train] / 255.0).float())


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_returns_the_array_written(tmp_path, suffix):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / f"images{suffix}", images, 2051)
    write_idx(tmp_path / f"labels{suffix}", np.array([9, 0, 4]), 2049)
    read = read_idx(tmp_path / f"images{suffix}")
    assert read.dtype == np.uint8 and read.shape == (3, 28, 28)
    np.testing.assert_array_equal(read, images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"labels{suffix}"), [9, 0, 4])


def test_read_idx_of_a_truncated_file_is_one_line(tmp_path):
    write_idx(tmp_path / "images.gz", np.zeros((3, 28, 28)), 2051)
    (tmp_path / "short.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "images.gz").read_bytes())[:-1]))
    with pytest.raises(UserError, match=r"short.gz is 2367 bytes, its header promises 2368; the file is truncated"):
        read_idx(tmp_path / "short.gz")


def test_root_layout_is_used_without_any_source(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False).prepare_data()
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), download=False)
    data.prepare_data()
    data.setup("test")
    assert len(data.test_labels) == 10


@pytest.mark.parametrize("gz", [True, False])
def test_a_named_folder_of_other_data_is_the_one_used_not_the_copy_root_holds(tmp_path, gz):
    """Trained once on one folder (or the defaults), then on another in MNIST's format: the second is used."""
    first = make_idx_dataset(tmp_path / "first", num_train=30, num_test=10)
    FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(first), download=False).prepare_data()
    other = make_idx_dataset(tmp_path / "other", num_train=40, num_test=10, gz=gz, seed=7)
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(other), download=False)
    data.prepare_data()
    images, labels = data.read_images(train=True)
    suffix = ".gz" if gz else ""
    np.testing.assert_array_equal(labels.numpy(), read_idx(other / f"train-labels-idx1-ubyte{suffix}"))
    np.testing.assert_array_equal(images[:, 0].numpy(), read_idx(other / f"train-images-idx3-ubyte{suffix}"))


def test_damaged_raw_file_is_rebuilt_from_the_source(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10)
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    data.prepare_data()
    images = data.raw_dir / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # as an interrupted copy would leave it
    data.prepare_data()
    assert images.stat().st_size == 16 + 30 * 28 * 28


def test_mnist_has_the_same_interface(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=40, num_test=10)
    data = MNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    data.prepare_data()
    data.setup("fit")
    assert (data.raw_dir.parent.name, len(data.train_labels), data.classes["en"][0]) == ("MNIST", 32, "0")


def test_missing_data_names_the_package_and_idx_dir(tmp_path):
    with pytest.raises(UserError, match=r"apt-get install dataset-fashion-mnist.*data\.idx_dir="):
        data = FashionMNISTDataModule(root=str(tmp_path), download=False)
        data.system_dirs = ()
        data.prepare_data()


def test_wrong_magic_names_the_file(tmp_path):
    source = make_idx_dataset(tmp_path / "src", num_train=30, num_test=10, gz=False)
    (source / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(100))
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    with pytest.raises(UserError, match=r"^\S+/src/train-labels-idx1-ubyte: magic number 2051 is not 2049; this is"):
        data.prepare_data()


def permutation(seed: int, num_samples: int) -> torch.Tensor:
    """torch.randperm from a CPU generator seeded with `seed`: what torch's DistributedSampler draws for
    seed + epoch, written here independently of it."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))


def fed_order(batches: TensorBatches, epoch: int) -> torch.Tensor:
    """The labels (here equal to the sample indices) of one epoch's minibatches, after Lightning's set_epoch."""
    batches.sampler.set_epoch(epoch)
    return torch.cat([labels for _, labels in batches])


@pytest.mark.parametrize(("shuffle", "epoch_seeds"), [("keras", [7, 7, 7]), ("every_epoch", [7, 8, 9])])
def test_training_order_is_the_permutation_drawn_from_the_seed(shuffle, epoch_seeds):
    images, labels = torch.arange(100.0).reshape(100, 1, 1, 1), torch.arange(100)
    batches = TensorBatches(images, labels, batch_size=32, shuffle=shuffle, seed=7)
    assert len(batches) == 4
    minibatches = list(batches)
    assert [len(y) for _, y in minibatches] == [32, 32, 32, 4]
    orders = [fed_order(batches, epoch) for epoch in range(3)]
    for order, seed in zip(orders, epoch_seeds, strict=True):
        assert torch.equal(order, permutation(seed, 100))
    # Keras' seeded fit repeats epoch 0's order; every_epoch draws a new one each epoch.
    assert torch.equal(orders[0], orders[1]) == (shuffle == "keras")
    assert torch.equal(fed_order(batches, 0), orders[0])  # an epoch run again (a resumed run) gets the same order
    other_seed = TensorBatches(images, labels, batch_size=32, shuffle=shuffle, seed=8)
    assert not torch.equal(fed_order(other_seed, 0), orders[0])
    for x, y in minibatches:
        torch.testing.assert_close(x.flatten(), y.float())  # images travel with their labels


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_ddp_ranks_get_disjoint_shares_of_one_permutation(shuffle):
    images, labels = torch.zeros(10, 1, 1, 1), torch.arange(10)
    ranks = [TensorBatches(images, labels, 4, shuffle=shuffle, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        expected = permutation(3 if shuffle == "keras" else 3 + epoch, 10)
        shares = [fed_order(batches, epoch) for batches in ranks]
        assert torch.equal(shares[0], expected[0::2]) and torch.equal(shares[1], expected[1::2])
        assert sorted(torch.cat(shares).tolist()) == list(range(10))


def test_data_module_trains_in_the_order_data_shuffle_names(tmp_path):
    source = make_idx_dataset(tmp_path / "idx", num_train=100, num_test=10)
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    data.prepare_data()
    data.setup("fit")
    assert data.shuffle == "keras"  # the default: the order the book's seeded fit feeds
    assert type(data.train_dataloader().sampler) is KerasSeededSampler
    data.shuffle = "every_epoch"
    assert type(data.train_dataloader().sampler) is DistributedSampler
    val = data.val_dataloader()
    assert torch.equal(torch.cat([y for _, y in val]), data.val_labels)  # evaluation keeps the order


def test_a_setup_by_hand_before_the_trainer_moves_to_the_trainers_device(tmp_path):
    # A notebook calls data.setup("fit") to look at data.train_labels before any Trainer exists: the tensors are read
    # to the CPU. The Trainer's own setup() must bring them to its device (here the meta device stands for a GPU).
    source = make_idx_dataset(tmp_path / "idx", num_train=50, num_test=10)
    data = FashionMNISTDataModule(root=str(tmp_path / "root"), idx_dir=str(source), download=False)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    assert data.train_images.device == torch.device("cpu")
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    data.setup("fit")
    names = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
    assert {getattr(data, name).device for name in names} == {torch.device("meta")}


@pytest.mark.cuda
def test_the_dataset_and_every_batch_live_on_the_trainers_device(make_cfg, accelerator):
    # On a GPU the images are read into device memory once and batches are gathered there: no copy from the host
    # per step, and Lightning's transfer_batch_to_device is a no-op.
    cfg = make_cfg("model=cnn", "trainer.max_epochs=1", "callbacks=default")
    module = Classifier(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # by hand before the Trainer, as a notebook does: read to the CPU, then moved by fit
    inputs = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda layer, args, output: inputs.append(args[0]) if layer is module.net else None
    )
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    try:
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        hook.remove()
    device = torch.device("cuda", 0) if accelerator == "gpu" else torch.device("cpu")
    data = (datamodule.train_images, datamodule.val_images, datamodule.test_images)
    assert {tensor.device for tensor in data} == {device}
    # The sanity check's validation minibatch, 13 training ones (400 images by 32), one validation, one test.
    assert len(inputs) == 1 + 13 + 1 + 1 and {x.device for x in inputs} == {device}
