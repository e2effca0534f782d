"""visualize.py's work, the book's 8-3 pictures of a CNN checkpoint: conv1's kernels (trained and freshly
Keras-initialised) as a histogram and a filter grid, and the feature maps of conv1 and conv2 for one image.
"""

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from hgmldl.config import command
from hgmldl.errors import UserError
from hgmldl.figures import plot_feature_maps, plot_filters, plot_weight_histogram, save_figure
from hgmldl.images import pick_image
from hgmldl.models import describe, feature_extractor, keras_init_, keras_layers
from hgmldl.saving import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """8-3's pictures of a CNN checkpoint: conv1's kernels (trained and freshly Keras-initialised) as a histogram
    and a filter grid, and the feature maps of conv1 and conv2 (after their activation) for one image."""
    module = load_model(cfg.ckpt_path)
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
        # numpy's mean and std (ddof=0), as the book's conv_weights.mean(), conv_weights.std()
        stats[name] = {"mean": weight.mean().item(), "std": weight.std(correction=0).item()}
        log.info("%s kernels %s: mean %.6f std %.6f", name, tuple(weight.shape), *stats[name].values())
        save_figure(plot_weight_histogram(weight, name), output_dir / f"{name}_histogram.png")
        save_figure(plot_filters(weight, name), output_dir / f"{name}_filters.png")

    datamodule = instantiate(cfg.data)
    image, label = pick_image(datamodule, cfg.split, cfg.index)
    with torch.inference_mode():
        # The book's keras.Model(model.inputs, model.layers[0].output) and model.layers[2]: conv2d and conv2d_1.
        layers = [name for name in keras_layers(net) if name.startswith("conv2d")]
        for number, layer in enumerate(layers[:2], start=1):
            maps = feature_extractor(net, layer)(image[None])[0]
            title = f"conv{number} feature maps of {cfg.split}[{cfg.index}] (label {label})"
            save_figure(plot_feature_maps(maps, columns=8, title=title), output_dir / f"conv{number}_feature_maps.png")
    log.info("pictures: %s", output_dir)
    return stats


@command("visualize")
def main(cfg: DictConfig) -> None:
    """`python visualize.py …` at the top of the checkout, `hgmldl-visualize …` where pip installed hgmldl."""
    run(cfg)
