"""hgmldl.metrics: the epoch's loss and accuracy, against numpy and scikit-learn, on one process and on two."""

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score

from hgmldl.metrics import KEPT_MINIBATCHES, SampleMean, hit_per_sample, loss_per_sample


def minibatches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(loss, logits, labels) of `count` minibatches of 1 to 40 samples."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 41, (count,), generator=generator).tolist()
    return [
        (
            torch.rand((), generator=generator),
            torch.randn(size, 10, generator=generator),
            torch.randint(0, 10, (size,), generator=generator),
        )
        for size in sizes
    ]


def expected(batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Keras' numbers, computed independently: the loss averaged with each minibatch weighted by its size, and
    scikit-learn's accuracy of the argmax predictions."""
    losses = np.array([float(loss) for loss, _, _ in batches])
    sizes = np.array([len(labels) for _, _, labels in batches])
    predictions = np.concatenate([logits.numpy().argmax(axis=1) for _, logits, _ in batches])
    labels = np.concatenate([labels.numpy() for _, _, labels in batches])
    return float(np.average(losses, weights=sizes)), float(accuracy_score(labels, predictions))


@pytest.mark.parametrize("count", [1, 7, 3 * KEPT_MINIBATCHES + 5])
def test_an_epochs_means_are_keras_weighted_loss_and_sklearns_accuracy(count):
    loss_mean, accuracy = SampleMean(loss_per_sample), SampleMean(hit_per_sample)
    for epoch in range(2):  # reset between epochs, as Lightning does: the second epoch's numbers are its own
        batches = minibatches(seed=epoch, count=count)
        for loss, logits, labels in batches:
            loss_mean.add(loss, labels)
            accuracy.add(logits, labels)
        assert loss_mean.update_count >= 1  # the epoch's first minibatch went through update: no torchmetrics warning
        loss_value, accuracy_value = expected(batches)
        assert loss_mean.compute().item() == pytest.approx(loss_value, rel=1e-6)
        assert accuracy.compute().item() == pytest.approx(accuracy_value, abs=1e-7)
        loss_mean.reset()
        accuracy.reset()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_on_one_rank(rank: int, port: int, count: int, out: str) -> None:
    """One of two gloo processes: adds its own minibatches and computes, as Lightning does at the epoch's end."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    loss_mean, accuracy = SampleMean(loss_per_sample), SampleMean(hit_per_sample)
    for loss, logits, labels in minibatches(seed=rank, count=count):
        loss_mean.add(loss, labels)
        accuracy.add(logits, labels)
    result = {"loss": loss_mean.compute().item(), "accuracy": accuracy.compute().item()}
    with open(f"{out}.{rank}", "w") as file:
        json.dump(result, file)
    dist.destroy_process_group()


@pytest.mark.parametrize("count", [5, KEPT_MINIBATCHES + 5])
def test_two_processes_compute_the_means_over_both_processes_minibatches(tmp_path, count):
    # Minibatches still kept when the value is computed are counted before the processes exchange their sums.
    out = str(tmp_path / "result")
    mp.spawn(add_on_one_rank, args=(free_port(), count, out), nprocs=2)
    loss_value, accuracy_value = expected(minibatches(seed=0, count=count) + minibatches(seed=1, count=count))
    for rank in (0, 1):
        with open(f"{out}.{rank}") as file:
            result = json.load(file)
        assert result["loss"] == pytest.approx(loss_value, rel=1e-6)
        assert result["accuracy"] == pytest.approx(accuracy_value, abs=1e-7)
