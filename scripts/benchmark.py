"""Speed: hgmldl's real training path against a plain PyTorch loop written for speed, side by side.

    .venv/bin/python scripts/benchmark.py [--models cnn mlp] [--epochs 5] [--out bench.json]
    .venv/bin/python scripts/benchmark.py --quick --idx-dir DIR   # seconds, on generated IDX files (the tests)

Each model runs as one `python train.py` process — the user's command, with its callbacks (checkpoints, History,
EarlyStopping with a patience that never triggers) and TensorBoard logging — plus the `SideBySide` callback below.
That callback runs one epoch of the plain loop between hgmldl's epochs, in the same process, on the same tensors,
threads and device, so machine noise hits both sides alike. Start-up is the time from launching `python train.py`
to its first training step.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from hgmldl.models import keras_init_

ROOT = Path(__file__).resolve().parents[1]

# The book's runs: (optimizer, batch size). softmax/mlp: 7-1/7-2 compile() defaults; dropout_mlp: 7-3; cnn: 8-2;
# dense512: Deep Learning with Python ch. 2.
MODELS = {
    "softmax": ("rmsprop", 32),
    "mlp": ("rmsprop", 32),
    "dropout_mlp": ("adam", 32),
    "dense512": ("rmsprop", 128),
    "cnn": ("adam", 32),
}


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PlainLoop:
    """What a careful hand-written loop does: tensors in memory, one `randperm` per epoch, each minibatch gathered
    with `index_select` (cheaper here than gathering the whole epoch and slicing it), channels-last convolutions,
    zero_grad/backward/step per minibatch, loss and correct count summed on the device, a large-batch evaluation.
    Same model, Keras initialisation, optimizer settings, data and batch sizes as the hgmldl run it sits in."""

    def __init__(self, module: L.LightningModule, datamodule: L.LightningDataModule, seed: int) -> None:
        self.data = datamodule
        self.device = datamodule.train_images.device
        torch.manual_seed(seed)
        self.net = keras_init_(instantiate(module.hparams.model)).to(self.device, memory_format=torch.channels_last)
        self.optimizer = instantiate(module.hparams.optimizer, params=self.net.parameters())
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.updates = 0

    def epoch(self) -> dict[str, float]:
        """One training epoch and one validation pass; returns the four History numbers."""
        batch_size, eval_batch_size = self.data.batch_size, self.data.eval_batch_size
        images, labels = self.data.train_images, self.data.train_labels
        order = torch.randperm(len(labels), device=self.device, generator=self.generator)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.net.train()
        for indices in order.split(batch_size):
            x, y = images.index_select(0, indices), labels.index_select(0, indices)
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            self.updates += 1
        history = {"loss": float(loss_sum) / len(labels), "accuracy": float(correct) / len(labels)}
        self.net.eval()
        with torch.inference_mode():
            val_loss, val_correct = 0.0, 0
            for x, y in zip(
                self.data.val_images.split(eval_batch_size), self.data.val_labels.split(eval_batch_size), strict=True
            ):
                logits = self.net(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                val_correct += (logits.argmax(dim=1) == y).sum()
        count = len(self.data.val_labels)
        return history | {"val_loss": float(val_loss) / count, "val_accuracy": float(val_correct) / count}


class SideBySide(L.Callback):
    """Times hgmldl's epochs start to start (training, validation, checkpoint, History, logging: everything the
    Trainer does) and runs one plain-loop epoch in between, outside hgmldl's timed windows:
    hgmldl 0, plain 0, hgmldl 1, plain 1, … The plain loop draws dropout from a forked RNG, so hgmldl's
    trajectory is the one `train.py` alone gives. Writes everything to `out` when training ends."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.first_step_at: float | None = None
        self.epoch_started = 0.0
        self.hgmldl: dict[str, list] = {"epoch_seconds": [], "val_accuracy": []}
        self.plain: dict[str, list] = {"epoch_seconds": [], "val_accuracy": []}
        self.loop: PlainLoop | None = None
        self.hgmldl_peak_rss_mb = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()  # wall clock: compared with the launch time in the parent process

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._between_epochs(trainer, pl_module)
        self.epoch_started = clock(pl_module.device)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._between_epochs(trainer, pl_module)
        result = {
            "first_step_at": self.first_step_at,
            "hgmldl_peak_rss_mb": self.hgmldl_peak_rss_mb,
            "device": str(pl_module.device),
            "threads": torch.get_num_threads(),
            "hgmldl": self.hgmldl | {"updates": trainer.global_step},
            "plain": self.plain | {"updates": self.loop.updates},
        }
        self.out.write_text(json.dumps(result, indent=2) + "\n")

    def _between_epochs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hgmldl["epoch_seconds"].append(clock(pl_module.device) - self.epoch_started)
        self.hgmldl["val_accuracy"].append(float(trainer.callback_metrics["val_accuracy"]))
        if self.loop is None:  # hgmldl's peak through set-up and a whole epoch, before the loop allocates anything
            self.hgmldl_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.loop is None:
                self.loop = PlainLoop(pl_module, trainer.datamodule, seed=trainer.datamodule.seed)
            started = clock(pl_module.device)
            history = self.loop.epoch()
            self.plain["epoch_seconds"].append(clock(pl_module.device) - started)
        self.plain["val_accuracy"].append(history["val_accuracy"])


