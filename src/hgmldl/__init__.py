"""hgmldl: the Keras chapters of 혼자 공부하는 머신러닝+딥러닝 (7-8) and Deep Learning with Python (2) in Lightning + Hydra.

From Python, as the book's Keras: `history = hgmldl.fit("experiment=ch7_3_callbacks")`, then `history.history`,
`history.model`, `hgmldl.load_data("val")`, `hgmldl.evaluate(ckpt)`, `hgmldl.predict(ckpt)`, `hgmldl.load(ckpt)`, `hgmldl.summary(model)`.
"""

import logging
import os
import warnings

# What a run prints is the book's output and the project's own messages. These third-party lines are not:
# TensorBoard imports TensorFlow where it is installed, whose C++ start-up notes (CPU instructions) print as INFO;
# Lightning 2.6 advertises its cloud logger and checkpoint store at every Trainer start, notes that our Keras-style
# summary replaces its own, and calls a pytree API that torch 2.14 deprecated.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's warnings and errors still print
LIGHTNING_NOISE = ("litlogger", "litmodels", "Trainer already configured with model summary callbacks")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not any(text in record.getMessage() for text in LIGHTNING_NOISE)
)
warnings.filterwarnings(
    "ignore",
    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    category=FutureWarning,
    module=r"lightning\.pytorch\.utilities\._pytree",
)

from hgmldl.api import (  # noqa: E402  (after the filters)
    History,
    evaluate,
    fit,
    load_data,
    predict,
    show_data,
    summarize,
    visualize,
)
from hgmldl.model_summary import summary  # noqa: E402
from hgmldl.saving import load_model as load  # noqa: E402  (Keras' load_model)

__all__ = [
    "History",
    "evaluate",
    "fit",
    "load",
    "load_data",
    "predict",
    "show_data",
    "summarize",
    "summary",
    "visualize",
]
__version__ = "0.1.0"
