"""trainer=cpu_bf16: trains in bfloat16 autocast on a CPU that computes bf16, stops with one line on one that does not."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hgmldl import hardware
from hgmldl.commands.train import run
from hgmldl.errors import UserError
from tests.conftest import ROOT


def pretend_cpu(monkeypatch: pytest.MonkeyPatch, **features: bool) -> None:
    """torch's public CPU-feature query answers as a CPU with (only) these features would."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", **features})


def test_cpu_without_bf16_stops_before_training(make_cfg, monkeypatch, tmp_path):
    pretend_cpu(monkeypatch, avx2=True, avx512_bf16=False, amx_bf16=False)
    with pytest.raises(UserError) as error:
        run(make_cfg("trainer=cpu_bf16"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("trainer.precision=bf16-mixed on the CPU needs bfloat16 in hardware")
    assert "use trainer=cpu (float32) instead" in message
    assert not (tmp_path / "data").exists()  # stopped before the data was read


@pytest.mark.cuda  # trainer=cpu_bf16 on a CPU that computes bf16; trainer=gpu_bf16 under --accelerator=gpu
@pytest.mark.parametrize("steps_per_execution", [1, 4])  # Lightning's automatic optimization, and ours
def test_bf16_trains_the_network_in_bf16(make_cfg, monkeypatch, accelerator, steps_per_execution):
    pretend_cpu(monkeypatch, avx2=True, avx512_bf16=True)
    logits_dtypes = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Sequential) and module.training:  # the network itself, in a training step
            logits_dtypes.append(output.dtype)

    hook = nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = run(
            make_cfg(
                f"trainer={accelerator}_bf16",
                "model=cnn",
                f"steps_per_execution={steps_per_execution}",
                "trainer.max_epochs=1",
                "callbacks=default",
            )
        ).metrics
    finally:
        hook.remove()
    # 400 training images in minibatches of 32: 13 forward passes, each under Lightning's bf16 autocast.
    assert logits_dtypes == [torch.bfloat16] * 13
    assert 0 <= metrics["val_accuracy"] <= 1


@pytest.mark.parametrize(
    ("features", "native"),
    [
        ({"avx2": True, "avx512f": True, "avx512_bf16": False}, False),
        ({"avx512_bf16": True}, True),
        ({"amx_tile": True, "amx_bf16": True}, True),
        ({"architecture": "arm64", "neon": True, "bf16": True}, True),
    ],
)
def test_bf16_features_are_avx512_bf16_amx_bf16_or_arms_bf16(monkeypatch, features, native):
    pretend_cpu(monkeypatch, **features)
    assert hardware.cpu_has_native_bf16() is native


def test_float32_and_gpu_bf16_never_ask_the_cpu(monkeypatch):
    pretend_cpu(monkeypatch, avx512_bf16=False)
    for trainer in (
        {"accelerator": "cpu", "precision": "32-true"},
        {"accelerator": "gpu", "precision": "bf16-mixed"},
    ):
        hardware.check_cpu_bf16(OmegaConf.create(trainer))
    with pytest.raises(UserError):
        hardware.check_cpu_bf16(OmegaConf.create({"accelerator": "cpu", "precision": "bf16-true"}))


@pytest.mark.parametrize(("flags", "native"), [("fpu avx2 avx512f", False), ("fpu avx2 avx512_bf16", True)])
def test_older_torch_reads_the_linux_cpu_flags(monkeypatch, tmp_path, flags, native):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.cpu_has_native_bf16() is native


@pytest.mark.slow  # a train.py start-up
@pytest.mark.skipif(hardware.cpu_has_native_bf16(), reason="this CPU computes bf16: the preset runs here")
def test_train_py_says_it_in_one_line_on_this_cpu(tmp_path):
    command = [sys.executable, "train.py", "trainer=cpu_bf16", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: trainer.precision=bf16-mixed on the CPU needs bfloat16 in hardware")
    assert result.stderr.count("\n") == 1
