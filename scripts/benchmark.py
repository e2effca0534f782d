"""Speed: hgmldl's real training path against a plain PyTorch loop written for speed, side by side; with
--keras the book's own Keras code (on TensorFlow, and on torch with KERAS_BACKEND=torch), with --bf16 hgmldl in
bfloat16 as well.

    .venv/bin/python scripts/benchmark.py [--models cnn mlp] [--epochs 5] [--keras [tensorflow] [torch]] [--bf16]
    .venv/bin/python scripts/benchmark.py --quick --idx-dir DIR   # seconds, on generated IDX files (the tests)

Each model runs as one `python train.py` process — the user's command, with its callbacks (checkpoints, History,
EarlyStopping with a patience that never triggers) and TensorBoard logging — plus scripts/side_by_side.py's
`SideBySide` callback. That callback runs one epoch of the plain loop, the benchmark's floor, between hgmldl's
epochs, in the same process, on the same tensors, threads and device, so machine noise hits both sides alike. The
other sides (hgmldl in bf16, hgmldl with one update per Lightning step, the book's Keras code in
scripts/benchmark_keras.py, once per Keras backend) are processes of their own that take their turn after the plain loop's epoch: hgmldl 0,
plain 0, bf16 0, Keras 0, hgmldl 1, … Only one side computes at a time; the others wait on a pipe. Start-up is the
time from launching `python train.py` to its first training step.
"""

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from hgmldl.api import compose_config
from hgmldl.data import FashionMNISTDataModule
from hgmldl.errors import UserError
from hgmldl.hardware import BF16_FEATURES, check_cpu_bf16, cpu_has_native_bf16, cpu_name

ROOT = Path(__file__).resolve().parents[1]

TARGET = 1.10  # hgmldl ÷ the plain loop, for every model at the default steps_per_execution (docs/performance.md)

# The book's runs: (optimizer, batch size). softmax/mlp: 7-1/7-2 compile() defaults; dropout_mlp: 7-3; cnn: 8-2;
# dense512: Deep Learning with Python ch. 2.
MODELS = {
    "softmax": ("rmsprop", 32),
    "mlp": ("rmsprop", 32),
    "dropout_mlp": ("adam", 32),
    "dense512": ("rmsprop", 128),
    "cnn": ("adam", 32),
}

# The sides besides hgmldl and the plain loop, in the order they take their turn, and the columns they get.
HGMLDL_VARIANTS = {
    "hgmldl_n1": ["steps_per_execution=1"],  # the textbook step: one optimizer update per Lightning step
    "hgmldl_bf16": ["trainer.precision=bf16-mixed"],
    # scripts/gpu_check.py's: where a GPU update takes microseconds, a larger N and torch.compile are measured too
    "hgmldl_n500": ["steps_per_execution=500"],  # three executions per epoch of 1,500 updates
    "hgmldl_compile": ["compile=true"],
}
# The book's Keras code, one side per Keras 3 backend (KERAS_BACKEND): the side's name and what it needs installed.
KERAS = "keras"  # on TensorFlow, the book's own set-up
KERAS_TORCH = "keras_torch"  # the same code on torch, as the book's second edition shows in 7-1
KERAS_SIDES = {"tensorflow": KERAS, "torch": KERAS_TORCH}
KERAS_NEEDS = {KERAS: ("tensorflow", "sklearn"), KERAS_TORCH: ("keras", "sklearn")}


