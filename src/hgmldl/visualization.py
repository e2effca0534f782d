"""Looking inside a trained model, as the book does: evaluate, predict, the 8-3 pictures, and the data itself.

Each function is one command (evaluate.py, predict.py, visualize.py, scripts/show_data.py): it reads a checkpoint
through `hgmldl.saving.load_checkpoint`, writes its PNGs into `cfg.output_dir` and logs what it found.
"""

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from hgmldl.data import IMAGE_SIZE, NUM_CLASSES, FashionMNISTDataModule
from hgmldl.errors import UserError
from hgmldl.files import write_text_atomic
from hgmldl.hangul import padded
from hgmldl.models import keras_init_
from hgmldl.saving import check_readable, describe, load_checkpoint
from hgmldl.viz import (
    class_names,
    plot_confusion_matrix,
    plot_feature_maps,
    plot_filters,
    plot_prediction,
    plot_samples,
    plot_weight_histogram,
    save_figure,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_images(datamodule: FashionMNISTDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and labels of one split, on the CPU.

    `train` is the whole training file in its own order, as Keras' load_data() returns `train_input` (the book's
    8-3 looks at its image 0, the ankle boot); `val` is the book's `val_scaled` (its 8-2 predicts image 0, a bag).
    """
    if split not in SPLITS:
        raise UserError(f"split={split} does not exist; choose one of {', '.join(SPLITS)}")
    datamodule.prepare_data()
    if split == "val":
        datamodule.setup("validate")
        return datamodule.val_images, datamodule.val_labels
    # The data module's own reader, so the images are scaled exactly as in training (setup() would split them).
    return datamodule._load(train=split == "train", device=torch.device("cpu"))


def pick_image(datamodule: FashionMNISTDataModule, split: str, index: Any) -> tuple[torch.Tensor, int]:
    images, labels = split_images(datamodule, split)
    if not isinstance(index, int) or not 0 <= index < len(images):
        raise UserError(f"index={index} is not an image of {split}: give an integer from 0 to {len(images) - 1}")
    return images[index], int(labels[index])


@torch.inference_mode()
def logits_of(module: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([module(batch.to(module.device)).cpu() for batch in images.split(batch_size)])


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dataset_classes(cfg: DictConfig) -> tuple[FashionMNISTDataModule, list[str]]:
    datamodule = instantiate(cfg.data)
    return datamodule, class_names(datamodule.dataset_class.__name__, cfg.classes)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Keras' `model.evaluate` on val and test, plus each split's confusion matrix and per-class accuracy.

    Writes evaluation.json, per_class_accuracy.csv and confusion_matrix_{val,test}.png into the run dir.
    """
    module = load_checkpoint(cfg.ckpt_path).to(_device())
    datamodule, names = _dataset_classes(cfg)
    output_dir = Path(cfg.output_dir)
    results: dict[str, Any] = {}
    per_class: dict[str, list[float]] = {}
    for split in ("val", "test"):
        images, labels = split_images(datamodule, split)
        logits = logits_of(module, images)
        confusion = multiclass_confusion_matrix(logits, labels.cpu(), NUM_CLASSES)
        results[f"{split}_loss"] = F.cross_entropy(logits, labels.cpu()).item()
        results[f"{split}_accuracy"] = (confusion.trace() / confusion.sum()).item()
        per_class[split] = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
        save_figure(plot_confusion_matrix(confusion, names, split), output_dir / f"confusion_matrix_{split}.png")
    results["per_class_accuracy"] = {name: {s: per_class[s][i] for s in per_class} for i, name in enumerate(names)}
    write_text_atomic(output_dir / "evaluation.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "val_accuracy", "test_accuracy"])
    writer.writerows(
        [name, f"{val:.4f}", f"{test:.4f}"] for name, val, test in zip(names, *per_class.values(), strict=True)
    )
    write_text_atomic(output_dir / "per_class_accuracy.csv", table.getvalue())

    log.info("%s: %s", cfg.ckpt_path, describe(dict(module.hparams.model)))
    for split in ("val", "test"):
        log.info("%s_loss %.4f  %s_accuracy %.4f", split, results[f"{split}_loss"], split, results[f"{split}_accuracy"])
    log.info("%s %12s %13s", padded("class"), "val_accuracy", "test_accuracy")
    for name, val, test in zip(names, *per_class.values(), strict=True):
        log.info("%s %12.4f %13.4f", padded(name), val, test)
    log.info("confusion matrices, per_class_accuracy.csv, evaluation.json: %s", output_dir)
    return results


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


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Keras' `predict` + argmax for one image (`image=<file>`, or `index` of `split`), and 8-2's picture of it."""
    module = load_checkpoint(cfg.ckpt_path)
    datamodule, names = _dataset_classes(cfg)
    if cfg.image:
        image, label, source = read_image(cfg.image), None, str(cfg.image)
    else:
        image, label = pick_image(datamodule, cfg.split, cfg.index)
        source = f"{cfg.split}[{cfg.index}]"
    probabilities = torch.softmax(logits_of(module, image[None]), dim=1)[0]
    predicted = int(probabilities.argmax())
    path = save_figure(plot_prediction(image, probabilities, names), Path(cfg.output_dir) / "prediction.png")
    known = "" if label is None else f" (label: {names[label]})"
    log.info("%s: %s%s", source, names[predicted], known)
    for name, probability in zip(names, probabilities.tolist(), strict=True):
        log.info("  %s %.4f", padded(name), probability)
    log.info("picture: %s", path)
    return {"class": names[predicted], "index": predicted, "label": label, "probabilities": probabilities.tolist()}


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """8-3's pictures of a CNN checkpoint: conv1's kernels (trained and freshly Keras-initialised) as a histogram
    and a filter grid, and the feature maps of conv1 and conv2 (after their activation) for one image."""
    module = load_checkpoint(cfg.ckpt_path)
    net = module.net
    convs = [index for index, layer in enumerate(net) if isinstance(layer, nn.Conv2d)]
    if not convs:
        model = describe(dict(module.hparams.model))
        raise UserError(f"{cfg.ckpt_path} is {model}, which has no conv layers; visualize needs a CNN (model=cnn)")
    output_dir = Path(cfg.output_dir)
    conv1 = net[convs[0]]
    torch.manual_seed(cfg.seed)
    fresh = keras_init_(nn.Conv2d(conv1.in_channels, conv1.out_channels, conv1.kernel_size, padding=conv1.padding))
    stats = {}
    for name, conv in (("conv1", conv1), ("untrained_conv1", fresh)):
        weight = conv.weight.detach()
        stats[name] = {"mean": weight.mean().item(), "std": weight.std().item()}
        log.info("%s kernels %s: mean %.6f std %.6f", name, tuple(weight.shape), *stats[name].values())
        save_figure(plot_weight_histogram(weight, name), output_dir / f"{name}_histogram.png")
        save_figure(plot_filters(weight, name), output_dir / f"{name}_filters.png")

    datamodule = instantiate(cfg.data)
    image, label = pick_image(datamodule, cfg.split, cfg.index)
    with torch.inference_mode():
        for number, index in enumerate(convs[:2], start=1):
            # net[:index + 2] ends with the conv layer's activation, which Keras fuses into Conv2D.
            maps = net[: index + 2](image[None])[0]
            title = f"conv{number} feature maps of {cfg.split}[{cfg.index}] (label {label})"
            save_figure(plot_feature_maps(maps, columns=8, title=title), output_dir / f"conv{number}_feature_maps.png")
    log.info("pictures: %s", output_dir)
    return stats


def show_data(cfg: DictConfig) -> list[int]:
    """7-1's first cells: the first ten training images with their labels, and the number of images per class."""
    datamodule, names = _dataset_classes(cfg)
    images, labels = split_images(datamodule, "train")
    first = labels[: cfg.num_images].tolist()
    path = save_figure(plot_samples(images[: cfg.num_images], first, names), Path(cfg.output_dir) / "samples.png")
    counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
    log.info("train_input %s, first labels %s", tuple(images.shape), first)
    for name, count in zip(names, counts, strict=True):
        log.info("  %s %d", padded(name), count)
    log.info("picture: %s", path)
    return counts
