"""Efficiency of a model: parameters, multiply-accumulates and CPU latency.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts FLOPs = 2 x MACs; the
paper's "FLOPs" column is MACs (ResNet-50 at 224: 4.12 G), so we report MACs.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

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


def measure_call_latencies(
    calls: Sequence[Callable[[], object]], threads: int = 1, warmup: int = 3, repeats: int = 10
) -> list[Latency]:
    """Wall time of each call (any runtime: PyTorch, ExecuTorch, ...): torch's thread count fixed,
    warm-up calls, then median and p90. The repeats are interleaved across the calls, so a slow
    spell of the machine hits every call alike and the ratios between them stay fair."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in calls]
    try:
        for call in calls:
            for _ in range(warmup):
                call()
        for _ in range(repeats):
            for call, samples in zip(calls, times):
                start = time.perf_counter()
                call()
                samples.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)
    return [Latency(statistics.median(t), _percentile(t, 0.9), repeats, threads) for t in times]


@torch.inference_mode()
def measure_latencies(
    candidates: Sequence[tuple[nn.Module, Sequence[torch.Tensor]]],
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
) -> list[Latency]:
    """CPU latency of one forward pass of each (model, inputs), in eval mode (see
    `measure_call_latencies`)."""
    calls = [functools.partial(model.eval(), *inputs) for model, inputs in candidates]
    return measure_call_latencies(calls, threads, warmup, repeats)


def measure_latency(
    model: nn.Module, inputs: Sequence[torch.Tensor], threads: int = 1, warmup: int = 3, repeats: int = 10
) -> Latency:
    """Latency of one model (see `measure_latencies`)."""
    return measure_latencies([(model, inputs)], threads, warmup, repeats)[0]


@dataclass(frozen=True)
class Efficiency:
    params: int
    macs: int
    latency: Latency | None  # None until timed

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, **self.latency.to_dict()}
