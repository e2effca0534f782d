"""The book's Keras 3 files as hgmldl models: files written here with h5py in Keras' layout (no TensorFlow), their
torch outputs checked against a numpy forward pass in Keras' own NHWC layout with the same arrays."""

import json
import re
import runpy
import sys
import zipfile

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hgmldl.errors import UserError
from hgmldl.keras_weights import import_keras
from hgmldl.models import describe
from hgmldl.module import Classifier
from hgmldl.saving import load_model, load_weights
from tests.conftest import ROOT

CNN = "cnn(hidden_units=100, dropout=0.4, activation=relu)"


def cnn_arrays(rng, filters=32):
    """8-2's layers and their Keras shapes: Conv2D kernels (height, width, in, out), Dense kernels (in, out)."""
    shapes = {
        "conv2d": (3, 3, 1, filters),
        "conv2d_1": (3, 3, filters, 64),
        "dense": (7 * 7 * 64, 100),
        "dense_1": (100, 10),
    }
    return {name: [rng.normal(0, 0.2, shape), rng.normal(0, 0.1, shape[-1])] for name, shape in shapes.items()}


def write_weights(path, arrays, empty=()):
    """Keras 3's model.weights.h5: layers/<name>/vars/<i>, layers without weights as empty groups."""
    with h5py.File(path, "w") as file:
        for name, values in arrays.items():
            group = file.create_group(f"layers/{name}/vars")
            group.attrs["name"] = name
            for index, value in enumerate(values):
                group.create_dataset(str(index), data=value.astype(np.float32))
        for name in empty:
            file.create_group(f"layers/{name}/vars")
        file.create_group("vars")
        file.create_group("optimizer/vars")
    return path


def write_keras(path, arrays, layers):
    """A .keras zip: config.json (the Sequential's layers) beside model.weights.h5."""
    write_weights(path.with_name("model.weights.h5"), arrays)
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.10.0"}))
        archive.writestr("config.json", json.dumps(config))
        archive.write(path.with_name("model.weights.h5"), "model.weights.h5")
    return path


def layer(kind, name, **config):
    return {"module": "keras.layers", "class_name": kind, "config": {"name": name, **config}}


BOOK_CNN = [  # 8-2's keras.Sequential, as config.json lists it
    layer("InputLayer", "input_layer", batch_shape=[None, 28, 28, 1]),
    layer("Conv2D", "conv2d", filters=32, kernel_size=[3, 3], activation="relu", padding="same"),
    layer("MaxPooling2D", "max_pooling2d", pool_size=[2, 2]),
    layer("Conv2D", "conv2d_1", filters=64, kernel_size=[3, 3], activation="relu", padding="same"),
    layer("MaxPooling2D", "max_pooling2d_1", pool_size=[2, 2]),
    layer("Flatten", "flatten"),
    layer("Dense", "dense", units=100, activation="relu"),
    layer("Dropout", "dropout", rate=0.4),
    layer("Dense", "dense_1", units=10, activation="softmax"),
]


def conv_same(x, kernel, bias):
    """Keras' Conv2D(padding='same') on NHWC images, as a sum over the kernel's nine offsets."""
    height, width = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = np.stack([[padded[:, i : i + height, j : j + width] for j in range(3)] for i in range(3)])
    return np.einsum("ijnhwc,ijco->nhwo", patches, kernel) + bias


