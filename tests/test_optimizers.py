"""The `optimizer` options against Keras 3's update rules (keras/src/optimizers/*.py), computed by hand."""

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from hgmldl.api import compose_config
from hgmldl.optimizers import KerasAdagrad, KerasAdam, KerasRMSprop

# Three steps' gradients for a 2-element weight: one of ordinary size, one of 1e-4, where eps matters.
START = [0.5, -0.25]
GRADIENTS = [[0.2, 1e-4], [-0.1, 3e-4], [0.05, -2e-4]]


def keras_sgd(lr: float, momentum: float = 0.0, nesterov: bool = False) -> list[float]:
    weights, velocity = list(START), [0.0, 0.0]
    for grads in GRADIENTS:
        for i, g in enumerate(grads):
            velocity[i] = momentum * velocity[i] - lr * g
            weights[i] += momentum * velocity[i] - lr * g if nesterov else velocity[i]
    return weights


def keras_adagrad(lr: float, initial_accumulator_value: float, eps: float) -> list[float]:
    weights, accumulator = list(START), [initial_accumulator_value] * 2
    for grads in GRADIENTS:
        for i, g in enumerate(grads):
            accumulator[i] += g * g
            weights[i] -= lr * g / math.sqrt(accumulator[i] + eps)
    return weights


def keras_rmsprop(lr: float, rho: float, eps: float) -> list[float]:
    weights, velocity = list(START), [0.0, 0.0]
    for grads in GRADIENTS:
        for i, g in enumerate(grads):
            velocity[i] = rho * velocity[i] + (1 - rho) * g * g
            weights[i] -= lr * g / math.sqrt(velocity[i] + eps)
    return weights


def keras_adam(lr: float, beta_1: float, beta_2: float, eps: float) -> list[float]:
    weights, m, v = list(START), [0.0, 0.0], [0.0, 0.0]
    for t, grads in enumerate(GRADIENTS, start=1):
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(grads):
            m[i] += (g - m[i]) * (1 - beta_1)
            v[i] += (g * g - v[i]) * (1 - beta_2)
            weights[i] -= m[i] * alpha / (math.sqrt(v[i]) + eps)
    return weights


def three_steps(optimizer_class, dtype=torch.float64, **options) -> list[float]:
    weight = torch.tensor(START, dtype=dtype, requires_grad=True)
    optimizer = optimizer_class([weight], **options)
    for grads in GRADIENTS:
        weight.grad = torch.tensor(grads, dtype=dtype)
        optimizer.step()
    return weight.tolist()


@pytest.mark.parametrize(
    ("ours", "options", "by_hand"),
    [
        (torch.optim.SGD, {"lr": 0.01}, keras_sgd(0.01)),
        (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}, keras_sgd(0.01, 0.9)),
        (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}, keras_sgd(0.01, 0.9, nesterov=True)),
        (KerasAdagrad, {}, keras_adagrad(1e-3, 0.1, 1e-7)),
        (KerasAdagrad, {"lr": 0.5, "initial_accumulator_value": 1e-6, "eps": 1e-3}, keras_adagrad(0.5, 1e-6, 1e-3)),
        (KerasRMSprop, {}, keras_rmsprop(1e-3, 0.9, 1e-7)),
        (KerasRMSprop, {"lr": 0.05, "rho": 0.5, "eps": 1e-3}, keras_rmsprop(0.05, 0.5, 1e-3)),
        (KerasAdam, {}, keras_adam(1e-3, 0.9, 0.999, 1e-7)),
        (KerasAdam, {"lr": 0.05, "betas": (0.5, 0.75), "eps": 1e-3}, keras_adam(0.05, 0.5, 0.75, 1e-3)),
    ],
)
def test_three_steps_equal_keras_update_by_hand(ours, options, by_hand):
    """In float64, so any difference is the rule, not rounding. SGD is torch's own: its rule is Keras'."""
    assert three_steps(ours, **options) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize(
    ("torch_class", "options", "by_hand"),
    [
        (
            torch.optim.Adagrad,
            {"lr": 1e-3, "initial_accumulator_value": 1e-6, "eps": 1e-7},  # Keras' default 0.1 leaves 1e-7
            keras_adagrad(1e-3, 1e-6, 1e-7),
        ),
        (torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}, keras_rmsprop(1e-3, 0.9, 1e-7)),
        (torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}, keras_adam(1e-3, 0.9, 0.999, 1e-7)),
    ],
)
def test_torch_rule_differs_where_eps_matters(torch_class, options, by_hand):
    """The reason for the classes: torch's same numbers in its own rule move the 1e-4 gradient's weight elsewhere."""
    torch_weights = three_steps(torch_class, **options)
    assert torch_weights[0] == pytest.approx(by_hand[0], rel=1e-6)  # a large gradient: eps hardly matters
    assert torch_weights[1] != pytest.approx(by_hand[1], rel=1e-6)  # a 1e-4 gradient: eps matters


