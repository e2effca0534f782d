"""scripts/benchmark.py reports both sides truthfully; the speed levers train exactly as before."""

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hgmldl.models import cnn, keras_init_
from hgmldl.module import Classifier
from hgmldl.train import run
from tests.conftest import ROOT

BENCHMARK = [sys.executable, "scripts/benchmark.py"]


def test_quick_benchmark_runs_both_sides_for_the_same_updates(tmp_path, idx_dir):
    out = tmp_path / "bench.json"
    command = [*BENCHMARK, "--quick", "--idx-dir", str(idx_dir), "--models", "cnn", "--threads", "1", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["epochs"] == 2
    assert {"date", "machine", "versions", "cuda"} <= set(report)
    assert [r["model"] for r in report["results"]] == ["cnn"]
    for r in report["results"]:
        # idx_dir holds 500 training images; the book's split keeps 400 for training.
        updates = 2 * math.ceil(400 / r["batch_size"])
        for side in ("hgmldl", "plain"):
            timings = r[side]
            assert timings["updates"] == updates
            assert len(timings["epoch_seconds"]) == 2 and min(timings["epoch_seconds"]) > 0
            assert timings["first_s"] == timings["epoch_seconds"][0]
            assert timings["median_s"] == timings["epoch_seconds"][1]
            assert timings["updates_per_s"] == pytest.approx(updates / 2 / timings["median_s"])
            assert 0 <= timings["val_accuracy"] <= 1
        assert r["ratio"] == pytest.approx(r["hgmldl"]["median_s"] / r["plain"]["median_s"])
        assert r["threads"] == 1
        assert r["startup_s"] > 0
        assert r["peak_rss_mb"]["process"] >= r["peak_rss_mb"]["hgmldl"] > 0
        assert f"| {r['model']} ({r['batch_size']}) | {r['hgmldl']['median_s']:.2f} " in result.stdout


def test_quick_without_data_folder_is_one_line():
    result = subprocess.run([*BENCHMARK, "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "error: --quick trains on small generated data: give its folder with --idx-dir\n"


class UpdateCounter(L.Callback):
    """Overrides on_before_optimizer_step, which sends every update through Lightning's own optimizer path."""

    def __init__(self) -> None:
        self.updates = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.updates += 1


def fit_one_epoch(make_cfg, *callbacks: L.Callback, precision: str = "32-true") -> tuple[Classifier, L.Trainer]:
    cfg = make_cfg("model=dropout_mlp")
    L.seed_everything(0)
    module = Classifier(OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        precision=precision,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return module, trainer


def test_plain_updates_train_exactly_like_lightnings_optimizer_path(make_cfg):
    fast, fast_trainer = fit_one_epoch(make_cfg)
    counter = UpdateCounter()
    hooked, hooked_trainer = fit_one_epoch(make_cfg, counter)
    assert fast._plain_updates and not hooked._plain_updates
    # 400 training images in minibatches of 32: 13 updates, each counted by Lightning on both paths.
    assert fast_trainer.global_step == hooked_trainer.global_step == counter.updates == 13
    for (name, fast_weight), hooked_weight in zip(fast.state_dict().items(), hooked.state_dict().values(), strict=True):
        assert torch.equal(fast_weight, hooked_weight), name


def test_bf16_mixed_keeps_the_plain_updates(make_cfg):
    module, trainer = fit_one_epoch(make_cfg, precision="bf16-mixed")
    assert module._plain_updates and trainer.global_step == 13
    assert 0 <= trainer.callback_metrics["val_accuracy"] <= 1


def test_cnn_runs_channels_last_with_keras_initial_weights():
    torch.manual_seed(0)
    module = Classifier({"_target_": "hgmldl.models.cnn"}, {"_target_": "torch.optim.Adam"})
    torch.manual_seed(0)
    reference = keras_init_(cnn())
    conv = module.net[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for weight, expected in zip(module.net.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(weight, expected)


@pytest.mark.slow
def test_compile_trains_like_eager(make_cfg, tmp_path):
    options = ("model=softmax", "trainer.max_epochs=1", "callbacks=default")
    eager = run(make_cfg(*options, output_dir=tmp_path / "eager"))
    compiled = run(make_cfg(*options, "compile=true", output_dir=tmp_path / "compiled"))
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    checkpoint = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["compile"] is True
