"""predict.py's work: Keras' `model.predict` + argmax for one image, through Lightning's `trainer.predict` (the
module's own predict_step, which returns the softmax probabilities), and the book's 8-2 picture of the result.
The Trainer picks the device, as it does for training.
"""

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from hgmldl.config import command
from hgmldl.figures import class_names, plot_prediction, save_figure
from hgmldl.hangul import padded
from hgmldl.images import pick_image, read_image
from hgmldl.saving import load_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The class of one image (`image=<file>`, or `index` of `split`) and its ten probabilities; prediction.png."""
    module = load_model(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    names = class_names(datamodule.classes, cfg.classes)
    if cfg.image:
        image, label, source = read_image(cfg.image), None, str(cfg.image)
    else:
        image, label = pick_image(datamodule, cfg.split, cfg.index)
        source = f"{cfg.split}[{cfg.index}]"
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False, enable_model_summary=False)
    [probabilities] = trainer.predict(module, DataLoader(TensorDataset(image[None])))  # one batch of one image
    probabilities = probabilities[0]
    predicted = int(probabilities.argmax())
    path = save_figure(plot_prediction(image, probabilities, names), Path(cfg.output_dir) / "prediction.png")
    known = "" if label is None else f" (label: {names[label]})"
    log.info("%s: %s%s", source, names[predicted], known)
    for name, probability in zip(names, probabilities.tolist(), strict=True):
        log.info("  %s %.4f", padded(name), probability)
    log.info("picture: %s", path)
    return {"class": names[predicted], "index": predicted, "label": label, "probabilities": probabilities.tolist()}


@command("predict")
def main(cfg: DictConfig) -> None:
    """`python predict.py …` at the top of the checkout, `hgmldl-predict …` where pip installed hgmldl."""
    run(cfg)
