"""hgmldl computes what Keras 3's own `fit` computes, step by step: golden trajectories recorded from Keras
(scripts/record_keras_golden.py, tests/golden/keras_*.npz), replayed through the project's configs and Trainer.fit.

Each case starts from Keras' initial weights, feeds the minibatches Keras' seeded fit fed, in its order, applies
Keras' dropout masks, and requires every step's loss to agree with Keras' within RTOL relative and each weight after
the last step within RTOL of its tensor's largest weight. An update rule, the loss, the split, the model or the
grouping of minibatches that differs from Keras' fails here; the initialisation, whose random stream differs, is
checked against Keras' glorot-uniform statistically (test_keras_init_draws_what_keras_draws).
"""

import copy
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from hgmldl.api import compose_config
from hgmldl.data import TensorBatches
from hgmldl.keras_weights import load_keras_weights
from hgmldl.models import keras_layers
from hgmldl.module import Classifier
from hgmldl.steps_per_execution import StepsPerExecution
from tests.conftest import FASHION_MNIST_DIR, ROOT

pytestmark = pytest.mark.realdata

GOLDEN = ROOT / "tests" / "golden"
MODELS = ("softmax", "mlp", "dropout_mlp", "cnn")
OPTIMIZERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adam")
# float32 rounds at 6e-8; torch's matrix products and convolutions sum in another order than TensorFlow's. Measured:
# at most 1.5e-6 over these trajectories, torch's RMSprop and Adam 1e-3 and more (docs/keras_parity.md).
RTOL = 1e-5

needs_data = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir() and not os.environ.get("CI"),
    reason="apt-get install dataset-fashion-mnist (make data) to run the Keras golden tests",
)


def golden(model: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"keras_{model}.npz") as file:
        return dict(file)