def test_adam_step_size_is_computed_in_float32_as_keras_does():
    """Keras computes lr·sqrt(1 − β₂ᵗ)/(1 − β₁ᵗ) in the weights' float32, where 1 − 0.999 is 1.3e-5 below 1e-3."""
    f = np.float32
    alpha = f(1e-3) * np.sqrt(f(1) - f(0.999)) / (f(1) - f(0.9))
    m, v = f(0.2) * f(1 - 0.9), f(0.2) * f(0.2) * f(1 - 0.999)
    by_hand = -(m * alpha / (np.sqrt(v) + f(1e-7)))

    weight = torch.zeros(1, requires_grad=True)  # from 0, so the weight holds the step to float32 precision
    weight.grad = torch.tensor([0.2])
    KerasAdam([weight]).step()
    assert weight.item() == pytest.approx(float(by_hand), rel=1e-7, abs=0)
    in_float64 = -(1e-3 * math.sqrt(1 - 0.999) / (1 - 0.9) * 0.02 / (math.sqrt(0.2**2 * 0.001) + 1e-7))
    assert weight.item() != pytest.approx(in_float64, rel=3e-6, abs=0)


@pytest.mark.parametrize("optimizer_class", [KerasAdagrad, KerasRMSprop, KerasAdam])
def test_closure_is_called_and_its_loss_returned(optimizer_class):
    """Lightning's automatic optimization hands the forward and backward to step() as a closure."""
    weight = torch.tensor(START, requires_grad=True)
    optimizer = optimizer_class([weight])

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(0.3125)
    assert weight.tolist() != START


def test_state_dict_round_trip_continues_the_same_steps():
    """A checkpoint's optimizer state (Adam's step count, m and v) resumes the same trajectory."""
    weight = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    optimizer = KerasAdam([weight])
    weight.grad = torch.tensor(GRADIENTS[0], dtype=torch.float64)
    optimizer.step()
    resumed = KerasAdam([weight])
    resumed.load_state_dict(optimizer.state_dict())
    for grads in GRADIENTS[1:]:
        weight.grad = torch.tensor(grads, dtype=torch.float64)
        resumed.step()
    assert weight.tolist() == pytest.approx(keras_adam(1e-3, 0.9, 0.999, 1e-7), rel=1e-12)


@pytest.mark.parametrize(
    ("option", "optimizer_class", "defaults"),
    [  # the book's names give Keras' rules (their defaults: tests/test_configs.py); *_torch give torch's
        ("sgd", torch.optim.SGD, {}),
        ("nesterov", torch.optim.SGD, {}),
        ("adagrad", KerasAdagrad, {}),
        ("rmsprop", KerasRMSprop, {}),
        ("adam", KerasAdam, {}),
        ("adagrad_torch", torch.optim.Adagrad, {"lr": 1e-3, "initial_accumulator_value": 0.1, "eps": 1e-7}),
        ("rmsprop_torch", torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
        ("adam_torch", torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
    ],
)
def test_config_option_builds_its_rule(option, optimizer_class, defaults):
    cfg = compose_config("train", [f"optimizer={option}"], output_dir="unused")
    optimizer = instantiate(cfg.optimizer, params=[torch.zeros(2, requires_grad=True)])
    assert type(optimizer) is optimizer_class
    betas_as_tuple = {"betas": tuple(optimizer.defaults["betas"])} if "betas" in defaults else {}
    assert {key: optimizer.defaults[key] for key in defaults} | betas_as_tuple == defaults
