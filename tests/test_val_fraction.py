"""data.val_fraction: the book's 48,000 / 12,000 split by default, and Deep Learning with Python ch. 2's protocol
(fit on all 60,000 training images, no validation) with 0."""

import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from hgmldl.commands.train import run
from hgmldl.data import book_split
from hgmldl.errors import UserError
from tests.conftest import make_idx_dataset

NO_DATA = ("data=mnist", "data.idx_dir=/nonexistent")  # a check that let the run through would fail on the data


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.35])
def test_split_is_sklearns_train_test_split(fraction):
    indices = np.arange(1_000)
    train, val = train_test_split(indices, test_size=fraction, random_state=42)
    ours_train, ours_val = book_split(1_000, fraction)
    assert ours_train.tolist() == train.tolist() and ours_val.tolist() == val.tolist()


def test_zero_puts_every_image_in_train():
    train, val = book_split(60_000, 0)
    assert len(val) == 0 and sorted(train.tolist()) == list(range(60_000))


def test_default_is_the_books_split(make_cfg):
    assert make_cfg().data.val_fraction == 0.2
    assert make_cfg("experiment=dlp2_ch2_mnist").data.val_fraction == 0  # the book fits on all 60,000 images


@pytest.fixture(scope="module")
def mnist_60000(tmp_path_factory):
    """Generated MNIST-format IDX files with MNIST's 60,000 training images (the test set's size does not matter
    here: 100 images), left uncompressed, as gzip gains nothing on noise and costs seconds."""
    return make_idx_dataset(tmp_path_factory.mktemp("mnist"), num_train=60_000, num_test=100, gz=False)


def test_all_60000_images_469_updates_an_epoch_and_no_validation(make_cfg, tmp_path, mnist_60000):
    cfg = make_cfg(
        "experiment=dlp2_ch2_mnist",
        f"data.idx_dir={mnist_60000}",
        "model=softmax",  # the protocol, not the model, is under test: the smallest model keeps this fast
        "trainer.max_epochs=1",
    )
    metrics = run(cfg).metrics
    run_dir = tmp_path / "run"
    assert set(metrics) >= {"test_loss", "test_accuracy"} and not any(key.startswith("val_") for key in metrics)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "loss" in header and not any(column.startswith("val_") for column in header)
    # ceil(60,000 / 128) = 469 updates, the book's progress bar's 469/469; the checkpoint is that last epoch.
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (0, 469)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("callbacks", ["callbacks=default", "callbacks=early_stopping"])
def test_a_scheduler_watching_val_metrics_is_refused_before_any_data_is_read(make_cfg, callbacks):
    with pytest.raises(UserError) as error:
        run(make_cfg("data.val_fraction=0", callbacks, "scheduler=reduce_on_plateau", *NO_DATA))
    assert str(error.value) == (
        "data.val_fraction=0 leaves no validation data for scheduler.monitor=val_loss to watch: use a scheduler "
        "without monitor (step, exponential, cosine, none) or a data.val_fraction > 0"
    )


@pytest.mark.parametrize("fraction", ["1", "-0.1", "1.5"])
def test_out_of_range_fraction_is_refused(make_cfg, fraction):
    with pytest.raises(
        UserError, match=rf"^data.val_fraction must be a number in \[0, 1\) \(0: no validation data\), got {fraction}"
    ):
        run(make_cfg(f"data.val_fraction={fraction}", *NO_DATA))
