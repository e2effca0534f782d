"""CUDA, proven on a GPU in one command: the device-sensitive tests, every model for one epoch against the CPU, the
book's CNN in full, DDP and scripts/benchmark.py → gpu_check.json and gpu_check.md in --out.

    python scripts/gpu_check.py [--out DIR] [--budget 420] [--only models cnn]     # on a CUDA machine
    python scripts/gpu_check.py --dry-run --idx-dir DIR --out DIR                   # the plumbing, on a CPU

The parts, in this order (--only picks some):
  tests      pytest -m cuda --accelerator=gpu: the tests marked `cuda` train on the GPU, the GPU-only ones run
  models     every conf/model/ for one epoch, seed 42: trainer=cpu on this machine's cores (the reference: same
             versions, same files, only the device differs), then trainer=gpu and trainer=gpu_bf16, each with
             steps_per_execution 1 and the default; val_accuracy within a point of the CPU's, seconds per epoch,
             updates per second, peak GPU memory
  cnn        experiment=ch8_2_cnn in full (early stopping) on the GPU with 3 seeds, against the preset's `book:` band
             (scripts/reproduce.py's jobs and its RESULTS.md row)
  ddp        python train.py trainer=ddp: two processes on two GPUs, one process on one
  benchmark  scripts/benchmark.py's side-by-side runs per model: hgmldl ÷ the plain loop at steps_per_execution
             1, the default and 500, in bf16, and compile=true against eager (the CNN and the 7-3 MLP)
Each part, and each run inside one, is guarded: a failure is recorded and the rest goes on. Both files are rewritten
after every part, so a run cut short keeps what it measured. A part or run that would start after --budget seconds
is skipped and says so.
"""

import argparse
import gc
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
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch

from hgmldl.api import compose_config
from hgmldl.commands.train import run
from hgmldl.data import FashionMNISTDataModule
from hgmldl.hardware import cpu_has_native_bf16, cpu_name
from hgmldl.history import read_history

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402  (scripts/ is no package: its modules are imported from their folder)
import reproduce  # noqa: E402

PARTS = ("tests", "models", "cnn", "ddp", "benchmark")
MODELS = sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml"))
PRESET = "ch8_2_cnn"
LARGE_N = "hgmldl_n500"  # benchmark.py's side with the larger steps_per_execution
COMPILED = ("cnn", "dropout_mlp")  # compile=true costs half a minute per model: the CNN and the book's 7-3 MLP
CUDA = "@pytest.mark.cuda"  # how a test file marks its device-sensitive tests
TOLERANCE = 0.01  # val_accuracy on the GPU within a point of the CPU's
TARGET = 1.15  # hgmldl ÷ the plain loop, scripts/benchmark.py's target
DRY_RUN = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
# The IDX files, in the order looked for: the GPU bundle's copy (scripts/gpu_bundle.sh), then Debian's package.
IDX_DIRS = (ROOT / ".gl" / "fashion-mnist", *map(Path, FashionMNISTDataModule.system_dirs))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        sys.exit(
            "error: torch sees no CUDA GPU here, and scripts/gpu_check.py measures one: run it on a CUDA machine "
            "(--dry-run --idx-dir DIR checks its plumbing on a CPU)"
        )
    if min(args.seeds, args.bench_epochs) < 1 or args.budget <= 0:
        sys.exit("error: --seeds and --bench-epochs take a whole number from 1, --budget a positive number of seconds")
    if args.dry_run and not args.idx_dir:
        sys.exit("error: --dry-run trains on small generated data: give its folder with --idx-dir")
    idx_dir = args.idx_dir or next((folder for folder in IDX_DIRS if folder.is_dir()), None)
    if idx_dir is None:
        sys.exit(f"error: no Fashion-MNIST IDX files in {' or '.join(map(str, IDX_DIRS))}: give --idx-dir DIR")
    start = time.monotonic()
    deadline = start + args.budget
    report = {
        "command": shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "lightning": lightning.__version__,
            "hydra-core": hydra.__version__,
        },
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "parts": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if cuda:
        torch.ones(1, device="cuda").sum().item()  # CUDA's start-up, outside every timed run
    with tempfile.TemporaryDirectory(prefix="hgmldl-gpu-check-") as work:
        check = Check(Path(work), idx_dir, args, cuda, deadline, report)
        for part in args.only or PARTS:
            check.part, check.part_started = part, time.monotonic()
            report["parts"][part] = guarded(getattr(check, part), deadline)
            report["elapsed_s"] = round(time.monotonic() - start, 1)
            write(report, args.out)
            print(f"{part}: {report['parts'][part]['status']} ({report['parts'][part]['seconds']} s)", flush=True)
    failed = [part for part, result in report["parts"].items() if result["status"] != "ok"]
    verdict = f"not ok: {', '.join(failed)}" if failed else "every part ok"
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}: {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "experiments" / "gpu"
    parser.add_argument(
        "--out", type=Path, default=out, help="where both files go (default $OUT, else experiments/gpu)"
    )
    parser.add_argument("--budget", type=float, default=420, help="seconds after which no part or run starts")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="these parts instead of all")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, help="the models part's models")
    parser.add_argument("--bench-models", nargs="+", choices=list(benchmark.MODELS), default=list(benchmark.MODELS))
    parser.add_argument("--bench-epochs", type=int, default=2, help="epochs per benchmark side (median: from the 2nd)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the full ch8_2_cnn run (42, 43, …)")
    parser.add_argument("--idx-dir", type=Path, help="the four IDX files (default .gl/fashion-mnist or Debian's)")
    parser.add_argument(
        "--dry-run", action="store_true", help="on the CPU, 1-2 steps of everything on --idx-dir: the plumbing only"
    )
    return parser.parse_args(argv)


