"""Keras' RMSprop, exactly: torch's RMSprop adds eps after the square root, Keras inside it."""

from collections.abc import Callable, Iterable

import torch


class KerasRMSprop(torch.optim.Optimizer):
    """`keras.optimizers.RMSprop()` (no momentum, not centered): v = rho·v + (1 − rho)·g², w −= lr·g / sqrt(v + eps).

    torch.optim.RMSprop divides by sqrt(v) + eps instead. The two differ only while v is near eps (gradients of
    about 1e-3 and less), which is where rmsprop's first steps on rarely-lit pixels are.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:  # Lightning's automatic optimization passes the forward and backward as a closure
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["velocity"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                velocity = state["velocity"]
                velocity.mul_(group["rho"]).addcmul_(grad, grad, value=1 - group["rho"])
                param.addcdiv_(grad, (velocity + group["eps"]).sqrt_(), value=-group["lr"])
        return loss