def run_model(model: str, epochs: int, work_dir: Path, extra: list[str], threads: int | None) -> dict[str, Any]:
    """One `python train.py` process with SideBySide; returns its timings, start-up and peak RSS."""
    optimizer, batch_size = MODELS[model]
    out = work_dir / f"{model}.json"
    command = [
        sys.executable,
        "train.py",
        f"model={model}",
        f"optimizer={optimizer}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={epochs}",
        "callbacks.early_stopping.patience=1000000",  # every epoch runs; the callback still checks and copies
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={work_dir / model}",
        "+callbacks.side_by_side._target_=benchmark.SideBySide",
        f"+callbacks.side_by_side.out={out}",
        *extra,
    ]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "scripts"), os.environ.get("PYTHONPATH")]))
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads, for both sides
    load = os.getloadavg()[0]
    with open(work_dir / f"{model}.log", "w") as log:
        launched_at = time.time()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not the maximum over all children
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write((work_dir / f"{model}.log").read_text()[-4000:])
        sys.exit(f"error: train.py failed for model={model} (the end of its output is above)")
    result = json.loads(out.read_text())
    sides = {side: summarise(result[side], epochs) for side in ("hgmldl", "plain")}
    return {
        "model": model,
        "optimizer": optimizer,
        "batch_size": batch_size,
        "device": result["device"],
        "threads": result["threads"],
        "load_average_1min": load,
        **sides,
        "ratio": sides["hgmldl"]["median_s"] / sides["plain"]["median_s"],
        "startup_s": result["first_step_at"] - launched_at,
        "peak_rss_mb": {"hgmldl": result["hgmldl_peak_rss_mb"], "process": usage.ru_maxrss / 1024},
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


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model (batch) | hgmldl s/epoch (first) | plain loop s/epoch (first) | ratio | updates/s hgmldl / plain "
        "| peak RSS MB hgmldl / process | start-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, b = r["hgmldl"], r["plain"]
        lines.append(
            f"| {r['model']} ({r['batch_size']}) | {a['median_s']:.2f} ({a['first_s']:.2f}) "
            f"| {b['median_s']:.2f} ({b['first_s']:.2f}) | {r['ratio']:.2f} "
            f"| {a['updates_per_s']:.0f} / {b['updates_per_s']:.0f} "
            f"| {r['peak_rss_mb']['hgmldl']:.0f} / {r['peak_rss_mb']['process']:.0f} | {r['startup_s']:.1f} |"
        )
    return "\n".join(lines)


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
        "--quick", action="store_true", help="2 epochs on generated data (needs --idx-dir): a smoke test"
    )
    parser.add_argument("--idx-dir", help="train on the four IDX files in this folder instead of Fashion-MNIST")
    args = parser.parse_args()
    if args.quick and not args.idx_dir:
        sys.exit("error: --quick trains on small generated data: give its folder with --idx-dir")
    epochs = 2 if args.quick else args.epochs
    if epochs < 1:
        sys.exit("error: --epochs must be at least 1")
    results, load_at_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hgmldl-bench-") as work:
        extra = []
        if args.idx_dir:
            extra = [f"data.idx_dir={Path(args.idx_dir).resolve()}", f"data.root={work}/data", "data.download=false"]
        for model in args.models:
            results.append(run_model(model, epochs, Path(work), extra, args.threads))
            print(f"{model}: ratio {results[-1]['ratio']:.2f}", file=sys.stderr, flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        },
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "epochs": epochs,
        "quick": args.quick,
        "results": results,
    }
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
