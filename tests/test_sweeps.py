"""Sweeps: named job folders, the summary table and plot, fresh sweep folders, and the launcher/sweeper presets."""

import contextlib
import csv
import importlib.util
import json
import os
import runpy
import statistics
import subprocess
import sys

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import setup_globals
from hydra.types import HydraContext
from omegaconf import OmegaConf

from hgmldl.commands.summarize import summarize
from hgmldl.hydra_callbacks import NewSweepDir
from tests.conftest import ROOT


def train_py(*args, tmp_path, idx_dir, logger="csv"):
    """`python train.py …` on the generated data, shrunk to seconds."""
    data = [f"data.idx_dir={idx_dir}", f"data.root={tmp_path / 'data'}", "data.download=false", f"logger={logger}"]
    return subprocess.run(
        [sys.executable, "train.py", *args, *data, "trainer.max_epochs=2", "trainer.enable_progress_bar=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_csv(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_parallel_multirun_names_its_jobs_and_ends_with_the_summary(tmp_path, idx_dir):
    # The joblib launcher runs the jobs in separate worker processes: train.py's ConfigStore entries (train_schema,
    # the experiments) must reach them, or composing the jobs' configs fails.
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "model=softmax"]
    result = train_py(*args, "optimizer=sgd,adam", tmp_path=tmp_path, idx_dir=idx_dir)
    assert result.returncode == 0, result.stderr
    folders = {
        f"optimizer={name}": f"data.download=False,logger=csv,model=softmax,optimizer={name},trainer.max_epochs=2"
        for name in ("sgd", "adam")
    }
    assert {path.name for path in sweep.iterdir() if path.is_dir()} == set(folders.values())
    metrics = {name: json.loads((sweep / folder / "metrics.json").read_text()) for name, folder in folders.items()}
    rows = read_csv(sweep / "summary.csv")
    assert [row["setting"] for row in rows] == sorted(metrics, key=lambda s: -metrics[s]["val_accuracy"])
    for row in rows:
        expected = metrics[row["setting"]]
        assert row["status"] == "ok" and row["runs"] == "1"
        for column in ("val_accuracy", "val_loss", "test_accuracy", "wall_time"):
            assert float(row[column]) == expected[column]
        for column in ("epochs", "stopped_epoch", "best_epoch", "params"):
            assert int(row[column]) == expected[column]
    table = (sweep / "summary.md").read_text()
    assert f"| optimizer=adam | 1 | {metrics['optimizer=adam']['val_accuracy']:.4f} |" in table
    assert table in result.stdout
    assert (sweep / "curves.png").stat().st_size > 0


def tensorboard_experiment(logdir):
    """The experiment that TensorBoard's HParams tab asks its backend for (`/data/plugin/hparams/experiment`)."""
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.context import RequestContext
    from tensorboard.plugins.base_plugin import TBContext
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(logdir))
    context = backend_context.Context(TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider))
    return get_experiment.Handler(RequestContext(), context, "", api_pb2.GetExperimentRequest()).run()


def test_tensorboard_hparams_table_shows_the_swept_keys_first(tmp_path, idx_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "model=softmax", "optimizer=sgd,adam"]
    result = train_py(*args, tmp_path=tmp_path, idx_dir=idx_dir, logger="tensorboard")
    assert result.returncode == 0, result.stderr
    jobs = [path for path in sweep.iterdir() if path.is_dir()]
    assert len(jobs) == 2
    for job in jobs:
        tags = set()
        for path in job.glob("events.out.tfevents.*"):
            events = EventAccumulator(str(path))
            events.Reload()
            with contextlib.suppress(KeyError):  # only the file written after training holds hparams
                tags |= set(events.PluginTagToContent("hparams"))
        # Each run's session only: an experiment summary in the runs would fix TensorBoard's columns alphabetically.
        assert tags == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    # TensorBoard marks the keys the jobs differ in (optimizer, and its default learning rate) and lists them first:
    # the table's default columns are the first five hparams, then the metrics.
    experiment = tensorboard_experiment(sweep)
    hparams = [(info.name, info.differs) for info in experiment.hparam_infos]
    assert hparams[:2] == [("learning_rate", True), ("optimizer", True)]
    assert not any(differs for _, differs in hparams[2:])
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:5] == [
        "accuracy",
        *(f"final/{name}" for name in ("test_accuracy", "test_loss", "val_accuracy", "val_loss")),
    ]


