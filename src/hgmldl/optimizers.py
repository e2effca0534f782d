"""Keras 3's Adagrad, RMSprop and Adam updates, exactly: torch's put epsilon elsewhere (and Adam's step size in float64).

Each `update` is keras/src/optimizers/<name>.py's `update_step`, operation by operation, so float32 rounds alike.
SGD (with momentum, nesterov) is torch.optim.SGD: it computes Keras' update to float32 rounding (docs/keras_parity.md).
"""

from collections.abc import Callable, Iterable

import numpy as np
import torch


class KerasOptimizer(torch.optim.Optimizer):
    """What every Keras optimizer shares: run Lightning's closure (its forward and backward), then each parameter's
    `update`, reading `lr` from its param group so Tuner.lr_find and learning-rate schedulers set it."""

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self.update(param, param.grad, self.state[param], group)
        return loss


class KerasAdagrad(KerasOptimizer):
    """`keras.optimizers.Adagrad()`: a = a + g², w −= lr·g / sqrt(a + eps), a starting at 0.1.

    torch.optim.Adagrad divides by sqrt(a) + eps instead."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        initial_accumulator_value: float = 0.1,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(params, {"lr": lr, "initial_accumulator_value": initial_accumulator_value, "eps": eps})

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state["accumulator"] = torch.full_like(param, group["initial_accumulator_value"])
        accumulator = state["accumulator"]
        accumulator.add_(grad.square())
        param.sub_(grad.mul(group["lr"]).div_(accumulator.add(group["eps"]).sqrt_()))


class KerasRMSprop(KerasOptimizer):
    """`keras.optimizers.RMSprop()` (no momentum, not centered): v = rho·v + (1 − rho)·g², w −= lr·g / sqrt(v + eps).

    torch.optim.RMSprop divides by sqrt(v) + eps: a different step while v is near eps (gradients of about 1e-3 and
    less), which is where rmsprop's first steps on rarely-lit pixels are."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state["velocity"] = torch.zeros_like(param)
        velocity = state["velocity"]
        velocity.mul_(group["rho"]).add_(grad.square().mul_(1 - group["rho"]))
        param.sub_(grad.mul(group["lr"]).div_(velocity.add(group["eps"]).sqrt_()))


class KerasAdam(KerasOptimizer):
    """`keras.optimizers.Adam()`: m, v as torch's, then w −= α·m / (sqrt(v) + eps) with α = lr·sqrt(1 − β₂ᵗ)/(1 − β₁ᵗ).

    torch.optim.Adam adds eps to the bias-corrected sqrt(v̂), and computes the corrections in float64; in float32,
    1 − 0.999 is 1.3e-5 off, which is in Keras' every step."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state["step"] = 0
            state["m"], state["v"] = torch.zeros_like(param), torch.zeros_like(param)
        state["step"] += 1
        m, v, (beta_1, beta_2) = state["m"], state["v"], group["betas"]
        real = np.float64 if param.dtype == torch.float64 else np.float32  # Keras computes α in the weights' dtype
        step, one = real(state["step"]), real(1)
        alpha = real(group["lr"]) * np.sqrt(one - real(beta_2) ** step) / (one - real(beta_1) ** step)
        m.add_(grad.sub(m).mul_(1 - beta_1))
        v.add_(grad.square().sub_(v).mul_(1 - beta_2))
        param.sub_(m.mul(float(alpha)).div_(v.sqrt().add_(group["eps"])))
