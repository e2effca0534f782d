"""Every book experiment (experiments/*.yaml) with N seeds → experiments/RESULTS.md and experiments/curves/*.png.

    python scripts/reproduce.py                        # 3 seeds (42, 43, 44) on the real data, on the CPU
    python scripts/reproduce.py --only ch8_2_cnn --seeds 1
    python scripts/reproduce.py data.idx_dir=~/mnist   # extra overrides go to every run
    python scripts/reproduce.py --quick --out /tmp/r   # every preset for one short epoch: checks the plumbing only

Each run is `hgmldl.commands.train.run` (7-1's baseline: `hgmldl.baseline.cross_validate_baseline`) on the config
`python train.py experiment=<preset>` composes (hgmldl.api.compose_config), all in this one process; a preset that
sets `hydra.sweeper.params` (ch7_2_optimizers) runs once per combination, as `-m` would. What the book prints for a
preset, and the band ours should fall in, is the preset's `book:` node. A run whose config equals an earlier one's
(ch7_2_optimizers' adam is ch7_2_adam) is not trained twice. A run that fails with a UserError (no MNIST offline)
is reported as not run, and the others go on. Finished runs in --runs-dir are reused, so a second call with the same
--runs-dir resumes, adds seeds, or (--report-only) only rewrites the report (keeping its hand-written `## Notes`).
"""

import argparse
import datetime
import itertools
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hgmldl.api import compose_config
from hgmldl.baseline import cross_validate_baseline
from hgmldl.commands.train import run
from hgmldl.errors import UserError, one_line_errors
from hgmldl.figures import plot_history, save_figure
from hgmldl.files import write_text_atomic
from hgmldl.hardware import cpu_name
from hgmldl.history import read_history
from hgmldl.saving import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NOTES = "\n## Notes"  # RESULTS.md from this heading on is written by hand and survives a new report
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "steps_per_execution=2",
]


@dataclass
class Job:
    """One preset, or one combination of its sweep, over every seed."""

    preset: str
    overrides: list[str]
    book: list[dict[str, Any]]  # the preset's `book:` entries: key, value, band, what, [checkpoint]
    extra: list[str] = field(default_factory=list)  # the overrides every run got, as the report shows them
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
        return " ".join(["python train.py", f"experiment={self.preset}", *self.overrides, *self.extra])


