"""The book's Keras models, each one `nn.Sequential` in the book's layer order, and the Keras names and shapes
every other module takes from here: the 28×28 one-channel input, the ten classes, the layers' Keras names.

The final Dense(10, activation='softmax') is a plain Linear: its softmax lives in the loss (cross-entropy on
logits), which is what Keras' softmax + sparse_categorical_crossentropy computes.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
IMAGE_SIZE = 28  # Keras' input_shape=(28, 28): every Fashion-MNIST and MNIST image
INPUT_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)  # one image, channels first
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
NUM_CLASSES = 10
# The Keras layer each torch layer stands for, and the name Keras gives it (numbered per kind: conv2d, conv2d_1, …).
KERAS_LAYERS = {
    nn.Conv2d: ("Conv2D", "conv2d"),
    nn.MaxPool2d: ("MaxPooling2D", "max_pooling2d"),
    nn.Flatten: ("Flatten", "flatten"),
    nn.Linear: ("Dense", "dense"),
    nn.Dropout: ("Dropout", "dropout"),
}
# The names the book gives layers, where it names them (7-2: Dense(100, activation='sigmoid', name='hidden'),
# Dense(10, activation='softmax', name='output')), by the model config's `describe`; elsewhere Keras' own (dense,
# dense_1, …). Not 7-2's model name '패션 MNIST 모델': TensorFlow's predict refuses a name that is not ASCII.
BOOK_LAYER_NAMES = {"mlp(hidden_units=100, activation=sigmoid, dropout=0.0)": {"dense": "hidden", "dense_1": "output"}}


def describe(model: dict[str, Any]) -> str:
    """`cnn(hidden_units=100, dropout=0.4, activation=relu)`: the model config as a user would type it."""
    arguments = ", ".join(f"{key}={value}" for key, value in model.items() if key != "_target_")
    return f"{model.get('_target_', '?').rsplit('.', 1)[-1]}({arguments})"


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def softmax() -> nn.Sequential:
    """7-1: Dense(10, activation='softmax', input_shape=(784,)) — 7,850 parameters."""
    return nn.Sequential(nn.Flatten(), nn.Linear(NUM_PIXELS, NUM_CLASSES))


def mlp(
    hidden_units: int | Sequence[int] = 100, activation: str | Sequence[str] = "relu", dropout: float = 0.0
) -> nn.Sequential:
    """7-2 / 7-3 / DLP ch. 2: Flatten → Dense(units, activation) per hidden layer → [Dropout] → Dense(10).

    One width gives the book's one-hidden-layer model (Dense(100): 79,510 parameters; Dense(512): 407,050);
    a list gives one layer per entry (7-2's three Dense(100) layers: 99,710). `activation` may be a list too,
    one per hidden layer. Dropout comes after the last hidden layer, where 7-3's model_fn(Dropout(0.3)) puts it.
    """
    widths = [hidden_units] if isinstance(hidden_units, int) else list(hidden_units)
    names = [activation] * len(widths) if isinstance(activation, str) else list(activation)
    if len(names) != len(widths):
        raise ValueError(f"model.activation lists {len(names)} activations for {len(widths)} hidden layers")
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, width, name in zip([NUM_PIXELS, *widths], widths, names, strict=False):
        layers += [nn.Linear(fan_in, width), activation_layer(name)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-1], NUM_CLASSES))
    return nn.Sequential(*layers)


def cnn(hidden_units: int = 100, dropout: float = 0.4, activation: str = "relu") -> nn.Sequential:
    """8-2: Conv2D(32, 3, same) → MaxPool(2) → Conv2D(64, 3, same) → MaxPool(2) → Dense(100) → Dropout(0.4) → Dense(10).

    333,526 parameters. Keras fuses the activation into Conv2D/Dense; here it is its own layer after each.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding="same"),
        activation_layer(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding="same"),
        activation_layer(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (IMAGE_SIZE // 4) ** 2, hidden_units),  # two 2×2 poolings: 28×28 maps become 7×7
        activation_layer(activation),
        nn.Dropout(dropout),
        nn.Linear(hidden_units, NUM_CLASSES),
    )


def keras_init_(net: nn.Module) -> nn.Module:
    """Keras' Dense/Conv2D defaults: glorot-uniform kernels, zero biases (torch draws both kaiming-uniform).

    The book's numbers and its 8-3 picture of untrained filters (flat within ±0.142) depend on this.
    """
    for layer in net.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


def keras_layers(net: nn.Sequential) -> dict[str, slice]:
    """Keras' `model.layers`, in order: each layer's Keras name and the slice of `net` that computes it.

    Keras fuses the activation into Conv2D and Dense; here it is the module after them, so it joins that layer's
    slice. Names are numbered per kind, as Keras numbers them in a fresh session and in its weights files.
    For the CNN: conv2d = net[0:2], max_pooling2d = net[2:3], conv2d_1 = net[3:5], …, dense_1 = net[10:11].
    """
    spans: list[tuple[str, slice]] = []
    for index, layer in enumerate(net):
        if isinstance(layer, tuple(ACTIVATIONS.values())) and spans:
            kind, span = spans[-1]
            spans[-1] = kind, slice(span.start, index + 1)
        else:
            spans.append((KERAS_LAYERS[type(layer)][1], slice(index, index + 1)))
    names = keras_names(kind for kind, _ in spans)
    return {name: span for name, (_, span) in zip(names, spans, strict=True)}


def keras_names(kinds: Iterable[str]) -> list[str]:
    """The names Keras gives layers of these kinds, in model order: numbered per kind (conv2d, conv2d_1, dense, …),
    as in a fresh session and in its weights files."""
    counts: Counter[str] = Counter()
    names = []
    for kind in kinds:
        names.append(kind if not counts[kind] else f"{kind}_{counts[kind]}")
        counts[kind] += 1
    return names


def feature_extractor(model: nn.Module, layer: int | str) -> nn.Sequential:
    """8-3's `keras.Model(model.inputs, model.layers[i].output)`: the network up to Keras layer `layer` included.

    `layer` is the book's index into `model.layers` (0 = the first Conv2D, 2 = the second) or the layer's Keras
    name (`conv2d`, `conv2d_1`, see `keras_layers`). The result shares the model's modules, so it computes with
    the trained weights: `feature_extractor(module, 0)(images)` gives conv1's maps after ReLU, (N, 32, 28, 28).
    The last Dense gives logits: its softmax lives in the loss. Index ↔ module table: docs/keras_layers.md.
    """
    net = getattr(model, "net", model)  # a Classifier or its nn.Sequential
    layers = keras_layers(net)
    names = list(layers)
    if isinstance(layer, int) and -len(names) <= layer < len(names):
        layer = names[layer]
    if layer not in layers:
        raise ValueError(f"layer {layer!r} is not one of the model's layers: 0-{len(names) - 1} or {', '.join(names)}")
    return net[: layers[layer].stop]
