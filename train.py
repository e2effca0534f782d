"""Train a book model: `python train.py model=cnn optimizer=adam`, `python train.py experiment=ch8_2_cnn`.

Options are the config groups in conf/ (`python train.py --help` lists them); results go to the Hydra run dir.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.config import register_configs, resume_overrides
from hgmldl.errors import UserError
from hgmldl.train import run

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)["val_accuracy"]  # what a Hydra sweeper maximises
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    try:
        sys.argv[1:] = resume_overrides(sys.argv[1:])  # resume=<run dir>: that run's config, in its folder
    except UserError as error:
        sys.exit(f"error: {error}")
    main()
