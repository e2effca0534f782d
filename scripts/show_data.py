"""혼공머신 7-1's first cells: `python scripts/show_data.py` draws the first ten training images with their labels
(samples.png, cmap='gray_r') and logs how many training images each class has (6,000 each in Fashion-MNIST).

Options: conf/show_data.yaml (`data=mnist`, `classes=ko`); the PNG goes to the Hydra run dir.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.config import register_configs
from hgmldl.data_overview import show_data
from hgmldl.errors import one_line_errors

ROOT = Path(__file__).resolve().parents[1]
register_configs(ROOT / "experiments")


@hydra.main(version_base="1.3", config_path="../conf", config_name="show_data")
@one_line_errors
def main(cfg: DictConfig) -> None:
    show_data(cfg)


if __name__ == "__main__":
    main()
