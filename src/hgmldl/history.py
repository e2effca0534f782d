"""history.csv, Keras' History on disk: one row per epoch, written by the HistoryCSV callback after every epoch and
read back by the sweep summary, scripts/plot_history.py, scripts/reproduce.py and hgmldl.api."""

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hgmldl.files import write_text_atomic

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]  # lr: with a scheduler
KERAS_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")  # what Keras' History.history holds


def keras_history(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Keras' `History.history` from history rows: each metric's per-epoch values, `history["val_loss"]`."""
    return {name: [row[name] for row in rows] for name in KERAS_KEYS if rows and name in rows[0]}


def write_history(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes `rows` atomically, with the columns of HISTORY_COLUMNS that any row has, in that order (an epoch without
    validation leaves its val_* empty)."""
    columns = [name for name in HISTORY_COLUMNS if any(name in row for row in rows)]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a history.csv as numbers; a value a row lacks is left out of it."""
    with open(path, newline="") as file:
        return [{name: float(value) for name, value in row.items() if value} for row in csv.DictReader(file)]
