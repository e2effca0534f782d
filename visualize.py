"""혼공머신 8-3's pictures of a CNN checkpoint: `python visualize.py ckpt_path=<run dir of model=cnn>/checkpoints/best.ckpt`.

The book's own trained model works too: ckpt_path=best-cnn-model.keras (see docs/keras_layers.md).
Options: conf/visualize.yaml (`python visualize.py --help`); the PNGs go to the Hydra run dir.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.commands.visualize import run
from hgmldl.config import register_configs
from hgmldl.errors import one_line_errors

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
