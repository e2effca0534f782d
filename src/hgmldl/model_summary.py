"""Keras' `model.summary()`: the network's layers with their output shapes and parameter counts.

Lightning's ModelSummary lists every submodule of the LightningModule, the metric objects included; the book's
summary lists the network alone. Shapes are PyTorch's, channels first: Keras' (None, 28, 28, 32) is (None, 32, 28, 28).
"""

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from torch import nn

from hgmldl.hangul import padded
from hgmldl.models import INPUT_SHAPE

log = logging.getLogger(__name__)


def summary(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> str:
    """The table Keras' summary() prints, for a Classifier (its `net`) or any nn.Sequential."""
    net = getattr(model, "net", model)
    shapes = output_shapes(net, input_shape)
    line, rule = "_" * 72, "=" * 72
    rows = [f'Model: "{type(net).__name__}"', line, f"{'Layer (type)':<32}{'Output Shape':<26}{'Param #':>12}", rule]
    for name, layer in net.named_children():
        count = sum(parameter.numel() for parameter in layer.parameters())
        # padded: a layer named in Hangul (nn.Sequential(OrderedDict([("은닉층", …)]))) keeps the columns aligned
        rows.append(f"{padded(f'{name} ({type(layer).__name__})', 32)}{keras_shape(shapes[name]):<26}{count:>12,}")
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    rows += [
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        line,
    ]
    return "\n".join(rows)


def keras_shape(shape: tuple[int, ...]) -> str:
    """A batch's shape as Keras writes it: (None, 32, 28, 28)."""
    return "(None, " + ", ".join(str(size) for size in shape[1:]) + ")"


def output_shapes(net: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> dict[str, tuple[int, ...]]:
    """Each child layer's output shape for one input (forward hooks), keyed by the layer's name."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        layer.register_forward_hook(lambda _layer, _inputs, output, name=name: shapes.__setitem__(name, output.shape))
        for name, layer in net.named_children()
    ]
    training = net.training
    try:
        with torch.no_grad():
            weight = next(net.parameters())  # its device and dtype (trainer.precision=64-true makes it double)
            net.eval()(torch.zeros(1, *input_shape, device=weight.device, dtype=weight.dtype))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return shapes


class Summary(ModelSummary):
    """Prints `summary()` when fit starts, in place of Lightning's table (a ModelSummary, so the Trainer adds
    no table of its own)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            # The module's example_input_array: Lightning's own summary takes its output shapes from it too.
            log.info("\n%s", summary(pl_module, tuple(pl_module.example_input_array.shape[1:])))
