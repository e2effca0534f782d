"""Looking inside a trained model: evaluate, predict, visualize, show_data, the pictures, save/load, TensorBoard.

One CNN is trained for a few steps on the generated data (with logger=tensorboard_full) and shared by the tests.
"""

import contextlib
import csv
import json
import logging
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from hgmldl import figures
from hgmldl.commands import evaluate, predict, show_data, visualize
from hgmldl.commands.train import run
from hgmldl.data import FashionMNISTDataModule, MNISTDataModule
from hgmldl.errors import UserError
from hgmldl.history import read_history
from hgmldl.idx import read_idx
from hgmldl.images import read_image, split_images
from hgmldl.module import Classifier
from hgmldl.saving import load_checkpoint, load_weights, save_weights
from tests.conftest import ROOT

CNN = "cnn(hidden_units=100, dropout=0.4, activation=relu)"
MLP = "mlp(hidden_units=100, activation=relu, dropout=0.0)"


def png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cnn")


@pytest.fixture
def cnn_run(make_cfg, cnn_dir):
    """The run folder of a CNN trained for 2 epochs of one update; the first test that asks trains it."""
    if not (cnn_dir / "metrics.json").exists():
        # Two updates per epoch: enough to move the weights, too few to get every class right (as a test needs).
        steps = ("trainer.limit_train_batches=1", "steps_per_execution=1")
        run(make_cfg("model=cnn", *steps, "callbacks=default", "logger=tensorboard_full", output_dir=cnn_dir))
    return cnn_dir


@pytest.fixture(scope="module")
def started():
    """The commands the `commands` fixture started, killed at the end of the module if still running."""
    processes = {}
    yield processes
    for process, _ in processes.values():
        process.kill()


