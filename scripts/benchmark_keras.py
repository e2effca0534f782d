"""The book's Keras code for one model, as the Keras side of `scripts/benchmark.py --keras`.

    python scripts/benchmark_keras.py MODEL --optimizer adam --batch-size 32 --epochs 5 --data DIR --out FILE

Its own process, so TensorFlow never enters hgmldl's. Keras 3 runs it on the backend that KERAS_BACKEND names
(benchmark.py sets it: `tensorflow`, the book's, or `torch`, which the book's second edition shows in 7-1). The cells (scripts/keras_book.py) are 혼공머신 7-1 (softmax),
7-2 (mlp, the relu model), 7-3 (dropout_mlp, with its ModelCheckpoint and EarlyStopping), 8-2 (cnn, the same two
callbacks) and Deep Learning with Python ch. 2 (dense512): the same layers, scaling, split, seed, compile() and
fit() arguments. Three things differ, each as in hgmldl's run beside it: the data are the IDX files hgmldl reads
(DIR), read by hgmldl's reader into the arrays keras.datasets' load_data() returns, with no download; every model
validates each epoch on the 12,000 images split off (7-3 and 8-2 do; in Keras' default batches, the fit batch
size); EarlyStopping's patience never runs out, so every side runs the same epochs. fit() prints one line per
epoch (verbose=2), as hgmldl does without a progress bar. With --turn-fd/--done-fd each epoch waits for its turn
(see benchmark.py's SideBySide).
"""

import argparse
import json
import os
import time
from pathlib import Path

import keras
from keras_book import MODELS, SEED, book_inputs, book_model, book_split, load_train

NEVER = 1_000_000  # EarlyStopping's patience: it checks and keeps the best weights every epoch, never stops


def book_callbacks(model: str, folder: Path) -> list[keras.callbacks.Callback]:
    """7-3 and 8-2 fit with ModelCheckpoint(save_best_only=True) and EarlyStopping(restore_best_weights=True)."""
    if model not in ("dropout_mlp", "cnn"):
        return []
    name = "best-cnn-model.keras" if model == "cnn" else "best-model.keras"
    return [
        keras.callbacks.ModelCheckpoint(str(folder / name), save_best_only=True),
        keras.callbacks.EarlyStopping(patience=NEVER, restore_best_weights=True),
    ]


class Turns(keras.callbacks.Callback):
    """Times the epochs start to start, as benchmark.py's SideBySide does for hgmldl, and with file descriptors
    waits for its turn before each epoch and says when the epoch is done."""

    def __init__(self, out: Path, turn_fd: int | None, done_fd: int | None) -> None:
        super().__init__()
        self.out, self.turn_fd, self.done_fd = out, turn_fd, done_fd
        self.epoch_seconds: list[float] = []
        self.val_accuracy: list[float] = []
        self.started = 0.0

    def ready(self) -> None:
        self._say(b"r")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch > 0:
            self.epoch_seconds.append(time.perf_counter() - self.started)
            self._say(b"d")
        if self.turn_fd is not None and not os.read(self.turn_fd, 1):
            raise SystemExit("benchmark_keras.py: the hgmldl run it takes turns with has ended")
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.val_accuracy.append(float(logs["val_accuracy"]))

    def on_train_end(self, logs: dict | None = None) -> None:
        self.epoch_seconds.append(time.perf_counter() - self.started)
        versions = {"keras": keras.__version__}
        if keras.backend.backend() == "tensorflow":  # the torch side's torch is hgmldl's, in the report already
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
        result = {
            "epoch_seconds": self.epoch_seconds,
            "val_accuracy": self.val_accuracy,
            "updates": int(self.model.optimizer.iterations.numpy()),
            "backend": keras.backend.backend(),
            "versions": versions,
        }
        self.out.write_text(json.dumps(result, indent=2) + "\n")
        self._say(b"d")

    def _say(self, message: bytes) -> None:
        if self.done_fd is not None:
            os.write(self.done_fd, message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--optimizer", required=True, help="compile()'s optimizer name: rmsprop or adam")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder of the four IDX files (raw or .gz)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the epoch times")
    parser.add_argument("--threads", type=int, help="the backend's intra- and inter-op threads")
    parser.add_argument("--turn-fd", type=int, help="read one byte here before each epoch")
    parser.add_argument("--done-fd", type=int, help="write one byte here when ready, and after each epoch")
    args = parser.parse_args()

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if args.threads:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        if args.model in ("softmax", "mlp", "dropout_mlp"):  # 7-1, 7-2 and 7-3 ask for it; 8-2 and DLP do not
            tf.config.experimental.enable_op_determinism()
    elif args.threads:  # torch: the book's determinism call is TensorFlow's own, and torch's CPU ops are already
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    keras.utils.set_random_seed(SEED)

    train_input, train_target = load_train(args.data)
    train_scaled = book_inputs(args.model, train_input)
    train_scaled, val_scaled, train_target, val_target = book_split(train_scaled, train_target)
    model = book_model(args.model)
    model.compile(optimizer=args.optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    turns = Turns(args.out, args.turn_fd, args.done_fd)
    turns.ready()
    model.fit(
        train_scaled,
        train_target,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=2,
        validation_data=(val_scaled, val_target),
        callbacks=[*book_callbacks(args.model, args.out.parent), turns],
    )


if __name__ == "__main__":
    main()
