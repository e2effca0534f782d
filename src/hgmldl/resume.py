"""Continuing a run: `python train.py resume=<run dir>` becomes that run's own command in its own folder, and goes
on from its last.ckpt; a checkpoint of another architecture is refused before any data is loaded, and an
interrupted run ends with the command that continues it."""

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from hgmldl.config import override_key
from hgmldl.errors import UserError
from hgmldl.models import describe
from hgmldl.module import Classifier
from hgmldl.saving import fits, load_checkpoint

LAST_CHECKPOINT = "checkpoints/last.ckpt"  # in the run folder: ModelCheckpoint(save_last=True), every epoch


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
    return (
        f"Interrupted in epoch {epoch + 1}; {LAST_CHECKPOINT} holds the end of the last whole epoch. "
        f"Continue with:  python train.py 'resume=\"{run_dir}\"'"
    )


def check_resumable(module: Classifier, ckpt_path: str) -> None:
    """One line, before any data is loaded, where Lightning would fail after loading it with a traceback: a missing
    or foreign file, or the checkpoint of another architecture than the configured one."""
    saved = load_checkpoint(ckpt_path)
    if not fits(saved.state_dict(), module):
        raise UserError(
            f"{ckpt_path} holds {describe(dict(saved.hparams.model))} but this run builds "
            f"{describe(dict(module.hparams.model))}: resume with the model options of the run that saved it"
        )
