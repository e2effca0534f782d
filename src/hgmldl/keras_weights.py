"""The book's own trained Keras 3 models (`best-cnn-model.keras`, 7-3's `model-whole.keras` / `model.weights.h5`)
as hgmldl models: `python scripts/import_keras.py best-cnn-model.keras -o best-cnn-model.safetensors`.

A Keras 3 weights file (`model.weights.h5`, also inside every `.keras` zip beside `config.json`) keeps each layer's
arrays at `layers/<name>/vars/<i>`, where `<name>` is the layer's class in snake case numbered per kind in model
order (conv2d, conv2d_1, dense, dense_1), whatever name the layer was given; vars/0 is the kernel and vars/1 the bias.
Keras computes in NHWC, torch in NCHW, so the arrays are rearranged (see `torch_weight`).
"""

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from hgmldl.errors import UserError
from hgmldl.files import check_readable
from hgmldl.models import ACTIVATIONS, INPUT_SHAPE, KERAS_LAYERS, describe, keras_layers, keras_names
from hgmldl.module import Classifier

Arrays = dict[str, list[np.ndarray]]
KERAS_CLASSES = dict(KERAS_LAYERS.values())  # Conv2D → conv2d, …: the layers hgmldl.models can build
WEIGHTS = "model.weights.h5"


def read_keras(path: Path) -> tuple[Arrays, dict[str, dict[str, Any]] | None]:
    """Each layer's arrays by weights-file name, and for a .keras file each layer's config by the same name."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if not {WEIGHTS, "config.json"} <= set(archive.namelist()):
                raise UserError(f"{path} is a zip but not a Keras 3 .keras file (it lacks {WEIGHTS} or config.json)")
            config = json.loads(archive.read("config.json"))
            weights = io.BytesIO(archive.read(WEIGHTS))
        return read_weights(weights, path), layer_configs(config, path)
    if not h5py.is_hdf5(path):
        raise UserError(f"{path} is neither a Keras .keras file nor a .weights.h5 file")
    return read_weights(path, path), None


def read_weights(file: Path | io.BytesIO, path: Path) -> Arrays:
    with h5py.File(file, "r") as h5:
        if not isinstance(h5.get("layers"), h5py.Group):
            raise UserError(
                f"{path} is not in Keras 3's weights layout (it has no layers/ group): a Keras 2 .h5 file? "
                "Load it in Keras 3 and save it again with model.save('model.keras')"
            )
        layers = h5["layers"]
        return {
            name: [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
            for name in layers
            if (vars_ := layers[name].get("vars")) is not None and len(vars_)
        }


def layer_configs(config: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """config.json's layers by their weights-file names, after checking that hgmldl.models has each one."""
    if config.get("class_name") != "Sequential":
        raise UserError(f"{path} holds a {config.get('class_name')} model; hgmldl imports keras.Sequential models")
    for number, layer in enumerate(config["config"]["layers"]):
        if layer["class_name"] not in {*KERAS_CLASSES, "InputLayer"}:
            supported = ", ".join(KERAS_CLASSES)
            raise UserError(f"{path}: layer {number} is a {layer['class_name']}; hgmldl.models builds only {supported}")
    layers = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
    names = keras_names(KERAS_CLASSES[layer["class_name"]] for layer in layers)
    return {name: layer["config"] for name, layer in zip(names, layers, strict=True)}


