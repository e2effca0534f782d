"""The book presets (experiments/*.yaml), the SGD baseline and scripts/reproduce.py, on generated data."""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import cross_validate
from torch import nn

from hgmldl.api import compose_config
from hgmldl.commands.train import run
from hgmldl.errors import UserError
from hgmldl.history import read_history
from hgmldl.idx import read_idx
from hgmldl.module import Classifier
from tests.conftest import ROOT, make_idx_dataset
from tests.test_train import train_py

PRESETS = sorted(path.stem for path in (ROOT / "experiments").glob("*.yaml"))

# What each book cell builds: parameters (summary()), optimizer, epochs, EarlyStopping, hidden activations and dropout.
BOOK = {
    "ch7_1_softmax": (7_850, "KerasRMSprop", 5, False, []),
    "ch7_2_sigmoid": (79_510, "KerasRMSprop", 5, False, [nn.Sigmoid]),
    "ch7_2_relu": (79_510, "KerasRMSprop", 5, False, [nn.ReLU]),
    "ch7_2_deep": (99_710, "KerasRMSprop", 5, False, [nn.Sigmoid, nn.Sigmoid, nn.ReLU]),  # the study notes' variant
    "ch7_2_adam": (79_510, "KerasAdam", 5, False, [nn.ReLU]),
    "ch7_2_optimizers": (79_510, "KerasRMSprop", 5, False, [nn.ReLU]),
    "ch7_3_overfit": (79_510, "KerasRMSprop", 20, False, [nn.ReLU]),
    "ch7_3_adam": (79_510, "KerasAdam", 20, False, [nn.ReLU]),
    "ch7_3_dropout": (79_510, "KerasAdam", 20, False, [nn.ReLU, nn.Dropout]),
    "ch7_3_save_load": (79_510, "KerasAdam", 10, False, [nn.ReLU, nn.Dropout]),
    "ch7_3_checkpoint": (79_510, "KerasAdam", 20, False, [nn.ReLU, nn.Dropout]),
    "ch7_3_callbacks": (79_510, "KerasAdam", 20, True, [nn.ReLU, nn.Dropout]),
    "ch8_2_cnn": (333_526, "KerasAdam", 20, True, [nn.ReLU, nn.ReLU, nn.ReLU, nn.Dropout]),
    "dlp2_ch2_mnist": (407_050, "KerasRMSprop", 5, False, [nn.ReLU]),
}


def compose_preset(name: str, *overrides: str):
    """The config `python train.py experiment=<name>` runs, with the preset's own epochs (make_cfg shortens them)."""
    return compose_config("train", [f"experiment={name}", *overrides], output_dir="unused")


def test_every_book_section_has_a_preset():
    assert set(PRESETS) == {*BOOK, "ch7_1_sgd_baseline"}


@pytest.mark.parametrize("name", sorted(BOOK))
def test_preset_composes_to_the_books_model(name):
    params, optimizer, epochs, early_stopping, activations = BOOK[name]
    cfg = compose_preset(name)
    module = Classifier(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer))
    assert sum(p.numel() for p in module.parameters()) == params
    assert [type(layer) for layer in module.net if type(layer) in (nn.ReLU, nn.Sigmoid, nn.Dropout)] == activations
    assert type(module.configure_optimizers()).__name__ == optimizer
    assert cfg.trainer.max_epochs == epochs
    assert ("early_stopping" in cfg.callbacks) == early_stopping
    assert cfg.data.batch_size == (128 if name == "dlp2_ch2_mnist" else 32)
    # hg-mldl's notebooks call keras.utils.set_random_seed, DLP's do not: the order each book's fit fed
    assert cfg.data.shuffle == ("every_epoch" if name == "dlp2_ch2_mnist" else "keras")
    assert cfg.baseline is None


def test_sgd_baseline_preset_is_the_books_estimator():
    estimator = instantiate(compose_preset("ch7_1_sgd_baseline").baseline)
    assert isinstance(estimator, SGDClassifier)
    assert (estimator.loss, estimator.max_iter, estimator.random_state) == ("log_loss", 5, 42)