def max_pool(x):
    n, height, width, channels = x.shape
    return x.reshape(n, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def relu(x):
    return np.maximum(x, 0)


def keras_cnn(images, w):
    """8-2's model in NHWC; Flatten keeps Keras' order (height, width, channel); logits, softmax left out."""
    x = max_pool(relu(conv_same(images, *w["conv2d"])))
    x = max_pool(relu(conv_same(x, *w["conv2d_1"])))
    x = relu(x.reshape(len(x), -1) @ w["dense"][0] + w["dense"][1])
    return x @ w["dense_1"][0] + w["dense_1"][1]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def images(rng):
    return rng.random((4, 28, 28, 1)).astype(np.float32)  # NHWC, as Keras takes them


def torch_logits(module, images):
    with torch.no_grad():
        return module(torch.from_numpy(images).permute(0, 3, 1, 2)).double().numpy()


def test_a_keras_cnn_computes_what_numpy_computes_from_the_same_arrays(tmp_path, rng, images):
    arrays = cnn_arrays(rng)
    module = import_keras(write_keras(tmp_path / "best-cnn-model.keras", arrays, BOOK_CNN))
    assert describe(dict(module.hparams.model)) == CNN
    logits = torch_logits(module, images)
    np.testing.assert_allclose(logits, keras_cnn(images, arrays), rtol=1e-4, atol=1e-4)
    assert np.ptp(logits) > 1  # outputs far apart: a misplaced weight would show


def test_the_imported_file_is_what_predict_and_visualize_load(tmp_path, rng, images, monkeypatch, capsys):
    """scripts/import_keras.py writes safetensors with the model config, which load_model rebuilds."""
    arrays = cnn_arrays(rng)
    source = write_keras(tmp_path / "best-cnn-model.keras", arrays, BOOK_CNN)
    output = tmp_path / "best-cnn-model.safetensors"
    import_script(monkeypatch, str(source))
    assert capsys.readouterr().out == f"{source}: {CNN} -> {output}\n"
    np.testing.assert_allclose(torch_logits(load_model(output), images), keras_cnn(images, arrays), atol=1e-4)
    np.testing.assert_allclose(torch_logits(load_model(source), images), keras_cnn(images, arrays), atol=1e-4)
    trained = Classifier(model={"_target_": "hgmldl.models.cnn"}, optimizer={})
    load_weights(trained, output)  # the layout of a model=cnn run, so the weights fit a trained CNN as well
    with pytest.raises(SystemExit, match=r"^error: -o model.pt: name the file \*.safetensors, the suffix .*$"):
        import_script(monkeypatch, str(source), "-o", "model.pt")


def import_script(monkeypatch, *arguments):
    monkeypatch.setattr(sys, "argv", ["import_keras.py", *arguments])
    runpy.run_path(str(ROOT / "scripts" / "import_keras.py"), run_name="__main__")


def test_a_weights_h5_file_takes_the_activation_and_dropout_it_lacks(tmp_path, rng):
    """7-3's model.weights.h5: Flatten → Dense(100, relu) → Dropout(0.3) → Dense(10); no configs in the file."""
    arrays = {"dense": [rng.normal(0, 0.1, (784, 100)), rng.normal(0, 0.1, 100)]}
    arrays["dense_1"] = [rng.normal(0, 0.3, (100, 10)), rng.normal(0, 0.1, 10)]
    path = write_weights(tmp_path / "model.weights.h5", arrays, empty=("dropout", "flatten"))
    module = import_keras(path, activation="relu", dropout=0.3)
    assert describe(dict(module.hparams.model)) == "mlp(hidden_units=100, activation=relu, dropout=0.3)"
    images = rng.random((5, 28, 28, 1)).astype(np.float32)
    hidden = relu(images.reshape(5, -1) @ arrays["dense"][0] + arrays["dense"][1])
    expected = hidden @ arrays["dense_1"][0] + arrays["dense_1"][1]
    np.testing.assert_allclose(torch_logits(module, images), expected, rtol=1e-4, atol=1e-4)


def test_keras_names_layers_by_kind_whatever_name_they_were_given(tmp_path, rng):
    """7-2's Dense(100, 'sigmoid', name='hidden'), Dense(10, name='output') are stored as dense and dense_1."""
    arrays = {"dense": [rng.normal(0, 0.1, (784, 100)), np.zeros(100)]}
    arrays["dense_1"] = [rng.normal(0, 0.1, (100, 10)), np.zeros(10)]
    layers = [
        layer("Flatten", "flatten"),
        layer("Dense", "hidden", units=100, activation="sigmoid"),
        layer("Dense", "output", units=10, activation="softmax"),
    ]
    module = import_keras(write_keras(tmp_path / "model.keras", arrays, layers))
    assert describe(dict(module.hparams.model)) == "mlp(hidden_units=100, activation=sigmoid, dropout=0.0)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda arrays, layers: (cnn_arrays(np.random.default_rng(1), filters=16), layers),
            r"layer conv2d \(Conv2D\) holds arrays of shape \(3, 3, 1, 16\), \(16,\); "
            + re.escape(CNN)
            + r" needs a kernel \(3, 3, 1, 32\) and a bias \(32,\)$",
        ),
        (
            lambda arrays, layers: ({**arrays, "dense_1": arrays["dense_1"][:1]}, layers),
            r"layer dense_1 \(Dense\) holds arrays of shape \(100, 10\); .* needs a kernel \(100, 10\) and a bias",
        ),
        (
            lambda arrays, layers: ({**arrays, "dense_2": arrays["dense_1"]}, [*layers, layers[-1]]),
            r"has weights for layer dense_2, which cnn\(.*\) does not have$",
        ),
    ],
)
def test_a_layer_that_does_not_fit_is_named_in_one_line(tmp_path, rng, change, message):
    path = write_keras(tmp_path / "other.keras", *change(cnn_arrays(rng), BOOK_CNN))
    with pytest.raises(UserError, match=message):
        import_keras(path)


def test_files_that_are_not_keras_3_models_are_one_line_each(tmp_path, rng):
    norm = layer("BatchNormalization", "batch_normalization")
    with pytest.raises(UserError, match=r"layer 3 is a BatchNormalization; hgmldl.models builds only Conv2D, "):
        import_keras(write_keras(tmp_path / "bn.keras", cnn_arrays(rng), [*BOOK_CNN[:3], norm, *BOOK_CNN[3:]]))
    with h5py.File(tmp_path / "keras2.h5", "w") as file:  # Keras 2's save_weights: one group per layer name
        file.create_group("conv2d/conv2d")
    with pytest.raises(
        UserError, match=r"keras2.h5 is not in Keras 3's weights layout .* model.save\('model.keras'\)$"
    ):
        import_keras(tmp_path / "keras2.h5")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match=r"notes.txt is neither a Keras .keras file nor a .weights.h5 file$"):
        import_keras(tmp_path / "notes.txt")


def test_load_model_needs_the_model_config_beside_the_weights(tmp_path):
    module = Classifier(model={"_target_": "hgmldl.models.softmax"}, optimizer={})
    save_file(dict(module.state_dict()), tmp_path / "bare.safetensors")  # no metadata: the model is unknown
    with pytest.raises(UserError, match=r"bare.safetensors holds no model config: load it with load_weights into"):
        load_model(tmp_path / "bare.safetensors")
