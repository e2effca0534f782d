"""hgmldl.save_keras: every book model as a Keras 3 .keras file.

Without Keras (the fast suite): the file goes back through hgmldl's own import to the same predictions, and a numpy
reading of the file in Keras' NHWC layout (config.json's layers, model.weights.h5's arrays) gives the probabilities
Keras itself computed from such a file, recorded in tests/golden/keras_export.npz with the layers and compile config
Keras read. With Keras 3 installed (`pip install -e '.[keras]'`, the torch backend), the tests that take the `keras`
fixture, skipped without it, load the files in Keras itself; `RECORD_KERAS_EXPORT=1` makes them record the golden
file again.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import hgmldl
from hgmldl.api import compose_config
from hgmldl.commands.train import run
from hgmldl.errors import UserError
from hgmldl.keras_export import keras_optimizer
from hgmldl.models import describe, feature_extractor
from hgmldl.module import Classifier
from tests.conftest import FASHION_MNIST_DIR, ROOT
from tests.test_keras_import import conv_same, max_pool

SPREAD = 2  # kernels twice glorot-uniform's width: probabilities far from uniform, as a trained model's are
GOLDEN = ROOT / "tests" / "golden" / "keras_export.npz"
# Each book model, as the command line composes it, with its book section's optimizer.
BOOK_MODELS = {
    "softmax": ["experiment=ch7_1_softmax"],  # 7-1
    "sigmoid": ["experiment=ch7_2_sigmoid"],  # 7-2, the model the book names 'hidden' and 'output'
    "relu": ["experiment=ch7_2_relu"],  # 7-2
    "tanh": ["model=mlp", "activation=tanh", "optimizer=sgd"],
    "deep": ["experiment=ch7_2_deep"],  # sigmoid, sigmoid, relu
    "dropout": ["experiment=ch7_3_dropout"],  # 7-3
    "dense512": ["experiment=dlp2_ch2_mnist"],  # Deep Learning with Python ch. 2
    "cnn": ["experiment=ch8_2_cnn"],  # 8-2
}
ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: (
        np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
    ),
}


def book_module(name: str) -> Classifier:
    """The book model with fixed weights: glorot-uniform kernels and small non-zero biases from numpy's seeded
    RandomState (whose stream numpy keeps fixed), so that the golden file's probabilities can be computed again."""
    cfg = compose_config("train", BOOK_MODELS[name], "unused")
    model, optimizer = (OmegaConf.to_container(node, resolve=True) for node in (cfg.model, cfg.optimizer))
    module = Classifier(model=model, optimizer=optimizer)
    rng = np.random.RandomState(33)
    with torch.no_grad():
        for parameter in module.net.parameters():
            if parameter.dim() == 1:
                values = rng.uniform(-0.1, 0.1, parameter.shape)
            else:
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(parameter)
                limit = SPREAD * np.sqrt(6 / (fan_in + fan_out))
                values = rng.uniform(-limit, limit, parameter.shape)
            parameter.copy_(torch.from_numpy(values))
    return module.eval()


def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as file:
        return dict(file)


def probabilities(module: Classifier, images: np.ndarray) -> np.ndarray:
    """hgmldl's predict: Classifier.predict_step on (N, 28, 28) images scaled to [0, 1]."""
    with torch.no_grad():
        return module.predict_step((torch.from_numpy(images).float()[:, None],), 0).numpy()


def keras_inputs(config: dict, images: np.ndarray) -> np.ndarray:
    """The images in the shape the file's InputLayer takes: (N, 28, 28) or (N, 28, 28, 1)."""
    return images.reshape(len(images), *config["config"]["layers"][0]["config"]["batch_shape"][1:])


