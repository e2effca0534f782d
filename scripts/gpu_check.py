"""CUDA, proven on a GPU in one command → gpu_check.json in --out, rewritten after every part (a run cut short keeps
what it measured), and a summary printed. docs/performance.md says what each part runs and checks:

    python scripts/gpu_check.py [--out DIR] [--budget 420] [--only models cnn]     # on a CUDA machine
    python scripts/gpu_check.py --dry-run --idx-dir DIR --out DIR                   # the plumbing, on a CPU

  tests      pytest -m cuda --accelerator=gpu
  models     every conf/model/ for one epoch on trainer=gpu and gpu_bf16, steps_per_execution 1 and the default,
             against trainer=cpu on this machine's cores: val_accuracy within a point
  cnn        experiment=ch8_2_cnn in full, 3 seeds, in the preset's `book:` bands (scripts/reproduce.py)
  ddp        python train.py trainer=ddp: two processes on two GPUs, one on one
  benchmark  scripts/benchmark.py per model: hgmldl ÷ the plain loop ≤ its TARGET; N=1, N=500, bf16, compile=true beside
Each part, and each run in one, is guarded: a failure is recorded and the rest goes on; none starts after --budget
seconds. A dry run trains two steps on the CPU; its numbers are not held to the book's bands or the speed target.
"""

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch

from hgmldl.api import compose_config
from hgmldl.commands.train import run
from hgmldl.data import FashionMNISTDataModule
from hgmldl.files import write_text_atomic
from hgmldl.hardware import cpu_has_native_bf16, cpu_name
from hgmldl.history import read_history

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402  (scripts/ is no package: its modules are imported from their folder)
import reproduce  # noqa: E402

