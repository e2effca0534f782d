"""One run on the real Fashion-MNIST (Debian's dataset-fashion-mnist, which `make test` installs)."""

import os

import pytest

from hgmldl.commands.train import run
from tests.conftest import FASHION_MNIST_DIR

pytestmark = pytest.mark.realdata

# CI installs the package, so there the data must be present; elsewhere the test says why it did not run.
needs_data = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir() and not os.environ.get("CI"),
    reason="apt-get install dataset-fashion-mnist (make data) to run the real-data test",
)


@needs_data
def test_one_epoch_of_softmax_reaches_080_val_accuracy(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=softmax", "optimizer=rmsprop", "trainer.max_epochs=1", "callbacks=default", "data.idx_dir=null"
    )
    metrics = run(cfg).metrics
    assert metrics["params"] == 7_850
    assert metrics["val_accuracy"] >= 0.80
    assert metrics["test_accuracy"] >= 0.78