def read_keras_file(path: Path) -> tuple[dict, dict[str, list[np.ndarray]]]:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        archive.extract("model.weights.h5", path.parent)
    with h5py.File(path.parent / "model.weights.h5") as h5:
        arrays = {
            name: [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
            for name, group in h5["layers"].items()
        }
    return config, arrays


def numpy_keras(path: Path, images: np.ndarray) -> tuple[np.ndarray, list[list]]:
    """What Keras computes from the file, in numpy: each layer of config.json on NHWC arrays, its weights found
    under Keras' class-numbered names; returns the probabilities and each layer's (name, class, output shape,
    activation)."""
    config, arrays = read_keras_file(path)
    x = keras_inputs(config, images).astype(np.float64)
    counts: dict[str, int] = {}
    layers = []
    for layer in config["config"]["layers"][1:]:
        kind, settings = layer["class_name"], layer["config"]
        stored = {"Conv2D": "conv2d", "Dense": "dense"}.get(kind)
        if stored:
            number = counts.get(stored, 0)
            counts[stored] = number + 1
            kernel, bias = arrays[stored if not number else f"{stored}_{number}"]
        if kind == "Conv2D":
            assert settings["padding"] == "same" and settings["kernel_size"] == [3, 3]
            x = ACTIVATIONS[settings["activation"]](conv_same(x, kernel, bias))
        elif kind == "MaxPooling2D":
            x = max_pool(x)
        elif kind == "Flatten":
            x = x.reshape(len(x), -1)  # NHWC order: height, width, channel
        elif kind == "Dense":
            x = ACTIVATIONS[settings["activation"]](x @ kernel + bias)
        layers.append([settings["name"], kind, list(x.shape[1:]), settings.get("activation")])
    return x, layers


def compile_summary(config: dict) -> dict:
    """What compile() was given, as the file says it: the loss, the metrics, the optimizer and its settings."""
    compiled = config["compile_config"]
    optimizer = compiled["optimizer"]
    return {
        "loss": compiled["loss"],
        "metrics": compiled["metrics"],
        "optimizer": optimizer["class_name"],
        **optimizer["config"],
    }


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Eight Fashion-MNIST test images as Keras took them, stored in the golden file."""
    return golden()["images"].astype(np.float32) / 255


@pytest.mark.parametrize("name", BOOK_MODELS)
def test_the_file_goes_back_through_hgmldls_import_unchanged(name, tmp_path, images):
    module = book_module(name)
    path = hgmldl.save_keras(module, tmp_path / f"{name}.keras")
    imported = hgmldl.load(path)
    assert describe(dict(imported.hparams.model)) == describe(dict(module.hparams.model))
    np.testing.assert_allclose(probabilities(imported, images), probabilities(module, images), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", BOOK_MODELS)
def test_the_file_gives_the_probabilities_keras_computed_from_it(name, tmp_path, images):
    """Keras' own predict, recorded from this file's bytes, against a numpy reading of the file written now and
    against hgmldl's predict; and the layers and compile config as Keras read them."""
    recorded = golden()
    path = hgmldl.save_keras(book_module(name), tmp_path / f"{name}.keras")
    computed, layers = numpy_keras(path, images)
    keras_probabilities = recorded[f"{name}/probabilities"]
    np.testing.assert_allclose(computed, keras_probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probabilities(book_module(name), images), keras_probabilities, rtol=0, atol=1e-5)
    assert np.ptp(keras_probabilities) > 0.3  # probabilities far apart: a misplaced weight would show
    keras_read = json.loads(str(recorded[f"{name}/keras"]))
    assert layers == keras_read["layers"]
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert config["config"]["name"] == keras_read["model"]
    compiled = compile_summary(config)
    assert compiled.keys() <= keras_read["compile"].keys()
    for key, value in compiled.items():
        expected = keras_read["compile"][key]
        assert np.float32(value) == np.float32(expected) if isinstance(value, float) else value == expected, key


def test_the_books_names_and_keras_defaults(tmp_path):
    """7-2 names its sigmoid model's layers (not the model: TensorFlow's predict refuses the name '패션 MNIST 모델');
    8-2 leaves Keras' own names. Adam's settings are Keras' defaults."""
    names = {}
    for name in ("sigmoid", "cnn"):
        config, _ = read_keras_file(hgmldl.save_keras(book_module(name), tmp_path / name / "model.keras"))
        names[name] = [config["config"]["name"], *(layer["config"]["name"] for layer in config["config"]["layers"])]
    assert names["sigmoid"] == ["sequential", "input_layer", "flatten", "hidden", "output"]
    assert names["cnn"][2:] == [
        "conv2d",
        "max_pooling2d",
        "conv2d_1",
        "max_pooling2d_1",
        "flatten",
        "dense",
        "dropout",
        "dense_1",
    ]
    assert compile_summary(config) == {
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "optimizer": "Adam",
        "name": "adam",
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
    }


# Keras' defaults (keras/src/optimizers/*.py): each conf/optimizer option is the Keras optimizer it was written after.
KERAS_DEFAULTS = {
    "SGD": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "RMSprop": {"learning_rate": 0.001, "rho": 0.9, "epsilon": 1e-7},
    "Adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "Adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
}
KERAS_NAMES = {"SGD": "SGD", "RMSprop": "rmsprop", "Adam": "adam", "Adagrad": "adagrad"}
OPTIMIZERS = {
    "sgd": ("SGD", {}),
    "sgd_lr0.1": ("SGD", {"learning_rate": 0.1}),  # 7-2's SGD(learning_rate=0.1)
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),  # 7-2's SGD(momentum=0.9, nesterov=True)
    "rmsprop": ("RMSprop", {}),
    "rmsprop_torch": ("RMSprop", {"momentum": 0, "centered": False}),
    "adam": ("Adam", {}),
    "adam_torch": ("Adam", {"amsgrad": False}),
    "adagrad": ("Adagrad", {}),
    "adagrad_torch": ("Adagrad", {}),
}


