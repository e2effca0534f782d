"""hgmldl: the Keras chapters of 혼자 공부하는 머신러닝+딥러닝 (7-8) and Deep Learning with Python (2) in Lightning + Hydra."""

__version__ = "0.1.0"
