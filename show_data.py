"""혼공머신 7-1's first cells: `python show_data.py` draws the first ten training images with their labels
(samples.png, cmap='gray_r') and logs how many training images each class has (6,000 each in Fashion-MNIST).

Options: conf/show_data.yaml (`data=mnist`, `classes=ko`); the PNG goes to the Hydra run dir.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.commands.show_data import run
from hgmldl.config import register_configs
from hgmldl.errors import one_line_errors

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="show_data")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