def optimizer_config(option: str) -> dict:
    cfg = compose_config("train", [f"optimizer={option}"], "unused")
    return keras_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True))


@pytest.mark.parametrize("option", OPTIMIZERS)
def test_each_optimizer_option_is_the_keras_optimizer_it_stands_for(option):
    kind, settings = OPTIMIZERS[option]
    config = optimizer_config(option)
    assert config["class_name"] == kind
    assert config["config"] == {"name": KERAS_NAMES[kind], **KERAS_DEFAULTS[kind], **settings}
    assert sorted(OPTIMIZERS) == sorted(path.stem for path in (ROOT / "conf" / "optimizer").glob("*.yaml"))


class Residual(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize(
    ("model", "optimizer", "path", "message"),
    [
        (
            nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784), nn.Linear(784, 10)),
            {},
            "m.keras",
            r"^layer 1 is a BatchNorm1d; a \.keras file is written here of Conv2d, MaxPool2d, Flatten, Linear, Dropout, ReLU, Sigmoid, Tanh$",
        ),
        (
            Residual(),
            {},
            "m.keras",
            r"^save_keras writes an nn.Sequential \(every hgmldl model\); this model is a Residual$",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU()),
            {},
            "m.keras",
            r"must end in a Linear that outputs logits",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU(), nn.Tanh(), nn.Linear(10, 10)),
            {},
            "m.keras",
            r"^layer 3 is a Tanh after a ReLU; Keras has one activation inside a Conv2D or a Dense, and none elsewhere$",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(784, 10)),
            {},
            "m.keras",
            r"^layer 1 is a ReLU after a Flatten; Keras has one activation",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Flatten(), nn.Linear(676, 10)),
            {},
            "m.keras",
            r"^layer conv2d is Conv2d\(1, 4, .*stride=\(2, 2\)\); Keras' Conv2D is written here with stride 1",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
            {"_target_": "torch.optim.AdamW", "lr": 0.001},
            "m.keras",
            r"^optimizer torch.optim.AdamW has no Keras counterpart; .* takes SGD \(optimizer=sgd\), RMSprop",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
            {"_target_": "torch.optim.SGD", "lr": 0.01, "weight_decay": 1e-4},
            "m.keras",
            r"^optimizer.weight_decay=0.0001 has no counterpart in keras.optimizers.SGD$",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
            {},
            "model.h5",
            r"/model.h5: name the file \*.keras, the only suffix Keras 3's load_model opens$",
        ),
    ],
)
def test_what_a_keras_file_cannot_hold_is_one_line(tmp_path, model, optimizer, path, message):
    module = Classifier(model={"_target_": "hgmldl.models.softmax"}, optimizer=optimizer)
    module.net = model
    with pytest.raises(UserError, match=message):
        hgmldl.save_keras(module, tmp_path / path)
    assert not (tmp_path / path).exists()


def test_a_checkpoint_becomes_a_keras_file(make_cfg, tmp_path, images):
    """train.py keras=<file> writes it into the run folder with the weights metrics.json was evaluated with;
    save_keras(checkpoint) writes the same model."""
    trained = run(make_cfg("model=cnn", "model.hidden_units=8", "trainer.max_epochs=1", "keras=cnn.keras"))
    path = tmp_path / "run" / "cnn.keras"
    np.testing.assert_allclose(
        probabilities(hgmldl.load(path), images), probabilities(trained.module.eval(), images), atol=1e-7
    )
    checkpoint = next((path.parent / "checkpoints").glob("best*.ckpt"))
    again = hgmldl.save_keras(str(checkpoint), tmp_path / "again.keras")
    np.testing.assert_allclose(
        probabilities(hgmldl.load(again), images), probabilities(trained.module, images), atol=1e-7
    )


def test_train_refuses_a_keras_file_it_cannot_write_before_training(idx_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"data.idx_dir={idx_dir}",
            f"data.root={tmp_path}",
            "data.download=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            "keras=model.h5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: model.h5: name the file *.keras, the only suffix Keras 3's load_model opens"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# With Keras itself: the torch backend unless the user chose another (TensorFlow runs them as well).
needs_data = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="make data: the Keras checks predict test images"
)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip(
        "keras", reason="pip install -e .[keras] (Keras 3 alone) to open the files in Keras itself"
    )


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's test images (N, 28, 28) in [0, 1] and labels, as hgmldl reads them."""
    images, labels = hgmldl.load_data("test", f"data.idx_dir={FASHION_MNIST_DIR}")
    return images[:, 0].numpy(), labels.numpy()


