"""Keras' save/load idioms, and the one checkpoint loader every command uses.

- `save_weights` / `load_weights`: the weights only, as safetensors, with the model's config in the file's metadata
  so that loading them into another architecture names both.
- `model.save` is the Lightning checkpoint (best.ckpt / last.ckpt, or `trainer.save_checkpoint`): weights plus the
  hyperparameters that rebuild the network. `load_model` is `keras.models.load_model` (exported as `hgmldl.load`):
  it reads a checkpoint (through `load_checkpoint`), a model's weights with their config, or a Keras file.

Nothing here unpickles arbitrary objects: checkpoints are read with `torch.load(weights_only=True)`, which accepts
only tensors and plain containers, and weights with safetensors, which holds tensors only. A file from an untrusted
source can therefore fail to load, but cannot run code.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hgmldl.errors import UserError
from hgmldl.files import check_readable
from hgmldl.keras_weights import import_keras
from hgmldl.models import describe
from hgmldl.module import Classifier


def fits(state: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    """Whether `state` holds `module`'s tensors, name for name and shape for shape: what load_state_dict takes."""
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    return shapes == {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def load_checkpoint(path: str | Path | None, map_location: str | torch.device = "cpu") -> Classifier:
    """The Classifier with the architecture and weights saved in a Lightning checkpoint.

    `Classifier.load_from_checkpoint(path, weights_only=True)` does the same with tracebacks for errors; here each
    way a file can be wrong ends in one line that says what the file is.
    """
    if path is None:
        raise UserError("no checkpoint given: add ckpt_path=<run dir>/checkpoints/best.ckpt")
    path = check_readable(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # EOFError, KeyError, UnpicklingError, RuntimeError…, depending on the bytes
        if "Unsupported global" in str(error):  # a pickle of Python objects: safe loading refuses to build them
            raise UserError(
                f"{path} holds Python objects besides tensors; they are not unpickled, for safety"
            ) from error
        raise UserError(f"{path} is not a checkpoint (not a file torch.save wrote)") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is a torch file but not a Lightning checkpoint (it has no state_dict)")
    hparams = checkpoint.get("hyper_parameters") or {}
    if not {"model", "optimizer"} <= set(hparams) or not isinstance(hparams["model"], dict):
        raise UserError(
            f"{path} has no model hyperparameters: it was saved by another program or an incompatible version "
            "of hgmldl; train again, or load its state_dict into a model built from the same config"
        )
    try:
        module = Classifier(**hparams)
    except Exception as error:  # an unknown _target_ or argument: a model this version does not have
        raise UserError(f"{path} describes a model this version cannot build ({describe(hparams['model'])})") from error
    _load_state(module, checkpoint["state_dict"], f"{path} (weights of another model than its hyperparameters)")
    return module.eval()


def save_weights(module: Classifier, path: str | Path) -> Path:
    """Keras' `save_weights`: every weight (no optimizer state, no hyperparameters) as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, path, metadata={"model": json.dumps(dict(module.hparams.model))})
    return path


def load_weights(module: Classifier, path: str | Path) -> Classifier:
    """Keras' `load_weights`: the weights `save_weights` wrote, into a model built from the same config."""
    path = check_readable(path, "weights file")
    state, metadata = _read_weights(path, str(module.device))
    saved = metadata.get("model")
    source = describe(json.loads(saved)) if saved else "weights of unknown origin"
    _load_state(module, state, f"{path} holds {source}")
    return module


def load_model(path: str | Path | None) -> Classifier:
    """Keras' `load_model` for every file that holds a model: a Lightning checkpoint, a `.safetensors` file with
    its model config (`save_weights`, scripts/import_keras.py), or the book's own Keras 3 `.keras` file. The latter
    two have no optimizer: they predict and evaluate."""
    if path is not None and Path(path).suffix in (".keras", ".h5"):
        return import_keras(path)
    if path is None or Path(path).suffix != ".safetensors":
        return load_checkpoint(path)
    path = check_readable(path, "weights file")
    state, metadata = _read_weights(path, "cpu")
    if "model" not in metadata:
        raise UserError(f"{path} holds no model config: load it with load_weights into a model of the same config")
    model = json.loads(metadata["model"])
    try:
        module = Classifier(model=model, optimizer={})
    except Exception as error:  # an unknown _target_ or argument, as in load_checkpoint
        raise UserError(f"{path} describes a model this version cannot build ({describe(model)})") from error
    _load_state(module, state, f"{path} (weights of another model than its config)")
    return module.eval()


def _read_weights(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device=device) as file:
            state = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
            return state, file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path} is not a safetensors weights file ({error})") from error


def _load_state(module: Classifier, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) with a one-line error naming both architectures instead of a list of keys."""
    if not fits(state, module):
        raise UserError(f"{source}; it does not fit the model {describe(dict(module.hparams.model))}")
    module.load_state_dict(state)
