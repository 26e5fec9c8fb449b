"""The CPU code paths PyTorch computes with, fixed so results do not depend on the CPU model.

On x86, PyTorch picks its kernels by what the CPU offers: oneDNN's convolutions (AVX2, AVX-512,
AMX), MKL's GEMM and ATen's vectorised loops; and it splits work over as many threads as there are
cores. Each choice changes the order of floating-point sums, so the same training on another CPU
model, or on more cores, ends with other weights. `pin_cpu_numerics` fixes all of them to AVX2 (the
x86-64-v3 baseline every current x86 server has) and to a given thread count. Speed is not pinned:
timing code (the efficiency stage) leaves the CPU's best paths on.
"""

from __future__ import annotations

import os
import platform

import torch

from afd.errors import AFDError

# Read by oneDNN, MKL and ATen when they first compute, not when torch is imported.
X86_PINS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}


def pin_cpu_numerics(threads: int) -> dict[str, str]:
    """Fix PyTorch's CPU kernels (x86: AVX2 everywhere) and its thread count, and turn on
    deterministic algorithms. Call before the process's first tensor operation; returns what was
    pinned (for the run's record)."""
    pinned = {"threads": str(threads), "deterministic_algorithms": "true"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.update(X86_PINS)  # a no-op when this process pinned them already
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2":
            raise AFDError(f"PyTorch's CPU kernels could not be pinned to AVX2 (they are {capability}): a tensor "
                           "operation ran before pin_cpu_numerics, or this CPU lacks AVX2")
        pinned.update(X86_PINS)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return pinned
