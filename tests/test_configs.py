"""Every config option composes and builds; typos fail at composition with Hydra's own message."""

import itertools
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from hgmldl.module import Classifier
from tests.conftest import ROOT

OPTIONS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")) for group in ("model", "optimizer")}


def test_groups_hold_the_book_options():
    assert OPTIONS["model"] == ["cnn", "deep_mlp", "dense512", "dropout_mlp", "mlp", "softmax"]
    assert OPTIONS["optimizer"] == ["adagrad", "adam", "nesterov", "rmsprop", "sgd"]


@pytest.mark.parametrize(("model", "optimizer"), list(itertools.product(OPTIONS["model"], OPTIONS["optimizer"])))
def test_every_model_and_optimizer_builds(make_cfg, model, optimizer):
    cfg = make_cfg(f"model={model}", f"optimizer={optimizer}", "activation=sigmoid")
    module = Classifier(model=dict(cfg.model), optimizer=dict(cfg.optimizer), init=cfg.init.name)
    assert module.configure_optimizers().param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ("sgd", {"lr": 0.01, "momentum": 0.0, "nesterov": False}),
        ("nesterov", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
        ("rmsprop", {"lr": 0.001, "alpha": 0.9, "eps": 1e-7}),
        ("adam", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-7}),
        ("adagrad", {"lr": 0.001, "initial_accumulator_value": 0.1, "eps": 1e-7}),
    ],
)
def test_optimizers_have_keras_defaults(make_cfg, optimizer, expected):
    cfg = make_cfg(f"optimizer={optimizer}")
    module = Classifier(model=dict(cfg.model), optimizer=dict(cfg.optimizer))
    group = module.configure_optimizers().param_groups[0]
    assert {key: (tuple(group[key]) if key == "betas" else group[key]) for key in expected} == expected


def test_keras_defaults_of_data_and_callbacks(make_cfg):
    cfg = make_cfg()
    assert cfg.data.batch_size == 32 and cfg.seed == 42 and cfg.init.name == "keras"
    assert cfg.callbacks.early_stopping.patience == 2 and cfg.callbacks.early_stopping.restore_best_weights
    assert cfg.callbacks.model_checkpoint.monitor == "val_loss" and cfg.callbacks.model_checkpoint.save_top_k == 1


def test_unknown_option_lists_the_options(make_cfg):
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/resnet'"):
        make_cfg("model=resnet")


def test_unknown_key_is_rejected(make_cfg):
    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer.lrr'"):
        make_cfg("optimizer.lrr=0.1")


@pytest.mark.parametrize("override", ["data.batch_size=abc", "init=kerass", "seed=one"])
def test_wrong_types_are_rejected(make_cfg, override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        make_cfg(override)


def test_cli_typo_is_short_and_lists_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model=resnet", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Could not find 'model/resnet'" in result.stderr and "cnn" in result.stderr
    assert "Traceback" not in result.stderr
