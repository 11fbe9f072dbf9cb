"""Numeric precision chosen from the hardware: bf16 where the device runs it natively and it pays, else fp32.

CPUs differ: with AMX or AVX-512-BF16, bf16 matrix products are faster than fp32; without them
(AVX2-only CPUs) torch emulates bf16 and LoRA steps run 20-30x slower. Narrow models (the tiny test
model) gain nothing from bf16 even where it is native, and fp32 keeps their outputs identical on
every machine. `precision=auto` (the default) applies these rules per path (training, generation);
`bf16`, `fp16` and `fp32` force a precision.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import torch

from valharm.errors import ValharmError

CHOICES = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
MIN_BF16_HIDDEN_SIZE = 256  # below this width bf16 kernels do not beat fp32 (measured: bench/README)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """The precision of one path (training or generation) and why it was chosen."""

    name: str
    device: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def lightning(self) -> str:
        """Lightning's `precision=` for training: mixed precision keeps the LoRA weights in fp32."""
        return LIGHTNING_PRECISION[self.name]

    def record(self) -> dict:
        return {"precision": self.name, "dtype": str(self.dtype).removeprefix("torch."), "device": self.device,
                "reason": self.reason}


def native_bf16_cpu() -> str | None:
    """The CPU feature that gives native bf16 matrix products ('amx_bf16' or 'avx512_bf16'), if any.

    Only when torch's own kernels use AVX-512 (ATEN_CPU_CAPABILITY can cap them lower).
    """
    if torch.backends.cpu.get_cpu_capability() != "AVX512" or not hasattr(torch.cpu, "get_capabilities"):
        return None
    capabilities = torch.cpu.get_capabilities()
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if capabilities.get(flag)), None)


def device_kind(device: str) -> str:
    """'cuda', 'cpu' or another torch device type, from a torch device string or Lightning accelerator."""
    kind = str(device).split(":")[0]
    if kind in ("gpu", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return kind


def choose(requested: str, device: str, hidden_size: int) -> Precision:
    """The precision for work on `device` with a model of width `hidden_size`."""
    if requested not in CHOICES:
        raise ValharmError(f"precision='{requested}' is unknown; use one of {', '.join(CHOICES)}")
    kind = device_kind(device)
    if requested != "auto":
        if requested == "bf16" and kind == "cpu" and not native_bf16_cpu():
            log.warning("precision=bf16 on a CPU without native bf16 (%s): torch emulates it, which is much "
                        "slower than fp32", torch.backends.cpu.get_cpu_capability())
        return Precision(requested, kind, "requested")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", kind, "GPU with bf16")
        return Precision("fp16", kind, "GPU without bf16")
    if kind != "cpu":
        return Precision("fp32", kind, f"no measured fast path on {kind}")
    feature = native_bf16_cpu()
    if feature is None:
        return Precision("fp32", kind, f"CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()})")
    if hidden_size < MIN_BF16_HIDDEN_SIZE:
        return Precision("fp32", kind, f"hidden size {hidden_size} < {MIN_BF16_HIDDEN_SIZE}: bf16 does not pay")
    return Precision("bf16", kind, f"CPU with {feature}")


def hardware() -> dict:
    """What the run ran on, for results and timings."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    info = {"cpu": capabilities.get("cpu_name") or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16_cpu(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
