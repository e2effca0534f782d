"""Keras' `model.save("best-cnn-model.keras")` for hgmldl models: `hgmldl.save_keras(model, path)`, the way back from
hgmldl to the book. keras_weights.py reads such files; this module writes them, with json, zipfile and h5py alone
(no Keras, no TensorFlow), and Keras 3's `keras.models.load_model` opens them as it opens the book's own file.

A `.keras` file is a zip of `metadata.json`, `config.json` (the Sequential's layers and its compile config) and
`model.weights.h5` (each layer's arrays at `layers/<name>/vars/<i>`, in Keras' layouts: see `keras_kernel`). The
layers are those `hgmldl.models.keras_layers` lists, in the same order and under the same names, so
`model.layers[i]` in Keras is `feature_extractor(model, i)` here. The file is written in the format of Keras 3.4.1,
which saved the book's best-cnn-model.keras; later Keras 3 versions read it.
"""

import datetime
import inspect
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from hydra.utils import get_class
from torch import nn

from hgmldl.errors import UserError
from hgmldl.files import open_atomic
from hgmldl.keras_weights import WEIGHTS
from hgmldl.models import ACTIVATIONS, BOOK_LAYER_NAMES, IMAGE_SIZE, INPUT_SHAPE, KERAS_LAYERS, describe, keras_layers
from hgmldl.module import Classifier
from hgmldl.saving import load_model

KERAS_VERSION = "3.4.1"  # the format written: the book's own file's (hg-mldl's best-cnn-model.keras)
LOSS, METRICS = "sparse_categorical_crossentropy", ["accuracy"]  # Classifier's cross-entropy and accuracy
# The Keras optimizers hgmldl's configs name (hgmldl.optimizers' KerasAdam…, torch.optim's with Keras' numbers), and
# Keras' name of each setting. A setting at its neutral value (0, False, None: torch's weight_decay=0, foreach=None)
# changes nothing and is left out; any other has no counterpart in Keras and is refused.
KERAS_OPTIMIZERS = {"SGD": "SGD", "RMSprop": "rmsprop", "Adam": "adam", "Adagrad": "adagrad"}  # and their own names
KERAS_SETTINGS = {
    "lr": "learning_rate",
    "eps": "epsilon",
    "alpha": "rho",  # torch.optim.RMSprop's name for Keras' rho
    "rho": "rho",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "centered": "centered",
    "amsgrad": "amsgrad",
    "initial_accumulator_value": "initial_accumulator_value",
}


def save_keras(model_or_checkpoint: nn.Module | str | Path, path: str | Path) -> Path:
    """Keras' `model.save(path)`: a Classifier, its `nn.Sequential`, or any file `hgmldl.load` reads (a checkpoint,
    a `.safetensors` file) as a Keras 3 `.keras` file. With the Classifier's optimizer, `load_model` gives a compiled
    model, as the book's file does; without one (a bare network, an imported Keras file), an uncompiled one.
    The learning-rate schedule and the optimizer's state are not kept (Keras keeps neither in compile())."""
    path = check_keras_path(path)
    if isinstance(model_or_checkpoint, str | Path):
        model_or_checkpoint = load_model(model_or_checkpoint)
    net = getattr(model_or_checkpoint, "net", model_or_checkpoint)
    hparams = getattr(model_or_checkpoint, "hparams", {})
    config = keras_config(net, hparams.get("model"), hparams.get("optimizer"))
    metadata = {"keras_version": KERAS_VERSION, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with open_atomic(path, "wb") as file, zipfile.ZipFile(file, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", json.dumps(config))
        archive.writestr(WEIGHTS, weights_file(net, config))
    return path


def check_keras_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise UserError(f"{path}: name the file *.keras, the only suffix Keras 3's load_model opens")
    return path


def check_exportable(model: dict[str, Any], optimizer: dict[str, Any], path: str | Path) -> None:
    """What save_keras would refuse after training, refused before it (train.py's `keras=`)."""
    check_keras_path(path)
    keras_config(Classifier(model=model, optimizer={}).net, model, optimizer)


def keras_config(net: nn.Module, model: dict[str, Any] | None, optimizer: dict[str, Any] | None) -> dict[str, Any]:
    """config.json: the Sequential whose layers compute what `net` computes, and what compile() was given."""
    layers = keras_layer_configs(net)
    names = BOOK_LAYER_NAMES.get(describe(dict(model)) if model else "", {})
    for layer in layers[1:]:
        layer["config"]["name"] = names.get(layer["config"]["name"], layer["config"]["name"])
    input_shape = layers[0]["config"]["batch_shape"]
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "trainable": True, "dtype": "float32", "layers": layers},
        "registered_name": None,
        "build_config": {"input_shape": input_shape},
    }
    if optimizer:  # an imported Keras file's Classifier has none: it predicts and evaluates
        config["compile_config"] = {
            "optimizer": keras_optimizer(optimizer),
            "loss": LOSS,
            "loss_weights": None,
            "metrics": METRICS,
            "weighted_metrics": None,
            "run_eagerly": False,
            "steps_per_execution": 1,
            "jit_compile": False,
        }
    return config


