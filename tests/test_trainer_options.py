"""Every Trainer option in conf/trainer/default.yaml runs, counted in minibatch updates for any steps_per_execution,
or ends in one line before training."""

import csv
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hgmldl.commands.train import build_module, build_trainer, run
from hgmldl.config import check_config
from hgmldl.errors import UserError
from tests.conftest import ROOT

UPDATES_PER_EPOCH = 13  # tests/conftest.py's 400 training images in minibatches of 32


class Recorder(L.Callback):
    """What the Trainer did, seen from the outside: the weights and global_step after each update or execution,
    and the update count at each validation."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.validated_at: list[int] = []
        self.batches = {"val": 0, "test": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]))

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.batches["val"] += 1

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches["test"] += 1


def fit(cfg, test: bool = False) -> tuple[L.Trainer, Recorder]:
    """run()'s module, data and Trainer, with a Recorder watching."""
    module, datamodule, trainer = build_module(cfg), instantiate(cfg.data), build_trainer(cfg)
    recorder = Recorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    if test:
        trainer.test(module, datamodule=datamodule, verbose=False)
    return trainer, recorder


def test_every_listed_option_is_settable_without_plus(make_cfg):
    listed = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml")
    for name in [
        "gradient_clip_val",
        "gradient_clip_algorithm",
        "accumulate_grad_batches",
        "max_steps",
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "val_check_interval",
        "check_val_every_n_epoch",
        "log_every_n_steps",
        "fast_dev_run",
        "precision",
        "profiler",
        "detect_anomaly",
        "deterministic",
    ]:
        assert name in listed, name
    cfg = make_cfg("trainer.gradient_clip_val=0.5", "trainer.val_check_interval=4", "trainer.profiler=simple")
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.val_check_interval, cfg.trainer.profiler) == (0.5, 4, "simple")


