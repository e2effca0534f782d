"""The SLURM job a run is in, as `squeue` and `scontrol` name it. Inside a job (not a Hydra sweep's, whose jobs have
folders of their own), train.py's run folder is named after the job, so a job that SLURM requeues finds its run
again and goes on from it (hgmldl.resume, docs/cluster.md)."""

import os
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment

from hgmldl.errors import UserError

FINISHED_EPOCH_FILES = ("checkpoints/last.ckpt", "metrics.json")  # a run folder holding one of them holds work


def slurm_job_id() -> str:
    """`1234`, or an array task's `1230_4` (SLURM_JOB_ID alone would be a number of its own for each task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


def slurm_job_or(default: str) -> str:
    """conf/train.yaml's run folder name (an OmegaConf resolver): `slurm-<job id>` inside a SLURM job, else `default`.
    An interactive allocation (job name `bash` or `interactive`) is no job here, as for Lightning's
    `SLURMEnvironment.job_id`: each command typed in it is a run of its own."""
    return f"slurm-{slurm_job_id()}" if SLURMEnvironment.job_id() is not None else default


def check_job_folder(run_dir: str, fixed: bool) -> None:
    """A second run in one job would write over the first one's folder: it stops instead, before Hydra writes
    there. A requeued job (SLURM_RESTART_COUNT ≥ 1) goes on in it; a folder given by hydra.run.dir= is the user's."""
    if fixed or Path(run_dir).name != slurm_job_or("") or int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        return
    if any((Path(run_dir) / name).exists() for name in FINISHED_EPOCH_FILES):
        raise UserError(
            f"{run_dir} holds an earlier run of SLURM job {slurm_job_id()}: give this run a folder of its own "
            f"(hydra.run.dir={run_dir}-2), or continue that one with resume={run_dir}"
        )