def test_optimizers_preset_sweeps_the_six_optimizers_of_7_2():
    # The sweep `python train.py -m` and scripts/reproduce.py run (compose_config leaves out the `hydra` node).
    preset = OmegaConf.load(ROOT / "experiments" / "ch7_2_optimizers.yaml")
    assert preset.hydra.sweeper.params == {"optimizer": "sgd,sgd_lr0.1,nesterov,adagrad,rmsprop,adam"}
    sgd = compose_preset("ch7_2_optimizers", "optimizer=sgd_lr0.1").optimizer
    assert (sgd._target_, sgd.lr, sgd.momentum) == ("torch.optim.SGD", 0.1, 0.0)  # SGD(learning_rate=0.1)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_states_what_the_book_prints_and_its_band(name):
    entries = compose_preset(name).book
    assert entries and all(entry.key and entry.what for entry in entries)
    for entry in entries:
        if entry.get("value") is not None:
            low, high = entry.band
            assert low <= entry.value <= high
        assert entry.get("checkpoint") in (None, "best", "last")
    numbers = [entry for entry in entries if entry.get("value") is not None]
    assert bool(numbers) == (name not in ("ch7_2_deep", "ch7_2_optimizers"))  # the two cells the book never trains


def test_book_node_does_not_reach_training(make_cfg):
    """train.py composes a preset's `book:` and ignores it: it is in neither the model nor the hyperparameters."""
    cfg = make_cfg("experiment=ch7_3_checkpoint")
    assert cfg.book[0].value == 0.8871
    assert "book" not in OmegaConf.to_container(cfg.model) and "book" not in cfg.callbacks


@pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)  # the book's max_iter=5 stops early, as there
def test_sgd_baseline_cross_validates_all_training_images(tmp_path, idx_dir):
    """`python train.py experiment=ch7_1_sgd_baseline` as a user runs it: 7-1's cross_validate on every training
    image, its mean the run's last line and metrics.json's val_accuracy."""
    result = train_py(tmp_path, idx_dir, "experiment=ch7_1_sgd_baseline")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    images = read_idx(idx_dir / "train-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    labels = read_idx(idx_dir / "train-labels-idx1-ubyte.gz")
    book = cross_validate(SGDClassifier(loss="log_loss", max_iter=5, random_state=42), images, labels)
    assert len(metrics["fold_accuracies"]) == 5
    assert metrics["fold_accuracies"] == pytest.approx(list(book["test_score"]))
    assert metrics["val_accuracy"] == pytest.approx(np.mean(book["test_score"]))
    assert metrics["params"] == 7_850
    last = result.stdout.strip().splitlines()[-1]
    assert f"cross-validated accuracy {np.mean(book['test_score']):.4f} (folds [" in last, last
    assert not list(tmp_path.glob("checkpoints")) and not list(tmp_path.glob("history.csv"))  # no network trained


def test_mnist_preset_offline_names_the_missing_files_and_the_fix(make_cfg, tmp_path):
    cfg = make_cfg("experiment=dlp2_ch2_mnist", "data.idx_dir=null")  # no MNIST anywhere, no download
    missing = f"MNIST IDX files not found in {tmp_path / 'data' / 'MNIST' / 'raw'}: "
    with pytest.raises(
        UserError, match=rf"^{re.escape(missing)}.* point data\.idx_dir=<folder with the four IDX files"
    ):
        run(cfg)


def test_mnist_preset_runs_on_idx_files_given_with_idx_dir(make_cfg, tmp_path):
    metrics = run(
        make_cfg("experiment=dlp2_ch2_mnist", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    ).metrics
    assert metrics["params"] == 407_050
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert len(read_history(tmp_path / "run" / "history.csv")) == 1


@pytest.fixture(scope="module")
def reproduce():
    """scripts/reproduce.py's main(argv), in this process: a subprocess would spend its time importing torch."""
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda *args: module.main(list(map(str, args)))


def table_rows(report: str) -> list[list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    header, rule, *rows = lines
    assert header.split(" | ")[:5] == ["| preset", "command", "book", "ours", "in band"]
    assert rule == "|---" * 10 + "|"
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_quick_reproduction_writes_a_table_of_every_job(reproduce, tmp_path, idx_dir):
    presets = ["ch7_1_sgd_baseline", "ch7_1_softmax", "ch7_2_adam", "ch7_2_optimizers", "ch7_3_overfit", "ch8_2_cnn"]
    common = [f"data.idx_dir={idx_dir}", f"data.root={tmp_path / 'data'}", "data.download=false"]
    reproduce("--quick", "--only", *presets, "--out", tmp_path, "--runs-dir", tmp_path / "runs", *common)
    rows = table_rows((tmp_path / "RESULTS.md").read_text())
    optimizers = ["sgd", "sgd_lr0.1", "nesterov", "adagrad", "rmsprop", "adam"]
    assert [row[0] for row in rows] == [
        "ch7_1_sgd_baseline",
        "ch7_1_softmax",
        "ch7_2_adam",
        *(f"ch7_2_optimizers optimizer={name}" for name in optimizers),
        "ch7_3_overfit",
        "ch8_2_cnn",
    ]
    assert all(len(row) == 10 and row[-1] == "cpu" for row in rows)
    softmax = json.loads((tmp_path / "runs" / "ch7_1_softmax" / "seed42" / "metrics.json").read_text())
    quick = "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 steps_per_execution=2"
    shown = "data.idx_dir=… data.root=… data.download=false"  # what ran, not where this machine keeps it
    assert rows[1][1] == f"`python train.py experiment=ch7_1_softmax {quick} {shown}`"
    assert rows[3][1] == f"`python train.py experiment=ch7_2_optimizers optimizer=sgd {quick} {shown}`"
    assert str(tmp_path) not in (tmp_path / "RESULTS.md").read_text()
    assert rows[1][2] == (
        "val_accuracy 0.8458, band 0.8358–0.8565 (evaluate(val) accuracy; TF 2.14 run 0.8465)"
    )  # from the preset's book: node
    assert rows[1][3] == f"val_accuracy {softmax['val_accuracy']:.4f} (n=1)"
    assert rows[1][4] == ("inside" if 0.8358 <= softmax["val_accuracy"] <= 0.8565 else "**outside**")
    assert rows[1][5:7] == ["7,850", "1"]
    # ch7_2_optimizers' adam has ch7_2_adam's config and seed: reported from that run, not trained again.
    assert rows[-3][0] == "ch7_2_optimizers optimizer=adam" and rows[-3][3] == rows[2][3]
    assert not (tmp_path / "runs" / "ch7_2_optimizers_optimizer-adam").exists()
    assert (tmp_path / "runs" / "ch7_2_optimizers_optimizer-sgd_lr0.1" / "seed42" / "metrics.json").is_file()
    cnn = json.loads((tmp_path / "runs" / "ch8_2_cnn" / "seed42" / "metrics.json").read_text())
    ours = f"val_accuracy {cnn['val_accuracy']:.4f} (n=1)<br>test_accuracy {cnn['test_accuracy']:.4f} (n=1)"
    assert rows[-1][3] == ours
    assert rows[-2][3] == "val_loss[2] –<br>min_val_loss_epoch 0.0 (n=1)<br>val_loss[19] –"  # 1 epoch of 20
    curves = sorted(path.name for path in (tmp_path / "curves").iterdir())
    assert curves == [
        "ch7_1_softmax.png",
        "ch7_2_adam.png",
        "ch7_2_optimizers.png",
        "ch7_3_overfit.png",
        "ch8_2_cnn.png",
    ]  # the baseline has no epochs
    assert (tmp_path / "curves" / "ch8_2_cnn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Again on the same runs dir: the finished run is reused, not trained again; hand-written notes stay.
    history = tmp_path / "runs" / "ch7_1_softmax" / "seed42" / "history.csv"
    written = history.stat().st_mtime_ns
    with open(tmp_path / "RESULTS.md", "a") as file:
        file.write("\n## Notes\n\nBy hand.\n")
    reproduce("--quick", "--only", "ch7_1_softmax", "--out", tmp_path, "--runs-dir", tmp_path / "runs", *common)
    assert history.stat().st_mtime_ns == written
    report = (tmp_path / "RESULTS.md").read_text()
    assert table_rows(report) == [rows[1]]
    assert report.endswith("|\n\n## Notes\n\nBy hand.\n")


def test_save_load_and_checkpoint_rows_come_from_the_reloaded_checkpoint(reproduce, tmp_path, idx_dir):
    """7-3's load_weights + predict and load_model('best-model.keras') + evaluate: the number is that file's."""
    common = [f"data.idx_dir={idx_dir}", f"data.root={tmp_path / 'data'}", "data.download=false"]
    # "Best" turned round (the highest val_loss) so that, as the loss falls, best.ckpt is epoch 0 and last.ckpt epoch 3.
    options = ["--out", tmp_path, "--runs-dir", tmp_path / "runs", *common, "trainer.max_epochs=4"]
    reproduce(
        "--only", "ch7_3_save_load", "ch7_3_checkpoint", "--seeds", 1, *options, "callbacks.model_checkpoint.mode=max"
    )
    rows = table_rows((tmp_path / "RESULTS.md").read_text())
    # At 4 epochs both presets are the same config: one training, its last.ckpt for one row, best.ckpt for the other.
    run_dir = tmp_path / "runs" / "ch7_3_save_load" / "seed42"
    assert not (tmp_path / "runs" / "ch7_3_checkpoint").exists()
    history = read_history(run_dir / "history.csv")
    best = max(range(4), key=lambda i: history[i]["val_loss"])
    assert best != 3
    for row, which, epoch in zip(rows, ["last", "best"], [3, best], strict=True):
        reloaded = json.loads((run_dir / f"reloaded_{which}.json").read_text())
        assert row[3] == f"val_accuracy of {which}.ckpt reloaded {reloaded['val_accuracy']:.4f} (n=1)"
        assert reloaded["val_loss"] == pytest.approx(history[epoch]["val_loss"], rel=1e-5)
        assert reloaded["val_accuracy"] == pytest.approx(history[epoch]["val_accuracy"], abs=1e-6)


def test_a_row_shows_the_overrides_it_ran_with_and_no_folder_of_this_machine(reproduce, tmp_path, idx_dir):
    """A bf16 reproduction's row says `trainer=cpu_bf16` (it runs, or says why not where the CPU lacks bf16)."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    argv = ["--quick", "--only", "ch7_1_softmax", "--out", tmp_path, "--runs-dir", runs, f"data.idx_dir={idx_dir}"]
    reproduce(*argv, f"data.root={data}", "data.download=false", "trainer=cpu_bf16")
    report = (tmp_path / "RESULTS.md").read_text()
    [row] = table_rows(report)
    assert row[1].startswith("`python train.py experiment=ch7_1_softmax trainer.max_epochs=1 ")
    assert row[1].endswith(" data.idx_dir=… data.root=… data.download=false trainer=cpu_bf16`")
    written_by = "Written by `python scripts/reproduce.py --quick --only ch7_1_softmax data.idx_dir=… data.root=… "
    assert written_by + "data.download=false trainer=cpu_bf16` on " in report
    assert str(tmp_path) not in report


def test_the_committed_report_names_no_folder_of_the_machine_that_wrote_it():
    report = (ROOT / "experiments" / "RESULTS.md").read_text()
    assert re.findall(r"(?:^|[\s`(])((?:/[\w.-]+){2,})", report, flags=re.MULTILINE) == []


def test_reproduction_reports_a_preset_that_cannot_run(reproduce, tmp_path):
    options = ["--out", tmp_path, "--runs-dir", tmp_path / "runs", f"data.root={tmp_path}", "data.download=false"]
    reproduce("--only", "dlp2_ch2_mnist", *options)
    report = (tmp_path / "RESULTS.md").read_text()
    [row] = table_rows(report)
    assert row[3] == "not run (error below)"
    assert f"- dlp2_ch2_mnist: `` error: MNIST IDX files not found in {tmp_path / 'MNIST' / 'raw'}" in report
    reproduce("--report-only", "--only", "dlp2_ch2_mnist", *options)  # the failure is remembered, not retried
    assert (tmp_path / "RESULTS.md").read_text().split("UTC.")[1] == report.split("UTC.")[1]


def test_reproduce_rejects_an_unknown_preset(reproduce, tmp_path):
    with pytest.raises(
        SystemExit, match="^error: no preset ch7_9_nope in experiments/; choose from ch7_1_sgd_baseline, "
    ):
        reproduce("--only", "ch7_9_nope", "--out", tmp_path)


@pytest.mark.slow
def test_train_py_multirun_trains_one_job_per_optimizer(tmp_path):
    idx = make_idx_dataset(tmp_path / "idx", num_train=100, num_test=20)
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=ch7_2_optimizers", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
        + [f"data.idx_dir={idx}", f"data.root={tmp_path / 'data'}", "data.download=false", "trainer.max_epochs=1"]
        + ["trainer.limit_train_batches=1", "trainer.enable_progress_bar=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(path.parent.name for path in (tmp_path / "sweep").glob("*/metrics.json"))
    assert [job.split("optimizer=")[1].split(",")[0] for job in jobs] == [
        "adagrad",
        "adam",
        "nesterov",
        "rmsprop",
        "sgd",
        "sgd_lr0.1",  # 7-2's SGD(learning_rate=0.1)
    ]
