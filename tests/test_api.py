"""hgmldl.fit / evaluate / predict / load / summary: the Python entry points, on generated data as train.py's tests."""

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hgmldl
from hgmldl.data import FashionMNISTDataModule
from hgmldl.errors import UserError
from hgmldl.hparams import hyperparameters
from hgmldl.models import cnn, mlp


@pytest.fixture
def small(idx_dir: Path, tmp_path: Path) -> list[str]:
    """The overrides that shrink a run to seconds, as conftest's make_cfg does for train.py's config."""
    return [
        f"data.root={tmp_path / 'data'}",
        f"data.idx_dir={idx_dir}",
        "data.download=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]


def val_loss_of(model: torch.nn.Module, idx_dir: Path, root: Path) -> float:
    """The cross-entropy on the book's validation split, computed here rather than by the Trainer."""
    datamodule = FashionMNISTDataModule(root=str(root), idx_dir=str(idx_dir), download=False)
    datamodule.prepare_data()
    datamodule.setup("validate")
    with torch.no_grad():
        return F.cross_entropy(model(datamodule.val_images), datamodule.val_labels).item()


def test_fit_returns_the_keras_history(small: list[str], idx_dir: Path, tmp_path: Path) -> None:
    history = hgmldl.fit(*small, "callbacks=default", "trainer.max_epochs=3", output_dir=tmp_path / "run")

    assert history.run_dir == tmp_path / "run"
    with open(history.run_dir / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for name, values in history.history.items():
        assert values == [float(row[name]) for row in rows]
    assert len(history.history["val_loss"]) == 3
    assert history.epoch == [0, 1, 2]
    assert history.metrics == json.loads((history.run_dir / "metrics.json").read_text())
    # No early stopping: the model is the last epoch's, the weights metrics.json was evaluated with.
    assert val_loss_of(history.model, idx_dir, tmp_path / "data") == pytest.approx(
        history.metrics["val_loss"], abs=1e-5
    )
    assert not history.model.training  # ready for predictions, as a Keras model is
    # The folder train.py writes, with what resume= and the sweep summary read.
    assert (history.run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (history.run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "Epoch 3/3" in (history.run_dir / "train.log").read_text()


def test_fit_returns_the_restored_best_weights(small: list[str], idx_dir: Path, tmp_path: Path) -> None:
    # min_delta=10 counts no epoch after the first as better: EarlyStopping stops after epoch 2 (patience 1) and
    # restores epoch 1, while ModelCheckpoint's best.ckpt keeps the lower val_loss of epoch 2.
    history = hgmldl.fit(
        *small,
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "+callbacks.early_stopping.min_delta=10",
        "trainer.max_epochs=5",
        output_dir=tmp_path / "run",
    )

    first, second = history.history["val_loss"]
    assert second != pytest.approx(first, abs=1e-4)
    assert val_loss_of(history.model, idx_dir, tmp_path / "data") == pytest.approx(first, abs=1e-5)
    assert history.metrics["val_loss"] == pytest.approx(first, abs=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=resnet", "Could not find 'model/resnet'"),
        ("optimizer.lr=0", "optimizer.lr must be a number > 0, got 0"),
        ("data.batch_size=abc", "data.batch_size"),
        ("logger=null", "Config group override must be a string or a list"),  # Hydra's ValueError
    ],
)
def test_fit_errors_are_one_line(small: list[str], tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UserError) as raised:
        hgmldl.fit(*small, override, output_dir=tmp_path / "run")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    # What IPython shows for it in a notebook, instead of a traceback.
    assert raised.value._render_traceback_() == [f"error: {raised.value}"]


def test_evaluate_predict_and_load_read_the_checkpoint_fit_wrote(
    small: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = hgmldl.fit(*small, "callbacks=default", "trainer.max_epochs=1", output_dir=tmp_path / "run")
    checkpoint = history.run_dir / "checkpoints" / "last.ckpt"
    data = [override for override in small if override.startswith("data.")]

    caplog.clear()
    results = hgmldl.evaluate(checkpoint, *data, output_dir=tmp_path / "evaluate")
    assert "val_accuracy" in caplog.text and "litmodels" not in caplog.text  # the table, not Lightning's tip
    assert results["val_loss"] == pytest.approx(history.metrics["val_loss"], abs=1e-5)
    assert results["test_accuracy"] == pytest.approx(history.metrics["test_accuracy"], abs=1e-6)

    prediction = hgmldl.predict(checkpoint, *data, "index=0", "split=val", output_dir=tmp_path / "predict")
    assert sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert (tmp_path / "predict" / "prediction.png").is_file()

    loaded = hgmldl.load(checkpoint)
    for name, tensor in history.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_summary_lists_the_books_layers() -> None:
    # 혼공머신 7-2's summary(): dense 78,500 + dense_1 1,010 = 79,510; 8-2's: 320, 18,496, 313,700, 1,010 = 333,526.
    table = hgmldl.summary(mlp(100)).splitlines()
    assert [line.split()[-1] for line in table if "(Linear)" in line] == ["78,500", "1,010"]
    assert "Total params: 79,510" in table
    table = hgmldl.summary(cnn()).splitlines()
    assert [line.split()[-1] for line in table if "(Conv2d)" in line or "(Linear)" in line] == [
        "320",
        "18,496",
        "313,700",
        "1,010",
    ]
    assert "Total params: 333,526" in table
    # The output shapes, channels first: Keras' (None, 14, 14, 32) after the first MaxPooling2D.
    assert "(None, 32, 14, 14)" in next(line for line in table if "(MaxPool2d)" in line)


def test_summary_lists_named_layers_in_aligned_columns() -> None:
    """7-2's named-layer model (the revised book names them 은닉층 and 출력층) as PyTorch writes it: the names are
    the layer column, and a Hangul name, two terminal columns a syllable, leaves the other columns in line."""
    from collections import OrderedDict
    from unicodedata import east_asian_width

    from torch import nn

    net = nn.Sequential(
        OrderedDict(
            [
                ("flatten", nn.Flatten()),
                ("은닉층", nn.Linear(784, 100)),
                ("sigmoid", nn.Sigmoid()),
                ("출력층", nn.Linear(100, 10)),
            ]
        )
    )
    table = hgmldl.summary(net).splitlines()
    first, last = [index for index, line in enumerate(table) if line.startswith("===")]
    rows = table[first + 1 : last]
    assert [row.split(" (")[0] for row in rows] == ["flatten", "은닉층", "sigmoid", "출력층"]
    assert [row.split()[-1] for row in rows] == ["0", "78,500", "0", "1,010"]

    def columns(text: str) -> int:  # as a terminal or a notebook's monospace font shows it
        return sum(2 if east_asian_width(char) in "WF" else 1 for char in text)

    header = next(line for line in table if line.startswith("Layer (type)"))
    assert {columns(row) for row in rows} == {columns(header)}
    assert {columns(row[: row.index("(None")]) for row in rows} == {header.index("Output Shape")}


def test_load_data_gives_the_books_splits(small: list[str]) -> None:
    # 500 generated training images: the book's train_test_split(test_size=0.2) holds out 100 as val_scaled.
    sizes = {split: len(hgmldl.load_data(split, *small)[1]) for split in ("train", "val", "test")}
    assert sizes == {"train": 500, "val": 100, "test": 100}
    images, _ = hgmldl.load_data("val", *small)
    assert images.shape[1:] == (1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1


def test_tensorboard_hparams_show_the_choices_under_readable_names(small: list[str], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = hgmldl.fit(*small, "logger=tensorboard", "trainer.max_epochs=1", output_dir=tmp_path / "run").run_dir
    scalars, hparams = set(), {}
    for path in run.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path))
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        try:
            content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        except KeyError:  # the events file of the curves
            continue
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    # The curves under History's names; the final numbers together in one `final` group, not among the curves.
    assert scalars == {"loss", "accuracy", "val_loss", "val_accuracy"} | {
        f"final/{name}" for name in ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
    }
    # The default run (7-3's dropout model, adam) as a reader names it; no `data/_target_` internals.
    assert hparams == {
        "model": "mlp",
        "hidden_units": "100",
        "activation": "relu",
        "dropout": 0.3,
        "optimizer": "KerasAdam",
        "learning_rate": 0.001,
        "batch_size": 32,
        "epochs": 1,
        "seed": 42,
    }


def test_hparams_show_an_absent_choice_as_none(make_cfg) -> None:
    """7-1's softmax model has no hidden layer: TensorBoard's HParams filter shows a plain `none`, which a reader can
    type into the filter, not a JSON-escaped dash."""
    params = hyperparameters(make_cfg("model=softmax"))
    assert (params["model"], params["hidden_units"], params["activation"]) == ("softmax", "none", "none")
    assert all(value.isascii() for value in params.values() if isinstance(value, str))


def test_lightnings_own_objects_train_what_fit_trains(small: list[str], idx_dir: Path, tmp_path: Path, caplog) -> None:
    """The notebooks' long form: the Classifier from partials, the data module and L.Trainer with hgmldl's
    callbacks, one update per Lightning step, train what `hgmldl.fit` trains (50 updates per step), epoch for epoch,
    with the epoch lines (in a notebook they print to stdout: tests/test_notebooks.py)."""
    from functools import partial

    import lightning as L

    from hgmldl.callbacks import EarlyStopping, HistoryCSV
    from hgmldl.module import Classifier
    from hgmldl.optimizers import KerasAdam

    L.seed_everything(42, verbose=False)
    data = FashionMNISTDataModule(root=str(tmp_path / "data"), idx_dir=str(idx_dir), download=False)
    model = Classifier(partial(mlp, 100, "relu", dropout=0.3), partial(KerasAdam))
    history_callback = HistoryCSV(str(tmp_path / "long" / "history.csv"))
    early_stopping = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[history_callback, early_stopping],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "long",
    )
    trainer.fit(model, datamodule=data)
    assert "Epoch 3/3" in caplog.text

    history = hgmldl.fit(*small, "trainer.max_epochs=3", output_dir=tmp_path / "short")  # the defaults: 7-3's model
    for name, values in history.history.items():
        assert history_callback.history[name] == pytest.approx(values, abs=1e-5), name