def write_job(folder, overrides, metrics=None, history=True):
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if history:
        (folder / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,time\n0,1.0,0.5,0.9,0.6,1.0\n")


def job_metrics(val_accuracy, wall_time):
    return {
        "val_accuracy": val_accuracy,
        "val_loss": 1 - val_accuracy,
        "test_accuracy": val_accuracy - 0.01,
        "epochs": 5,
        "stopped_epoch": 0,
        "best_epoch": 4,
        "params": 7850,
        "wall_time": wall_time,
    }


def test_summary_means_seeds_per_setting_and_reports_failed_jobs(tmp_path):
    adam = [0.85, 0.86, 0.90]
    for seed, accuracy in enumerate(adam):
        write_job(
            tmp_path / f"optimizer=adam,seed={seed}", ["optimizer=adam", f"seed={seed}"], job_metrics(accuracy, 2)
        )
    write_job(tmp_path / "optimizer=sgd,seed=0", ["optimizer=sgd", "seed=0"], job_metrics(0.80, 3))
    write_job(tmp_path / "optimizer=sgd,seed=1", ["optimizer=sgd", "seed=1"], metrics=None, history=False)

    rows = summarize(tmp_path)
    assert [(row["setting"], row["status"], row["runs"]) for row in rows] == [
        ("optimizer=adam", "ok", 3),
        ("optimizer=sgd", "ok", 1),
        ("optimizer=sgd", "failed", 1),
    ]
    assert rows[0]["val_accuracy"] == pytest.approx(statistics.mean(adam))
    assert rows[0]["val_accuracy_std"] == pytest.approx(statistics.stdev(adam))
    assert rows[1]["val_accuracy"] == 0.80 and rows[1]["val_accuracy_std"] is None
    written = read_csv(tmp_path / "summary.csv")
    assert float(written[0]["val_loss_std"]) == pytest.approx(statistics.stdev(1 - a for a in adam))
    assert written[2]["status"] == "failed" and written[2]["val_accuracy"] == ""
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[2].startswith(f"| optimizer=adam | 3 | {statistics.mean(adam):.4f} ± {statistics.stdev(adam):.4f} |")
    assert table[4].startswith("| optimizer=sgd | 1 | failed (no metrics.json) |")
    assert (tmp_path / "curves.png").exists()


def test_summarize_script_on_an_existing_folder(tmp_path, monkeypatch, capsys):
    write_job(tmp_path / "optimizer=adam", ["optimizer=adam"], job_metrics(0.87, 2))
    write_job(tmp_path / "optimizer=sgd", ["optimizer=sgd"], metrics=None)
    monkeypatch.setattr(sys, "argv", ["summarize.py", f"sweep_dir={tmp_path}"])
    runpy.run_path(str(ROOT / "summarize.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "| optimizer=adam | 1 | 0.8700 |" in printed
    assert "| optimizer=sgd | 1 | failed (no metrics.json) |" in printed
    assert [row["status"] for row in read_csv(tmp_path / "summary.csv")] == ["ok", "failed"]


def test_summarize_script_on_a_folder_without_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["summarize.py", f"sweep_dir={tmp_path}"])
    monkeypatch.chdir(tmp_path)  # the command's own run folder is the current one: it must write nothing there
    with pytest.raises(SystemExit, match=r"^error: .* holds no job folders \(\*/.hydra/overrides.yaml\): give the"):
        runpy.run_path(str(ROOT / "summarize.py"), run_name="__main__")
    assert not list(tmp_path.iterdir())  # no .hydra/ (in a sweep folder it would count as a job), no log file


def test_a_second_sweep_never_writes_into_the_same_folder(tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    NewSweepDir().on_multirun_start(config)
    assert (tmp_path / "sweep" / "multirun.yaml").exists()
    with pytest.raises(SystemExit, match=r"error: .*sweep already holds a sweep; give another hydra.sweep.dir="):
        NewSweepDir().on_multirun_start(config)


def test_slurm_preset_submits_one_gpu_per_job(tmp_path, monkeypatch):
    """The preset through the real submitit launcher, up to the sbatch file it would submit (no cluster here)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    submitted = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda executor, *args: submitted.append(executor) or [])
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.partition=gpu"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        setup_globals()
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        launcher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=print)
        launcher.launch([["optimizer=sgd"], ["optimizer=adam"]], initial_job_idx=0)
    [executor] = submitted
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--nodes=1", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in sbatch
    assert "#SBATCH --time=120\n" in sbatch and "#SBATCH --partition=gpu\n" in sbatch
    assert f"#SBATCH --output={tmp_path}/sweep/.submitit/%j/%j_0_log.out\n" in sbatch
    assert executor._executor.parameters["array_parallelism"] == 16


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="optional extra: pip install -e '.[optuna]' (hydra-optuna-sweeper pins optuna<3)",
)
def test_optuna_search_maximises_val_accuracy(tmp_path, idx_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    result = train_py(*args, tmp_path=tmp_path, idx_dir=idx_dir)
    assert result.returncode == 0, result.stderr
    trials = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(2)]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == max(trial["val_accuracy"] for trial in trials)
    assert set(best.best_params) == {"optimizer.lr", "data.batch_size", "model.hidden_units", "model.dropout"}
    assert len(read_csv(sweep / "summary.csv")) == 2
