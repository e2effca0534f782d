"""Every book experiment (experiments/*.yaml) with N seeds → experiments/RESULTS.md and experiments/curves/*.png.

    python scripts/reproduce.py                        # 3 seeds (42, 43, 44) on the real data: about an hour on 2 CPUs
    python scripts/reproduce.py --only ch8_2_cnn --seeds 1
    python scripts/reproduce.py data.idx_dir=~/mnist   # extra overrides go to every run
    python scripts/reproduce.py --quick --out /tmp/r   # every preset for one short epoch: checks the plumbing only

Each run is `hgmldl.train.run` on the config `python train.py experiment=<preset>` composes (Hydra's Compose API);
a preset that sets `hydra.sweeper.params` (ch7_2_optimizers) runs once per combination, as `-m` would.
A run that fails with a UserError (no MNIST offline) is reported as not run, and the others go on. Finished runs
in --runs-dir are reused, so a second call with the same --runs-dir resumes, adds seeds, or (--report-only) only
rewrites the report (keeping its hand-written `## Notes`).
"""

import argparse
import datetime
import json
import logging
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from hgmldl.config import register_configs
from hgmldl.errors import UserError
from hgmldl.files import write_text_atomic
from hgmldl.train import run
from hgmldl.viz import plot_history, read_history, save_figure

ROOT = Path(__file__).resolve().parents[1]
NOTES = "\n## Notes"  # RESULTS.md from this heading on is written by hand and survives a new report
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "steps_per_execution=2",
]


@dataclass(frozen=True)
class Anchor:
    """One number the book prints, and the key of ours it compares with (see `scores`)."""

    key: str
    book: float | None
    note: str


# What each book cell returns (../shared book reference; Keras-3 progress-bar text is not used).
ANCHORS: dict[str, list[Anchor]] = {
    "ch7_1_sgd_baseline": [Anchor("val_accuracy", 0.8196, "mean cross_validate test_score")],
    "ch7_1_softmax": [Anchor("val_accuracy", 0.8458, "evaluate(val); TF 2.14 run 0.8465")],
    "ch7_2_sigmoid": [Anchor("accuracy", 0.878, "epoch-5 train accuracy; TF 2.14 run 0.8782")],
    "ch7_2_relu": [Anchor("val_accuracy", 0.8665, "evaluate(val); TF 2.14 run 0.8726")],
    "ch7_2_deep": [Anchor("val_accuracy", None, "the book only prints summary(): 99,710 params")],
    "ch7_2_adam": [Anchor("val_accuracy", 0.8726, "evaluate(val); TF 2.14 run 0.8763")],
    "ch7_2_optimizers": [Anchor("val_accuracy", None, "the book only compiles these")],
    "ch7_3_overfit": [
        Anchor("val_loss[2]", 0.38, "plot: val_loss bottoms ≈0.38 near epoch index 2"),
        Anchor("min_val_loss_epoch", 2, "0-based epoch of the lowest val_loss"),
        Anchor("val_loss", 0.55, "plot: ≈0.55 at epoch index 19"),
    ],
    "ch7_3_dropout": [Anchor("val_loss", 0.325, "plot: val_loss flat ≈0.32–0.33")],
    "ch7_3_callbacks": [
        Anchor("val_accuracy", 0.8859, "evaluate(val), best weights; runs 0.877–0.886"),
        Anchor("stopped_epoch", 16, "early_stopping_cb.stopped_epoch; runs 7–16"),
    ],
    "ch8_2_cnn": [
        Anchor("val_accuracy", 0.9201, "evaluate(val); runs 0.915–0.923"),
        Anchor("test_accuracy", 0.9125, "evaluate(test); runs 0.909–0.917"),
    ],
    "dlp2_ch2_mnist": [Anchor("test_accuracy", 0.979, "evaluate(test) 0.978–0.980")],
}