PARTS = ("tests", "models", "cnn", "ddp", "benchmark")
MODELS = sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml"))
PRESET = "ch8_2_cnn"
COMPILED = ("cnn", "dropout_mlp")  # compile=true costs half a minute per model: the CNN and the book's 7-3 MLP
BENCH_EPOCHS = 2  # a side's seconds per epoch: the second's (benchmark.py's median leaves out the first)
TOLERANCE = 0.01  # val_accuracy on the GPU within a point of the CPU's
QUIET = ["trainer.enable_progress_bar=false", "~logger"]  # the report is the output: no progress bars, no TensorBoard
DRY_RUN = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
# The IDX files, in the order looked for: the GPU bundle's copy (scripts/gpu_bundle.sh), then Debian's package.
IDX_DIRS = (ROOT / ".gl" / "fashion-mnist", *map(Path, FashionMNISTDataModule.system_dirs))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit("error: torch sees no CUDA GPU here: run this on a CUDA machine (on a CPU: --dry-run --idx-dir DIR)")
    if args.seeds < 1 or args.budget <= 0:
        sys.exit("error: --seeds takes a whole number from 1, --budget a positive number of seconds")
    if args.dry_run and not args.idx_dir:
        sys.exit("error: --dry-run trains on small generated data: give its folder with --idx-dir")
    idx_dir = args.idx_dir or next((folder for folder in IDX_DIRS if folder.is_dir()), None)
    if idx_dir is None:
        sys.exit(f"error: no Fashion-MNIST IDX files in {' or '.join(map(str, IDX_DIRS))}: give --idx-dir DIR")
    report = {
        "command": shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"lightning {lightning.__version__}, hydra-core {hydra.__version__}",
        "dry_run": args.dry_run,
        "parts": {},
    }
    if cuda:
        torch.ones(1, device="cuda").sum().item()  # CUDA's start-up, outside every timed run
    with tempfile.TemporaryDirectory(prefix="hgmldl-gpu-check-") as work:
        check = Check(Path(work), idx_dir, args, cuda)
        for part in args.only or PARTS:
            report["parts"][part] = guarded(getattr(check, part), check.deadline)
            write_text_atomic(args.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
            print(summary(part, report["parts"][part])[0], flush=True)  # the run's own lines come between
    print("\n".join(line for part, result in report["parts"].items() for line in summary(part, result)))
    failed = [part for part, result in report["parts"].items() if result["status"] != "ok"]
    print(f"wrote {args.out / 'gpu_check.json'}: " + (f"not ok: {', '.join(failed)}" if failed else "every part ok"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "experiments" / "gpu"
    parser.add_argument("--out", type=Path, default=out, help="its folder (default $OUT, else experiments/gpu)")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which no part or run starts")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="these parts instead of all")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, help="the models part's models")
    parser.add_argument("--bench-models", nargs="+", choices=list(benchmark.MODELS), default=list(benchmark.MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the full ch8_2_cnn run (42, 43, …)")
    parser.add_argument("--idx-dir", type=Path, help="the four IDX files (default .gl/fashion-mnist or Debian's)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, two steps of every run: the plumbing only")
    return parser.parse_args(argv)


class Check:
    """The parts, sharing the data, the work folder, the device and the deadline."""

    def __init__(self, work: Path, idx_dir: Path, args: argparse.Namespace, cuda: bool) -> None:
        self.work, self.idx_dir, self.args, self.cuda = work, idx_dir, args, cuda
        self.deadline = time.monotonic() + args.budget
        self.data = [f"data.idx_dir={idx_dir.resolve()}", f"data.root={work / 'data'}", "data.download=false"]
        self.dry = DRY_RUN if args.dry_run else []
        # On a dry run the CPU stands in for the GPU, in bf16 only where it computes bf16 in hardware.
        self.gpu = "gpu" if cuda else "cpu"
        self.bf16 = "gpu_bf16" if cuda else "cpu_bf16" if cpu_has_native_bf16() else None

    def tests(self) -> dict[str, Any]:
        """The tests marked `cuda`, on the GPU; a dry run only collects them. Only the files that mark some are
        collected: the others import what the GPU machine may lack (nbclient, submitit)."""
        tests = sorted((ROOT / "tests").glob("test_*.py"))
        files = [f"tests/{path.name}" for path in tests if "@pytest.mark.cuda" in path.read_text()]
        mode = ["--collect-only"] if self.args.dry_run else ["--accelerator=gpu"]
        pytest = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *mode, *files]
        return self.run_command(pytest)  # its output's end names the failed tests (pytest -ra)

    def models(self) -> dict[str, Any]:
        """Each model on the CPU (the reference: same versions and files, only the device differs), then on the GPU."""
        default_n = compose_config("train", [], None).steps_per_execution
        cpu, runs = {}, []
        for model in self.args.models:
            cpu[model] = attempt(partial(self.one_epoch, model, "cpu", default_n, "reference"), self.deadline)
            for preset, n in itertools.product(filter(None, (self.gpu, self.bf16)), (1, default_n)):
                row = {"model": model, "trainer": preset, "steps_per_execution": n}
                row |= attempt(partial(self.one_epoch, model, preset, n, f"{preset}_n{n}"), self.deadline)
                if "val_accuracy" in row and "val_accuracy" in cpu[model]:
                    delta = row["val_accuracy"] - cpu[model]["val_accuracy"]
                    row |= {"delta_vs_cpu": round(delta, 4), "within": abs(delta) <= TOLERANCE}
                runs.append(row)
        checks = {"every run's val_accuracy within a point of the CPU's": all(row.get("within") for row in runs)}
        return {"cpu": cpu, "runs": runs, "checks": checks}

    def one_epoch(self, model: str, preset: str, n: int, name: str) -> dict[str, Any]:
        """`python train.py model=<model> trainer=<preset> steps_per_execution=<n>` for one epoch, seed 42."""
        overrides = [f"model={model}", f"trainer={preset}", f"steps_per_execution={n}", "trainer.max_epochs=1"]
        output_dir = self.work / "models" / f"{model}_{name}"
        cfg = compose_config("train", [*overrides, *self.data, *self.dry, *QUIET], output_dir)
        trained = run(cfg)
        [epoch] = read_history(output_dir / "history.csv")  # its `time`: training and validation, CUDA warm-up too
        updates = trained.trainer.global_step
        return {
            "val_accuracy": trained.metrics["val_accuracy"],
            "epoch_s": epoch["time"],
            "updates": updates,
            "updates_per_s": round(updates / epoch["time"], 1),
        }

    def cnn(self) -> dict[str, Any]:
        """reproduce.py's job for the preset, a seed at a time so that the budget is checked between them."""
        epochs = ["trainer.max_epochs=2"] if self.args.dry_run else []  # else the preset's 20, early stopping on
        overrides = [f"trainer={self.gpu}", *self.data, *self.dry, *epochs]
        [job] = reproduce.sweep_jobs(PRESET, overrides)
        for seed in range(42, 42 + self.args.seeds):
            if time.monotonic() < self.deadline:
                reproduce.run_job(job, [seed], overrides, self.work / "cnn", {})
        if job.error:
            return {"error": job.error}
        checks = {}  # generated data (a dry run) is nowhere near the book's numbers: there they are not checked
        for entry in [] if self.args.dry_run else job.book:
            mean = statistics.mean(reproduce.entry_values(job, entry))
            checks[f"{entry['key']}'s mean in the book's band"] = reproduce.in_band(entry, mean)
        return {"results_md_row": reproduce.table_row(job), "seeds": job.seeds, "scores": job.scores, "checks": checks}

    def ddp(self) -> dict[str, Any]:
        processes = min(2, torch.cuda.device_count()) if self.cuda else 1
        run_dir = self.work / "ddp"
        command = [sys.executable, "train.py", "trainer=ddp", f"trainer.accelerator={self.gpu}", "model=dropout_mlp"]
        command += [f"trainer.devices={processes}", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", *QUIET]
        result = {"processes": processes} | self.run_command([*command, *self.data, *self.dry])
        metrics = run_dir / "metrics.json"
        result["checks"]["metrics.json written"] = metrics.exists()
        return result | (json.loads(metrics.read_text()) if metrics.exists() else {})

    def benchmark(self) -> dict[str, Any]:
        """benchmark.run_model per model: hgmldl side by side with the plain loop at the default steps_per_execution,
        and its guests (a process each, taking turns): N=1, N=500, bf16, compile=true."""
        runs = []
        for model in self.args.bench_models:
            guests = ["hgmldl_n1", "hgmldl_n500", *(["hgmldl_bf16"] if self.bf16 else [])]
            guests += ["hgmldl_compile"] if model in COMPILED and not self.args.dry_run else []
            # self.data without the dry run's limits: the plain loop runs whole epochs, and hgmldl must as well
            sides = partial(benchmark.run_model, model, BENCH_EPOCHS, self.work, self.data, None, guests, self.idx_dir)
            result = attempt(sides, self.deadline)  # its `ratios` flat as well, where the summary shows them
            runs.append({"model": model} | result | result.get("ratios", {}))
        ran = [row for row in runs if "ratio" in row]
        checks = {"every model ran": len(ran) == len(runs)}
        if not self.args.dry_run:  # epochs of a few updates on generated data time the overhead, not the speed
            checks[f"hgmldl ÷ plain ≤ {benchmark.TARGET} for every model"] = all(
                row["ratio"] <= benchmark.TARGET for row in ran
            )
        return {"runs": runs, "checks": checks}

    def run_command(self, command: list[str]) -> dict[str, Any]:
        """A command run from the repository root, for what is left of the budget (a minute at least): its command
        line, exit status (checked: 0), last line and the end of its output."""
        timeout = max(60.0, self.deadline - time.monotonic())
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output = (result.stdout + result.stderr).strip()
        return {
            "command": shlex.join(["python", *command[1:]]),
            "returncode": result.returncode,
            "last_line": output.rsplit("\n", 1)[-1],
            "output_tail": output[-3000:],
            "checks": {"exit status 0": result.returncode == 0},
        }


def guarded(part: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
    """One part's result with its status; `ok`: it ran and passed all its `checks`."""
    start = time.monotonic()
    result = attempt(part, deadline)
    passed = all(result.get("checks", {}).values())
    status = "skipped" if "skipped" in result else "error" if "error" in result else "ok" if passed else "failed"
    return {"status": status, "seconds": round(time.monotonic() - start, 1), **result}


def attempt(function: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
    """function()'s result; once the budget is spent {"skipped": …}; if it raises {"error": its line, "traceback": …}
    (SystemExit too: benchmark.py's `error:`)."""
    if time.monotonic() > deadline:
        return {"skipped": "over the time budget"}
    try:
        return function()
    except (Exception, SystemExit) as error:
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        message = " ".join(f"{type(error).__name__}: {error}".split())
        return {"error": message, "traceback": traceback.format_exc()[-3000:]}


def summary(name: str, part: dict[str, Any]) -> list[str]:
    """The part's one-line values (status, seconds, its error, …) and the checks it did not pass, then each of its
    runs' one-line values: what to read first; gpu_check.json holds the rest."""
    not_passed = "; ".join(check for check, passed in part.get("checks", {}).items() if not passed)
    line = f"{name}: {one_line_values(part)}" + (f" not passed: {not_passed}" if not_passed else "")
    return [line, *("  " + one_line_values(run) for run in part.get("runs", []))]


def one_line_values(row: dict[str, Any]) -> str:
    """key=value for each value that fits on one line, floats to 4 decimals; lists, dicts and outputs are left out."""
    one_line = {key: value for key, value in row.items() if isinstance(value, str | int | float | None)}
    shown = {key: round(value, 4) if isinstance(value, float) else value for key, value in one_line.items()}
    return " ".join(f"{key}={value}" for key, value in shown.items() if "\n" not in str(value))


if __name__ == "__main__":
    main()
