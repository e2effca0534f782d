"""Every book model has exactly the Keras parameter count, and Keras' initialisation."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from hgmldl.models import cnn, mlp
from hgmldl.module import Classifier

ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}  # torch.nn's class names

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


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("model", [name for name in KERAS_PARAMS if name != "softmax"])  # softmax has none
def test_activation_group_and_model_activation_are_one_setting(make_cfg, model, activation):
    """`activation=tanh` (the group, for sweeps) sets model.activation through `${activation.name}`: both ways
    give the same model config and the same network."""
    by_group = make_cfg(f"model={model}", f"activation={activation}").model
    by_key = make_cfg(f"model={model}", f"model.activation={activation}").model
    assert OmegaConf.to_container(by_group, resolve=True) == OmegaConf.to_container(by_key, resolve=True)
    layers = [str(instantiate(config)) for config in (by_group, by_key)]
    assert layers[0] == layers[1] and f"{ACTIVATIONS[activation]}()" in layers[0]


def glorot_limit(layer: nn.Linear | nn.Conv2d) -> float:
    """Keras' glorot_uniform bound: fan_in = inputs × kernel area, fan_out = outputs × kernel area."""
    receptive = layer.weight[0, 0].numel()
    return math.sqrt(6 / (layer.weight.shape[1] * receptive + layer.weight.shape[0] * receptive))


def dense_and_conv(module: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [layer for layer in module.modules() if isinstance(layer, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("model", KERAS_PARAMS)
def test_keras_init_is_glorot_uniform_with_zero_bias_in_every_layer(make_cfg, model):
    torch.manual_seed(0)
    cfg = make_cfg(f"model={model}")
    module = Classifier(model=dict(cfg.model), optimizer=dict(cfg.optimizer), init="keras")
    layers = dense_and_conv(module)
    assert layers and any(isinstance(layer, nn.Linear) for layer in layers)
    for layer in layers:
        # At least 288 draws from U(-limit, limit): the largest is within 5 % of the bound (0.95^288 < 1e-6).
        largest = layer.weight.abs().max().item()
        assert 0.95 * glorot_limit(layer) < largest <= glorot_limit(layer), layer
        assert torch.count_nonzero(layer.bias) == 0, layer


def test_keras_init_bound_is_the_books_untrained_filters():
    limit = glorot_limit(cnn()[0])  # 8-3: untrained 3x3x1→32 filters are flat within ±0.142
    assert limit == pytest.approx(0.14213, abs=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_init_torch_keeps_pytorchs_own_defaults(make_cfg, model):
    torch.manual_seed(0)
    cfg = make_cfg(f"model={model}")
    module = Classifier(model=dict(cfg.model), optimizer=dict(cfg.optimizer), init="torch")
    for layer in dense_and_conv(module):
        # PyTorch's kaiming_uniform_(a=√5): weights and biases within ±1/√fan_in, biases not zero.
        bound = 1 / math.sqrt(layer.weight[0].numel())
        assert layer.weight.abs().max() <= bound and torch.count_nonzero(layer.bias) == len(layer.bias), layer
        if bound < 0.95 * glorot_limit(layer):  # where the two bounds differ enough, torch's stays below Keras'
            assert layer.weight.abs().max() < 0.95 * glorot_limit(layer), layer


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
