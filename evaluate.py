"""Keras' model.evaluate on val and test: `python evaluate.py ckpt_path=<run dir>/checkpoints/best.ckpt`.

Options: conf/evaluate.yaml (`python evaluate.py --help`); the PNGs go to the Hydra run dir.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.config import register_configs
from hgmldl.errors import UserError
from hgmldl.inspection import evaluate

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