def train_config(model: str, optimizer: str, data_root: Path):
    """The config `python train.py model=… optimizer=…` runs."""
    return compose_config("train", [f"model={model}", f"optimizer={optimizer}", f"data.root={data_root}"], "unused")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are small: one thread computes them as fast, and on a shared machine two wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion_mnist(tmp_path_factory):
    """The real Fashion-MNIST's book split, read once by the data module the configs name."""
    datamodule = instantiate(train_config("mlp", "adam", tmp_path_factory.mktemp("data")).data, download=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


class KerasDropoutMasks:
    """A forward hook on the model's nn.Dropout that applies the masks Keras drew, in Keras' order, in place of
    torch's: x · 1/(1 − rate) · mask, as tf.nn.dropout computes it."""

    def __init__(self, dropout: nn.Dropout, masks: np.ndarray) -> None:
        self.scale, self.masks, self.step = 1 / (1 - dropout.p), torch.from_numpy(masks).float(), 0
        dropout.register_forward_hook(self)

    def __call__(self, dropout: nn.Dropout, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        if not dropout.training:
            return output
        self.step += 1
        return inputs[0] * self.scale * self.masks[self.step - 1]


class StepLosses(L.Callback):
    """Each update's loss, from a wrapper of the module's own step, which StepsPerExecution (set up after this
    callback) runs per minibatch."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def setup(self, trainer, module, stage) -> None:
        training_step = module.training_step

        def recording_step(batch, batch_idx):
            loss = training_step(batch, batch_idx)
            self.losses.append(loss.detach().reshape(-1))
            return loss

        module.training_step = recording_step


def keras_layout(net: nn.Sequential, keras_shapes: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The net's weights under Keras' names and layouts, by hgmldl.keras_weights' own mapping run on positions: a
    copy of the net loaded with Keras arrays that hold their element numbers tells where each element went."""
    numbered = {
        name: [np.arange(array.size, dtype=np.float32).reshape(array.shape) for array in arrays]
        for name, arrays in keras_shapes.items()
    }
    positions = copy.deepcopy(net)
    load_keras_weights(positions, dict(numbered), Path("positions"), "positions")
    arrays = {}
    for name, span in keras_layers(net).items():
        if isinstance(net[span.start], nn.Linear | nn.Conv2d):
            for index, (param, position) in enumerate(
                zip(net[span.start].parameters(), positions[span.start].parameters(), strict=True)
            ):
                keras = np.empty(param.numel(), np.float32)
                keras[position.detach().numpy().ravel().astype(np.int64)] = param.detach().numpy().ravel()
                arrays[f"{name}/{index}"] = keras.reshape(numbered[name][index].shape)
    return arrays


def replay(model: str, optimizer: str, datamodule, record: dict[str, np.ndarray]):
    """Trainer.fit of `model` × `optimizer` from Keras' weights over Keras' minibatches; returns the module and
    each step's loss."""
    cfg = train_config(model, optimizer, datamodule.root)
    module = Classifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        init=cfg.init.name,
    )
    initial = keras_arrays(record, "initial")
    load_keras_weights(module.net, initial, Path(f"keras_{model}.npz"), model)
    if "dropout_mask" in record:
        masks = np.unpackbits(record["dropout_mask"], axis=-1, count=cfg.model.hidden_units)
        (dropout,) = [layer for layer in module.net if isinstance(layer, nn.Dropout)]
        KerasDropoutMasks(dropout, masks)
    order = torch.from_numpy(record["indices"].ravel().astype(np.int64))
    batches = TensorBatches(
        datamodule.train_images[order],
        datamodule.train_labels[order],
        batch_size=cfg.data.batch_size,
    )
    step_losses = StepLosses()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[step_losses, StepsPerExecution(cfg.steps_per_execution)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=batches)
    return module, torch.cat(step_losses.losses).numpy()


def keras_arrays(record: dict[str, np.ndarray], prefix: str) -> dict[str, list[np.ndarray]]:
    arrays: dict[str, list[np.ndarray]] = {}
    for key, value in record.items():
        if key.startswith(f"{prefix}/"):
            _, layer, index = key.split("/")
            arrays.setdefault(layer, []).insert(int(index), value)
    return arrays


@needs_data
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")  # training only
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", MODELS)
def test_steps_equal_keras_fit(model, optimizer, fashion_mnist):
    record = golden(model)
    module, losses = replay(model, optimizer, fashion_mnist, record)
    np.testing.assert_allclose(losses, record[f"losses/{optimizer}"], rtol=RTOL, atol=0, err_msg="per-step loss")
    for key, weights in keras_layout(module.net, keras_arrays(record, "initial")).items():
        keras = record[f"final/{optimizer}/{key}"]
        sample = record.get(f"sample/{key}")
        ours = weights if sample is None else weights.ravel()[sample]
        # within RTOL of the tensor's largest weight: a weight near zero has no meaningful relative error
        np.testing.assert_allclose(ours, keras, rtol=0, atol=RTOL * np.abs(keras).max(), err_msg=f"{key} after")
        if sample is not None:  # a large tensor is stored at a sample of positions and as its sum of |change|
            change = np.abs(weights.astype(np.float64) - record[f"initial/{key}"]).sum()
            assert change == pytest.approx(record[f"change_l1/{optimizer}/{key}"], rel=RTOL), key


@pytest.mark.parametrize("model", MODELS)
def test_keras_init_draws_what_keras_draws(model):
    """init=keras draws from torch's generator, so not Keras' numbers: each kernel must come from the same
    distribution as Keras' glorot-uniform draw (a two-sample Kolmogorov-Smirnov test), each bias be zero."""
    L.seed_everything(42, verbose=False)
    cfg = train_config(model, "adam", Path("unused"))
    module = Classifier(model=OmegaConf.to_container(cfg.model, resolve=True), optimizer={}, init=cfg.init.name)
    keras = keras_arrays(golden(model), "initial")
    ours = keras_layout(module.net, keras)
    for name, (kernel, bias) in keras.items():
        assert not bias.any() and not ours[f"{name}/1"].any()
        assert stats.ks_2samp(ours[f"{name}/0"].ravel(), kernel.ravel()).pvalue > 1e-3, name
