"""What the machine can do, asked before a run rather than discovered in the middle of one."""

import platform
from pathlib import Path
from typing import Any

import torch

from hgmldl.errors import UserError

# CPU features that compute bfloat16 natively: x86's AVX512-BF16 (Intel Cooper Lake and Sapphire Rapids on, AMD
# Zen 4 on) and AMX-BF16 (Intel Sapphire Rapids on); Arm's BF16 (Neoverse V1 on, e.g. AWS Graviton 3).
BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware; without it autocast emulates bf16 and runs slower than fp32."""
    if hasattr(torch.cpu, "get_capabilities"):  # recent torch: cpuinfo's feature flags, public API
        capabilities = torch.cpu.get_capabilities()
    else:  # older torch: the flags Linux lists, under the same names
        try:
            capabilities = dict.fromkeys(CPUINFO.read_text().split(), True)
        except OSError:
            return True  # cannot tell (macOS or Windows with an older torch): let the run go ahead
    return any(capabilities.get(name) for name in BF16_FEATURES)


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (platform.processor() is often empty there), for the reports."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def runs_on_cpu(trainer: Any) -> bool:
    """The trainer config's device is the CPU: chosen, or what `auto` falls back to without a GPU."""
    accelerator = trainer.get("accelerator", "auto")
    return accelerator == "cpu" or (
        accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )


def check_cpu_bf16(trainer: Any) -> None:
    """bf16 precision on a CPU without native bf16 stops here, before it trains slower than float32 would."""
    precision = str(trainer.get("precision", "32-true"))
    if precision.startswith("bf16") and runs_on_cpu(trainer) and not cpu_has_native_bf16():
        raise UserError(
            f"trainer.precision={precision} on the CPU needs bfloat16 in hardware ({', '.join(BF16_FEATURES[:2])} "
            "on x86, bf16 on Arm), which this CPU lacks, so it would run slower than float32: use trainer=cpu "
            "(float32) instead, or trainer=gpu_bf16 on a GPU"
        )
