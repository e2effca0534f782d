"""Keras' model.predict + argmax: `python predict.py ckpt_path=<…>/best.ckpt index=0 split=val` or `image=<file.png>`.

Options: conf/predict.yaml (`python predict.py --help`); the PNGs go to the Hydra run dir.
"""

from hgmldl.commands.predict import main

if __name__ == "__main__":
    main()
