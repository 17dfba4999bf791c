"""Which number format the network runs in: float16 on CUDA, bfloat16 on a CPU with native bf16 units.

Why bfloat16 on the CPU: on a CPU with AVX-512 bf16 or AMX, oneDNN runs the U-Net's convolutions in bf16 about
3x faster than in float32 (knee-bones v4, one 96^3 window, one thread: 0.75 s instead of 2.2 s), and the
segmentation does not change beyond a voxel here and there at a boundary (measured on the benchmark and the
real sample, see README). Elsewhere bf16 is emulated and slower than float32, so it is used only where the CPU
reports the instructions. ``KNEESEG_CPU_BF16=0`` turns it off (float32 everywhere on the CPU).
"""
from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic
ENV_SWITCH = "KNEESEG_CPU_BF16"


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bfloat16 units (Linux reports AMX or AVX-512 bf16 in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in BF16_FLAGS)


def inference_dtype(device_type: str):
    """The autocast dtype for inference on ``device_type``, or None for plain float32."""
    import torch

    if device_type == "cuda":
        return torch.float16
    if device_type == "cpu" and os.environ.get(ENV_SWITCH, "1") != "0" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None
