"""A real one-node SLURM cluster (tests/slurm_cluster.py): a sweep as a job array through the submitit launcher, a
two-process DDP run under srun, and jobs that SLURM signals, requeues and restarts ending as uninterrupted runs."""

import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from hgmldl.config import CONFIG_DIR, register_configs
from tests.conftest import ROOT
from tests.slurm_cluster import slurm_cluster, unavailable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The environment (SLURM_CONF) of a cluster started for this file's tests and stopped after them."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def data_args(tmp_path, idx_dir):
    return [f"data.idx_dir={idx_dir}", f"data.root={tmp_path / 'data'}", "data.download=false", "logger=csv"]


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# Two jobs' worth of SLURM options for the launcher preset on a node without GPUs or much memory.
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=10",
]


def sbatch(env, script, *options, folder=ROOT):
    """Submits `script` (a bash script's body), to run in `folder`, and returns the job id."""
    result = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={folder}", *options],
        input=f"#!/bin/bash\n{script}\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().split(";")[0]


def job_field(env, job, name):
    """A field of `scontrol show job` (JobState, Reason, Restarts…)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((field.split("=", 1)[1] for field in shown.split() if field.startswith(f"{name}=")), None)


def wait_for(condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def history_rows(path):
    if not path.is_file():
        return []
    with open(path) as file:
        return list(csv.DictReader(file))


def without(rows, column):
    return [{name: value for name, value in row.items() if name != column} for row in rows]


def array_job(sweep):
    """The id of the job array that the submitit launcher submitted for a sweep (.submitit/<id>/)."""
    [array] = [folder.name for folder in (sweep / ".submitit").iterdir() if folder.name.isdigit()]
    return array


def job_log(sweep, task):
    """What one job of the sweep printed: Hydra logs to its stdout, which submitit's sbatch file names."""
    return (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()


def test_a_sweep_runs_as_a_slurm_job_array(cluster, tmp_path, idx_dir):
    sweep = tmp_path / "sweep"
    command = ["train.py", "-m", *LAUNCHER, f"hydra.sweep.dir={sweep}", "model=softmax", "seed=1,2"]
    command += [*data_args(tmp_path, idx_dir), *QUIET, "trainer.max_epochs=2"]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=cluster, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [row] = history_rows(sweep / "summary.csv")  # one setting, two seeds
    assert (row["status"], row["runs"]) == ("ok", "2")
    # Both jobs ran as tasks of one SLURM array, each printing its epochs into its own SLURM log.
    array = array_job(sweep)
    for task in (0, 1):
        assert job_log(sweep, f"{array}_{task}").count("Epoch 2/2 - ") == 1
    assert "#SBATCH --array=0-1%2\n" in (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()


def test_two_process_ddp_under_srun(cluster, tmp_path, idx_dir):
    run_dir, output = tmp_path / "run", tmp_path / "job.out"
    train = ["train.py", f"hydra.run.dir={run_dir}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    train += ["model=softmax", *data_args(tmp_path, idx_dir), *QUIET, "trainer.max_epochs=2"]
    job = sbatch(cluster, f"srun {sys.executable} {' '.join(train)}", "--ntasks-per-node=2", f"--output={output}")
    wait_for(lambda: job_field(cluster, job, "JobState") in ("COMPLETED", "FAILED", None), "the job to end")
    printed = output.read_text()
    assert job_field(cluster, job, "JobState") == "COMPLETED", printed
    # SLURM started both processes (Lightning only joined them) and rank 0 alone reported the run.
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in printed and "GLOBAL_RANK: 1, MEMBER: 2/2" in printed
    assert printed.count("Epoch 2/2 - ") == printed.count("test_accuracy ") == 1
    assert "auto-requeueing" not in printed
    assert len(history_rows(run_dir / "history.csv")) == 2 and (run_dir / "metrics.json").is_file()


def test_ntasks_without_per_node_is_one_error_line(cluster, tmp_path, idx_dir):
    output = tmp_path / "job.out"
    train = ["train.py", f"hydra.run.dir={tmp_path / 'run'}", "trainer=ddp", "trainer.accelerator=cpu"]
    train += ["trainer.devices=2", "model=softmax", *data_args(tmp_path, idx_dir), *QUIET]
    job = sbatch(cluster, f"srun {sys.executable} {' '.join(train)}", "--ntasks=2", f"--output={output}")
    wait_for(lambda: job_field(cluster, job, "JobState") in ("COMPLETED", "FAILED", None), "the job to end")
    printed = output.read_text()
    assert job_field(cluster, job, "JobState") == "FAILED", printed
    hint = "error: trainer: You set `--ntasks=2` in your SLURM bash script, but this variable is not supported. "
    assert printed.count(hint + "HINT: Use `--ntasks-per-node=2` instead.\n") == 2  # once per process
    assert "Traceback" not in printed


def assert_same_run(run_dir, reference_dir):
    """The same numbers as the uninterrupted run: history.csv but for the times, metrics.json but for the wall time,
    and the weights of both checkpoints."""
    assert without(history_rows(run_dir / "history.csv"), "time") == without(
        history_rows(reference_dir / "history.csv"), "time"
    )
    metrics, expected = (json.loads((folder / "metrics.json").read_text()) for folder in (run_dir, reference_dir))
    assert metrics.pop("wall_time") > 0 and expected.pop("wall_time") > 0
    assert metrics == expected
    for name in ("best.ckpt", "last.ckpt"):
        weights, expected_weights = (
            torch.load(folder / "checkpoints" / name, weights_only=True)["state_dict"]
            for folder in (run_dir, reference_dir)
        )
        for key, tensor in expected_weights.items():
            torch.testing.assert_close(weights[key], tensor, rtol=0, atol=0, msg=f"{name}: {key}")
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own mid-epoch requeue checkpoint


def restart_now(env, job):
    """SLURM holds a requeued job for about two minutes (its begin time); start it at once."""
    wait_for(lambda: job_field(env, job, "JobState") == "PENDING", f"job {job} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


# The requeue tests: dropout (torch's random state), steps slowed down so that a signal lands inside epoch 2.
REQUEUED_RUN = ["model=dropout_mlp", "steps_per_execution=1", "trainer.max_epochs=3", *QUIET]
REQUEUED_RUN += ["++callbacks.slow._target_=tests.slow_training.SlowSteps", "++callbacks.slow.seconds=0.1"]


# Where the job's run goes: the folder hydra.run.dir names, or by default outputs/slurm-<job id> (an array task's
# outputs/slurm-<array job>_<task>) in the folder the job runs in. With sbatch's options for each.
RUN_FOLDERS = {"hydra.run.dir": [], "the job's": [], "an array task's": ["--array=0"]}


@pytest.mark.parametrize("folder", RUN_FOLDERS)
def test_a_requeued_job_ends_as_the_uninterrupted_run(cluster, tmp_path, idx_dir, folder):
    reference_dir, output, fixed = tmp_path / "reference", tmp_path / "job.out", folder == "hydra.run.dir"
    args = [*REQUEUED_RUN, *data_args(tmp_path, idx_dir)]
    train = [str(ROOT / "train.py"), *args, *([f"hydra.run.dir={tmp_path / 'run'}"] if fixed else [])]
    # As on a cluster: the signal 30 s before the time limit, and the job may be requeued; the log goes on.
    options = ["--time=5", "--signal=USR1@30", "--requeue", "--open-mode=append", f"--output={output}"]
    job = sbatch(cluster, f"srun {sys.executable} {' '.join(train)}", *options, *RUN_FOLDERS[folder], folder=tmp_path)
    job += "_0" if RUN_FOLDERS[folder] else ""  # the array's one task, as squeue and scontrol name it
    run_dir = tmp_path / "run" if fixed else tmp_path / "outputs" / f"slurm-{job}"
    reference = subprocess.Popen(
        [sys.executable, "train.py", f"hydra.run.dir={reference_dir}", *args], cwd=ROOT, stderr=subprocess.PIPE
    )
    wait_for(lambda: len(history_rows(run_dir / "history.csv")) == 1, "the job's first epoch")
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster, check=True)  # the time limit's warning, now
    restart_now(cluster, job)
    wait_for(lambda: job_field(cluster, job, "JobState") == "COMPLETED", "the requeued job to end")
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    reference.stderr.close()
    assert job_field(cluster, job, "Restarts") == "1"
    assert_same_run(run_dir, reference_dir)
    assert list((tmp_path / "outputs").glob("*")) == ([] if fixed else [run_dir])  # the restart made no other folder
    printed = output.read_text()  # both runs of the job
    # Every epoch line once, with its training loss and accuracy: the requeued job did not start again.
    for epoch in (1, 2, 3):
        assert printed.count(f"Epoch {epoch}/3 - ") == 1
    assert printed.count(" - loss: ") == 3 and "auto-requeueing" not in printed
    assert f"requeued job {job} continues in {run_dir} from checkpoints/last.ckpt, the end of epoch 1" in printed
    assert f"SLURM requeued job {job} (restart 1): continuing in {run_dir} from" in printed


@pytest.mark.slow
def test_a_requeued_sweep_job_ends_as_the_uninterrupted_one(cluster, tmp_path, idx_dir):
    """The submitit launcher's own requeue (its USR2 signal): two jobs that differ in a setting that changes no
    number, the first requeued in its second epoch, end with the same numbers."""
    sweep = tmp_path / "sweep"
    command = ["train.py", "-m", *LAUNCHER, f"hydra.sweep.dir={sweep}", *REQUEUED_RUN, *data_args(tmp_path, idx_dir)]
    command += ["trainer.enable_model_summary=false,true"]
    launcher = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=cluster, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(sweep.glob("*/history.csv"))) == 2, "both jobs' folders")
    jobs = sorted(sweep.glob("*trainer.enable_model_summary=*"))  # False, then True: the array's order
    wait_for(lambda: len(history_rows(jobs[0] / "history.csv")) == 1, "the first job's first epoch")
    array = array_job(sweep)
    subprocess.run(["scancel", "--signal=USR2", f"{array}_0"], env=cluster, check=True)
    restart_now(cluster, f"{array}_0")
    assert launcher.wait(timeout=240) == 0, launcher.stderr.read()
    launcher.stderr.close()
    assert_same_run(*jobs)
    printed = job_log(sweep, f"{array}_0")
    for epoch in (1, 2, 3):
        assert printed.count(f"Epoch {epoch}/3 - ") == 1
    assert printed.count(f"SLURM requeued job {array}_0 (restart 1): continuing in {jobs[0]} from") == 1


SLURM_JOBS = {  # SLURM's variables in a job: the run folder train.py makes, or None for its timestamped default
    "a job": ({"SLURM_JOB_ID": "1234", "SLURM_NTASKS": "1"}, "outputs/slurm-1234"),
    "an array task": (
        {"SLURM_JOB_ID": "1240", "SLURM_ARRAY_JOB_ID": "1230", "SLURM_ARRAY_TASK_ID": "4"},
        "outputs/slurm-1230_4",
    ),
    "an interactive allocation": ({"SLURM_JOB_ID": "1234", "SLURM_JOB_NAME": "interactive"}, None),
    "no job": ({}, None),
}


def train_py_in(folder, env, *overrides):
    """`python train.py` run from `folder` with `env`'s SLURM variables and no others, as a job's step runs it."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=folder, env={**clean, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("case", SLURM_JOBS)
def test_the_default_run_folder_in_a_slurm_job_is_the_jobs(monkeypatch, case):
    env, folder = SLURM_JOBS[case]
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    register_configs()  # what train.py's entry point does: the experiments and the run folder's resolver
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        run_dir = compose("train", return_hydra_config=True).hydra.run.dir
    assert run_dir == folder if folder else re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", run_dir)


def test_a_second_run_of_one_job_does_not_write_over_the_first(tmp_path, idx_dir):
    """Two `srun python train.py …` lines in one job script: the second one stops before Hydra writes anything."""
    first = tmp_path / "outputs" / "slurm-1234"
    (first / "checkpoints").mkdir(parents=True)
    (first / "checkpoints" / "last.ckpt").write_bytes(b"the first run's")
    result = train_py_in(tmp_path, SLURM_JOBS["a job"][0], *data_args(tmp_path, idx_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: outputs/slurm-1234 holds an earlier run of SLURM job 1234: give this run a folder of its own "
        "(hydra.run.dir=outputs/slurm-1234-2), or continue that one with resume=outputs/slurm-1234"
    )
    assert [path.name for path in first.iterdir()] == ["checkpoints"]  # no .hydra/ written over
