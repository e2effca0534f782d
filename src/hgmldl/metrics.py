"""The epoch numbers of Keras' History, loss and accuracy, as torchmetrics metrics cheap enough to add every minibatch."""

from collections.abc import Callable

import torch
from torchmetrics import Metric


def loss_per_sample(losses: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """Each minibatch's mean loss once per sample: their mean is Keras' `Mean` of the loss, weighted by batch size."""
    sizes = torch.tensor([len(batch) for batch in labels], device=labels[0].device)
    return torch.stack(losses).repeat_interleave(sizes)


def hit_per_sample(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """Whether each prediction is right: their mean is Keras' `SparseCategoricalAccuracy`."""
    return torch.cat(logits).argmax(dim=1) == torch.cat(labels)


# Minibatches a metric keeps before it sums them: enough to pay torchmetrics' `update` once per many minibatches,
# few enough that the kept tensors do not pin memory (an epoch's worth grows the heap and slows every update).
KEPT_MINIBATCHES = 50


class SampleMean(Metric):
    """The mean over an epoch's samples of `per_sample(...)`, summed across processes under DDP; Lightning computes,
    logs and resets it at the epoch's end.

    A step `add`s its minibatch's tensors, which only keeps them: torchmetrics' own `update`, and a kernel or two
    per minibatch, cost about as much as a small model's whole update at batch 32 (docs/performance.md). The kept
    minibatches are summed in one `update` every `KEPT_MINIBATCHES`, and when torchmetrics computes the value: in
    `sync`, which it calls first, on one process as under DDP.
    """

    full_state_update = False

    def __init__(self, per_sample: Callable[..., torch.Tensor]) -> None:
        super().__init__(compute_with_cache=False)  # no cached value that minibatches added later would leave stale
        self.per_sample = per_sample
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.kept: list[tuple[torch.Tensor, ...]] = []

    def add(self, *minibatch: torch.Tensor) -> None:
        self.kept.append(minibatch)
        # The epoch's first goes through `update` at once, so that torchmetrics counts the metric as updated.
        if len(self.kept) == KEPT_MINIBATCHES or self.update_count == 0:
            self.update_from_kept()

    def update_from_kept(self) -> None:
        if self.kept:
            self.update(self.per_sample(*map(list, zip(*self.kept, strict=True))))
            self.kept.clear()

    def update(self, values: torch.Tensor) -> None:
        self.total += values.sum()
        self.count += values.numel()

    def sync(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (torchmetrics' signature)
        self.update_from_kept()
        super().sync(*args, **kwargs)

    def compute(self) -> torch.Tensor:
        return self.total / self.count

    def reset(self) -> None:
        self.kept.clear()
        super().reset()
