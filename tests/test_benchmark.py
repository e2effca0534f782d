"""scripts/benchmark.py reports every side truthfully; the speed levers train exactly as before."""

import importlib.util
import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hgmldl.commands.train import run
from hgmldl.models import cnn, keras_init_
from hgmldl.module import Classifier
from hgmldl.steps_per_execution import StepsPerExecution
from tests.conftest import ROOT

BENCHMARK = [sys.executable, "scripts/benchmark.py"]


@pytest.fixture
def benchmark(script):
    return script("benchmark")


@pytest.mark.slow  # four train.py processes side by side: a minute on 2 cores
def test_quick_benchmark_runs_every_side_for_the_same_updates(tmp_path, idx_dir):
    out = tmp_path / "bench.json"
    command = [*BENCHMARK, "--quick", "--idx-dir", str(idx_dir), "--models", "cnn", "--threads", "1", "--out", str(out)]
    result = subprocess.run([*command, "--textbook-step"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["epochs"] == 2
    assert {"command", "date", "machine", "cpu_bf16", "versions", "cuda"} <= set(report)
    assert report["command"].endswith("--textbook-step") and report["steps_per_execution"] > 1
    assert [r["model"] for r in report["results"]] == ["cnn"]
    for r in report["results"]:
        # idx_dir holds 500 training images; the book's split keeps 400 for training.
        updates = 2 * math.ceil(400 / r["batch_size"])
        for side in ("hgmldl", "plain", "hgmldl_n1"):
            timings = r[side]
            assert timings["updates"] == updates
            assert len(timings["epoch_seconds"]) == 2 and min(timings["epoch_seconds"]) > 0
            assert timings["first_s"] == timings["epoch_seconds"][0]
            assert timings["median_s"] == timings["epoch_seconds"][1]
            assert timings["updates_per_s"] == pytest.approx(updates / 2 / timings["median_s"])
            assert 0 <= timings["val_accuracy"] <= 1
        assert r["ratio"] == pytest.approx(r["hgmldl"]["median_s"] / r["plain"]["median_s"])
        assert r["ratios"]["n1_over_hgmldl"] == pytest.approx(r["hgmldl_n1"]["median_s"] / r["hgmldl"]["median_s"])
        # The same seed and data: steps_per_execution changes the speed, not what is learned.
        assert r["hgmldl_n1"]["val_accuracy"] == pytest.approx(r["hgmldl"]["val_accuracy"], abs=1e-6)
        assert r["threads"] == 1
        assert r["startup_s"] > 0
        assert r["peak_rss_mb"]["process"] >= r["peak_rss_mb"]["hgmldl"] > 0
        assert f"| {r['model']} ({r['batch_size']}) | {r['hgmldl']['median_s']:.2f} " in result.stdout
    assert "| hgmldl N=1 s/epoch (first) | N=1 ÷ hgmldl |" in result.stdout
    assert result.stdout.startswith(f"`{report['command']}`, {report['date']}\n")


@pytest.mark.slow  # TensorFlow's start-up and three processes taking turns
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs pip install -e '.[bench]'")
def test_keras_columns_from_the_books_code_on_both_backends_on_the_same_data(tmp_path, idx_dir):
    out = tmp_path / "bench.json"
    command = [*BENCHMARK, "--idx-dir", str(idx_dir), "--epochs", "1", "--models", "softmax", "--threads", "1"]
    result = subprocess.run(
        [*command, "--keras", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    [r] = report["results"]
    keras = r["keras"]
    assert keras["updates"] == r["hgmldl"]["updates"] == math.ceil(400 / 32)  # the same split, batch and epochs
    assert len(keras["epoch_seconds"]) == 1 and keras["median_s"] > 0
    assert 0.5 < keras["val_accuracy"] <= 1  # the generated classes are easy: the book's model learns them
    assert r["ratios"]["keras_over_hgmldl"] == pytest.approx(keras["median_s"] / r["hgmldl"]["median_s"])
    assert {"tensorflow", "keras"} <= set(report["versions"])
    assert r["tensorflow_imported"] is False  # TensorBoard's import of TensorFlow kept out of hgmldl's process
    assert "| Keras s/epoch (first) | Keras ÷ hgmldl |" in result.stdout
    assert f"| {keras['median_s']:.2f} ({keras['first_s']:.2f}) | {r['ratios']['keras_over_hgmldl']:.2f} |" in (
        result.stdout
    )
    # The same book code on Keras' torch backend (KERAS_BACKEND=torch), its own process: the same updates.
    on_torch = r["keras_torch"]
    assert (keras["backend"], on_torch["backend"]) == ("tensorflow", "torch")  # what Keras ran on, as it says
    assert on_torch["updates"] == keras["updates"] and on_torch["median_s"] > 0
    assert 0.5 < on_torch["val_accuracy"] <= 1
    assert r["ratios"]["keras_torch_over_keras"] == pytest.approx(on_torch["median_s"] / keras["median_s"])
    assert "| Keras on torch s/epoch (first) | Keras on torch ÷ hgmldl | torch ÷ TF backend |" in result.stdout


@pytest.mark.parametrize(
    ("backends", "needs"),
    [([], "tensorflow and keras"), (["tensorflow"], "tensorflow"), (["torch"], "keras")],
    ids=["both", "tensorflow", "torch"],
)
def test_keras_without_its_backend_says_how_to_install_it(benchmark, monkeypatch, idx_dir, backends, needs):
    real_find_spec = importlib.util.find_spec
    missing = ("tensorflow", "keras")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name in missing else real_find_spec(name, *args)
    )
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--keras", *backends, "--quick", "--idx-dir", str(idx_dir)])
    before = set(sys.modules)
    with pytest.raises(SystemExit) as exit:
        benchmark.main()
    assert (
        exit.value.code == f"error: --keras runs the book's Keras code, which needs {needs}: pip install -e '.[bench]'"
    )
    assert not {"tensorflow", "keras"} & (set(sys.modules) - before)  # looked up, never imported by main()


def test_bf16_on_a_cpu_without_it_is_one_line(benchmark, monkeypatch, idx_dir):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--bf16", "--quick", "--idx-dir", str(idx_dir)])
    with pytest.raises(SystemExit) as exit:
        benchmark.main()
    assert exit.value.code.startswith("error: --bf16 measures bfloat16 where it is computed in hardware")
    assert "\n" not in exit.value.code


def test_table_puts_plain_fp32_bf16_and_keras_side_by_side(benchmark):
    def side(median: float) -> dict[str, float]:
        return {"median_s": median, "first_s": median + 1, "updates_per_s": 1500 / median}

    sides = {"hgmldl": side(1.0), "plain": side(0.8), "hgmldl_bf16": side(0.6), "keras": side(3.0)}
    sides["keras_torch"] = side(6.0)
    result = {
        "model": "cnn",
        "batch_size": 32,
        **sides,
        "ratio": 1.25,
        "ratios": benchmark.ratios(sides),
        "peak_rss_mb": {"hgmldl": 700, "process": 900},
        "startup_s": 6.5,
    }
    heading, rule, row = benchmark.table([result]).splitlines()
    assert heading == (
        "| model (batch) | hgmldl s/epoch (first) | plain loop s/epoch (first) | hgmldl ÷ plain "
        "| hgmldl bf16 s/epoch (first) | bf16 ÷ fp32 | Keras s/epoch (first) | Keras ÷ hgmldl | Keras ÷ bf16 "
        "| Keras on torch s/epoch (first) | Keras on torch ÷ hgmldl | torch ÷ TF backend "
        "| updates/s hgmldl / plain | peak RSS MB hgmldl / process | start-up s |"
    )
    assert rule == "|---" * 15 + "|"
    # 0.6 / 1.0, 3.0 / 1.0, 3.0 / 0.6, 6.0 / 1.0 and 6.0 / 3.0, worked out by hand.
    assert row == (
        "| cnn (32) | 1.00 (2.00) | 0.80 (1.80) | 1.25 | 0.60 (1.60) | 0.60 | 3.00 (4.00) | 3.00 | 5.00 "
        "| 6.00 (7.00) | 6.00 | 2.00 | 1500 / 1875 | 700 / 900 | 6.5 |"
    )


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


def fit_one_epoch(
    make_cfg, accelerator: str, *callbacks: L.Callback, precision: str = "32-true"
) -> tuple[Classifier, L.Trainer, StepsPerExecution]:
    cfg = make_cfg("model=dropout_mlp")
    L.seed_everything(0)
    module = Classifier(
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.optimizer),
    )
    speed = StepsPerExecution(cfg.steps_per_execution)  # 4: the plain updates run only with N > 1
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=accelerator,
        precision=precision,
        callbacks=[*callbacks, speed],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return module, trainer, speed


@pytest.mark.cuda
def test_plain_updates_train_exactly_like_lightnings_optimizer_path(make_cfg, accelerator):
    fast, fast_trainer, fast_speed = fit_one_epoch(make_cfg, accelerator)
    counter = UpdateCounter()
    hooked, hooked_trainer, hooked_speed = fit_one_epoch(make_cfg, accelerator, counter)
    assert fast_speed.plain and not hooked_speed.plain
    # 400 training images in minibatches of 32: 13 updates, each counted by Lightning on both paths.
    assert fast_trainer.global_step == hooked_trainer.global_step == counter.updates == 13
    for (name, fast_weight), hooked_weight in zip(fast.state_dict().items(), hooked.state_dict().values(), strict=True):
        assert torch.equal(fast_weight, hooked_weight), name


@pytest.mark.cuda
def test_bf16_mixed_keeps_the_plain_updates(make_cfg, accelerator):
    dtypes = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda layer, inputs, output: dtypes.append(output.dtype) if isinstance(layer, torch.nn.Linear) else None
    )
    try:
        module, trainer, speed = fit_one_epoch(make_cfg, accelerator, precision="bf16-mixed")
    finally:
        hook.remove()
    assert speed.plain and trainer.global_step == 13
    assert torch.bfloat16 in dtypes and torch.float32 not in dtypes  # every Dense layer ran under bf16 autocast


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
@pytest.mark.cuda
def test_compile_trains_like_eager(make_cfg, tmp_path):
    options = ("model=softmax", "trainer.max_epochs=1", "callbacks=default")
    eager = run(make_cfg(*options, output_dir=tmp_path / "eager")).metrics
    compiled = run(make_cfg(*options, "compile=true", output_dir=tmp_path / "compiled")).metrics
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    checkpoint = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["compile"] is True
