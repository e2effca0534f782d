"""Train a book model: `python train.py model=cnn optimizer=adam`, `python train.py experiment=ch8_2_cnn`.

Options are the config groups in conf/ (`python train.py --help` lists them); results go to the Hydra run dir.
A preset that sets `baseline` (`experiment=ch7_1_sgd_baseline`) cross-validates that scikit-learn estimator instead.
"""

from hgmldl.commands.train import main

if __name__ == "__main__":
    main()
