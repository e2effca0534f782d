"""Keras' model.evaluate on val and test: `python evaluate.py ckpt_path=<run dir>/checkpoints/best.ckpt`.

Options: conf/evaluate.yaml (`python evaluate.py --help`); the PNGs go to the Hydra run dir.
"""

from hgmldl.commands.evaluate import main

if __name__ == "__main__":
    main()