@dataclass
class Job:
    """One preset, or one combination of its sweep, over every seed."""

    preset: str
    overrides: list[str]
    scores: list[dict[str, Any]] = field(default_factory=list)
    histories: list[list[dict[str, float]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    error: str | None = None
    device: str = ""

    @property
    def name(self) -> str:
        return " ".join([self.preset, *self.overrides])

    @property
    def command(self) -> str:
        return " ".join(["python train.py", f"experiment={self.preset}", *self.overrides])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_configs(ROOT / "experiments")
    found = sorted(path.stem for path in (ROOT / "experiments").glob("*.yaml"))
    unknown = set(args.only or []) - set(found)
    if unknown:
        sys.exit(f"error: no preset {', '.join(sorted(unknown))} in experiments/; choose from {', '.join(found)}")
    presets = args.only or sorted(
        found, key=lambda name: list(ANCHORS).index(name) if name in ANCHORS else len(ANCHORS)
    )
    seeds = [args.first_seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    runs_dir = args.runs_dir or ROOT / "outputs" / "reproduce" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    started = datetime.datetime.now(datetime.UTC)
    jobs = []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for preset in presets:
            for job in sweep_jobs(preset, overrides):
                run_job(job, seeds, overrides, runs_dir, train=not args.report_only)
                jobs.append(job)
    args.out.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        plot_curves([job for job in jobs if job.preset == preset], args.out / "curves" / f"{preset}.png")
    results = args.out / "RESULTS.md"
    previous = results.read_text() if results.exists() else ""
    notes = previous[previous.index(NOTES) :] if NOTES in previous else ""  # written by hand: kept
    write_text_atomic(results, report(jobs, seeds, started, sys.argv[1:] if argv is None else argv) + notes)
    print(f"wrote {args.out / 'RESULTS.md'} and {len(presets)} curves in {args.out / 'curves'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.idx_dir=…")
    parser.add_argument("--seeds", type=int, help="seeds per preset (default 3; 1 with --quick)")
    parser.add_argument("--first-seed", type=int, default=42, help="the book's set_random_seed(42); then 43, …")
    parser.add_argument("--only", nargs="+", metavar="PRESET", help="these presets instead of all")
    parser.add_argument("--quick", action="store_true", help="one epoch of 2 steps per preset: a plumbing check")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments", help="where RESULTS.md and curves/ go")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    parser.add_argument("--runs-dir", type=Path, help="run folders, reused (default outputs/reproduce/<date_time>)")
    return parser.parse_args(argv)


def sweep_jobs(preset: str, overrides: list[str]) -> list[Job]:
    """One job per combination of the preset's `hydra.sweeper.params`, expanded by Hydra's basic sweeper."""
    cfg = compose("train", [f"experiment={preset}", *overrides], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    [combinations] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [Job(preset, combination) for combination in combinations]


def run_job(job: Job, seeds: list[int], overrides: list[str], runs_dir: Path, train: bool = True) -> None:
    baseline = compose("train", [f"experiment={job.preset}", *overrides]).get("baseline") is not None
    for seed in seeds[:1] if baseline else seeds:  # the baseline's random_state is fixed: one run says it all
        output_dir = runs_dir / "_".join([job.preset, *job.overrides]).replace("=", "-") / f"seed{seed}"
        cfg = compose(
            "train",
            [
                f"experiment={job.preset}",
                *job.overrides,
                f"seed={seed}",
                f"output_dir={output_dir}",
                "trainer.enable_progress_bar=false",
                "~logger",  # history.csv holds every curve the report needs
                *overrides,
            ],
        )
        finished, failed = output_dir / "metrics.json", output_dir / "error.txt"
        if not (train or finished.exists()):
            job.error = failed.read_text().strip() if failed.exists() else job.error
            continue
        print(f"{job.name} seed={seed} → {output_dir}", flush=True)
        try:  # a finished run in --runs-dir is reused: an interrupted reproduction goes on where it stopped
            metrics = json.loads(finished.read_text()) if finished.exists() else run(cfg)
        except UserError as error:
            job.error = " ".join(str(error).split())  # one line for the table
            write_text_atomic(failed, job.error + "\n")  # for --report-only; a new run tries again
            print(f"  not run: {error}", flush=True)
            return
        history = read_history(output_dir / "history.csv") if (output_dir / "history.csv").exists() else []
        job.scores.append(scores(metrics, history))
        job.histories.append(history)
        job.seeds.append(seed)
        job.device = "cpu" if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available() else "cuda"
        print("  " + json.dumps({key: job.scores[-1].get(key) for key in ("val_accuracy", "test_accuracy")}))


def scores(metrics: dict[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    """metrics.json, plus what the book reads off its History plots: val_loss[epoch], the epoch of the lowest
    val_loss, the last epoch's train accuracy."""
    result = dict(metrics)
    if history:
        lowest = min(history, key=lambda row: row["val_loss"])
        result |= {f"val_loss[{int(row['epoch'])}]": row["val_loss"] for row in history}
        result |= {"accuracy": history[-1]["accuracy"], "min_val_loss_epoch": int(lowest["epoch"])}
        result["epoch_time"] = statistics.mean(row["time"] for row in history)
    return result


def plot_curves(jobs: list[Job], path: Path) -> None:
    """The book's History plots for one preset: a curve pair per seed, or per optimizer (first seed) of a sweep."""
    if len(jobs) > 1:
        runs = {" ".join(job.overrides): job.histories[0] for job in jobs if job.histories}
    else:
        runs = {f"seed {seed}": history for seed, history in zip(jobs[0].seeds, jobs[0].histories, strict=True)}
    runs = {name: history for name, history in runs.items() if history}  # the baseline has no epochs
    if runs:
        figure = plot_history(runs)
        figure.suptitle(jobs[0].preset)
        save_figure(figure, path)


def report(jobs: list[Job], seeds: list[int], started: datetime.datetime, argv: list[str]) -> str:
    lines = [
        "# Book experiments: reproduction report",
        "",
        f"Written by `python scripts/reproduce.py {' '.join(argv)}`".rstrip() + f" on {started:%Y-%m-%d %H:%M} UTC.",
        f"Seeds {', '.join(map(str, seeds))}; ours = mean ± standard deviation over the n runs of each row.",
        f"Versions: torch {torch.__version__}, lightning {lightning.__version__}, hydra-core {hydra.__version__}, "
        f"python {platform.python_version()}.",
        f"Machine: {device()}, {platform.platform()}.",
        "",
        "| preset | command | book | ours | params | epochs run (stopped epoch) | s/epoch | device |",
        "|---|---|---|---|---|---|---|---|",
        *(table_row(job) for job in jobs),
    ]
    errors = [f"- {job.name}: `` error: {job.error} ``" for job in jobs if job.error]  # `` as the message may hold `
    return "\n".join([*lines, *(["", "Not run:", "", *errors] if errors else [])]) + "\n"


def table_row(job: Job) -> str:
    anchors = ANCHORS.get(job.preset, [Anchor("val_accuracy", None, "")])
    book = "<br>".join(f"{a.key} {a.book:g} ({a.note})" if a.book is not None else a.note for a in anchors)
    if not job.scores:
        ours = "not run (error below)" if job.error else "not run"
        return f"| {job.name} | `{job.command}` | {book} | {ours} | | | | |"
    ours = []
    for anchor in anchors:
        values = [score[anchor.key] for score in job.scores if anchor.key in score]
        if not values:  # e.g. val_loss[2] of a run shorter than 3 epochs (--quick)
            ours.append(f"{anchor.key} –")
            continue
        digits = 1 if all(isinstance(value, int) for value in values) else 4  # epochs, or accuracies and losses
        spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        ours.append(f"{anchor.key} {statistics.mean(values):.{digits}f}{spread} (n={len(values)})")
    epochs = ", ".join(
        f"{s['epochs']} ({s['stopped_epoch']})" if s["stopped_epoch"] else str(s["epochs"])
        for s in job.scores
        if "epochs" in s
    )
    times = [s["epoch_time"] for s in job.scores if "epoch_time" in s]
    epoch_time = f"{statistics.mean(times):.1f}" if times else f"{job.scores[0]['wall_time']:.0f} s in all"
    cells = [job.name, f"`{job.command}`", book, "<br>".join(ours), f"{job.scores[0]['params']:,}"]
    return "| " + " | ".join([*cells, epochs or "–", epoch_time, job.device]) + " |"


def device() -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    return f"CPU: {models[0] if models else platform.machine()}, torch threads: {torch.get_num_threads()}"


if __name__ == "__main__":
    main()
