"""A callback for tests that must act in the middle of a run (a signal, a requeue): every training step takes at
least `seconds`, so an epoch lasts long enough to be interrupted in."""

import time

import lightning as L


class SlowSteps(L.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)
