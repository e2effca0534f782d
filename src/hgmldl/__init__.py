"""hgmldl: the Keras chapters of 혼자 공부하는 머신러닝+딥러닝 (7-8) and Deep Learning with Python (2) in Lightning + Hydra.

From Python, as the book's Keras: `history = hgmldl.fit("experiment=ch7_3_callbacks")`, then `history.history`,
`history.model`, `hgmldl.load_data("val")`, `hgmldl.evaluate(ckpt)`, `hgmldl.predict(ckpt)`, `hgmldl.load(ckpt)`, `hgmldl.summary(model)`,
`hgmldl.save_keras(model, "best-cnn-model.keras")`.
"""

import importlib
import logging
import os
import sys
import warnings
from typing import Any

# The package's only import side effects, here so that they are in place before anything imports Lightning (every
# entry point imports hgmldl first). What a run prints is the book's output and the project's own messages; these
# third-party lines are not:
# TensorBoard imports TensorFlow where it is installed, whose C++ start-up notes (CPU instructions) print as INFO;
# Lightning 2.6 advertises its cloud logger and checkpoint store at every Trainer start, announces the accelerators
# a machine lacks and that max_epochs was reached, notes that our Keras-style summary replaces its own, and calls a
# pytree API that torch 2.14 deprecated. A GPU that is there ("GPU available: True") is still announced.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's warnings and errors still print
LIGHTNING_NOISE = (
    "litlogger",
    "litmodels",
    "Trainer already configured with model summary callbacks",
    "GPU available: False",
    "TPU available: False",
    "HPU available: False",
    "`Trainer.fit` stopped: `max_epochs=",
)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not any(text in record.getMessage() for text in LIGHTNING_NOISE)
)
# hgmldl's own lines (Keras' epoch lines, the restored best epoch, the result) print to stdout as Keras' fit prints,
# wherever nothing has configured logging (a notebook, a script); where Hydra, pytest or an application has, its
# handlers show them instead. Lightning sets up its own logger the same way.
_console = logging.StreamHandler(sys.stdout)
_console.addFilter(lambda record: not logging.getLogger().handlers)
logging.getLogger("hgmldl").addHandler(_console)
logging.getLogger("hgmldl").setLevel(logging.INFO)
warnings.filterwarnings(
    "ignore",
    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    category=FutureWarning,
    module=r"lightning\.pytorch\.utilities\._pytree",
)
# On a machine with Slurm's client installed, every Trainer outside a Slurm job hints at running under `srun`.
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")

# The Python API, imported on first use: `import hgmldl` alone loads neither Lightning nor matplotlib.
_API = {
    "History": ("hgmldl.api", "History"),
    "evaluate": ("hgmldl.api", "evaluate"),
    "fit": ("hgmldl.api", "fit"),
    "load": ("hgmldl.saving", "load_model"),  # Keras' load_model
    "load_data": ("hgmldl.api", "load_data"),
    "predict": ("hgmldl.api", "predict"),
    "save_keras": ("hgmldl.keras_export", "save_keras"),  # Keras' model.save('….keras')
    "show_data": ("hgmldl.api", "show_data"),
    "summarize": ("hgmldl.api", "summarize"),
    "summary": ("hgmldl.model_summary", "summary"),
    "visualize": ("hgmldl.api", "visualize"),
}
__all__ = list(_API)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'hgmldl' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return [*globals(), *_API]
