"""The book's trained Keras 3 model as an hgmldl model, for predict.py, evaluate.py and visualize.py:

    python scripts/import_keras.py best-cnn-model.keras -o best-cnn-model.safetensors
    python visualize.py ckpt_path=best-cnn-model.safetensors

Reads a `.keras` file (`model.save`, ModelCheckpoint) or a `.weights.h5` file (`model.save_weights`) and writes the
weights as safetensors with the model's config, as hgmldl.saving.save_weights does.
"""

import argparse
from pathlib import Path

from hgmldl.errors import UserError, one_line_errors
from hgmldl.keras_weights import import_keras
from hgmldl.models import ACTIVATIONS, describe
from hgmldl.saving import save_weights


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keras_file", type=Path, help="a Keras 3 .keras or .weights.h5 file")
    parser.add_argument("-o", "--output", type=Path, help="the .safetensors file to write (default: beside the input)")
    # A .weights.h5 file holds no layer configs; a .keras file's config.json has both and they are not used.
    parser.add_argument("--activation", default="relu", choices=ACTIVATIONS, help=".weights.h5 only (default relu)")
    parser.add_argument("--dropout", type=float, default=0.0, help=".weights.h5 only: 7-3's model_fn has 0.3")
    args = parser.parse_args()
    output = args.output or args.keras_file.with_name(args.keras_file.name.split(".")[0] + ".safetensors")
    if output.suffix != ".safetensors":
        raise UserError(f"-o {output}: name the file *.safetensors, the suffix predict.py and visualize.py read")
    module = import_keras(args.keras_file, args.activation, args.dropout)
    save_weights(module, output)
    print(f"{args.keras_file}: {describe(dict(module.hparams.model))} -> {output}")


if __name__ == "__main__":
    main()
