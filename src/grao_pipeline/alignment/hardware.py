"""What this machine can do, asked in one place: the CPU's flags, native bf16, and so
the autocast a step runs under.

Why it matters: bf16 speed differs by three orders of magnitude between CPUs (AMX ~7×
fp32, AVX512-BF16 ~2.5×, AVX2-only emulated and ~100× slower), so every ``auto``
setting (mixed precision, the sampling copy's dtype, the fused decode kernel) reads
these answers rather than guessing.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (``/proc/cpuinfo``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_name() -> str:
    """The CPU's model name, for benchmark reports ("unknown CPU" where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


@functools.cache  # asked on every step's autocast; the hardware does not change in a process
def bf16_supported() -> bool:
    """Native bf16 matmuls: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` -> ``bf16`` where it is native, else ``fp32``."""
    if setting == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return setting


def mixed_precision(setting: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast around a step's forwards (rollout scoring and the loss), or nothing.

    Our own autocast rather than accelerate's ``mixed_precision``: accelerate also
    converts every model output to float32, which made a float32 copy of the
    [N, C, V] logits that ``logprobs.selective_log_softmax`` exists to avoid; in the
    benchmark's GRAO step that copy (92 MB) and its gradient's cast set the peak RSS."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=resolve_mixed_precision(setting) == "bf16")
