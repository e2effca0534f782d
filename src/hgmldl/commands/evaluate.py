"""evaluate.py's work: Keras' `model.evaluate` on val and test, through Lightning's `trainer.validate` and
`trainer.test` (the module's own validation_step and test_step), plus each split's per-class accuracy and confusion
matrix (`hgmldl.callbacks.ClassMetrics`). The Trainer picks the device, as it does for training.
"""

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from hgmldl.callbacks import ClassMetrics
from hgmldl.config import command
from hgmldl.figures import class_names, plot_confusion_matrix, save_figure
from hgmldl.files import write_text_atomic
from hgmldl.hangul import padded
from hgmldl.models import describe
from hgmldl.saving import load_model

log = logging.getLogger(__name__)

EVALUATED_SPLITS = ("val", "test")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Writes evaluation.json, per_class_accuracy.csv and confusion_matrix_{val,test}.png into the run dir and
    returns what evaluation.json holds."""
    module = load_model(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    names = class_names(datamodule.classes, cfg.classes)
    class_metrics = ClassMetrics()
    trainer = instantiate(
        cfg.trainer, callbacks=[class_metrics], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    scores = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    scores |= trainer.test(module, datamodule=datamodule, verbose=False)[0]
    results: dict[str, Any] = {
        f"{split}_{name}": scores[f"{split}_{name}"] for split in EVALUATED_SPLITS for name in ("loss", "accuracy")
    }
    per_class = {split: class_metrics.results[split]["per_class_accuracy"].tolist() for split in EVALUATED_SPLITS}
    results["per_class_accuracy"] = {
        name: {s: per_class[s][i] for s in EVALUATED_SPLITS} for i, name in enumerate(names)
    }
    if not trainer.is_global_zero:
        return results

    output_dir = Path(cfg.output_dir)
    for split in EVALUATED_SPLITS:
        figure = plot_confusion_matrix(class_metrics.results[split]["confusion_matrix"], names, split)
        save_figure(figure, output_dir / f"confusion_matrix_{split}.png")
    write_text_atomic(output_dir / "evaluation.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "val_accuracy", "test_accuracy"])
    writer.writerows(
        [name, f"{val:.4f}", f"{test:.4f}"] for name, val, test in zip(names, *per_class.values(), strict=True)
    )
    write_text_atomic(output_dir / "per_class_accuracy.csv", table.getvalue())

    log.info("%s: %s", cfg.ckpt_path, describe(dict(module.hparams.model)))
    for split in EVALUATED_SPLITS:
        log.info("%s_loss %.4f  %s_accuracy %.4f", split, results[f"{split}_loss"], split, results[f"{split}_accuracy"])
    log.info("%s %12s %13s", padded("class"), "val_accuracy", "test_accuracy")
    for name, val, test in zip(names, *per_class.values(), strict=True):
        log.info("%s %12.4f %13.4f", padded(name), val, test)
    log.info("confusion matrices, per_class_accuracy.csv, evaluation.json: %s", output_dir)
    return results


@command("evaluate")
def main(cfg: DictConfig) -> None:
    """`python evaluate.py …` at the top of the checkout, `hgmldl-evaluate …` where pip installed hgmldl."""
    run(cfg)
