"""Resume: an interrupted run continued with resume=<run dir> ends exactly as an uninterrupted one."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from hgmldl.commands.train import run
from hgmldl.data import SHUFFLES
from hgmldl.errors import UserError
from hgmldl.history import read_history
from hgmldl.resume import resume_overrides
from tests.conftest import ROOT


def read_rows(path):
    """history.csv without its `time` column, which differs between two runs of the same training."""
    return [{k: v for k, v in row.items() if k != "time"} for row in read_history(path)]


@pytest.mark.parametrize("shuffle", SHUFFLES)
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the resume, in the run's folder
def test_resumed_run_equals_uninterrupted_run(make_cfg, tmp_path, shuffle):
    # dropout_mlp: the resumed epochs need the checkpoint's random generator state to draw the same masks.
    common = ("model=dropout_mlp", "callbacks=early_stopping", "callbacks.early_stopping.patience=5")
    common = (*common, f"data.shuffle={shuffle}")  # every_epoch: the resumed epochs draw (seed, epoch)'s order
    run(make_cfg(*common, "trainer.max_epochs=2", output_dir=tmp_path / "interrupted"))
    resumed = run(
        make_cfg(
            *common, "trainer.max_epochs=4", f"resume={tmp_path / 'interrupted'}", output_dir=tmp_path / "interrupted"
        )
    ).metrics
    whole = run(make_cfg(*common, "trainer.max_epochs=4", output_dir=tmp_path / "whole")).metrics

    rows = read_rows(tmp_path / "interrupted" / "history.csv")
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    for row, expected in zip(rows, read_rows(tmp_path / "whole" / "history.csv"), strict=True):
        assert row == pytest.approx(expected, rel=1e-6)
    for key in ("epochs", "best_epoch", "stopped_epoch", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    best, best_whole = (
        torch.load(tmp_path / name / "checkpoints" / "best.ckpt", weights_only=True)
        for name in ("interrupted", "whole")
    )
    assert best["epoch"] == best_whole["epoch"]
    for name, tensor in best["state_dict"].items():
        torch.testing.assert_close(tensor, best_whole["state_dict"][name], rtol=1e-6, atol=1e-7)


def test_sigterm_mid_epoch_leaves_a_last_ckpt_that_resume_continues(tmp_path, idx_dir):
    run_dir = tmp_path / "run"
    data = [f"data.idx_dir={idx_dir}", f"data.root={tmp_path / 'data'}", "data.download=false"]
    # Many small steps per epoch (100 of one minibatch of 4), so the signal lands inside an epoch, most likely.
    model = ["model=mlp", "model.hidden_units=50"]  # 39,760 parameters
    options = [*model, "data.batch_size=4", "steps_per_execution=1", "callbacks=default", "logger=csv", *data]
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *options, "trainer.enable_progress_bar=false"]
    process = subprocess.Popen(
        [*command, "trainer.max_epochs=1000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 1, output
    assert f"Continue with:  python train.py 'resume=\"{run_dir}\"'" in output
    finished = torch.load(last, weights_only=True)["epoch"] + 1  # epochs the checkpoint holds
    assert len(read_rows(run_dir / "history.csv")) == finished
    assert not (run_dir / "metrics.json").exists()

    # The earlier run's overrides (model=mlp model.hidden_units=50, …) come back from its folder; the new max_epochs wins.
    resumed = subprocess.run(
        [sys.executable, "train.py", f"resume={run_dir}", f"trainer.max_epochs={finished + 1}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in read_rows(run_dir / "history.csv")] == list(range(finished + 1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == finished + 1 and metrics["params"] == 39_760


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    with pytest.raises(UserError) as error:
        resume_overrides([f"resume={tmp_path}", "trainer.max_epochs=3"])
    assert str(error.value) == (
        f"resume={tmp_path}: {tmp_path}/.hydra/overrides.yaml not found; give the folder of an earlier train.py run"
    )


def test_resume_puts_the_earlier_overrides_before_the_new_ones(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- trainer.max_epochs=2\n- resume=old\n")
    args = ["--cfg", "job", f"resume={tmp_path}", "trainer.max_epochs=4"]
    assert resume_overrides(args) == [
        "--cfg",
        "job",
        f"resume={tmp_path}",
        "model=cnn",
        f'hydra.run.dir="{tmp_path}"',
        "trainer.max_epochs=4",
    ]
    assert resume_overrides(["model=mlp"]) == ["model=mlp"]
