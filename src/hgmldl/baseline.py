"""혼공머신 7-1's scikit-learn baseline, the number the book's first neural network is measured against:

    sc = SGDClassifier(loss='log_loss', max_iter=5, random_state=42)
    scores = cross_validate(sc, train_scaled, train_target, n_jobs=-1); np.mean(scores['test_score'])  # 0.8196

It runs through the same entry point as the networks (`python train.py experiment=ch7_1_sgd_baseline`): the preset
sets `baseline` to the estimator, and the train command's `main` hands such configs to `cross_validate_baseline` instead of
`hgmldl.commands.train.run`, the Lightning path, which knows nothing of it.
"""

import json
import logging
import time
import warnings
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from hgmldl.config import check_config
from hgmldl.files import write_text_atomic
from hgmldl.models import NUM_CLASSES

log = logging.getLogger(__name__)


def cross_validate_baseline(cfg: DictConfig) -> dict[str, Any]:
    """5-fold cross-validation of `cfg.baseline` on all training images (the book splits off no validation set
    here); `val_accuracy` is the mean fold accuracy, the book's `np.mean(scores['test_score'])`."""
    check_config(cfg)
    # Imported here: scikit-learn takes seconds to import, which every other train.py run would pay.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import cross_validate

    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    images, labels = datamodule.read_images(train=True)
    images = images.flatten(1).numpy() / 255.0  # train_scaled: float64, as NumPy's / gives
    estimator = instantiate(cfg.baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=5 cannot converge; the book shows the warning
        scores = cross_validate(estimator, images, labels.numpy())  # the book's n_jobs=-1 changes no number
    metrics = {
        "val_accuracy": float(np.mean(scores["test_score"])),
        "fold_accuracies": [float(score) for score in scores["test_score"]],
        "params": images.shape[1] * NUM_CLASSES + NUM_CLASSES,  # coef_ + intercept_, as 7-1's Dense(10)
        "wall_time": round(time.perf_counter() - start, 2),
    }
    write_text_atomic(f"{cfg.output_dir}/metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info(
        "cross-validated accuracy %.4f (folds %s, %s)", metrics["val_accuracy"], scores["test_score"], cfg.output_dir
    )
    return metrics
