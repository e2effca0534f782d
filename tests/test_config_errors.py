"""Bad values, output folders and resume checkpoints are rejected by run() before any data is loaded."""

import shutil

import pytest
import torch
from omegaconf import OmegaConf

from hgmldl.commands.train import run
from hgmldl.errors import UserError
from hgmldl.module import Classifier

# data=mnist from a folder that does not exist: reaching the data would fail with "MNIST IDX files not found".
NO_DATA = ("data=mnist", "data.idx_dir=/nonexistent")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=0"], "optimizer.lr must be a number > 0, got 0"),
        (["optimizer=sgd", "optimizer.lr=-0.01"], "optimizer.lr must be a number > 0, got -0.01"),
        (["optimizer.lr=inf"], "optimizer.lr must be a number > 0, got inf"),
        (["optimizer.lr=abc"], "optimizer.lr must be a number > 0, got 'abc'"),
        (["model.dropout=1.0"], "model.dropout must be a number in [0, 1), got 1.0"),
        (["model=cnn", "model.dropout=-0.1"], "model.dropout must be a number in [0, 1), got -0.1"),
        (["model.dropout=abc"], "model.dropout must be a number in [0, 1), got 'abc'"),
        (
            ["model.hidden_units=0"],
            "model.hidden_units must be an integer >= 1, or a list of them (one per hidden layer), got 0",
        ),
        (
            ["model=deep_mlp", "model.hidden_units=[100,0,100]"],
            "model.hidden_units must be an integer >= 1, or a list of them (one per hidden layer), got [100, 0, 100]",
        ),
        (["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
        (["data.shuffle=batch"], "data.shuffle must be one of keras, every_epoch, got 'batch'"),
        (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1, got 0"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs must be an integer >= 1, got -1"),
        (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience must be an integer >= 0, got -1"),
        (["seed=-1"], "seed must be an integer from 0 to 4294967295 (numpy's seed range), got -1"),
        (["seed=4294967296"], "seed must be an integer from 0 to 4294967295 (numpy's seed range), got 4294967296"),
        (
            ["optimized_metric=val_acc"],
            "optimized_metric must be null or one of val_accuracy, val_loss, test_accuracy, test_loss, got 'val_acc'",
        ),
    ],
)
def test_out_of_range_value_names_the_key_and_the_range(make_cfg, overrides, message):
    with pytest.raises(UserError) as error:
        run(make_cfg(*overrides, *NO_DATA))
    assert str(error.value) == message


def test_values_on_the_edge_of_the_range_are_accepted(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=deep_mlp",
        "model.hidden_units=[1,1]",
        "activation=tanh",
        "model.dropout=0.0",
        "callbacks.early_stopping.patience=0",
        "data.batch_size=1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "optimizer.lr=1e-9",
    )
    assert run(cfg).metrics["epochs"] == 1


def test_keys_a_config_lacks_are_not_checked(make_cfg, tmp_path):
    cfg = make_cfg("model=softmax", "callbacks=default", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    assert "dropout" not in cfg.model and "early_stopping" not in cfg.callbacks
    assert run(cfg).metrics["params"] == 7850


def test_output_dir_under_a_file_is_rejected_at_start(make_cfg, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as error:
        run(make_cfg(*NO_DATA, output_dir=tmp_path / "file" / "run"))
    assert str(error.value) == (
        f"cannot write to {tmp_path}/file/run: {tmp_path}/file is a file, not a folder; choose another hydra.run.dir"
    )


def test_a_nearly_full_disk_is_rejected_at_start(make_cfg, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=30 * 2**20))
    with pytest.raises(UserError) as error:
        run(make_cfg(*NO_DATA))
    assert str(error.value) == (
        f"only 30 MB free on the disk of {tmp_path}/run; a run needs at least 100 MB: "
        "free some space or choose another hydra.run.dir"
    )
    assert not (tmp_path / "run").exists()


def save_checkpoint_of(cfg, path):
    """What load_checkpoint needs of a Lightning checkpoint: the weights and the hyperparameters that built them."""
    module = Classifier(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


def test_resume_checkpoint_problems_are_one_line_before_data_is_loaded(make_cfg, tmp_path):
    with pytest.raises(UserError, match=f"^checkpoint {tmp_path}/missing.ckpt does not exist$"):
        run(make_cfg(f"ckpt_path={tmp_path}/missing.ckpt", *NO_DATA))
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(
        UserError, match=rf"^{tmp_path}/notes.ckpt is not a checkpoint \(not a file torch.save wrote\)$"
    ):
        run(make_cfg(f"ckpt_path={tmp_path}/notes.ckpt", *NO_DATA))
    save_checkpoint_of(make_cfg("model=cnn"), tmp_path / "cnn.ckpt")
    with pytest.raises(UserError) as error:
        run(make_cfg("model=mlp", f"ckpt_path={tmp_path}/cnn.ckpt", *NO_DATA))
    assert str(error.value) == (
        f"{tmp_path}/cnn.ckpt holds cnn(hidden_units=100, dropout=0.4, activation=relu) but this run builds "
        "mlp(hidden_units=100, activation=relu, dropout=0.0): resume with the model options of the run that saved it"
    )
