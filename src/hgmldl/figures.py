"""The book's pictures: sample images, History curves, probabilities, confusion matrix, conv filters, feature maps,
and the model's layers (Keras' plot_model).

Every function returns a matplotlib `Figure` built without pyplot (Agg renders it; no global figure state, nothing to
close), so the same picture goes to a PNG (`save_figure`) or to TensorBoard (`SummaryWriter.add_figure`).
Figure sizes are in inches at `DPI`, so a PNG's pixel size is `figsize * DPI`.
"""

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from hgmldl.errors import UserError
from hgmldl.model_summary import keras_shape, output_shapes
from hgmldl.models import INPUT_SHAPE

log = logging.getLogger(__name__)

DPI = 100
KOREAN_FONT = "NanumGothic"  # Debian's fonts-nanum, installed by `make data`


@functools.cache
def korean_font() -> str | None:
    """The Korean font's family name, or None. A font installed after matplotlib built its font cache is not in
    the cache yet, so the system's font files are searched too."""
    if not any(font.name == KOREAN_FONT for font in font_manager.fontManager.ttflist):
        for path in font_manager.findSystemFonts():
            if Path(path).name == f"{KOREAN_FONT}.ttf":
                font_manager.fontManager.addfont(path)
    return KOREAN_FONT if any(font.name == KOREAN_FONT for font in font_manager.fontManager.ttflist) else None


