"""The suite's warning filters (pyproject.toml): a warning they do not name fails its test, so every warning seen
in the suite is something new; the third-party notes hgmldl silences for its users stay silent here too."""

import warnings

import pytest

from hgmldl.commands.train import run


def test_a_warning_no_filter_names_fails_the_test():
    with pytest.raises(UserWarning, match="something new"):
        warnings.warn("something new", UserWarning, stacklevel=1)


def test_a_run_on_hgmldls_path_passes_the_filters(make_cfg):
    """The notes Lightning gives on the path hgmldl takes (`dataloader_iter`, manual optimization with
    every_n_train_steps, srun where SLURM's client is installed) are filtered; any other warning raises here."""
    every = ["++callbacks.model_checkpoint.every_n_train_steps=4", "callbacks.model_checkpoint.monitor=null"]
    assert run(make_cfg("trainer.max_epochs=1", "steps_per_execution=4", *every)).metrics["epochs"] == 1