@one_line_errors  # a bad override: one `error:` line
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = sorted(path.stem for path in (ROOT / "experiments").glob("*.yaml"))
    unknown = set(args.only or []) - set(found)
    if unknown:
        sys.exit(f"error: no preset {', '.join(sorted(unknown))} in experiments/; choose from {', '.join(found)}")
    presets = args.only or found
    seeds = [args.first_seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    runs_dir = args.runs_dir or ROOT / "outputs" / "reproduce" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    started, start = datetime.datetime.now(datetime.UTC), time.perf_counter()
    jobs: list[Job] = []
    trained: dict[str, Path] = {}  # config → the run folder that trained it
    for preset in presets:
        preset_start = time.perf_counter()
        for job in sweep_jobs(preset, overrides):
            run_job(job, seeds, overrides, runs_dir, trained, train=not args.report_only)
            jobs.append(job)
        print(f"{preset}: {time.perf_counter() - preset_start:.0f} s", flush=True)
    print(f"all presets: {time.perf_counter() - start:.0f} s", flush=True)
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
    """One job per combination of the preset's `hydra.sweeper.params` (read from its file: a composed config has no
    `hydra` node), in the order `-m` runs them."""
    cfg = compose_config("train", [f"experiment={preset}", *overrides], output_dir=None)
    book = OmegaConf.to_container(cfg.book) if cfg.get("book") else [{"key": "val_accuracy", "what": ""}]
    params = OmegaConf.select(OmegaConf.load(ROOT / "experiments" / f"{preset}.yaml"), "hydra.sweeper.params") or {}
    choices = [
        [f"{sweep.get_key_element()}={value}" for value in sweep.sweep_string_iterator()]
        if sweep.is_sweep_override()
        else [f"{sweep.get_key_element()}={sweep.get_value_element_as_str()}"]
        for sweep in OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    ]
    return [Job(preset, list(combination), book, shown(overrides)) for combination in itertools.product(*choices)]


def run_job(
    job: Job, seeds: list[int], overrides: list[str], runs_dir: Path, trained: dict[str, Path], train: bool = True
) -> None:
    baseline = compose_config("train", [f"experiment={job.preset}", *overrides], None).get("baseline") is not None
    for seed in seeds[:1] if baseline else seeds:  # the baseline's random_state is fixed: one run says it all
        output_dir = runs_dir / "_".join([job.preset, *job.overrides]).replace("=", "-") / f"seed{seed}"
        cfg = compose_config(
            "train",
            [
                f"experiment={job.preset}",
                *job.overrides,
                f"seed={seed}",
                "trainer.enable_progress_bar=false",
                "~logger",  # history.csv holds every curve the report needs
                *overrides,
            ],
            output_dir,
        )
        # The same config and seed train the same weights: ch7_2_optimizers' rmsprop and adam are ch7_2_relu and
        # ch7_2_adam, ch7_3_checkpoint is ch7_3_dropout; their runs are reported again, not trained again.
        identity = OmegaConf.to_yaml(
            OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("book", "output_dir")])
        )
        output_dir = trained.setdefault(identity, output_dir)
        cfg.output_dir = str(output_dir)
        finished, failed = output_dir / "metrics.json", output_dir / "error.txt"
        if not (train or finished.exists()):
            job.error = failed.read_text().strip() if failed.exists() else job.error
            continue
        print(f"{job.name} seed={seed} → {output_dir}", flush=True)
        try:  # a finished run in --runs-dir is reused: an interrupted reproduction goes on where it stopped
            if finished.exists():
                metrics = json.loads(finished.read_text())
            else:
                metrics = cross_validate_baseline(cfg) if baseline else run(cfg).metrics
            history = read_history(output_dir / "history.csv") if (output_dir / "history.csv").exists() else []
            job.scores.append(scores(metrics, history) | reloaded(job.book, cfg, output_dir))
        except UserError as error:
            job.error = " ".join(str(error).split())  # one line for the table
            write_text_atomic(failed, job.error + "\n")  # for --report-only; a new run tries again
            print(f"  not run: {error}", flush=True)
            return
        job.histories.append(history)
        job.seeds.append(seed)
        job.device = "cpu" if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available() else "cuda"
        print("  " + json.dumps({key: job.scores[-1].get(key) for key in ("val_accuracy", "test_accuracy")}))