def keras_layer_configs(net: nn.Module) -> list[dict[str, Any]]:
    """The InputLayer and each Keras layer of `keras_layers(net)`, or one line saying what Keras cannot be given."""
    if not isinstance(net, nn.Sequential):
        raise UserError(
            f"save_keras writes an nn.Sequential (every hgmldl model); this model is a {type(net).__name__}"
        )
    for index, module in enumerate(net):
        if type(module) not in KERAS_LAYERS and type(module) not in ACTIVATIONS.values():
            kinds = ", ".join(kind.__name__ for kind in [*KERAS_LAYERS, *ACTIVATIONS.values()])
            raise UserError(f"layer {index} is a {type(module).__name__}; a .keras file is written here of {kinds}")
    if not isinstance(net[0], nn.Flatten | nn.Conv2d):
        raise UserError(
            f"the model starts with a {type(net[0]).__name__}; Keras' book models start with Flatten or Conv2D"
        )
    layers = list(keras_layers(net).items())
    last = layers[-1][1]
    if not isinstance(net[last.start], nn.Linear) or last.stop - last.start > 1:
        raise UserError("the model must end in a Linear that outputs logits, which Keras' Dense(10, softmax) becomes")
    image = (IMAGE_SIZE, IMAGE_SIZE, 1) if isinstance(net[0], nn.Conv2d) else (IMAGE_SIZE, IMAGE_SIZE)
    input_layer = {"batch_shape": [None, *image], "dtype": "float32", "sparse": False, "name": "input_layer"}
    configs = [{"module": "keras.layers", "class_name": "InputLayer", "config": input_layer, "registered_name": None}]
    for name, span in layers:
        layer, fused = net[span.start], net[span.start + 1 : span.stop]
        if fused and (len(fused) > 1 or not isinstance(layer, nn.Linear | nn.Conv2d)):
            raise UserError(
                f"layer {span.start + len(fused)} is a {type(fused[-1]).__name__} after a {type(net[span.stop - 2]).__name__}; "
                "Keras has one activation inside a Conv2D or a Dense, and none elsewhere"
            )
        activation = next((key for key, kind in ACTIVATIONS.items() if fused and isinstance(fused[0], kind)), "linear")
        if span == last:
            activation = "softmax"  # Classifier.predict_step's softmax, where the book's last Dense has it
        configs.append(layer_config(layer, name, activation))
    return configs


def layer_config(layer: nn.Module, name: str, activation: str) -> dict[str, Any]:
    """One layer's entry in config.json, as Keras 3.4.1 writes it, less the defaults (initializers, regularizers)."""
    kind = KERAS_LAYERS[type(layer)][0]
    config: dict[str, Any] = {"name": name, "trainable": True, "dtype": "float32"}
    if isinstance(layer, nn.Conv2d):
        padding = {"same": "same", "valid": "valid", (0, 0): "valid"}.get(layer.padding)
        if (
            padding is None
            or layer.stride != (1, 1)
            or layer.dilation != (1, 1)
            or layer.groups != 1
            or layer.bias is None
        ):
            raise UserError(
                f"layer {name} is {layer}; Keras' Conv2D is written here with stride 1, a bias and padding 'same' or 'valid'"
            )
        config |= {
            "filters": layer.out_channels,
            "kernel_size": list(layer.kernel_size),
            "strides": [1, 1],
            "padding": padding,
            "data_format": "channels_last",
            "dilation_rate": [1, 1],
            "groups": 1,
            "activation": activation,
            "use_bias": True,
        }
    elif isinstance(layer, nn.MaxPool2d):
        size, stride = layer.kernel_size, layer.stride
        if stride != size or layer.padding != 0 or layer.dilation != 1 or layer.ceil_mode:
            raise UserError(f"layer {name} is {layer}; Keras' MaxPooling2D is written here with stride = pool size")
        config |= {
            "pool_size": [size, size],
            "padding": "valid",
            "strides": [size, size],
            "data_format": "channels_last",
        }
    elif isinstance(layer, nn.Flatten):
        config |= {"data_format": "channels_last"}
    elif isinstance(layer, nn.Linear):
        if layer.bias is None:
            raise UserError(f"layer {name} is {layer}; Keras' Dense is written here with a bias")
        config |= {"units": layer.out_features, "activation": activation, "use_bias": True}
    else:  # nn.Dropout
        config |= {"rate": layer.p, "seed": None, "noise_shape": None}
    return {"module": "keras.layers", "class_name": kind, "config": config, "registered_name": None}


