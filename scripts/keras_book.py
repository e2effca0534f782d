"""The book's Keras code, written once for the scripts that run it in TensorFlow (benchmark_keras.py, the Keras side
of benchmark.py, and record_keras_golden.py, which records tests/golden/): the data as keras.datasets' load_data()
gives it, each cell's scaling and split, and its Sequential.

The cells are 혼공머신 7-1 (softmax), 7-2 (mlp, the relu model), 7-3 (dropout_mlp), 8-2 (cnn) and Deep Learning with
Python ch. 2 (dense512). TensorFlow runs only in those scripts' own processes, and torch never does (hgmldl.idx
reads the data with numpy alone); nothing that hgmldl's tests import imports this module.
"""

from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from hgmldl.idx import IDX_FILES, find_idx, read_idx

MODELS = ("softmax", "mlp", "dropout_mlp", "dense512", "cnn")
SEED = 42  # the book's keras.utils.set_random_seed(42)


def load_train(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the training set, what keras.datasets.fashion_mnist.load_data() returns first, read from
    the IDX files hgmldl reads (`folder`, raw or .gz): no download."""
    paths = [find_idx(folder, name) for name in IDX_FILES["train"]]
    if None in paths:
        raise SystemExit(f"error: no {' and '.join(IDX_FILES['train'])} (raw or .gz) in {folder}")
    images, labels = map(read_idx, paths)
    return images, labels


def book_inputs(model: str, train_input: np.ndarray) -> np.ndarray:
    """Each cell's own scaling and shape (hg-mldl divides by 255.0 into float64, Deep Learning with Python casts to
    float32 first); Keras converts to float32 itself."""
    if model == "softmax":  # 7-1
        return train_input.reshape(-1, 28 * 28) / 255.0
    if model == "dense512":
        return train_input.reshape(-1, 28 * 28).astype("float32") / 255
    if model == "cnn":  # 8-2
        return train_input.reshape(-1, 28, 28, 1) / 255.0
    return train_input / 255.0  # 7-2, 7-3: Flatten(input_shape=(28, 28)) flattens


def book_split(scaled: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
    """train_scaled, val_scaled, train_target, val_target: the book's train_test_split(test_size=0.2,
    random_state=42)."""
    return train_test_split(scaled, target, test_size=0.2, random_state=42)


def book_model(
    model: str, sequential: type = keras.Sequential, dropout: type = keras.layers.Dropout
) -> keras.Sequential:
    """The book's Sequential, layer for layer (`sequential` and `dropout`: subclasses that record what fit computes).
    hg-mldl passes input_shape= to the first layer, which Keras 3 deprecates; keras.Input(shape=…) in front, as the
    book's second edition writes it, builds the same model."""
    Dense = keras.layers.Dense  # noqa: N806
    if model == "softmax":  # 7-1: Dense(10, activation='softmax', input_shape=(784,))
        return sequential([keras.Input(shape=(784,)), Dense(10, activation="softmax")])
    if model in ("mlp", "dropout_mlp"):  # 7-2's relu model; 7-3's model_fn(keras.layers.Dropout(0.3))
        hidden = [Dense(100, activation="relu"), *([dropout(0.3)] if model == "dropout_mlp" else [])]
        return sequential(
            [keras.Input(shape=(28, 28)), keras.layers.Flatten(), *hidden, Dense(10, activation="softmax")]
        )
    if model == "dense512":  # Deep Learning with Python ch. 2
        return sequential([keras.Input(shape=(784,)), Dense(512, activation="relu"), Dense(10, activation="softmax")])
    return sequential(  # cnn, 8-2
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            Dense(100, activation="relu"),
            dropout(0.4),
            Dense(10, activation="softmax"),
        ]
    )
