"""Keras' model.evaluate on val and test: `python evaluate.py ckpt_path=<run dir>/checkpoints/best.ckpt`.

Options: conf/evaluate.yaml (`python evaluate.py --help`); the PNGs go to the Hydra run dir.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.commands.evaluate import run
from hgmldl.config import register_configs
from hgmldl.errors import one_line_errors

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
