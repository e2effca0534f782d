"""show_data.py's work, 7-1's first cells: the first training images with their labels, and the number of
training images per class."""

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from hgmldl.config import command
from hgmldl.figures import class_names, plot_samples, save_figure
from hgmldl.hangul import padded
from hgmldl.images import split_images
from hgmldl.models import NUM_CLASSES

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> list[int]:
    """7-1's first cells: the first ten training images with their labels, and the number of images per class."""
    datamodule = instantiate(cfg.data)
    names = class_names(datamodule.classes, cfg.classes)
    images, labels = split_images(datamodule, "train")
    first = labels[: cfg.num_images].tolist()
    path = save_figure(plot_samples(images[: cfg.num_images], first, names), Path(cfg.output_dir) / "samples.png")
    counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
    log.info("train_input %s, first labels %s", tuple(images.shape), first)
    for name, count in zip(names, counts, strict=True):
        log.info("  %s %d", padded(name), count)
    log.info("picture: %s", path)
    return counts


@command("show_data")
def main(cfg: DictConfig) -> None:
    """`python show_data.py …` at the top of the checkout, `hgmldl-show-data …` where pip installed hgmldl."""
    run(cfg)
