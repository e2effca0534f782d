"""Records what Keras 3's own `fit` computes, step by step, for tests/test_keras_golden.py (tests/golden/*.npz).

Runs in an environment of its own with pyproject's `bench` extra (TensorFlow, scikit-learn) and hgmldl without its
dependencies (hgmldl.idx reads the data with numpy alone), not in the one hgmldl trains in: the tests compare against
the committed files and never need TensorFlow.

    python3 -m venv ~/kerasenv && ~/kerasenv/bin/pip install tensorflow-cpu scikit-learn
    ~/kerasenv/bin/pip install --no-deps -e .
    ~/kerasenv/bin/python scripts/record_keras_golden.py [--idx-dir /usr/share/datasets/fashion-mnist]

For each book model (softmax, mlp, dropout_mlp, cnn) and optimizer (sgd, nesterov, adagrad, rmsprop, adam) it runs
the book's code (scripts/keras_book.py) — set_random_seed(42) and enable_op_determinism(), the model, compile,
fit(batch_size=32) on the book's 48,000-image split — and stops fit after STEPS steps. From inside fit it records
the minibatches fed (as indices into the train split), each step's loss (the value fit differentiates; logs['loss']
is a running mean) and Dropout's masks; after the last step, the weights. Keras' initial weights are stored once per
model (seed 42 draws the same ones for every optimizer). A plain run of the book's model without the recording
layers checks that recording changes nothing. docs/keras_parity.md has the measured agreement.
"""

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras_book import SEED, book_inputs, book_model, book_split, load_train

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE = 32
STEPS = {"softmax": 300, "mlp": 100, "dropout_mlp": 100, "cnn": 5}
OPTIMIZERS = {  # 혼공머신 7-2's compile(optimizer=…) calls; the book's 'rmsprop' and 'adam' are these defaults
    "sgd": lambda: keras.optimizers.SGD(),
    "nesterov": lambda: keras.optimizers.SGD(momentum=0.9, nesterov=True),
    "adagrad": lambda: keras.optimizers.Adagrad(),
    "rmsprop": lambda: keras.optimizers.RMSprop(),
    "adam": lambda: keras.optimizers.Adam(),
}
SAMPLE = 2048  # a larger weight tensor is stored at this many fixed positions, with its sum of |change|


def book_data(idx_dir: Path, model: str) -> tuple[np.ndarray, np.ndarray]:
    """fashion_mnist.load_data()'s training set, `/ 255.0`, shaped for the model, train_test_split's 48,000."""
    images, labels = load_train(idx_dir)
    scaled = book_inputs(model, images)
    train_scaled, _, train_target, _ = book_split(scaled, labels)
    # hgmldl.data.book_split's train indices, in the same order: the golden indices point into both.
    order = np.random.RandomState(42).permutation(len(labels))[12_000:]
    assert np.array_equal(train_target, labels[order]) and np.array_equal(train_scaled, scaled[order])
    return train_scaled, train_target


def keras_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Weights by their Keras 3 weights-file names (dense, dense_1, conv2d, …), as hgmldl.keras_weights reads them."""
    arrays, counts = {}, {}
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = {"Dense": "dense", "Conv2D": "conv2d"}[type(layer).__name__]
        name = kind if kind not in counts else f"{kind}_{counts[kind]}"
        counts[kind] = counts.get(kind, 0) + 1
        for i, weight in enumerate(layer.weights):
            arrays[f"{name}/{i}"] = np.asarray(weight.numpy(), np.float32)
    return arrays


class Recorder(keras.callbacks.Callback):
    """Reads the recording variables after each of fit's steps and stops fit after `steps` of them."""

    def __init__(self, steps: int, fed: dict[str, tf.Variable], positions: dict[bytes, int]) -> None:
        super().__init__()
        self.steps, self.fed, self.positions = steps, fed, positions
        self.records: dict[str, list] = {name: [] for name in fed}

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for name, variable in self.fed.items():
            self.records[name].append(variable.numpy())
        if batch + 1 == self.steps:
            self.model.stop_training = True  # Keras 3 checks it after every batch

    def indices(self) -> np.ndarray:
        return np.array([[self.positions[image.tobytes()] for image in batch] for batch in self.records["x"]])


class Stop(keras.callbacks.Callback):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch + 1 == self.steps:
            self.model.stop_training = True


def start() -> None:
    """The book's first cell."""
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


