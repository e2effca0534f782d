"""Where the commands' images come from: one split of the dataset, one image of it, or a picture file."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hgmldl.data import FashionMNISTDataModule, scale
from hgmldl.errors import UserError
from hgmldl.files import check_readable
from hgmldl.models import IMAGE_SIZE

DATA_SPLITS = ("train", "val", "test")


def split_images(datamodule: FashionMNISTDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and labels of one split, on the CPU.

    `train` is the whole training file in its own order, as Keras' load_data() returns `train_input` (the book's
    8-3 looks at its image 0, the ankle boot); `val` is the book's `val_scaled` (its 8-2 predicts image 0, a bag).
    """
    if split not in DATA_SPLITS:
        raise UserError(f"split={split} does not exist; choose one of {', '.join(DATA_SPLITS)}")
    datamodule.prepare_data()
    if split == "train":  # before the book's split, which setup() makes
        images, labels = datamodule.read_images(train=True)
        return scale(images), labels
    if split == "val":
        datamodule.setup("validate")
        return datamodule.val_images, datamodule.val_labels
    datamodule.setup("test")
    return datamodule.test_images, datamodule.test_labels


def pick_image(datamodule: FashionMNISTDataModule, split: str, index: Any) -> tuple[torch.Tensor, int]:
    images, labels = split_images(datamodule, split)
    if not isinstance(index, int) or not 0 <= index < len(images):
        raise UserError(f"index={index} is not an image of {split}: give an integer from 0 to {len(images) - 1}")
    return images[index], int(labels[index])


def read_image(path: str | Path) -> torch.Tensor:
    """A picture file as a Fashion-MNIST image: (1, 28, 28) in [0, 1], light object on a black background.

    Transparent pixels count as white paper; colours become gray; a mostly light picture (mean brightness above
    half) is a dark object on light paper, as in a typical photo, and is inverted; then the picture is shrunk to fit
    28×28 with its aspect ratio kept and padded with black. A 28×28 grayscale Fashion-MNIST image stays unchanged.
    """
    path = check_readable(path, "image")
    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGBA")
    except UnidentifiedImageError as error:
        raise UserError(f"{path} is not an image Pillow can read (PNG, JPEG, BMP, …)") from error
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error}") from error
    gray = Image.alpha_composite(Image.new("RGBA", picture.size, "white"), picture).convert("L")
    if np.asarray(gray).mean() > 127.5:
        gray = ImageOps.invert(gray)
    gray = ImageOps.pad(gray, (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS, color=0)
    return torch.from_numpy(np.array(gray)).float().div(255)[None]