def scores(metrics: dict[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    """metrics.json, plus what the book reads off its History plots: val_loss[epoch], the lowest val_loss and its
    epoch, the last epoch's train accuracy."""
    result = dict(metrics)
    if history:
        result |= {"accuracy": history[-1]["accuracy"]}
        result["epoch_time"] = statistics.mean(row["time"] for row in history)
    if history and "val_loss" in history[0]:
        lowest = min(history, key=lambda row: row["val_loss"])
        result |= {f"val_loss[{int(row['epoch'])}]": row["val_loss"] for row in history}
        result |= {"min_val_loss": lowest["val_loss"], "min_val_loss_epoch": int(lowest["epoch"])}
    return result


def reloaded(book: list[dict[str, Any]], cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The book's load_model(…).evaluate(val) for the checkpoints its `book:` entries name (`checkpoint: best` or
    `last`): that file loaded into a fresh model, then the Trainer's validate. Kept beside the run's metrics.json."""
    result = {}
    for which in sorted({entry["checkpoint"] for entry in book if entry.get("checkpoint")}):
        saved = output_dir / f"reloaded_{which}.json"
        if not saved.exists():
            model = load_checkpoint(output_dir / "checkpoints" / f"{which}.ckpt")
            trainer = lightning.Trainer(
                accelerator=cfg.trainer.accelerator, devices=1, logger=False, enable_progress_bar=False
            )
            [metrics] = trainer.validate(model, datamodule=instantiate(cfg.data), verbose=False)
            write_text_atomic(saved, json.dumps(metrics, indent=2) + "\n")
        result |= {f"{key}@{which}": value for key, value in json.loads(saved.read_text()).items()}
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
        f"Written by `python scripts/reproduce.py {' '.join(shown(argv))}`".rstrip()
        + f" on {started:%Y-%m-%d %H:%M} UTC.",
        f"Seeds {', '.join(map(str, seeds))}; ours = mean ± standard deviation over the n runs of each row; "
        "in band = our mean inside the band of the book's printed runs (each preset's `book:` node says which).",
        f"Versions: torch {torch.__version__}, lightning {lightning.__version__}, hydra-core {hydra.__version__}, "
        f"python {platform.python_version()}.",
        f"Machine: {device()}, {platform.platform()}.",
        "",
        "| preset | command | book | ours | in band | params | epochs run (stopped epoch) | s/epoch | s/run | device |",
        "|---" * 10 + "|",
        *(table_row(job) for job in jobs),
    ]
    errors = [f"- {job.name}: `` error: {job.error} ``" for job in jobs if job.error]  # `` as the message may hold `
    return "\n".join([*lines, *(["", "Not run:", "", *errors] if errors else [])]) + "\n"


def shown(args: list[str]) -> list[str]:
    """Arguments as a report others read shows them: what decided the numbers, not this machine's folders. --out
    and --runs-dir are left out, and an override's path (`data.idx_dir=~/mnist`) is written `data.idx_dir=…`."""
    result, skip = [], False
    for arg in map(str, args):
        if skip or arg.split("=")[0] in ("--out", "--runs-dir"):
            skip = arg in ("--out", "--runs-dir")  # its value is the next argument
            continue
        key, equals, value = arg.partition("=")
        path = equals and not key.startswith("-") and ("/" in value or "\\" in value or value.startswith("~"))
        result.append(f"{key}=…" if path else arg)
    return result


def score_key(entry: dict[str, Any]) -> str:
    return f"{entry['key']}@{entry['checkpoint']}" if entry.get("checkpoint") else entry["key"]


def label(entry: dict[str, Any]) -> str:
    return f"{entry['key']} of {entry['checkpoint']}.ckpt reloaded" if entry.get("checkpoint") else entry["key"]


def entry_values(job: Job, entry: dict[str, Any]) -> list[Any]:
    """The job's number for one `book:` entry, a seed each (where the run had it)."""
    return [score[score_key(entry)] for score in job.scores if score_key(entry) in score]


def in_band(entry: dict[str, Any], mean: float) -> bool | None:
    """Whether our mean falls in the band of the book's printed runs; None where the entry gives no band."""
    band = entry.get("band")
    return None if band is None else band[0] <= mean <= band[1]


def book_cell(entry: dict[str, Any]) -> str:
    if entry.get("value") is None:
        return f"– ({entry['what']})" if entry["what"] else "–"
    low, high = entry["band"]
    return f"{label(entry)} {entry['value']:g}, band {low:g}–{high:g} ({entry['what']})"


def table_row(job: Job) -> str:
    book = "<br>".join(map(book_cell, job.book))
    if not job.scores:
        ours = "not run (error below)" if job.error else "not run"
        return f"| {job.name} | `{job.command}` | {book} | {ours} | | | | | | |"
    ours, inside = [], []
    for entry in job.book:
        values = entry_values(job, entry)
        if not values:  # e.g. val_loss[19] of a run shorter than 20 epochs (--quick)
            ours.append(f"{label(entry)} –")
            inside.append("–")
            continue
        digits = 1 if all(isinstance(value, int) for value in values) else 4  # epochs, or accuracies and losses
        mean = statistics.mean(values)
        spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        ours.append(f"{label(entry)} {mean:.{digits}f}{spread} (n={len(values)})")
        within = in_band(entry, mean)
        inside.append("–" if within is None else "inside" if within else "**outside**")
    epochs = ", ".join(
        f"{s['epochs']} ({s['stopped_epoch']})" if s["stopped_epoch"] else str(s["epochs"])
        for s in job.scores
        if "epochs" in s
    )
    times = [s["epoch_time"] for s in job.scores if "epoch_time" in s]
    epoch_time = f"{statistics.mean(times):.1f}" if times else "–"
    run_time = f"{statistics.mean(s['wall_time'] for s in job.scores):.0f}"
    cells = [job.name, f"`{job.command}`", book, "<br>".join(ours), "<br>".join(inside), f"{job.scores[0]['params']:,}"]
    return "| " + " | ".join([*cells, epochs or "–", epoch_time, run_time, job.device]) + " |"


def device() -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {cpu_name()}, torch threads: {torch.get_num_threads()}"


if __name__ == "__main__":
    main()
