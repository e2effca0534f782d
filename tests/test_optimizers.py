"""optimizer=rmsprop_keras against Keras' RMSprop update computed by hand."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from hgmldl.optimizers import KerasRMSprop
from tests.conftest import ROOT

# Two steps' gradients for a 2-element weight: one of ordinary size, one of 1e-4, where eps matters.
START = [0.5, -0.25]
GRADIENTS = [[0.2, 1e-4], [-0.1, 3e-4]]


def keras_rmsprop_by_hand(lr: float, rho: float, eps: float) -> list[float]:
    """keras/src/optimizers/rmsprop.py's update_step, in Python floats."""
    weights, velocity = list(START), [0.0, 0.0]
    for grads in GRADIENTS:
        for i, g in enumerate(grads):
            velocity[i] = rho * velocity[i] + (1 - rho) * g * g
            weights[i] -= lr * g / math.sqrt(velocity[i] + eps)
    return weights


def two_steps(optimizer_class, **options) -> list[float]:
    weight = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([weight], **options)
    for grads in GRADIENTS:
        weight.grad = torch.tensor(grads, dtype=torch.float64)
        optimizer.step()
    return weight.tolist()


def test_two_steps_equal_keras_update_by_hand():
    assert two_steps(KerasRMSprop, lr=1e-3, rho=0.9, eps=1e-7) == pytest.approx(
        keras_rmsprop_by_hand(1e-3, 0.9, 1e-7), rel=1e-12
    )


def test_two_steps_with_other_hyperparameters():
    assert two_steps(KerasRMSprop, lr=0.05, rho=0.5, eps=1e-3) == pytest.approx(
        keras_rmsprop_by_hand(0.05, 0.5, 1e-3), rel=1e-12
    )


def test_torch_rmsprop_differs_where_eps_matters():
    """The reason for the class: torch adds eps outside the square root (same numbers otherwise)."""
    torch_weights = two_steps(torch.optim.RMSprop, lr=1e-3, alpha=0.9, eps=1e-7)
    by_hand = keras_rmsprop_by_hand(1e-3, 0.9, 1e-7)
    assert torch_weights[0] == pytest.approx(by_hand[0], rel=1e-6)  # a large gradient: v ≫ eps
    assert torch_weights[1] != pytest.approx(by_hand[1], rel=1e-3)  # a 1e-4 gradient: v ≈ eps


def test_closure_is_called_and_its_loss_returned():
    weight = torch.tensor(START, requires_grad=True)
    optimizer = KerasRMSprop([weight])

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(0.3125)
    assert weight.tolist() != START


def test_config_option_has_keras_defaults():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["optimizer=rmsprop_keras", "output_dir=unused"])
    optimizer = instantiate(cfg.optimizer, params=[torch.zeros(2, requires_grad=True)])
    assert isinstance(optimizer, KerasRMSprop)
    assert optimizer.defaults == {"lr": 1e-3, "rho": 0.9, "eps": 1e-7}