def keras_read(model) -> dict:
    """The model as Keras loaded it: its name, each layer's name, class, output shape and activation, and what it
    was compiled with."""
    layers = [
        [layer.name, type(layer).__name__, list(layer.output.shape[1:]), layer.get_config().get("activation")]
        for layer in model.layers
    ]
    compiled = model.get_compile_config()
    optimizer = {"optimizer": type(model.optimizer).__name__, **model.optimizer.get_config()}
    return {
        "model": model.name,
        "layers": layers,
        "compile": {"loss": model.loss, "metrics": compiled["metrics"], **optimizer},
    }


@needs_data
def test_keras_opens_every_book_model_and_predicts_what_hgmldl_predicts(keras, test_set, tmp_path):
    images = test_set[0][:1000]
    record = {"images": np.round(test_set[0][:8] * 255).astype(np.uint8)}
    for name in BOOK_MODELS:
        module = book_module(name)
        path = hgmldl.save_keras(module, tmp_path / f"{name}.keras")
        model = keras.models.load_model(path)
        config = json.loads(zipfile.ZipFile(path).read("config.json"))
        predicted = model.predict(keras_inputs(config, images), verbose=0)
        difference = np.abs(predicted - probabilities(module, images)).max()
        print(f"{name}: Keras {keras.__version__} predicts 1,000 test images within {difference:.2g} of hgmldl")
        assert difference <= 1e-5, name
        assert model.compiled and model.loss == "sparse_categorical_crossentropy"
        record[f"{name}/probabilities"] = model.predict(keras_inputs(config, images[:8]), verbose=0)
        record[f"{name}/keras"] = np.array(json.dumps(keras_read(model), ensure_ascii=False))
    if os.environ.get("RECORD_KERAS_EXPORT"):
        np.savez_compressed(GOLDEN, **record)
    recorded = golden()
    np.testing.assert_array_equal(recorded["images"], record["images"])
    for name in BOOK_MODELS:
        np.testing.assert_allclose(record[f"{name}/probabilities"], recorded[f"{name}/probabilities"], atol=1e-6)
        assert json.loads(str(record[f"{name}/keras"])) == json.loads(str(recorded[f"{name}/keras"]))


@needs_data
def test_the_books_8_3_code_runs_on_a_cnn_trained_here(keras, test_set, tmp_path):
    """8-2's CNN trained briefly here with keras=best-cnn-model.keras: Keras' evaluate gives hgmldl's test accuracy,
    and 8-3's cells (load_model, layers[0].weights, the functional-API feature extractors) run on the file."""
    history = hgmldl.fit(
        "experiment=ch8_2_cnn",
        f"data.idx_dir={FASHION_MNIST_DIR}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=100",
        "callbacks=default",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "keras=best-cnn-model.keras",
        output_dir=tmp_path / "run",
    )
    images, labels = test_set
    model = keras.models.load_model(tmp_path / "run" / "best-cnn-model.keras")  # 8-3's first cell
    loss, accuracy = model.evaluate(images.reshape(-1, 28, 28, 1), labels, verbose=0)
    print(
        f"Keras evaluate: {accuracy}, {loss}; hgmldl: {history.metrics['test_accuracy']}, {history.metrics['test_loss']}"
    )
    assert accuracy == pytest.approx(history.metrics["test_accuracy"], abs=1e-4)  # one image in 10,000
    assert loss == pytest.approx(history.metrics["test_loss"], rel=1e-4)
    predicted = model.predict(images[:1000].reshape(-1, 28, 28, 1), verbose=0)
    assert np.abs(predicted - probabilities(history.model, images[:1000])).max() <= 1e-5
    conv = model.layers[0]
    assert [tuple(weight.shape) for weight in conv.weights] == [(3, 3, 1, 32), (32,)]
    conv_weights = conv.weights[0].numpy()
    assert conv_weights.mean() == pytest.approx(history.model.net[0].weight.mean().item(), abs=1e-7)
    ankle_boot = hgmldl.load_data("train", f"data.idx_dir={FASHION_MNIST_DIR}")[0][:1]
    for index, shape in ((0, (1, 28, 28, 32)), (2, (1, 14, 14, 64))):
        feature_maps = keras.Model(model.inputs, model.layers[index].output).predict(
            ankle_boot.permute(0, 2, 3, 1).numpy(), verbose=0
        )
        assert feature_maps.shape == shape
        with torch.no_grad():
            ours = feature_extractor(history.model, index)(ankle_boot).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(feature_maps, ours, atol=1e-5)


def test_keras_builds_each_optimizer_option_with_its_settings(keras):
    for option in OPTIMIZERS:
        config = optimizer_config(option)
        optimizer = keras.optimizers.deserialize(config)
        assert type(optimizer).__name__.lower() == config["class_name"].lower()  # deserialize gives torch_sgd.sgd
        for key, value in config["config"].items():
            assert optimizer.get_config()[key] == (pytest.approx(value) if isinstance(value, float) else value), key