def train_command(model: str, epochs: int, run_dir: Path, overrides: list[str]) -> list[str]:
    """`python train.py` for one benchmark model, with the book's optimizer and batch size, every epoch run."""
    optimizer, batch_size = MODELS[model]
    return [
        sys.executable,
        "train.py",
        f"model={model}",
        f"optimizer={optimizer}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={epochs}",
        "callbacks.early_stopping.patience=1000000",  # every epoch runs; the callback still checks and copies
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def run_model(
    model: str, epochs: int, work_dir: Path, extra: list[str], threads: int | None, guests: list[str], data: Path
) -> dict[str, Any]:
    """One `python train.py` process with SideBySide, and one process per guest side taking turns with it; returns
    the timings of every side, start-up and peak RSS. `data` holds the IDX files hgmldl reads (for Keras)."""
    optimizer, batch_size = MODELS[model]
    # torch.utils.tensorboard imports TensorFlow whenever it is installed (the `bench` extra), which costs hgmldl's
    # processes seconds of start-up and hundreds of MB; a `tensorflow` that fails to import, first on their path,
    # gives them what a user without the extra has: TensorBoard's own stub.
    no_tensorflow = work_dir / "no_tensorflow"
    (no_tensorflow / "tensorflow").mkdir(parents=True, exist_ok=True)
    (no_tensorflow / "tensorflow" / "__init__.py").write_text('raise ImportError("not in hgmldl\'s benchmark runs")\n')
    path = [str(no_tensorflow), str(ROOT / "scripts"), os.environ.get("PYTHONPATH")]
    hgmldl_env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, path))}
    if threads:
        hgmldl_env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, for every hgmldl side
    logs: dict[str, Path] = {}
    processes: dict[str, subprocess.Popen] = {}

    def launch(side: str, command: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        logs[side] = work_dir / f"{model}.{side}.log"
        env = os.environ | {"KERAS_BACKEND": backend_of(side)} if side in KERAS_NEEDS else hgmldl_env
        with open(logs[side], "w") as log:
            processes[side] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds
            )
        return processes[side]

    def fail(*sides: str) -> None:
        """One side's failure ends the others (a guest waits for its turn, the host for a guest): shows the end of
        each failed side's output, then one line."""
        for process in processes.values():
            process.kill()
            process.wait()
        for side in sides:
            sys.stderr.write(f"--- {side}, model={model}:\n{logs[side].read_text()[-3000:]}\n")
        sys.exit(f"error: {', '.join(sides)} failed for model={model} (the end of the output is above)")

    # Guests start one after another and wait, ready, while the next one and then the host start up.
    host_fds: list[tuple[int, int]] = []
    for side in guests:
        turn_read, turn_write = os.pipe()
        done_read, done_write = os.pipe()
        out = work_dir / f"{model}.{side}.json"
        if side in KERAS_NEEDS:
            command = [
                sys.executable,
                "scripts/benchmark_keras.py",
                model,
                f"--optimizer={optimizer}",
                f"--batch-size={batch_size}",
                f"--epochs={epochs}",
                f"--data={data}",
                f"--out={out}",
                f"--turn-fd={turn_read}",
                f"--done-fd={done_write}",
                *([f"--threads={threads}"] if threads else []),
            ]
        else:
            command = train_command(
                model,
                epochs,
                work_dir / f"{model}.{side}",
                [
                    *HGMLDL_VARIANTS[side],
                    "+callbacks.take_turns._target_=side_by_side.TakeTurns",
                    f"+callbacks.take_turns.out={out}",
                    f"+callbacks.take_turns.turn_fd={turn_read}",
                    f"+callbacks.take_turns.done_fd={done_write}",
                    *extra,
                ],
            )
        launch(side, command, pass_fds=(turn_read, done_write))
        os.close(turn_read)  # the guest holds these ends now: its exit closes them, which the host sees
        os.close(done_write)
        if os.read(done_read, 1) != b"r":
            fail(side)
        host_fds.append((turn_write, done_read))

    out = work_dir / f"{model}.json"
    command = train_command(
        model,
        epochs,
        work_dir / model,
        [
            "+callbacks.side_by_side._target_=side_by_side.SideBySide",
            f"+callbacks.side_by_side.out={out}",
            f"+callbacks.side_by_side.guests={[list(fds) for fds in host_fds]}".replace(" ", ""),
            *extra,
        ],
    )
    load = os.getloadavg()[0]
    launched_at = time.time()
    host = launch("hgmldl", command, pass_fds=tuple(fd for fds in host_fds for fd in fds))
    for fd in (fd for fds in host_fds for fd in fds):
        os.close(fd)
    _, status, usage = os.wait4(host.pid, 0)  # this child's own rusage, not the maximum over all children
    host.returncode = os.waitstatus_to_exitcode(status)
    for side in guests:
        processes[side].wait()
    if failed := [side for side, process in processes.items() if process.returncode != 0]:
        fail(*failed)

    result = json.loads(out.read_text())
    sides = {side: summarise(result[side], epochs) for side in ("hgmldl", "plain")}
    versions = {}
    for side in guests:
        guest = json.loads((work_dir / f"{model}.{side}.json").read_text())
        sides[side] = summarise(guest, epochs)
        if "backend" in guest:  # the Keras backend that ran the book's code
            sides[side]["backend"] = guest["backend"]
        versions |= guest.get("versions", {})
    return {
        "model": model,
        "optimizer": optimizer,
        "batch_size": batch_size,
        "device": result["device"],
        "threads": result["threads"],
        "tensorflow_imported": result["tensorflow_imported"],
        "load_average_1min": load,
        **sides,
        "ratio": sides["hgmldl"]["median_s"] / sides["plain"]["median_s"],
        "ratios": ratios(sides),
        "startup_s": result["first_step_at"] - launched_at,
        "peak_rss_mb": {"hgmldl": result["hgmldl_peak_rss_mb"], "process": usage.ru_maxrss / 1024},
        "versions": versions,
    }