@pytest.fixture
def commands(cnn_run, started, tmp_path_factory, idx_dir):
    """visualize.py, predict.py, show_data.py and scripts/plot_history.py as a user runs them, started
    together by the first test that asks (each pays seconds of imports); {script: (process, its folder)}."""
    if not started:
        ckpt = cnn_run / "checkpoints" / "best.ckpt"
        names = ("visualize.py", "predict.py", "show_data.py", "plot_history.py")
        folders = {name: tmp_path_factory.mktemp(name.removesuffix(".py")) for name in names}
        (folders["predict.py"] / "notes.txt").write_text("hello\n")
        for name in ("optimizer=adam", "optimizer=sgd"):
            (folders["plot_history.py"] / "sweep" / name).mkdir(parents=True)
            (folders["plot_history.py"] / "sweep" / name / "history.csv").write_text(
                (cnn_run / "history.csv").read_text()
            )
        data = {
            name: [f"data.root={folder / 'data'}", f"data.idx_dir={idx_dir}", "data.download=false"]
            for name, folder in folders.items()
        }
        arguments = {
            "visualize.py": ["visualize.py", f"ckpt_path={ckpt}", f"hydra.run.dir={folders['visualize.py'] / 'out'}"]
            + data["visualize.py"],
            "predict.py": [
                "predict.py",
                f"hydra.run.dir={folders['predict.py'] / 'out'}",
                f"ckpt_path={ckpt}",
                f"image={folders['predict.py'] / 'notes.txt'}",
                f"data.idx_dir={idx_dir}",
            ],
            "show_data.py": ["show_data.py", f"hydra.run.dir={folders['show_data.py'] / 'show'}"]
            + data["show_data.py"],
            "plot_history.py": [
                "scripts/plot_history.py",
                str(folders["plot_history.py"] / "sweep"),
                "-o",
                str(folders["plot_history.py"] / "sweep.png"),
            ],
        }
        for name, (script, *overrides) in arguments.items():
            process = subprocess.Popen(
                [sys.executable, script, *overrides],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started[name] = process, folders[name]
    return started


def finished(command, timeout=300):
    """The stdout and stderr of a command the `commands` fixture started, once it has ended."""
    process, _ = command
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def save_checkpoint(module, path):
    """The two entries of a Lightning checkpoint that loading reads, without training."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def mlp_module():
    return Classifier(
        model={"_target_": "hgmldl.models.mlp", "hidden_units": 100, "activation": "relu", "dropout": 0.0},
        optimizer={"_target_": "torch.optim.Adam"},
    )


def test_evaluate_gives_the_loss_accuracy_and_per_class_accuracy_of_the_models_outputs(cnn_run, app_cfg, tmp_path):
    ckpt = cnn_run / "checkpoints" / "last.ckpt"
    results = evaluate.run(app_cfg("evaluate", f"ckpt_path={ckpt}"))
    module = load_checkpoint(ckpt)
    datamodule = instantiate(app_cfg("evaluate").data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    datamodule.setup("test")
    names = FashionMNISTDataModule.classes["en"]
    per_class = {}
    for split, images, labels in [
        ("val", datamodule.val_images, datamodule.val_labels),
        ("test", datamodule.test_images, datamodule.test_labels),
    ]:
        with torch.no_grad():
            logits = module(images)
        predicted = logits.argmax(dim=1)
        assert results[f"{split}_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        assert results[f"{split}_accuracy"] == pytest.approx((predicted == labels).float().mean().item())
        per_class[split] = [(predicted[labels == c] == c).float().mean().item() for c in range(10)]
        assert [results["per_class_accuracy"][name][split] for name in names] == pytest.approx(per_class[split])
    assert len(set(per_class["test"])) > 1  # classes differ, so a mix-up of classes would show

    out = tmp_path / "out"
    assert json.loads((out / "evaluation.json").read_text()) == results
    with open(out / "per_class_accuracy.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["class"] for row in rows] == names
    assert [float(row["test_accuracy"]) for row in rows] == pytest.approx(per_class["test"], abs=5e-5)
    assert png_size(out / "confusion_matrix_val.png") == png_size(out / "confusion_matrix_test.png") == (800, 700)


def test_predict_gives_the_argmax_of_the_models_output(cnn_run, app_cfg, tmp_path):
    ckpt = cnn_run / "checkpoints" / "best.ckpt"
    result = predict.run(app_cfg("predict", f"ckpt_path={ckpt}", "split=test", "index=3", "classes=ko"))
    cfg = app_cfg("predict")
    images, labels = split_images(instantiate(cfg.data), "test")
    with torch.no_grad():
        expected = torch.softmax(load_checkpoint(ckpt)(images[3:4]), dim=1)[0]
    assert result["index"] == int(expected.argmax())
    assert result["class"] == figures.class_names(FashionMNISTDataModule.classes, "ko")[result["index"]]
    assert result["label"] == int(labels[3])
    assert result["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert sum(result["probabilities"]) == pytest.approx(1, abs=1e-6)  # predict_step's softmax
    assert png_size(tmp_path / "out" / "prediction.png") == (1000, 400)


def test_predict_converts_a_photo_as_a_user_expects(cnn_run, app_cfg, tmp_path):
    cfg = app_cfg("predict")
    images, _ = split_images(instantiate(cfg.data), "test")
    pixels = (images[3, 0] * 255).round().byte().numpy()
    dataset_png = tmp_path / "dataset.png"
    Image.fromarray(pixels).save(dataset_png)
    assert torch.equal(read_image(dataset_png), images[3])  # a Fashion-MNIST image is taken as it is

    # A dark object on light paper, in colour and twice the size: inverted, grayed and shrunk back.
    photo = tmp_path / "photo.jpg"
    Image.fromarray(255 - pixels).resize((56, 56), Image.Resampling.NEAREST).convert("RGB").save(photo, quality=95)
    assert (read_image(photo) - images[3]).abs().mean() < 0.03

    # A wide transparent PNG: transparent is paper (white, so inverted to black), the aspect ratio is kept.
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[5:15, 10:30] = (0, 0, 0, 255)  # an opaque black bar on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "bar.png")
    bar = read_image(tmp_path / "bar.png")[0]
    assert bar.shape == (28, 28) and bar[14, 14] == 1 and bar[0, 0] == 0 and bar[14, 2] == 0

    ckpt = cnn_run / "checkpoints" / "best.ckpt"
    from_file = predict.run(app_cfg("predict", f"ckpt_path={ckpt}", f"image={dataset_png}"))
    from_index = predict.run(app_cfg("predict", f"ckpt_path={ckpt}", "split=test", "index=3"))
    assert from_file["probabilities"] == pytest.approx(from_index["probabilities"], abs=1e-6)


def test_bad_images_are_refused_in_one_line(tmp_path):
    (tmp_path / "empty.png").touch()
    (tmp_path / "notes.png").write_text("not a picture\n")
    cases = {
        tmp_path / "none.png": f"image {tmp_path / 'none.png'} does not exist",
        tmp_path: f"image {tmp_path} is not a file",
        tmp_path / "empty.png": f"image {tmp_path / 'empty.png'} is empty",
        tmp_path / "notes.png": f"{tmp_path / 'notes.png'} is not an image Pillow can read (PNG, JPEG, BMP, …)",
    }
    for path, message in cases.items():
        with pytest.raises(UserError) as error:
            read_image(path)
        assert str(error.value) == message


def test_predict_py_prints_one_line_errors(commands):
    returncode, _, stderr = finished(commands["predict.py"])
    notes = commands["predict.py"][1] / "notes.txt"
    assert returncode == 1
    assert stderr.strip().splitlines()[-1] == f"error: {notes} is not an image Pillow can read (PNG, JPEG, BMP, …)"
    assert "Traceback" not in stderr


def test_visualize_py_draws_the_8_3_pictures(cnn_run, commands):
    ckpt = cnn_run / "checkpoints" / "best.ckpt"
    returncode, log, stderr = finished(commands["visualize.py"])
    assert returncode == 0, stderr[-3000:]
    out = commands["visualize.py"][1] / "out"
    # The book's 8-3 prints conv_weights.mean(), conv_weights.std() of the numpy array: ddof=0.
    weights = torch.load(ckpt, weights_only=True)["state_dict"]["net.0.weight"].numpy()
    assert f"conv1 kernels (32, 1, 3, 3): mean {weights.mean():.6f} std {weights.std():.6f}" in log
    # Keras' glorot-uniform for a 3x3x1→32 conv: U(±0.1421), std 0.1421/√3 = 0.082.
    [untrained_std] = re.findall(r"untrained_conv1 kernels \(32, 1, 3, 3\): mean \S+ std (\S+)", log)
    assert float(untrained_std) == pytest.approx(0.082, abs=0.012)
    for name in ("conv1", "untrained_conv1"):
        assert png_size(out / f"{name}_filters.png") == (1500, 200)
        assert png_size(out / f"{name}_histogram.png") == (600, 400)
    assert png_size(out / "conv1_feature_maps.png") == (1200, 650)  # 4 x 8 maps
    assert png_size(out / "conv2_feature_maps.png") == (1200, 1250)  # 8 x 8 maps


def test_visualize_refuses_a_model_without_conv_layers(app_cfg, tmp_path):
    ckpt = save_checkpoint(mlp_module(), tmp_path / "mlp.ckpt")
    with pytest.raises(UserError) as error:
        visualize.run(app_cfg("visualize", f"ckpt_path={ckpt}"))
    assert str(error.value) == f"{ckpt} is {MLP}, which has no conv layers; visualize needs a CNN (model=cnn)"


def test_show_data_draws_the_first_images_and_counts_classes(app_cfg, tmp_path, idx_dir):
    counts = show_data.run(app_cfg("show_data"))
    labels = read_idx(idx_dir / "train-labels-idx1-ubyte.gz")
    assert counts == np.bincount(labels, minlength=10).tolist()
    assert png_size(tmp_path / "out" / "samples.png") == (1000, 160)


def test_show_data_py_runs_as_a_command(commands):
    returncode, log, stderr = finished(commands["show_data.py"])
    assert returncode == 0, stderr[-3000:]
    out = commands["show_data.py"][1] / "show"
    assert "train_input (500, 1, 28, 28), first labels [" in log  # the generated training file: 500 images
    assert png_size(out / "samples.png") == (1000, 160)


def test_save_weights_load_weights_round_trip_exactly(cnn_run, tmp_path):
    trained = load_checkpoint(cnn_run / "checkpoints" / "best.ckpt")
    path = save_weights(trained, tmp_path / "model.safetensors")
    with safe_open(path, framework="pt") as file:
        assert json.loads(file.metadata()["model"])["_target_"] == "hgmldl.models.cnn"
    fresh = Classifier(**trained.hparams)  # a model built from the same config
    load_weights(fresh, path)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(fresh.eval()(images), trained(images))


def test_weights_of_another_architecture_name_both(cnn_run, tmp_path):
    path = save_weights(load_checkpoint(cnn_run / "checkpoints" / "best.ckpt"), tmp_path / "cnn.safetensors")
    with pytest.raises(UserError) as error:
        load_weights(mlp_module(), path)
    assert str(error.value) == f"{path} holds {CNN}; it does not fit the model {MLP}"


def test_checkpoint_loader_refuses_bad_files_in_one_line(cnn_run, tmp_path):
    cnn_state = load_checkpoint(cnn_run / "checkpoints" / "best.ckpt").state_dict()
    mlp = mlp_module()
    (tmp_path / "empty.ckpt").touch()
    (tmp_path / "notes.ckpt").write_text("a text file\n")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": mlp.state_dict(), "path": ROOT}, tmp_path / "objects.ckpt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "tensors.ckpt")
    torch.save({"state_dict": mlp.state_dict()}, tmp_path / "no_hparams.ckpt")
    torch.save({"state_dict": cnn_state, "hyper_parameters": dict(mlp.hparams)}, tmp_path / "mixed.ckpt")
    unknown = {**mlp.hparams, "model": {"_target_": "hgmldl.models.resnet"}}
    torch.save({"state_dict": mlp.state_dict(), "hyper_parameters": unknown}, tmp_path / "unknown.ckpt")
    cases = {
        "none.ckpt": "checkpoint {} does not exist",
        "empty.ckpt": "checkpoint {} is empty",
        "notes.ckpt": "{} is not a checkpoint (not a file torch.save wrote)",
        "random.ckpt": "{} is not a checkpoint (not a file torch.save wrote)",
        "objects.ckpt": "{} holds Python objects besides tensors; they are not unpickled, for safety",
        "tensors.ckpt": "{} is a torch file but not a Lightning checkpoint (it has no state_dict)",
        "no_hparams.ckpt": "{} has no model hyperparameters: it was saved by another program or an incompatible "
        "version of hgmldl; train again, or load its state_dict into a model built from the same config",
        "mixed.ckpt": "{} (weights of another model than its hyperparameters); it does not fit the model " + MLP,
        "unknown.ckpt": "{} describes a model this version cannot build (resnet())",
    }
    for name, message in cases.items():
        with pytest.raises(UserError) as error:
            load_checkpoint(tmp_path / name)
        assert str(error.value) == message.format(tmp_path / name), name
    with pytest.raises(UserError, match=r"^no checkpoint given: add ckpt_path="):
        load_checkpoint(None)


def test_korean_class_names_render_with_the_korean_font():
    if figures.korean_font() is None:
        pytest.skip("fonts-nanum is not installed (make data installs it); the fallback is tested below")
    names = figures.class_names(FashionMNISTDataModule.classes, "ko")
    assert names == ["티셔츠", "바지", "스웨터", "드레스", "코트", "샌달", "셔츠", "스니커즈", "가방", "앵클 부츠"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph … missing from font(s)" for every tofu box
        figures.plot_prediction(torch.zeros(1, 28, 28), torch.full((10,), 0.1), names).canvas.draw()


def test_korean_falls_back_to_english_without_the_font(monkeypatch, caplog):
    monkeypatch.setattr(figures, "korean_font", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert figures.class_names(FashionMNISTDataModule.classes, "ko")[0] == "T-shirt/top"
    assert "no Korean font found (apt-get install fonts-nanum" in caplog.text
    with pytest.raises(UserError, match="^classes=fr is not a language here; choose classes=en or classes=ko$"):
        figures.class_names(FashionMNISTDataModule.classes, "fr")


def test_mnist_classes_are_the_digits_in_every_command(app_cfg, caplog):
    """Deep Learning with Python ch. 2 labels MNIST 0-9; torchvision's "0 - zero" shows nowhere, in any language."""
    digits = [str(digit) for digit in range(10)]
    assert MNISTDataModule.classes == {"en": digits, "ko": digits}
    with caplog.at_level(logging.INFO, logger="hgmldl"):
        counts = show_data.run(app_cfg("show_data", "data=mnist", "classes=ko"))
    assert [line.split() for line in caplog.messages[1:11]] == [
        [d, str(n)] for d, n in zip(digits, counts, strict=True)
    ]


def test_every_run_writes_curves_and_plot_history_overlays_runs(cnn_run, commands):
    assert png_size(cnn_run / "curves.png") == (1200, 450)
    returncode, stdout, stderr = finished(commands["plot_history.py"], timeout=120)
    sweep_png = commands["plot_history.py"][1] / "sweep.png"
    assert returncode == 0, stderr
    assert stdout.strip() == f"{sweep_png}: 2 runs"
    assert png_size(sweep_png) == (1200, 450)
    legend = figures.plot_history({"optimizer=adam": read_history(cnn_run / "history.csv")}).axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["optimizer=adam train", "optimizer=adam val"]


def test_tensorboard_full_logs_pictures_histograms_and_hparams(cnn_run):
    tags, hparams = {}, None
    for path in sorted(cnn_run.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"images": 0, "histograms": 0})
        events.Reload()
        for kind, names in events.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
        with contextlib.suppress(KeyError):  # only the events file written after fit holds them
            content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
            hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert {"samples", "conv1_filters", "confusion_matrix"} <= tags["images"]
    assert {"net.0.weight", "net.10.bias"} <= tags["histograms"]
    finals = {"final/val_loss", "final/val_accuracy", "final/test_loss", "final/test_accuracy"}
    assert finals <= tags["scalars"]
    assert {"model", "optimizer", "learning_rate", "seed"} <= set(hparams)
