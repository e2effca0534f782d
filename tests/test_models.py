"""Every book model has exactly the Keras parameter count, and Keras' initialisation."""

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from hgmldl.models import cnn, keras_init_, mlp

# The book's model.summary() totals (DLP ch. 2's is computed: 401,920 + 5,130).
KERAS_PARAMS = {
    "softmax": 7_850,
    "mlp": 79_510,
    "deep_mlp": 99_710,
    "dropout_mlp": 79_510,
    "cnn": 333_526,
    "dense512": 407_050,
}


@pytest.mark.parametrize(("model", "params"), KERAS_PARAMS.items())
def test_parameter_count_equals_keras_summary(make_cfg, model, params):
    net = instantiate(make_cfg(f"model={model}").model)
    assert sum(p.numel() for p in net.parameters()) == params
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_layers_follow_the_book():
    net = cnn()
    kinds = [type(layer).__name__ for layer in net]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    assert net[9].p == 0.4


def test_deep_mlp_takes_one_activation_per_layer(make_cfg):
    net = instantiate(make_cfg("model=deep_mlp", "model.activation=[sigmoid,sigmoid,relu]").model)
    assert [type(layer).__name__ for layer in net if not isinstance(layer, nn.Linear | nn.Flatten)] == [
        "Sigmoid",
        "Sigmoid",
        "ReLU",
    ]


def test_activation_group_reaches_every_hidden_layer(make_cfg):
    net = instantiate(make_cfg("model=cnn", "activation=tanh").model)
    assert sum(isinstance(layer, nn.Tanh) for layer in net) == 3 and not any(isinstance(x, nn.ReLU) for x in net)


def test_keras_init_is_glorot_uniform_with_zero_bias():
    net = keras_init_(cnn())
    conv1 = net[0]
    limit = math.sqrt(6 / (9 * 1 + 9 * 32))  # the book's 8-3: untrained filters are flat within ±0.142
    assert limit == pytest.approx(0.14213, abs=1e-5)
    assert conv1.weight.abs().max() <= limit and conv1.weight.abs().max() > 0.9 * limit
    assert torch.count_nonzero(conv1.bias) == 0
    dense = keras_init_(mlp(100)).get_submodule("1")
    assert dense.weight.abs().max() <= math.sqrt(6 / (784 + 100))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "gelu"}, "unknown activation 'gelu'; choose one of relu, sigmoid, tanh"),
        ({"hidden_units": [100, 100], "activation": ["relu"]}, "lists 1 activations for 2 hidden layers"),
    ],
)
def test_bad_model_arguments_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        mlp(**kwargs)
