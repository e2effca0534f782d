"""What a sweep is run for: one table comparing its jobs, and one plot of their learning curves.

`python train.py -m optimizer=sgd,adam` writes `summary.csv`, `summary.md` and `curves.png` into the sweep folder
when the sweep ends (the Hydra callback `SweepSummary` below, in conf/hydra/default.yaml);
`python summarize.py sweep_dir=<sweep dir>` does the same for a folder that exists already, e.g. a sweep that a failed
job stopped (Hydra 1.3 ends a sweep with a failed job's error, and then calls no `on_multirun_end`).
"""

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hgmldl.config import command, override_key
from hgmldl.errors import UserError
from hgmldl.figures import plot_history, save_figure
from hgmldl.files import write_text_atomic
from hgmldl.history import read_history

# The metrics.json numbers of each job, in the table's column order; the table is sorted by the first one.
SUMMARY_COLUMNS = [
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "epochs",
    "stopped_epoch",
    "best_epoch",
    "params",
    "wall_time",
]
DECIMALS = {"val_accuracy": 4, "val_loss": 4, "test_accuracy": 4, "wall_time": 1}  # the others count (epochs, params)
SEED_KEY = "seed"  # jobs that differ only in their seed are one setting, summarised as mean ± std


@dataclass
class Job:
    folder: Path
    overrides: list[str]  # the job's command-line overrides, from .hydra/overrides.yaml
    metrics: dict[str, Any] | None  # None: no metrics.json, the job failed (or was stopped, or still runs)


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir`: those in which Hydra wrote `.hydra/overrides.yaml`."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        jobs.append(Job(folder, list(OmegaConf.load(overrides_file)), metrics))
    return jobs


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """summarize.py: the summary of the sweep folder `cfg.sweep_dir`."""
    if not cfg.sweep_dir:
        raise UserError("no sweep folder given: add sweep_dir=multirun/<date>/<time>")
    return summarize(cfg.sweep_dir)


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Writes summary.csv, summary.md and curves.png into `sweep_dir`, prints the table and returns its rows."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise UserError(f"{sweep_dir} holds no job folders (*/.hydra/overrides.yaml): give the folder of a sweep")
    distinct = distinct_overrides(jobs)
    rows = summary_rows(jobs, [joined([o for o in own if override_key(o) != SEED_KEY]) for own in distinct])
    markdown = to_markdown(rows)
    write_text_atomic(sweep_dir / "summary.csv", to_csv(rows))
    write_text_atomic(sweep_dir / "summary.md", markdown)
    histories = [(joined(own), job.folder / "history.csv") for job, own in zip(jobs, distinct, strict=True)]
    curves = {label: read_history(path) for label, path in histories if path.exists()}
    curves = {label: epochs for label, epochs in curves.items() if epochs}  # none when a job failed in epoch 1
    if curves:
        save_figure(plot_history(curves), sweep_dir / "curves.png")
    print(f"\n{markdown}\nwritten to {sweep_dir}/summary.csv, summary.md, curves.png", flush=True)
    return rows


def distinct_overrides(jobs: list[Job]) -> list[list[str]]:
    """Each job's overrides that not every job has: what tells it apart (all of them when it is alone)."""
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    return [[o for o in job.overrides if o not in shared] for job in jobs]


def joined(overrides: list[str]) -> str:
    return ",".join(overrides) or "defaults"


def summary_rows(jobs: list[Job], settings: list[str]) -> list[dict[str, Any]]:
    """One row per setting and outcome, best val_accuracy first, failed jobs last: `runs` jobs, and per column
    the mean and (with several runs) the sample standard deviation."""
    groups: dict[tuple[str, bool], list[Job]] = {}
    for job, setting in zip(jobs, settings, strict=True):
        groups.setdefault((setting, job.metrics is None), []).append(job)
    rows = []
    for (setting, failed), members in groups.items():
        row: dict[str, Any] = {"setting": setting, "status": "failed" if failed else "ok", "runs": len(members)}
        for column in [] if failed else SUMMARY_COLUMNS:
            values = [job.metrics[column] for job in members if job.metrics.get(column) is not None]
            row[column], row[f"{column}_std"] = mean_and_std(values)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["status"] == "failed", -(row.get("val_accuracy") or 0.0)))


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    """One run's value as it is (an epoch count stays an int); the mean and sample std of several."""
    if len(values) < 2:
        return (values[0] if values else None), None
    return statistics.fmean(values), statistics.stdev(values)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Plain numbers; the `*_std` columns only when some setting ran with several seeds."""
    names = ["setting", "status", "runs"]
    with_std = any(row["runs"] > 1 and row["status"] == "ok" for row in rows)
    for column in SUMMARY_COLUMNS:
        names += [column, f"{column}_std"] if with_std else [column]
    text = io.StringIO()
    writer = csv.DictWriter(text, names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | runs | " + " | ".join(SUMMARY_COLUMNS) + " |", "|---|---:|" + "---:|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        if row["status"] == "failed":
            cells = ["failed (no metrics.json)"] + [""] * (len(SUMMARY_COLUMNS) - 1)
        else:
            cells = [format_cell(column, row[column], row[f"{column}_std"]) for column in SUMMARY_COLUMNS]
        lines.append(f"| {row['setting']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_cell(column: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    decimals = DECIMALS.get(column, 0 if std is None else 1)
    return f"{mean:.{decimals}f}" + ("" if std is None else f" ± {std:.{decimals}f}")


class SweepSummary(Callback):
    """This command, run by Hydra when a sweep ends: summary.csv, summary.md and curves.png in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(config.hydra.sweep.dir)


@command("summarize")
def main(cfg: DictConfig) -> None:
    """`python summarize.py …` at the top of the checkout, `hgmldl-summarize …` where pip installed hgmldl."""
    run(cfg)