def record(model_name: str, optimizer: str, x: np.ndarray, y: np.ndarray, positions: dict[bytes, int]) -> dict:
    """One fit of the book's code with the recording variables written from inside its train step."""
    steps = STEPS[model_name]
    fed = {
        "x": tf.Variable(tf.zeros((BATCH_SIZE, *x.shape[1:]))),
        "y": tf.Variable(tf.zeros((BATCH_SIZE,), tf.uint8)),
        "loss": tf.Variable(0.0),
    }
    if "dropout" in model_name or model_name == "cnn":
        fed["dropout_in"] = tf.Variable(tf.zeros((BATCH_SIZE, 100)))
        fed["dropout_out"] = tf.Variable(tf.zeros((BATCH_SIZE, 100)))

    class RecordingDropout(keras.layers.Dropout):
        def call(self, inputs, training=False):
            outputs = super().call(inputs, training=training)
            if training:
                fed["dropout_in"].assign(inputs)
                fed["dropout_out"].assign(outputs)
            return outputs

    class RecordingSequential(keras.Sequential):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            loss = super().compute_loss(x, y, y_pred, sample_weight, training)
            if training:
                fed["x"].assign(tf.cast(x, tf.float32))
                fed["y"].assign(tf.cast(y, tf.uint8))
                fed["loss"].assign(loss)
            return loss

    start()
    model = book_model(model_name, RecordingSequential, RecordingDropout)
    initial = keras_arrays(model)
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    recorder = Recorder(steps, fed, positions)
    model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0, callbacks=[recorder])
    indices = recorder.indices()
    assert len(indices) == steps and np.array_equal(y[indices], np.stack(recorder.records["y"]))
    result = {"initial": initial, "indices": indices, "losses": np.array(recorder.records["loss"], np.float32)}
    if "dropout_in" in fed:
        result["known"] = np.stack(recorder.records["dropout_in"]) != 0
        result["kept"] = np.stack(recorder.records["dropout_out"]) != 0
    result["final"] = keras_arrays(model)
    return result


def plain_run(model_name: str, optimizer: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The book's code as it is, no recording layers: its weights must equal the recording run's."""
    start()
    model = book_model(model_name)
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0, callbacks=[Stop(STEPS[model_name])])
    return keras_arrays(model)


def golden(model_name: str, idx_dir: Path) -> dict[str, np.ndarray]:
    x, y = book_data(idx_dir, model_name)
    x32 = x.astype(np.float32)
    positions = {}
    for index in range(len(x32) - 1, -1, -1):  # a duplicate image maps to its first index (the same pixels)
        positions[x32[index].tobytes()] = index
    runs = {optimizer: record(model_name, optimizer, x, y, positions) for optimizer in OPTIMIZERS}
    first = runs["sgd"]
    for optimizer, run in runs.items():  # seed 42: one initialisation, one order, one set of dropout masks
        assert all(np.array_equal(first["initial"][k], run["initial"][k]) for k in first["initial"]), optimizer
        assert np.array_equal(first["indices"], run["indices"]), optimizer
    plain = plain_run(model_name, "adam", x, y)
    assert all(np.array_equal(plain[k], runs["adam"]["final"][k]) for k in plain), "recording changed fit's result"
    out = {f"initial/{k}": v for k, v in first["initial"].items()}
    out["indices"] = first["indices"].astype(np.int32)
    if "known" in first:
        # Dropout's mask where its input is non-zero (elsewhere it changes nothing, forward or backward); the
        # same in every run, which this checks.
        mask = np.any([run["kept"] for run in runs.values()], axis=0)
        for run in runs.values():
            assert np.array_equal(mask & run["known"], run["kept"]), "the dropout masks differ between runs"
        out["dropout_mask"] = np.packbits(mask, axis=-1)
    rng = np.random.RandomState(0)
    for key, array in first["initial"].items():
        if array.size > SAMPLE:
            out[f"sample/{key}"] = np.sort(rng.choice(array.size, SAMPLE, replace=False)).astype(np.int32)
    for optimizer, run in runs.items():
        out[f"losses/{optimizer}"] = run["losses"]
        for key, final in run["final"].items():
            if f"sample/{key}" in out:
                out[f"final/{optimizer}/{key}"] = final.ravel()[out[f"sample/{key}"]]
                out[f"change_l1/{optimizer}/{key}"] = np.abs(final.astype(np.float64) - first["initial"][key]).sum()
            else:
                out[f"final/{optimizer}/{key}"] = final
    out["meta"] = np.array(
        json.dumps(
            {
                "model": model_name,
                "steps": STEPS[model_name],
                "batch_size": BATCH_SIZE,
                "optimizers": list(OPTIMIZERS),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "recorded_by": "scripts/record_keras_golden.py",
            }
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    parser.add_argument("--models", nargs="+", default=list(STEPS), choices=list(STEPS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for model_name in args.models:
        path = args.out / f"keras_{model_name}.npz"
        np.savez_compressed(path, **golden(model_name, args.idx_dir))
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