def keras_optimizer(optimizer: dict[str, Any]) -> dict[str, Any]:
    """The optimizer config as Keras serialises it in compile_config: `KerasAdam(lr=0.001, betas=[0.9, 0.999],
    eps=1e-7)` and `torch.optim.Adam` with the same numbers are both `keras.optimizers.Adam(learning_rate=0.001,
    beta_1=0.9, beta_2=0.999, epsilon=1e-07)`."""
    target = str(optimizer.get("_target_", ""))
    name = target.rpartition(".")[2].removeprefix("Keras")
    if name not in KERAS_OPTIMIZERS or not target.startswith(("torch.optim.", "hgmldl.optimizers.")):
        raise UserError(
            f"optimizer {target} has no Keras counterpart; a .keras file's compile config takes "
            + ", ".join(f"{kind} (optimizer={kind.lower()})" for kind in KERAS_OPTIMIZERS)
        )
    defaults = {
        key: parameter.default
        for key, parameter in inspect.signature(get_class(target)).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    settings = {**defaults, **{key: value for key, value in optimizer.items() if not key.startswith("_")}}
    config: dict[str, Any] = {"name": KERAS_OPTIMIZERS[name]}  # without it, Keras 3.15 names RMSprop rm_sprop
    for key, value in settings.items():
        if key == "betas":
            config["beta_1"], config["beta_2"] = map(float, value)
        elif key in KERAS_SETTINGS:
            config[KERAS_SETTINGS[key]] = value
        elif value not in (0, False, None):
            raise UserError(f"optimizer.{key}={value} has no counterpart in keras.optimizers.{name}")
    return {"module": "keras.optimizers", "class_name": name, "config": config, "registered_name": None}


def keras_kernel(weight: torch.Tensor, layer: nn.Module, flattened: tuple[int, ...] | None) -> np.ndarray:
    """A torch weight in the layout of Keras' kernel: the inverse of keras_weights.torch_weight.

    Conv2d's (out, in, height, width) becomes (height, width, in, out); Linear's (out, in) is transposed. The first
    Linear after a Flatten of (C, H, W) maps also has its inputs re-ordered, from torch's channel-first c·H·W + h·W
    + w to Keras' channel-last (h·W + w)·C + c.
    """
    array = weight.detach().cpu().float().numpy()
    if isinstance(layer, nn.Conv2d):
        return array.transpose(2, 3, 1, 0)
    if flattened is not None and len(flattened) == 3:
        channels, height, width = flattened
        return array.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, array.shape[0])
    return array.T


def weights_file(net: nn.Sequential, config: dict[str, Any]) -> bytes:
    """model.weights.h5 as Keras 3 writes it: `layers/<name>/vars/0` the kernel and `vars/1` the bias of each Conv2D
    and Dense, an empty `vars` group for the other layers, the model's own and the optimizer's (no state). `<name>`
    is Keras' class-numbered name whatever name config.json gives the layer (7-2's `hidden` is stored as `dense`)."""
    given = [layer["config"]["name"] for layer in config["config"]["layers"][1:]]
    buffer = io.BytesIO()
    flattened = None
    with h5py.File(buffer, "w") as h5:
        for (name, span), given_name in zip(keras_layers(net).items(), given, strict=True):
            layer = net[span.start]
            group = h5.create_group(f"layers/{name}/vars")
            group.attrs["name"] = given_name
            if isinstance(layer, nn.Flatten):  # the map it flattens, for the Linear after it
                flattened = map_shape(net[: span.start])
            if isinstance(layer, nn.Conv2d | nn.Linear):
                group.create_dataset("0", data=np.ascontiguousarray(keras_kernel(layer.weight, layer, flattened)))
                group.create_dataset("1", data=layer.bias.detach().cpu().float().numpy())
                flattened = None
        h5.create_group("optimizer/vars")
        h5.create_group("vars").attrs["name"] = config["config"]["name"]
    return buffer.getvalue()


@torch.no_grad()
def map_shape(net: nn.Sequential) -> tuple[int, ...]:
    """The shape of one image's output of `net` (the layers before a Flatten): (64, 7, 7) in 8-2's CNN."""
    parameter = next(net.parameters(), torch.zeros(()))
    return tuple(net(parameter.new_zeros(1, *INPUT_SHAPE)).shape[1:])
