"""Efficiency of a model: parameters, multiply-accumulates and CPU latency.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts FLOPs = 2 x MACs; the
paper's "FLOPs" column is MACs (ResNet-50 at 224: 4.12 G), so we report MACs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass on `inputs`."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    repeats: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> Latency:
    """CPU wall time of one forward pass: fixed thread count, warm-up runs, then median and p90."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        for _ in range(warmup):
            model(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)
    return Latency(statistics.median(times), _percentile(times, 0.9), repeats, threads)


@dataclass(frozen=True)
class Efficiency:
    params: int
    macs: int
    latency: Latency

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, **self.latency.to_dict()}


def measure(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> Efficiency:
    """Parameters, MACs and latency of `model` on `inputs`."""
    return Efficiency(
        count_parameters(model),
        count_macs(model, inputs),
        measure_latency(model, inputs, threads, warmup, repeats),
    )
