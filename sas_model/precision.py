"""The autocast dtype of a forward pass: ``train.precision`` or ``sampler.precision`` for a device.

``fp32`` turns autocast off; ``bf16`` and ``fp16`` ask for that dtype (fp16 only on CUDA, where
training pairs it with a gradient scaler); ``auto`` picks bf16 on a CUDA device that supports it (else
fp16) and on a CPU with native bf16 instructions (AVX512-BF16 or AMX), and fp32 on other CPUs, where
emulated bf16 is slower than fp32. Parameters, optimiser state, the loss and the samplers' update
arithmetic stay in fp32: only the UNet passes are autocast.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 arithmetic (Linux ``/proc/cpuinfo`` flags); False if unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def autocast_dtype(
    device: torch.device, precision: str, field: str = "train.precision"
) -> torch.dtype | None:
    """The dtype to autocast the forward pass to on ``device``, or ``None`` for plain fp32.

    ``field`` names the config field in error messages.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"{field} fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown {field} {precision!r}; choose auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op for ``None`` (from ``autocast_dtype``)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
