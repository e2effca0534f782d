"""Hydra callbacks, run before Hydra's own work: the run folder's check, and a sweep's own folder. (The summary at a
sweep's end is the summarize command's: `hgmldl.commands.summarize.SweepSummary`.)"""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hgmldl.errors import UserError, one_line_errors
from hgmldl.files import check_output_dir
from hgmldl.slurm import check_job_folder


class CheckOutputDir(Callback):
    """Hydra creates the run folder before train.py's code runs, and fails with a traceback when it cannot; this
    checks the folder (and the free disk space) first, and ends with one line. So does a second run of one SLURM job
    in the job's folder, before Hydra writes over the first one's config."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)
        fixed = any(override.startswith("hydra.run.dir=") for override in config.hydra.overrides.hydra)
        one_line_errors(check_job_folder)(config.hydra.run.dir, fixed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(path: str) -> None:
        one_line_errors(check_output_dir)(path)


class NewSweepDir(Callback):
    """Claims a fresh folder when a sweep starts.

    Hydra itself reuses an existing sweep folder (`mkdir(exist_ok=True)`), so two sweeps started at the same
    instant, or a sweep repeated with the same `hydra.sweep.dir`, would mix their jobs; creating `multirun.yaml`
    exclusively makes the second one stop instead.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        one_line_errors(self._claim)(config)

    @staticmethod
    def _claim(config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(sweep_dir / "multirun.yaml", "x", encoding="utf-8") as file:
                file.write(OmegaConf.to_yaml(config))  # what Hydra's sweeper writes there next
        except FileExistsError:
            raise UserError(
                f"{sweep_dir} already holds a sweep; give another hydra.sweep.dir= or delete that folder"
            ) from None
