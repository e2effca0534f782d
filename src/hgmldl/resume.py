"""Continuing a run: `python train.py resume=<run dir>` becomes that run's own command in its own folder, and goes
on from its last.ckpt; a checkpoint of another architecture is refused before any data is loaded, and an
interrupted run ends with the command that continues it. A SLURM job that is signalled before its time limit (or
preempted) and requeued goes on the same way, by itself (docs/cluster.md).

Lightning's own SLURM auto-requeue is turned off: it saves a mid-epoch `hpc_ckpt_*.ckpt`, from which the epoch's
metrics and order are not rebuilt (the epoch's line loses its training loss and the numbers drift from an
uninterrupted run), loads it with weights_only=False, and evaluates its weights after fit instead of the best ones.
"""

import logging
import os
import signal
import subprocess
from pathlib import Path
from types import FrameType

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from hgmldl.config import override_key
from hgmldl.errors import UserError
from hgmldl.models import describe
from hgmldl.module import Classifier
from hgmldl.saving import fits, load_checkpoint
from hgmldl.slurm import slurm_job_id

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "checkpoints/last.ckpt"  # in the run folder: ModelCheckpoint(save_last=True), every epoch
# SLURM's warning before a job's time limit, `sbatch --signal=USR1@<seconds>` (Lightning's convention). The
# submitit launcher (a Hydra multirun on SLURM) asks for USR2 and requeues its jobs itself.
REQUEUE_SIGNAL = signal.SIGUSR1
requeued_job: str | None = None  # the SLURM job this process has put back into the queue


def resume_overrides(args: list[str]) -> list[str]:
    """`python train.py resume=<run dir> [overrides]`: that run's own overrides, then the new ones, in its folder.

    Hydra makes the run folder and composes the config before any code of ours runs, so continuing a run in its
    folder with its config is decided on the command line: the earlier run's overrides (its .hydra/overrides.yaml)
    are inserted after `resume=`, less those the new command sets again (`trainer.max_epochs=30` wins), and
    `hydra.run.dir` is set to that folder. Lightning's DDP re-runs this command in its extra processes, so applying
    it twice gives the same command.
    """
    position = next((i for i, arg in enumerate(args) if arg.startswith("resume=")), None)
    if position is None:
        return args
    try:
        run_dir = OverridesParser.create().parse_override(args[position]).value()
        one_folder = run_dir is None or isinstance(run_dir, str)  # not a,b (a sweep over folders)
    except HydraException:  # an unquoted '=' in the folder name
        one_folder = False
    if not one_folder:
        raise UserError(
            f"{args[position]}: give one folder, quoted if its name holds '=' or ',' "
            """(a sweep's job): 'resume="multirun/…/optimizer=adam,seed=1"'"""
        )
    if run_dir is None:
        return args
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise UserError(f"resume={run_dir}: {overrides_file} not found; give the folder of an earlier train.py run")
    given = {override_key(arg) for arg in args}
    earlier = [override for override in OmegaConf.load(overrides_file) if override_key(override) not in given]
    return [*args[: position + 1], *earlier, f'hydra.run.dir="{run_dir}"', *args[position + 1 :]]


def resume_checkpoint(run_dir: str) -> str:
    """What `resume=<run dir>` continues from: the last.ckpt that conf/callbacks/default.yaml writes every epoch."""
    path = Path(run_dir) / LAST_CHECKPOINT
    if not path.is_file():
        raise UserError(f"resume={run_dir}: {path} not found; that run ended before its first epoch did, start anew")
    return str(path)


def interrupted_message(run_dir: str, epoch: int) -> str:
    if not (Path(run_dir) / LAST_CHECKPOINT).is_file():
        return f"Interrupted in epoch {epoch + 1}, before any epoch ended: nothing to resume, start the run anew"
    if requeued_job:
        return (
            f"Stopped in epoch {epoch + 1} by SLURM's signal; requeued job {requeued_job} continues in {run_dir} "
            f"from {LAST_CHECKPOINT}, the end of epoch {epoch}"
        )
    next_step = f"Continue with:  python train.py 'resume=\"{run_dir}\"'"
    if SLURMEnvironment.detect():  # e.g. a sweep job that the submitit launcher requeued (its own USR2 handler)
        next_step = f"If SLURM requeues this job, it continues from there by itself; else c{next_step[1:]}"
    return f"Interrupted in epoch {epoch + 1}; {LAST_CHECKPOINT} holds the end of the last whole epoch. {next_step}"


def check_resumable(module: Classifier, ckpt_path: str) -> None:
    """One line, before any data is loaded, where Lightning would fail after loading it with a traceback: a missing
    or foreign file, or the checkpoint of another architecture than the configured one."""
    saved = load_checkpoint(ckpt_path)
    if not fits(saved.state_dict(), module):
        raise UserError(
            f"{ckpt_path} holds {describe(dict(saved.hparams.model))} but this run builds "
            f"{describe(dict(module.hparams.model))}: resume with the model options of the run that saved it"
        )


def slurm_plugins() -> list[SLURMEnvironment]:
    """The Trainer's plugins in a SLURM job: Lightning's SLURM environment without its auto-requeue, and ours on
    the signal before the time limit (`sbatch --signal=USR1@90 --requeue`)."""
    if not SLURMEnvironment.detect():
        return []
    try:
        environment = SLURMEnvironment(auto_requeue=False)
    except RuntimeError as error:  # srun's tasks that Lightning cannot map to devices: --ntasks without per-node
        raise UserError(f"trainer: {error}") from None
    signal.signal(REQUEUE_SIGNAL, requeue)
    return [environment]


def requeue(signum: int, frame: FrameType | None) -> None:
    """Puts the job back into SLURM's queue; SLURM then ends its processes with SIGTERM, which Lightning turns into
    a stop after the current step, as for Ctrl-C. Under srun every process gets the signal; the first one asks."""
    global requeued_job
    if os.environ.get("SLURM_PROCID", "0") != "0" or requeued_job is not None:
        return
    asked = subprocess.run(["scontrol", "requeue", slurm_job_id()], capture_output=True, text=True)
    if asked.returncode:  # e.g. a job submitted with --no-requeue: it runs on until SLURM stops it
        log.warning("SLURM's signal: scontrol requeue %s failed: %s", slurm_job_id(), asked.stderr.strip())
        return
    requeued_job = slurm_job_id()


def requeued_checkpoint(run_dir: str) -> str | None:
    """What a job that SLURM requeued (SLURM_RESTART_COUNT ≥ 1) goes on from: its run folder's last.ckpt, so the
    job continues to the numbers of an uninterrupted run, as `resume=` does; before the command's own ckpt_path=,
    where the run started. The same command finds the same folder again: the job's own (hgmldl.slurm), a fixed
    hydra.run.dir, or a sweep's job folder."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    path = Path(run_dir) / LAST_CHECKPOINT
    if not restarts or not path.is_file():
        return None
    if os.environ.get("SLURM_PROCID", "0") == "0":
        epochs = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
        log.warning(
            "SLURM requeued job %s (restart %d): continuing in %s from %s, the end of epoch %d",
            slurm_job_id(),
            restarts,
            run_dir,
            LAST_CHECKPOINT,
            epochs,
        )
    return str(path)
