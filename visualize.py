"""혼공머신 8-3's pictures of a CNN checkpoint: `python visualize.py ckpt_path=<run dir of model=cnn>/checkpoints/best.ckpt`.

The book's own trained model works too: ckpt_path=best-cnn-model.keras (see docs/keras_layers.md).
Options: conf/visualize.yaml (`python visualize.py --help`); the PNGs go to the Hydra run dir.
"""

from hgmldl.commands.visualize import main

if __name__ == "__main__":
    main()