def guarded(part: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
    """One part: its result, or the error that stopped it; skipped after the budget. `ok` = ran and passed its
    checks (each part's `checks` say which)."""
    if time.monotonic() > deadline:
        return {"status": "skipped", "seconds": 0, "reason": "over the time budget"}
    start = time.monotonic()
    result = attempt(part)
    status = "error" if "error" in result else "ok" if all(result.get("checks", {}).values()) else "failed"
    return {"status": status, "seconds": round(time.monotonic() - start, 1), **result}


def attempt(function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """function()'s result, or {"error": its last line, "traceback": …}; SystemExit too (benchmark.py's `error:`)."""
    try:
        return function()
    except (Exception, SystemExit) as error:
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}


class Check:
    """The parts, sharing the data, the work folder, the device and the deadline."""

    def __init__(
        self, work: Path, idx_dir: Path, args: argparse.Namespace, cuda: bool, deadline: float, report: dict[str, Any]
    ) -> None:
        self.work, self.args, self.cuda, self.deadline, self.report = work, args, cuda, deadline, report
        self.part, self.part_started = "", 0.0
        self.data = [f"data.idx_dir={idx_dir.resolve()}", f"data.root={work / 'data'}", "data.download=false"]
        self.idx_dir = idx_dir
        self.dry = DRY_RUN if args.dry_run else []
        # On a dry run the CPU stands in for the GPU, in bf16 where it computes bf16 in hardware.
        self.gpu = "gpu" if cuda else "cpu"
        self.bf16 = "gpu_bf16" if cuda else "cpu_bf16" if cpu_has_native_bf16() else None

    def tests(self) -> dict[str, Any]:
        """The tests marked `cuda`, training on the GPU; a dry run only collects them. Only the files that mark
        some are collected: others import what the GPU machine may lack (nbclient, submitit)."""
        junit = self.work / "tests.xml"
        files = [
            f"tests/{path.name}" for path in sorted((ROOT / "tests").glob("test_*.py")) if CUDA in path.read_text()
        ]
        selection = ["--collect-only"] if self.args.dry_run else ["--accelerator=gpu", f"--junitxml={junit}"]
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *selection, *files]
        summary = run_command(command, self.left())
        summary["checks"] = {"pytest exit status 0": summary["returncode"] == 0}
        if self.args.dry_run or not junit.exists():  # not written when pytest stops before running (a usage error)
            return summary
        suite = ElementTree.parse(junit).getroot().find("testsuite")
        failed = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
        return (
            summary
            | {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
            | {"failed": failed}
        )

    def models(self) -> dict[str, Any]:
        runs, reference = [], {}
        default_n = compose_config("train", [], None).steps_per_execution
        for model in self.args.models:
            reference[model] = self.one_epoch(model, "cpu", default_n)
            for trainer in (self.gpu, self.bf16):
                for n in (1, default_n):
                    runs.append(self.one_epoch(model, trainer, n, reference[model].get("val_accuracy")))
            self.save({"cpu": reference, "runs": runs})
        checks = {
            f"{r['model']} {r['trainer']} N={r['steps_per_execution']} within a point of the CPU": r.get("within")
            is True
            for r in runs
        }
        return {"cpu": reference, "runs": runs, "checks": checks}

    def one_epoch(self, model: str, trainer: str | None, n: int, cpu_accuracy: float | None = None) -> dict[str, Any]:
        """One epoch of `python train.py model=<model> trainer=<trainer> steps_per_execution=<n>`, seed 42."""
        result = {"model": model, "trainer": trainer, "steps_per_execution": n}
        if trainer is None:
            return result | {"skipped": "this CPU computes no bf16 in hardware (dry run)"}
        if time.monotonic() > self.deadline:
            return result | {"skipped": "over the time budget"}
        role = "reference" if cpu_accuracy is None else "check"  # a dry run's stand-in for the GPU is the CPU too
        output_dir = self.work / "models" / f"{model}_{trainer}_n{n}_{role}"
        overrides = [f"model={model}", f"trainer={trainer}", f"steps_per_execution={n}", "trainer.max_epochs=1"]
        cfg = compose_config("train", [*overrides, *self.common()], output_dir)
        return result | attempt(lambda: self.measure(cfg, output_dir, cpu_accuracy))

    def measure(self, cfg: Any, output_dir: Path, cpu_accuracy: float | None) -> dict[str, Any]:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        metrics, _, trainer = run(cfg)
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda and cfg.trainer.accelerator == "gpu" else None
        [epoch] = read_history(output_dir / "history.csv")
        updates = trainer.global_step
        result = {
            "val_accuracy": metrics["val_accuracy"],
            "epoch_s": epoch["time"],
            "updates": updates,
            "updates_per_s": round(updates / epoch["time"], 1),
            "peak_gpu_mib": None if peak is None else round(peak, 1),
        }
        if cpu_accuracy is not None:
            delta = metrics["val_accuracy"] - cpu_accuracy
            result |= {"delta_vs_cpu": round(delta, 4), "within": abs(delta) <= TOLERANCE}
        return result

    def cnn(self) -> dict[str, Any]:
        """reproduce.py's job for the preset, one seed at a time (the budget is checked between them)."""
        epochs = ["trainer.max_epochs=2"] if self.args.dry_run else []  # the preset's 20, early stopping on
        overrides = [f"trainer={self.gpu}", *self.data, *self.dry, *epochs]
        runs_dir = self.work / "cnn"
        [job] = reproduce.sweep_jobs(PRESET, overrides)
        for seed in range(42, 42 + self.args.seeds):
            if time.monotonic() > self.deadline:
                break
            reproduce.run_job(job, [seed], overrides, runs_dir, {})
        if job.error:
            return {"error": job.error, "seeds": job.seeds}
        bands = {}
        for entry in job.book:
            values = reproduce.entry_values(job, entry)
            mean = statistics.mean(values)
            inside = reproduce.in_band(entry, mean)
            bands[entry["key"]] = {"book": entry["value"], "band": entry["band"], "ours": values, "mean": mean}
            bands[entry["key"]]["inside"] = inside
        scores = [
            {key: s.get(key) for key in ("val_accuracy", "test_accuracy", "epochs", "epoch_time")} for s in job.scores
        ]
        return {
            "seeds": job.seeds,
            "scores": scores,
            "book": bands,
            "results_md_row": reproduce.table_row(job),
            # generated data (a dry run) is nowhere near the book's numbers: there they are shown, not checked
            "checks": {} if self.args.dry_run else {f"{k} in the book's band": v["inside"] for k, v in bands.items()},
        }

    def ddp(self) -> dict[str, Any]:
        processes = min(2, torch.cuda.device_count()) if self.cuda else 1
        run_dir = self.work / "ddp"
        command = [
            sys.executable,
            "train.py",
            "trainer=ddp",
            f"trainer.accelerator={self.gpu}",
            f"trainer.devices={processes}",
            "model=dropout_mlp",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "~logger",
            f"hydra.run.dir={run_dir}",
            *self.data,
            *self.dry,
        ]
        result = run_command(command, self.left())
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        checks = {"exit status 0": result["returncode"] == 0, "metrics.json written": metrics is not None}
        return result | {"processes": processes, "metrics": metrics, "checks": checks}

    def benchmark(self) -> dict[str, Any]:
        """benchmark.run_model per model: the plain loop side by side with hgmldl at the default
        steps_per_execution, and its guests (one process each, taking turns): N=1, N=500, bf16, compile=true."""
        results, checks = [], {}
        extra = self.data  # no limits on a dry run either: the plain loop runs whole epochs, as hgmldl must
        for model in self.args.bench_models:
            if time.monotonic() > self.deadline:
                results.append({"model": model, "skipped": "over the time budget"})
                continue
            guests = ["hgmldl_n1", LARGE_N]
            guests += ["hgmldl_bf16"] if self.bf16 else []
            guests += ["hgmldl_compile"] if model in COMPILED and not self.args.dry_run else []
            result = attempt(
                lambda model=model, guests=guests: benchmark.run_model(
                    model, self.args.bench_epochs, self.work, extra, None, guests, self.idx_dir
                )
            )
            if "error" not in result:
                plain = result["plain"]["median_s"]
                sides = ["hgmldl", *guests]
                result["over_plain"] = {side: round(result[side]["median_s"] / plain, 3) for side in sides}
                if "hgmldl_compile" in result:
                    result["compile_over_eager"] = round(
                        result["hgmldl_compile"]["median_s"] / result["hgmldl"]["median_s"], 3
                    )
                if not self.args.dry_run:  # epochs of a few updates on generated data time the overhead, not the speed
                    checks[f"{model}: hgmldl ÷ plain ≤ {TARGET}"] = result["ratio"] <= TARGET
            else:
                checks[f"{model}: ran"] = False
            results.append({"model": model, **result})
            self.save({"epochs": self.args.bench_epochs, "results": results})
        return {"epochs": self.args.bench_epochs, "results": results, "checks": checks}

    def save(self, so_far: dict[str, Any]) -> None:
        """Writes both files with what this part has measured so far: a run cut short (a timeout) keeps it."""
        seconds = round(time.monotonic() - self.part_started, 1)
        self.report["parts"][self.part] = {"status": "unfinished", "seconds": seconds, **so_far}
        write(self.report, self.args.out)

    def common(self) -> list[str]:
        """What every in-process run adds to its overrides: the data, no progress bar or TensorBoard."""
        return [*self.data, *self.dry, "trainer.enable_progress_bar=false", "~logger"]

    def left(self) -> float:
        """Seconds a subprocess may take: what is left of the budget, and at least a minute."""
        return max(60.0, self.deadline - time.monotonic())


def run_command(command: list[str], timeout: float) -> dict[str, Any]:
    """A command run from the repository: its command line, exit status, last line and the end of its output."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    output = (result.stdout + result.stderr).strip()
    return {
        "command": shlex.join(["python", *command[1:]]),
        "returncode": result.returncode,
        "last_line": output.rsplit("\n", 1)[-1],
        "output_tail": output[-3000:],
    }


def machine() -> dict[str, Any]:
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {"gpus": gpus, "cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform()}


def write(report: dict[str, Any], out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    gpus = report["machine"]["gpus"]
    lines = [
        "# CUDA check: hgmldl on a GPU" + (" (dry run on a CPU: plumbing only)" if report["dry_run"] else ""),
        "",
        f"`{report['command']}`, {report['date']}, {report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget.",
        f"GPU: {', '.join(gpus) or 'none'}; {report['machine']['cpus']} CPUs ({report['machine']['cpu']}); "
        + ", ".join(f"{name} {version}" for name, version in report["versions"].items())
        + ".",
        "",
        "| part | status | seconds | checks passed | not passed |",
        "|---|---|---|---|---|",
    ]
    for name, part in report["parts"].items():
        checks = part.get("checks", {})
        failing = [check for check, passed in checks.items() if not passed]
        note = part.get("error") or part.get("reason") or "; ".join(failing)
        lines.append(
            f"| {name} | {part['status']} | {part['seconds']} | {len(checks) - len(failing)}/{len(checks)} | {cell(note)} |"
        )
    for name, part in report["parts"].items():
        if "error" not in part and part["status"] != "skipped":
            lines += ["", *SECTIONS[name](part)]
    return "\n".join(lines) + "\n"


def cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


def number(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def tests_section(part: dict[str, Any]) -> list[str]:
    lines = ["## The tests marked `cuda`", "", f"`{part['command']}`: exit status {part['returncode']}."]
    lines.append(f"Its last line: `{cell(part['last_line'])}`")
    return lines + [f"- failed: `{name}`" for name in part.get("failed", [])]


def models_section(part: dict[str, Any]) -> list[str]:
    lines = [
        "## Every model, one epoch, seed 42: the GPU against the CPU",
        "",
        "CPU: the same command with trainer=cpu on this machine's cores, at the default steps_per_execution. "
        "s/epoch: training and validation of the one epoch (the History's `time`), CUDA warm-up included.",
        "",
        "| model | trainer | steps_per_execution | val_accuracy | CPU's | Δ (points) | within a point | s/epoch | "
        "updates/s | peak GPU MiB |",
        "|---" * 10 + "|",
    ]
    for r in part["runs"]:
        cpu = part["cpu"].get(r["model"], {})
        note = r.get("error") or r.get("skipped")
        if note:
            lines.append(f"| {r['model']} | {r['trainer']} | {r['steps_per_execution']} | {cell(note)} |||||||")
            continue
        delta = None if r.get("delta_vs_cpu") is None else 100 * r["delta_vs_cpu"]
        within = {True: "yes", False: "**no**"}.get(r.get("within"), "–")
        cells = [r["model"], r["trainer"], r["steps_per_execution"], number(r["val_accuracy"])]
        cells += [number(cpu.get("val_accuracy")), number(delta, 2), within, number(r["epoch_s"], 2)]
        cells += [number(r["updates_per_s"], 0), number(r["peak_gpu_mib"], 0)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def cnn_section(part: dict[str, Any]) -> list[str]:
    return [
        f"## {PRESET} in full on the GPU, seeds {', '.join(map(str, part['seeds']))}",
        "",
        "The row as scripts/reproduce.py writes it in experiments/RESULTS.md:",
        "",
        "| preset | command | book | ours | in band | params | epochs run (stopped epoch) | s/epoch | s/run | device |",
        "|---" * 10 + "|",
        part["results_md_row"],
    ]


def ddp_section(part: dict[str, Any]) -> list[str]:
    metrics = part.get("metrics") or {}
    return [
        f"## DDP: {part['processes']} process{'es' if part['processes'] > 1 else ''}",
        "",
        f"`{part['command']}`: exit status {part['returncode']}, val_accuracy {number(metrics.get('val_accuracy'))}.",
        f"Last line: `{cell(part['last_line'])}`",
    ]


def benchmark_section(part: dict[str, Any]) -> list[str]:
    large_n = benchmark.HGMLDL_VARIANTS[LARGE_N][0].removeprefix("steps_per_execution=")
    sides = {"hgmldl": "default N", "hgmldl_n1": "N=1", LARGE_N: f"N={large_n}", "hgmldl_bf16": "bf16"}
    sides["hgmldl_compile"] = "compile"
    lines = [
        f"## scripts/benchmark.py on the GPU: hgmldl ÷ the plain loop (target ≤ {TARGET})",
        "",
        f"Side by side in one process per model, {part['epochs']} epochs a side, median from the second epoch; "
        "each column is that hgmldl side's seconds per epoch over the plain loop's.",
        "",
        "| model (batch) | plain s/epoch | "
        + " | ".join(f"{label} ÷ plain" for label in sides.values())
        + " | compile ÷ eager | updates/s hgmldl / plain |",
        "|---" * (len(sides) + 4) + "|",
    ]
    for r in part["results"]:
        note = r.get("error") or r.get("skipped")
        if note:
            lines.append(f"| {r['model']} | {cell(note)} |" + "|" * (len(sides) + 2))
            continue
        ratios = [number(r["over_plain"].get(side), 2) for side in sides]
        speed = f"{r['hgmldl']['updates_per_s']:.0f} / {r['plain']['updates_per_s']:.0f}"
        cells = [f"{r['model']} ({r['batch_size']})", number(r["plain"]["median_s"], 2), *ratios]
        lines.append("| " + " | ".join([*cells, number(r.get("compile_over_eager"), 2), speed]) + " |")
    return lines


SECTIONS = {
    "tests": tests_section,
    "models": models_section,
    "cnn": cnn_section,
    "ddp": ddp_section,
    "benchmark": benchmark_section,
}

if __name__ == "__main__":
    main()