def model_config(
    weights: Arrays, layers: dict[str, dict[str, Any]] | None, activation: str, dropout: float, path: Path
) -> dict[str, Any]:
    """The hgmldl.models config of the network the file holds: its sizes come from the weights, its activations
    and dropout rate from config.json (a .weights.h5 file has none: then from `activation` and `dropout`)."""

    def numbered(kind: str) -> list[str]:
        names = [name for name in weights if re.fullmatch(rf"{kind}(_\d+)?", name)]
        return sorted(names, key=lambda name: int(name.rpartition("_")[2]) if name != kind else 0)

    convs, denses = numbered("conv2d"), numbered("dense")
    if not denses:
        raise UserError(f"{path} holds no Dense layer's weights; every hgmldl model ends in Dense(10)")
    if layers is not None:
        rates = [config["rate"] for name, config in layers.items() if name.startswith("dropout")]
        dropout = rates[0] if rates else 0.0
    hidden = convs + denses[:1] if convs else denses[:-1]  # the layers whose activation the builder takes
    activations = [(layers or {}).get(name, {}).get("activation", activation) for name in hidden]
    for name, used in zip(hidden, activations, strict=True):
        if used not in ACTIVATIONS:
            raise UserError(f"{path}: layer {name} uses activation {used}; hgmldl.models has {', '.join(ACTIVATIONS)}")
    if convs:
        if len(set(activations)) > 1:
            raise UserError(f"{path}: its layers use {', '.join(activations)}; hgmldl's cnn uses one activation")
        return {
            "_target_": "hgmldl.models.cnn",
            "hidden_units": int(weights[denses[0]][0].shape[1]),
            "dropout": dropout,
            "activation": activations[0],
        }
    if len(denses) == 1:
        return {"_target_": "hgmldl.models.softmax"}
    widths = [int(weights[name][0].shape[1]) for name in denses[:-1]]
    return {
        "_target_": "hgmldl.models.mlp",
        "hidden_units": widths[0] if len(widths) == 1 else widths,
        "activation": activations[0] if len(set(activations)) == 1 else activations,
        "dropout": dropout,
    }


def torch_weight(kernel: np.ndarray, layer: nn.Module, flattened: tuple[int, ...] | None) -> np.ndarray:
    """A Keras kernel in the layout of the torch layer's weight.

    Conv2D's (height, width, in, out) becomes (out, in, height, width); Dense's (in, out) is transposed. The first
    Dense after Flatten also has its inputs re-ordered: Keras flattens each (H, W, C) map channel-last, torch
    flattens its (C, H, W) map channel-first, so input row (h·W + w)·C + c becomes column c·H·W + h·W + w.
    """
    if isinstance(layer, nn.Conv2d):
        return kernel.transpose(3, 2, 0, 1)
    if flattened is not None and len(flattened) == 3:
        channels, height, width = flattened
        return kernel.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
    return kernel.T


def load_keras_weights(net: nn.Sequential, weights: Arrays, path: Path, model: str) -> None:
    """Copies each Conv2D's and Dense's kernel and bias into `net`; a layer that does not fit is one error line."""
    state: dict[str, torch.Tensor] = {}
    flattened = None
    for name, span in keras_layers(net).items():
        layer = net[span.start]
        if isinstance(layer, nn.Flatten):  # the map it flattens, for the Dense after it
            flattened = tuple(net[: span.start](torch.zeros(1, *INPUT_SHAPE)).shape[1:])
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        kind = KERAS_LAYERS[type(layer)][0]
        if name not in weights:
            raise UserError(f"{path} has no weights for layer {name} ({kind}), which {model} has")
        arrays = weights.pop(name)
        expected = (
            (*layer.kernel_size, layer.in_channels, layer.out_channels)
            if isinstance(layer, nn.Conv2d)
            else (layer.in_features, layer.out_features)
        )
        shapes = [array.shape for array in arrays]
        if shapes != [expected, (expected[-1],)]:
            found = ", ".join(str(shape) for shape in shapes)
            raise UserError(
                f"{path}: layer {name} ({kind}) holds arrays of shape {found}; "
                f"{model} needs a kernel {expected} and a bias {(expected[-1],)}"
            )
        kernel, bias = arrays
        state[f"{span.start}.weight"] = torch.from_numpy(np.ascontiguousarray(torch_weight(kernel, layer, flattened)))
        state[f"{span.start}.bias"] = torch.from_numpy(bias)
        flattened = None
    if weights:
        raise UserError(f"{path} has weights for layer {', '.join(weights)}, which {model} does not have")
    net.load_state_dict(state)


def import_keras(path: str | Path, activation: str = "relu", dropout: float = 0.0) -> Classifier:
    """A Classifier in eval mode from a Keras 3 `.keras` or `.weights.h5` file.

    A `.weights.h5` file holds no layer configs: the activations and the dropout rate are `activation` and
    `dropout` (7-3's model.weights.h5: relu and 0.3). The Classifier has no optimizer: it predicts and evaluates.
    """
    path = check_readable(path, "Keras file")
    weights, layers = read_keras(path)
    config = model_config(weights, layers, activation, dropout, path)
    module = Classifier(model=config, optimizer={})
    load_keras_weights(module.net, dict(weights), path, describe(config))
    return module.eval()