@pytest.mark.parametrize("n", [1, 4])
def test_max_steps_stops_after_exactly_that_many_updates(make_cfg, tmp_path, n):
    metrics = run(
        make_cfg(f"steps_per_execution={n}", "trainer.max_steps=20", "callbacks=default", "model=softmax")
    ).metrics
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 20
    assert metrics["epochs"] == 2  # the first epoch's 13 updates and 7 of the second's
    # The second epoch stopped before its validation: its row has no val_* of its own.
    with open(tmp_path / "run" / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows[0]["val_loss"] and not rows[1]["val_loss"]


@pytest.mark.parametrize("n", [1, 4])
def test_limit_batches_count_minibatches(make_cfg, n):
    cfg = make_cfg(
        f"steps_per_execution={n}",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=3",
        "data.eval_batch_size=10",
        "callbacks=default",
    )
    trainer, recorder = fit(cfg, test=True)
    assert trainer.global_step == 2 * 6  # two epochs of six updates
    assert recorder.batches == {"val": 2 * 2, "test": 3}


@pytest.mark.parametrize("n", [1, 2])
def test_val_check_interval_counts_updates(make_cfg, n):
    cfg = make_cfg(f"steps_per_execution={n}", "trainer.val_check_interval=4", "trainer.limit_train_batches=12")
    _, recorder = fit(cfg)
    assert recorder.validated_at == [4, 8, 12, 12 + 4, 12 + 8, 12 + 12]  # every 4 updates of each 12-update epoch


def test_val_check_interval_that_splits_an_execution_or_the_epoch_is_refused(make_cfg):
    for interval, n in ((6, 4), (4, 2)):  # 4 does not divide the epoch's 13 updates
        with pytest.raises(UserError, match=rf"a validation every {interval} of the epoch's 13 minibatches"):
            fit(make_cfg(f"steps_per_execution={n}", f"trainer.val_check_interval={interval}"))


def test_check_val_every_n_epoch_validates_every_other_epoch(make_cfg, tmp_path):
    cfg = make_cfg("trainer.check_val_every_n_epoch=2", "trainer.max_epochs=4", "callbacks=default")
    _, recorder = fit(cfg)
    assert recorder.validated_at == [2 * UPDATES_PER_EPOCH, 4 * UPDATES_PER_EPOCH]


class LoggingCadence(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.during_fit = trainer.log_every_n_steps


@pytest.mark.parametrize(("every", "n", "executions"), [(8, 4, 2), (8, 1, 8), (6, 4, 1), (2, 4, 1)])
def test_log_every_n_steps_is_counted_in_executions_while_fit_runs(make_cfg, every, n, executions):
    # Lightning counts it in its own steps: every 8 updates is every 2 executions of 4; 6 is at least as often,
    # and 2 once per execution, as often as Keras logs.
    cadence = LoggingCadence()
    cfg = make_cfg(f"steps_per_execution={n}", f"trainer.log_every_n_steps={every}", "trainer.max_epochs=1")
    trainer = build_trainer(cfg)
    trainer.callbacks.append(cadence)
    trainer.fit(build_module(cfg), datamodule=instantiate(cfg.data))
    assert cadence.during_fit == executions and trainer.log_every_n_steps == every
    assert trainer.global_step == UPDATES_PER_EPOCH


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_every_update(make_cfg, algorithm):
    # Plain SGD moves the weights by lr × the clipped gradient: at most lr × clip per update, in norm or per element.
    clip, lr = 1e-3, 0.1
    cfg = make_cfg(
        "steps_per_execution=1",
        "optimizer=sgd",
        f"optimizer.lr={lr}",
        f"trainer.gradient_clip_val={clip}",
        f"trainer.gradient_clip_algorithm={algorithm}",
        "trainer.max_epochs=1",
        "callbacks=default",
        "model=softmax",
    )
    _, recorder = fit(cfg)
    steps = torch.stack(recorder.weights).diff(dim=0)
    bound = lr * clip * (1 + 1e-4)
    sizes = steps.norm(dim=1) if algorithm == "norm" else steps.abs().amax(dim=1)
    assert (sizes <= bound).all() and (sizes > bound / 2).all()  # clipped, and the gradients were larger than clip


def test_accumulation_with_several_updates_per_step_is_refused_before_training(make_cfg):
    with pytest.raises(UserError, match=r"does not accumulate gradients .* StepsPerExecution\(1\)"):
        fit(make_cfg("steps_per_execution=4", "trainer.accumulate_grad_batches=2"))


def test_accumulate_grad_batches_makes_one_update_per_group(make_cfg):
    trainer, _ = fit(make_cfg("steps_per_execution=1", "trainer.accumulate_grad_batches=2", "callbacks=default"))
    assert trainer.global_step == 2 * math.ceil(UPDATES_PER_EPOCH / 2)


@pytest.mark.parametrize("n", [1, 4])
def test_fast_dev_run_makes_one_update_and_one_epoch(make_cfg, tmp_path, n):
    trainer, recorder = fit(make_cfg(f"steps_per_execution={n}", "trainer.fast_dev_run=true", "callbacks=default"))
    assert trainer.global_step == 1 and trainer.current_epoch == 1 and len(recorder.weights) == 1


@pytest.mark.parametrize("n", [1, 4])
def test_double_precision_trains(make_cfg, n):
    trainer, recorder = fit(make_cfg(f"steps_per_execution={n}", "trainer.precision=64-true", "trainer.max_epochs=1"))
    assert recorder.weights[-1].dtype == torch.float64 and trainer.global_step == UPDATES_PER_EPOCH


def test_lightnings_own_refusal_of_a_precision_is_one_line(make_cfg):
    with pytest.raises(UserError, match="^trainer: .*precision"):
        build_trainer(make_cfg("trainer.precision=12-mixed"))


def test_profiler_reports_where_the_time_went(make_cfg, caplog):
    run(make_cfg("trainer.profiler=simple", "trainer.max_epochs=1", "callbacks=default"))
    assert "FIT Profiler Report" in caplog.text and "run_training_epoch" in caplog.text


@pytest.mark.parametrize("n", [1, 4])
def test_detect_anomaly_and_deterministic_run(make_cfg, n):
    cfg = make_cfg(f"steps_per_execution={n}", "trainer.detect_anomaly=true", "trainer.deterministic=true")
    trainer, _ = fit(cfg)
    assert trainer.global_step == 2 * UPDATES_PER_EPOCH and torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawning_strategies_are_refused_in_one_line(make_cfg, strategy):
    with pytest.raises(UserError, match=f"trainer.strategy={strategy} .* use trainer=ddp"):
        build_trainer(make_cfg(f"trainer.strategy={strategy}"))


@pytest.mark.parametrize("n", [1, 4])
def test_progress_bar_counts_updates_as_keras_does(make_cfg, capsys, n):
    # Keras' bar reads 13/13 for 13 minibatches whatever steps_per_execution is; Lightning's counts the minibatches
    # its fetcher handed to the step.
    trained = run(make_cfg(f"steps_per_execution={n}", "trainer.enable_progress_bar=true", "trainer.max_epochs=1"))
    bars = [line for line in capsys.readouterr().out.replace("\r", "\n").splitlines() if line.startswith("Epoch 0:")]
    counts = {line.split("|")[2].split()[0] for line in bars}
    assert f"{UPDATES_PER_EPOCH}/{UPDATES_PER_EPOCH}" in counts
    assert trained.trainer.global_step == UPDATES_PER_EPOCH
    if n == 4:  # the bar moves once per Lightning step: after the 4th, 8th and 12th update, and the last
        assert {"4/13", "8/13", "12/13"} <= counts and "1/13" not in counts


BAD_OPTIONS = [
    "data.eval_batch_size=0",
    "steps_per_execution=0",
    "trainer.accumulate_grad_batches=2",
    "trainer.strategy=ddp_spawn",
]


@pytest.fixture(scope="module")
def bad_option_runs(tmp_path_factory, idx_dir):
    """`python train.py <option>` for each bad option, started together: each pays seconds of imports."""
    tmp = tmp_path_factory.mktemp("bad_options")
    data = [f"data.idx_dir={idx_dir}", f"data.root={tmp / 'data'}", "data.download=false"]
    started = {
        option: subprocess.Popen(
            [sys.executable, "train.py", f"hydra.run.dir={tmp / str(i) / 'run'}", *data, option],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, option in enumerate(BAD_OPTIONS)
    }
    yield started
    for process in started.values():
        process.kill()


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_bad_training_options_end_in_one_error_line(bad_option_runs, option):
    process = bad_option_runs[option]
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().count("\n") == 0 and stderr.startswith("error: "), stderr


@pytest.mark.parametrize(
    "option", ["trainer.limit_train_batches=0", "trainer.limit_train_batches=1.5", "trainer.max_steps=0"]
)
def test_options_that_would_train_nothing_are_refused(make_cfg, option):
    with pytest.raises(UserError, match=option.split("=")[0]):
        check_config(make_cfg(option))


def test_checkpoint_every_n_train_steps_counts_updates(make_cfg, tmp_path):
    every = "++callbacks.model_checkpoint.every_n_train_steps"
    cfg = make_cfg("steps_per_execution=4", f"{every}=6", "callbacks=default", "trainer.max_epochs=1")
    cfg.callbacks.model_checkpoint.filename = "step{step}"
    cfg.callbacks.model_checkpoint.save_top_k, cfg.callbacks.model_checkpoint.monitor = -1, None
    fit(cfg)
    saved = sorted(path.name for path in (tmp_path / "run" / "checkpoints").glob("step*.ckpt"))
    assert saved == ["step12.ckpt", "step6.ckpt"]  # executions end after updates 6 and 12, as N = 1 saves
