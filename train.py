"""Train a book model: `python train.py model=cnn optimizer=adam`, `python train.py experiment=ch8_2_cnn`.

Options are the config groups in conf/ (`python train.py --help` lists them); results go to the Hydra run dir.
A preset that sets `baseline` (`experiment=ch7_1_sgd_baseline`) cross-validates that scikit-learn estimator instead.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hgmldl.baseline import cross_validate_baseline
from hgmldl.commands.train import run
from hgmldl.config import register_configs
from hgmldl.errors import one_line_errors
from hgmldl.resume import resume_overrides

register_configs(Path(__file__).parent / "experiments")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    metrics = cross_validate_baseline(cfg) if cfg.get("baseline") is not None else run(cfg).metrics
    return metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None  # what a Hydra sweeper maximises


if __name__ == "__main__":
    sys.argv[1:] = one_line_errors(resume_overrides)(sys.argv[1:])  # resume=<run dir>: that run's config, in its folder
    main()