def ratios(sides: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Median epoch of one side over another's, for the pairs the table shows (above 1: the first is slower)."""
    pairs = {
        "hgmldl_over_plain": ("hgmldl", "plain"),
        "n1_over_hgmldl": ("hgmldl_n1", "hgmldl"),
        "bf16_over_fp32": ("hgmldl_bf16", "hgmldl"),
        "keras_over_hgmldl": (KERAS, "hgmldl"),
        "keras_over_bf16": (KERAS, "hgmldl_bf16"),
        "keras_torch_over_hgmldl": (KERAS_TORCH, "hgmldl"),
        "keras_torch_over_keras": (KERAS_TORCH, KERAS),
    }
    return {
        name: sides[a]["median_s"] / sides[b]["median_s"] for name, (a, b) in pairs.items() if a in sides and b in sides
    }


def summarise(side: dict[str, Any], epochs: int) -> dict[str, Any]:
    seconds = side["epoch_seconds"]
    median = statistics.median(seconds[1:] or seconds)
    updates_per_epoch = side["updates"] // epochs
    return {
        "epoch_seconds": seconds,
        "first_s": seconds[0],
        "median_s": median,
        "updates": side["updates"],
        "updates_per_s": updates_per_epoch / median,
        "val_accuracy": side["val_accuracy"][-1],
    }


# The table's optional columns: (side, heading, ratios shown after it as (key, heading)).
GUEST_COLUMNS = [
    ("hgmldl_n1", "hgmldl N=1", [("n1_over_hgmldl", "N=1 ÷ hgmldl")]),
    ("hgmldl_bf16", "hgmldl bf16", [("bf16_over_fp32", "bf16 ÷ fp32")]),
    (KERAS, "Keras", [("keras_over_hgmldl", "Keras ÷ hgmldl"), ("keras_over_bf16", "Keras ÷ bf16")]),
    (
        KERAS_TORCH,
        "Keras on torch",
        [("keras_torch_over_hgmldl", "Keras on torch ÷ hgmldl"), ("keras_torch_over_keras", "torch ÷ TF backend")],
    ),
]


def table(results: list[dict[str, Any]]) -> str:
    def seconds(side: dict[str, Any]) -> str:
        return f"{side['median_s']:.2f} ({side['first_s']:.2f})"

    present = [column for column in GUEST_COLUMNS if column[0] in results[0]]
    headings = ["model (batch)", "hgmldl s/epoch (first)", "plain loop s/epoch (first)", "hgmldl ÷ plain"]
    for _side, heading, shown in present:
        headings.append(f"{heading} s/epoch (first)")
        headings += [label for key, label in shown if key in results[0]["ratios"]]
    headings += ["updates/s hgmldl / plain", "peak RSS MB hgmldl / process", "start-up s"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for r in results:
        a, b = r["hgmldl"], r["plain"]
        cells = [f"{r['model']} ({r['batch_size']})", seconds(a), seconds(b), f"{r['ratio']:.2f}"]
        for side, _heading, shown in present:
            cells.append(seconds(r[side]))
            cells += [f"{r['ratios'][key]:.2f}" for key, label in shown if key in r["ratios"]]
        cells += [
            f"{a['updates_per_s']:.0f} / {b['updates_per_s']:.0f}",
            f"{r['peak_rss_mb']['hgmldl']:.0f} / {r['peak_rss_mb']['process']:.0f}",
            f"{r['startup_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def backend_of(side: str) -> str:
    return next(backend for backend, name in KERAS_SIDES.items() if name == side)


def check_keras(sides: list[str]) -> None:
    """The Keras sides need their backend (TensorFlow, or Keras alone on torch) and scikit-learn (the book's
    train_test_split) in this environment; looked up without importing any, so hgmldl's processes never load them."""
    needed = dict.fromkeys(name for side in sides for name in KERAS_NEEDS[side])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"error: --keras runs the book's Keras code, which needs {' and '.join(missing)}: pip install -e '.[bench]'"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=5, help="epochs per side; the median skips the first")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch's CPU threads (default: torch's own, one per core); 1 keeps a machine that other jobs load "
        "from stalling every parallel op on a descheduled thread",
    )
    parser.add_argument(
        "--keras",
        nargs="*",
        choices=list(KERAS_SIDES),
        help="also run the book's Keras code on these Keras backends (alone: both; needs pip install -e '.[bench]')",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also run hgmldl with trainer.precision=bf16-mixed (a bf16 CPU or a GPU)"
    )
    parser.add_argument(
        "--textbook-step",
        action="store_true",
        help="also run hgmldl with steps_per_execution=1, the textbook Lightning step: what the default N saves",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs on generated data (needs --idx-dir): a smoke test"
    )
    parser.add_argument("--idx-dir", help="train on the four IDX files in this folder instead of Fashion-MNIST")
    args = parser.parse_args()
    if args.quick and not args.idx_dir:
        sys.exit("error: --quick trains on small generated data: give its folder with --idx-dir")
    epochs = 2 if args.quick else args.epochs
    if epochs < 1:
        sys.exit("error: --epochs must be at least 1")
    keras_sides = [] if args.keras is None else [KERAS_SIDES[name] for name in args.keras or KERAS_SIDES]
    if keras_sides:
        check_keras(keras_sides)
    if args.bf16:
        try:
            check_cpu_bf16(OmegaConf.create({"accelerator": "auto", "precision": "bf16-mixed"}))
        except UserError:
            sys.exit(
                "error: --bf16 measures bfloat16 where it is computed in hardware, and this machine has no GPU and "
                f"a CPU without {' or '.join(BF16_FEATURES[:2])} (train.py would stop): leave out --bf16 here"
            )
    guests = [side for side, wanted in (("hgmldl_n1", args.textbook_step), ("hgmldl_bf16", args.bf16)) if wanted]
    guests += keras_sides
    results, load_at_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hgmldl-bench-") as work:
        extra, data_root = [], ROOT / "data"  # conf/data's root, relative to train.py's folder
        if args.idx_dir:
            data_root = Path(work) / "data"
            extra = [f"data.idx_dir={Path(args.idx_dir).resolve()}", f"data.root={data_root}", "data.download=false"]
        data = FashionMNISTDataModule(str(data_root), idx_dir=args.idx_dir, download=not args.idx_dir)
        if keras_sides:  # lays the IDX files out where train.py reads them, and Keras reads the same files
            try:
                data.prepare_data()
            except UserError as error:
                sys.exit(f"error: {error}")
        for model in args.models:
            results.append(run_model(model, epochs, Path(work), extra, args.threads, guests, data.raw_dir))
            ratios_line = ", ".join(f"{name} {value:.2f}" for name, value in results[-1]["ratios"].items())
            print(f"{model}: {ratios_line}", file=sys.stderr, flush=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__}
    for result in results:
        versions |= result.pop("versions")
    report = {
        "command": shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_name()}",
        "cpu_bf16": cpu_has_native_bf16(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": versions,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "epochs": epochs,
        "steps_per_execution": compose_config("train", [], None).steps_per_execution,  # hgmldl's default
        "quick": args.quick,
        "results": results,
    }
    print(header(report))
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def header(report: dict[str, Any]) -> str:
    """The lines a table needs to be read later: the command, the date, the machine and the software."""
    load = f"{report['load_average_at_start'][0]:.1f} → {report['load_average_at_end'][0]:.1f}"
    return "\n".join(
        [
            f"`{report['command']}`, {report['date']}",
            f"{report['machine']}; bf16 in hardware: {'yes' if report['cpu_bf16'] else 'no'}; "
            f"GPU: {report['cuda'] or 'none'}; 1-minute load average {load}",
            ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
            f"hgmldl: python train.py with steps_per_execution={report['steps_per_execution']} (the default) unless "
            "a column says otherwise. Seconds per epoch of training plus validation: median of epochs 2-N "
            "(the first epoch in brackets).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