def class_names(classes: Mapping[str, list[str]], language: str = "en") -> list[str]:
    """A data module's class names (`datamodule.classes`) in English or the book's Korean.

    Korean needs a Korean font: with one, every later figure uses it (DejaVu Sans fills in what it lacks);
    without one, a warning says how to get it and the English names are used, so no plot shows empty boxes.
    """
    if language not in classes:
        choices = " or ".join(f"classes={name}" for name in classes)
        raise UserError(f"classes={language} is not a language here; choose {choices}")
    if classes[language] != classes["en"]:  # Hangul to draw (MNIST's digits are the same in both)
        font = korean_font()
        if font is None:
            log.warning("no Korean font found (apt-get install fonts-nanum, or `make data`): using English class names")
            language = "en"
        else:
            matplotlib.rcParams["font.family"] = [font, "DejaVu Sans"]
    return classes[language]


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def plot_history(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """7-3's plots: loss and accuracy per epoch, train solid and val dashed, one colour per run."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for number, (name, rows) in enumerate(runs.items()):
            color = f"C{number % 10}"  # the colour cycle's ten colours
            label = f"{name} " if name else ""
            epochs = [int(row["epoch"]) for row in rows]
            axes.plot(epochs, [row.get(metric) for row in rows], color=color, label=f"{label}train")
            if any(f"val_{metric}" in row for row in rows):
                axes.plot(epochs, [row.get(f"val_{metric}") for row in rows], "--", color=color, label=f"{label}val")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.legend(fontsize="small")
    return figure


def plot_samples(images: torch.Tensor, labels: Sequence[int], names: Sequence[str]) -> Figure:
    """7-1's first cell: the images side by side (cmap='gray_r'), each titled with its label and class name."""
    figure = Figure(figsize=(len(images), 1.6), layout="constrained")
    for axes, image, label in zip(np.atleast_1d(figure.subplots(1, len(images))), images, labels, strict=True):
        axes.imshow(image.squeeze().cpu().numpy(), cmap="gray_r")
        axes.set_title(f"{label}\n{names[label]}", fontsize=8)
        axes.axis("off")
    return figure


def plot_prediction(image: torch.Tensor, probabilities: torch.Tensor, names: Sequence[str]) -> Figure:
    """8-2's picture: the image (cmap='gray_r') beside the bar chart of the ten probabilities."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    image_axes, bar_axes = figure.subplots(1, 2, width_ratios=[1, 2])
    predicted = int(probabilities.argmax())
    image_axes.imshow(image.squeeze().cpu().numpy(), cmap="gray_r")
    image_axes.set_title(f"{names[predicted]} ({probabilities[predicted]:.1%})")
    image_axes.axis("off")
    bar_axes.bar(range(len(probabilities)), probabilities.cpu().numpy())
    bar_axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    bar_axes.set_ylim(0, 1)
    bar_axes.set_xlabel("class")
    bar_axes.set_ylabel("prob.")
    return figure


def plot_confusion_matrix(matrix: torch.Tensor, names: Sequence[str], title: str = "") -> Figure:
    """Counts of (true, predicted) classes, the diagonal being the correct ones; each cell shows its count."""
    figure = Figure(figsize=(8, 7), layout="constrained")
    axes = figure.subplots()
    counts = matrix.cpu().numpy()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes)
    for (row, column), count in np.ndenumerate(counts):
        color = "white" if count > counts.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=7)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return figure


def plot_filters(weight: torch.Tensor, title: str = "") -> Figure:
    """8-3's filter picture: the first input channel of each kernel in a 2×16 grid, vmin=-0.5, vmax=0.5."""
    columns = 16
    rows = -(-len(weight) // columns)
    figure = Figure(figsize=(15, rows), layout="constrained")
    for index, axes in enumerate(np.atleast_2d(figure.subplots(rows, columns)).flat):
        if index < len(weight):
            axes.imshow(weight[index, 0].detach().cpu().numpy(), vmin=-0.5, vmax=0.5)
        axes.axis("off")
    figure.suptitle(title)
    return figure


def plot_weight_histogram(weight: torch.Tensor, title: str = "") -> Figure:
    """8-3's `plt.hist(conv_weights.reshape(-1, 1))`: ten bins, xlabel 'weight', ylabel 'count'."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.hist(weight.detach().cpu().reshape(-1).numpy())
    axes.set_xlabel("weight")
    axes.set_ylabel("count")
    axes.set_title(title)
    return figure


def plot_feature_maps(maps: torch.Tensor, columns: int = 8, title: str = "") -> Figure:
    """8-3's feature maps: one (C, H, W) activation, channel `row * columns + column` in each cell, viridis,
    each map scaled on its own (no vmin/vmax), in 1.5-inch cells: 32 maps 12×6.5 inches, 64 maps 12×12.5."""
    rows = -(-len(maps) // columns)
    figure = Figure(figsize=(1.5 * columns, 1.5 * rows + 0.5), layout="constrained")
    for index, axes in enumerate(np.atleast_2d(figure.subplots(rows, columns)).flat):
        if index < len(maps):
            axes.imshow(maps[index].detach().cpu().numpy())
        axes.axis("off")
    figure.suptitle(title)
    return figure


def plot_model(model: nn.Module, show_shapes: bool = False, input_shape: tuple[int, ...] = INPUT_SHAPE) -> Figure:
    """8-2's `keras.utils.plot_model(model, show_shapes=…)`: the input and each layer of the network, top to bottom,
    one box each ("name (type)"), with show_shapes the output shape under it, channels first. A PyTorch activation
    is a layer of its own, so the CNN has eleven boxes where Keras draws eight."""
    net = getattr(model, "net", model)
    shapes = output_shapes(net, input_shape)
    boxes = [f"input (Input)\n{keras_shape((1, *input_shape))}" if show_shapes else "input (Input)"]
    for name, layer in net.named_children():
        label = f"{name} ({type(layer).__name__})"
        boxes.append(f"{label}\n{keras_shape(shapes[name])}" if show_shapes else label)
    row = 0.75 if show_shapes else 0.5  # inches per box and the arrow below it
    figure = Figure(figsize=(3.2, row * len(boxes)))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 1)
    axes.set_ylim(len(boxes), 0)
    axes.axis("off")
    for index, text in enumerate(boxes):
        axes.text(
            0.5, index + 0.4, text, ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": "white"}
        )
        if index:
            axes.annotate("", xy=(0.5, index + 0.1), xytext=(0.5, index - 0.3), arrowprops={"arrowstyle": "->"})
    return figure
