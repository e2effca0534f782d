"""Every config option composes and builds; typos fail at composition with Hydra's own message."""

import re
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hgmldl.commands.train import build_trainer
from hgmldl.errors import UserError
from hgmldl.module import Classifier
from tests.conftest import ROOT

# Every config group a user picks an option of, with the options on disk.
GROUPS = ["activation", "callbacks", "data", "logger", "model", "optimizer", "scheduler", "trainer"]
OPTIONS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")) for group in GROUPS}


def test_groups_hold_the_book_options():
    assert {"cnn", "deep_mlp", "dense512", "dropout_mlp", "mlp", "softmax"} <= set(OPTIONS["model"])
    assert {"adagrad", "adam", "nesterov", "rmsprop", "sgd"} <= set(OPTIONS["optimizer"])


@pytest.mark.parametrize(("group", "option"), [(group, option) for group in GROUPS for option in OPTIONS[group]])
def test_every_option_of_every_group_composes_and_instantiates(make_cfg, group, option):
    """What train.py builds from the config: the module (network, optimizer, scheduler), the data module, and the
    Trainer with its callbacks and logger. (hydra/launcher=slurm: test_sweeps.py builds the real launcher.)"""
    cfg = make_cfg(f"{group}={option}")
    module = Classifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) or None,
        init=cfg.init.name,
    )
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert module.configure_optimizers()
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("a GPU trainer instantiates only where there is a GPU")
    trainer = build_trainer(cfg)
    assert len(trainer.callbacks) >= len(cfg.callbacks)
    assert (trainer.logger is None) == (cfg.logger is None)


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ("sgd", {"lr": 0.01, "momentum": 0.0, "nesterov": False}),
        ("nesterov", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
        ("rmsprop", {"lr": 0.001, "rho": 0.9, "eps": 1e-7}),
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
    assert cfg.data.shuffle == "keras"  # one permutation from the seed, every epoch: the book's seeded fit
    assert cfg.callbacks.early_stopping.patience == 2 and cfg.callbacks.early_stopping.restore_best_weights
    assert cfg.callbacks.model_checkpoint.monitor == "val_loss" and cfg.callbacks.model_checkpoint.save_top_k == 1


def test_unknown_option_lists_the_options(make_cfg):
    with pytest.raises(UserError, match="Could not find 'model/resnet'"):
        make_cfg("model=resnet")


def test_unknown_key_is_rejected(make_cfg):
    with pytest.raises(UserError, match="Could not override 'optimizer.lrr'"):
        make_cfg("optimizer.lrr=0.1")


@pytest.mark.parametrize("override", ["data.batch_size=abc", "init=kerass", "seed=one"])
def test_wrong_types_are_rejected(make_cfg, override):
    with pytest.raises(UserError, match=f"^Error merging override {re.escape(override)}"):
        make_cfg(override)


def test_cli_typo_is_short_and_lists_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model=resnet", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Could not find 'model/resnet'" in result.stderr and "cnn" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_only_options_a_user_can_pick():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("data")
    assert options == ["fashion_mnist", "mnist"]  # what --help lists: the data schema is their base, not a dataset


@pytest.mark.parametrize(
    ("overrides", "model", "optimizer"),
    [
        (["model=mlp", "activation=sigmoid", "optimizer=rmsprop"], "partial(mlp, 100, 'sigmoid')", "KerasRMSprop"),
        (["model=cnn", "optimizer=adam"], "partial(cnn)", "partial(KerasAdam)"),
        (["model=softmax", "optimizer=adagrad"], "softmax", "partial(KerasAdagrad, lr=0.001)"),
    ],
)
def test_a_classifier_built_from_partials_is_the_one_the_command_line_builds(make_cfg, overrides, model, optimizer):
    """The notebooks' `Classifier(partial(mlp, 100, "sigmoid"), partial(KerasRMSprop))` saves the hyperparameters
    train.py's Hydra composition gives, so a checkpoint from either rebuilds the same model."""
    from functools import partial  # noqa: F401 (used by eval)

    from hgmldl.models import cnn, mlp, softmax  # noqa: F401
    from hgmldl.optimizers import KerasAdagrad, KerasAdam, KerasRMSprop  # noqa: F401

    cfg = make_cfg(*overrides)
    built = Classifier(eval(model), eval(optimizer))
    composed = OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert (built.hparams.model, built.hparams.optimizer) == composed


def test_a_built_network_or_optimizer_is_one_line_saying_to_pass_a_recipe():
    from hgmldl.models import mlp
    from hgmldl.optimizers import KerasAdam

    with pytest.raises(UserError, match=r"not a built Sequential: partial\(mlp, 100, 'relu'\)"):
        Classifier(mlp(100, "relu"), KerasAdam)
    with pytest.raises(UserError, match="not a built KerasAdam"):
        Classifier(mlp, KerasAdam(mlp().parameters()))
