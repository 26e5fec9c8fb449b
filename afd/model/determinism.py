"""Where a stage computes (`numerics.device`: the CPU or a GPU) and the code paths PyTorch takes
there, fixed so results do not depend on the CPU model.

On x86, PyTorch picks its kernels by what the CPU offers: oneDNN's convolutions (AVX2, AVX-512,
AMX), MKL's GEMM and ATen's vectorised loops; and it splits work over as many threads as there are
cores. Each choice changes the order of floating-point sums, so the same training on another CPU
model, or on more cores, ends with other weights. `pin_cpu_numerics` fixes all of them to AVX2 (the
x86-64-v3 baseline every current x86 server has) and to a given thread count. Speed is not pinned:
timing code (the efficiency stage) leaves the CPU's best paths on.

On a GPU, `pin_numerics` also turns on cuDNN's deterministic algorithms and off its autotuner and
TF32, and fixes cuBLAS's workspace: the same GPU model, driver and code give the same weights.
A GPU's results are not the CPU's (other kernels, other sums), so `device: auto` on a machine with
a GPU is another machine in the sense of dvc.lock's md5s.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from afd.errors import AFDError, ConfigError

# Read by oneDNN, MKL and ATen when they first compute, not when torch is imported.
X86_PINS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}
# Read by cuBLAS when it first runs: a fixed workspace makes its GEMMs deterministic (CUDA >= 10.2).
CUBLAS_PIN = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
DEVICES = "auto, cpu, cuda or cuda:N"  # what numerics.device takes
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # numerics.amp: training's autocast


def resolve_device(spec: str) -> torch.device:
    """The device `numerics.device` names: `auto` is the first GPU when PyTorch sees one, else the
    CPU. A GPU that is not there is a ConfigError, one line, before any work."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise ConfigError(f"params.yaml numerics.device: {spec!r} is not a device; use {DEVICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"params.yaml numerics.device is {spec}, but no GPU is visible to PyTorch "
                          f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built'}); "
                          "use device: auto or cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"params.yaml numerics.device is {spec}, but PyTorch sees {torch.cuda.device_count()} "
                          f"GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """What a column was measured on or a model trained on: the GPU's name, or the CPU's."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device}, CUDA {torch.version.cuda})"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pin_numerics(threads: int, device: str = "cpu") -> tuple[torch.device, dict[str, str]]:
    """`pin_cpu_numerics`, and on a GPU its deterministic settings; the device `device` names
    (`resolve_device`) and what was pinned (for the run's record)."""
    chosen = resolve_device(device)
    pinned = pin_cpu_numerics(threads)
    if chosen.type == "cuda":
        os.environ.update(CUBLAS_PIN)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False  # the autotuner may pick other kernels on each run
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        pinned.update(CUBLAS_PIN, cudnn_deterministic="true", tf32="false")
    pinned["device"] = describe_device(chosen)
    return chosen, pinned


def autocast(amp: str, device: torch.device):
    """Training's mixed precision (`numerics.amp`): a torch.autocast context, or none when off."""
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


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
