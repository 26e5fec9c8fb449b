"""The paper's efficiency comparison (Table VII) for one backbone and tap, measured in one run.

Rows: the backbone alone, the AFD-Module in its training (multi-branch) and fused forms, the
backbone with the fused AFD plugged in, and a fresh module of every other method kind
(afd.model.methods: the DDP-style enhancer at the tap, ARCNN on the full image). Every latency comes from the same process, thread count and input, with the repeats
interleaved across rows, so the ratios between rows are meaningful even though the absolute times depend on the machine. Models and
inputs are channels-last (NHWC) by default, the layout mobile runtimes such as XNNPACK use; on this
CPU it also makes the small convolutions of the fused AFD markedly faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from afd.errors import ConfigError
from afd.model.afd_module import AFD_SIZES, AFDConfig, AFDModule
from afd.model.backbones import build_backbone
from afd.model.classifier import EnhancedClassifier
from afd.model.efficiency import Efficiency, measure_all
from afd.model.methods import AT_TAP, BEFORE_BACKBONE, DIRECT_TEST, KINDS
from afd.model.repconv import is_reparameterized, reparameterize


@dataclass(frozen=True)
class Row:
    role: str  # backbone, afd_unfused, afd_fused, backbone_with_afd, afd_paper_*, or another method kind
    name: str
    efficiency: Efficiency

    def to_dict(self) -> dict:
        return {"role": self.role, "name": self.name, **self.efficiency.to_dict()}


def compare_efficiency(
    backbone_name: str,
    tap: str | None = None,
    weights: str | None = None,
    afd: nn.Module | None = None,
    image_size: int = 224,
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = True,
    progress=None,
) -> list[Row]:
    """Measure every method of Table VII on one random image; `afd` defaults to an untrained module
    (timing does not depend on the weights). `progress(names)` is called before timing starts."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone = build_backbone(backbone_name, weights)
    tap = tap or backbone.default_tap
    channels, stride = backbone.tap_channels(tap), backbone.tap_stride(tap)
    afd = afd if afd is not None else AFDModule(AFDConfig(feature_channels=channels))
    if not isinstance(afd, AFDModule) or is_reparameterized(afd):
        raise ConfigError("the efficiency table times a trained (unfused) AFD-Module, and this is "
                          f"{'a fused AFD-Module' if isinstance(afd, AFDModule) else type(afd).__name__}")
    if afd.feature_channels != channels:
        raise ConfigError(f"the AFD-Module takes {afd.feature_channels}-channel features, but {backbone_name}'s "
                          f"tap {tap!r} gives {channels}")
    fused = reparameterize(afd)
    paper_size = AFDModule(AFDConfig(feature_channels=channels, widths=AFD_SIZES["paper"]))
    images = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    feature = torch.randn(1, channels, image_size // stride, image_size // stride)
    images, feature = images.to(memory_format=layout), feature.to(memory_format=layout)

    candidates = [
        ("backbone", backbone_name, backbone, (images,)),
        ("afd_unfused", "AFD (multi-branch)", afd, (feature, images)),
        ("afd_fused", "AFD (fused)", fused, (feature, images)),
        ("backbone_with_afd", f"{backbone_name} + AFD (fused)", EnhancedClassifier(backbone, fused, tap), (images,)),
        ("afd_paper_unfused", "AFD, paper size (multi-branch)", paper_size, (feature, images)),
        ("afd_paper_fused", "AFD, paper size (fused)", reparameterize(paper_size), (feature, images)),
        *((kind.name, kind.title, kind.new(channels, "small", "dct"),
           (feature, images) if kind.plugs_in == AT_TAP else (images,))
          for kind in KINDS.values() if not kind.fusable),  # the other kinds: the baselines
    ]
    if progress is not None:
        progress(", ".join(name for _, name, _, _ in candidates))
    efficiencies = measure_all(
        [(model.eval().to(memory_format=layout), inputs) for _, _, model, inputs in candidates],
        threads, warmup, repeats,
    )
    return [Row(role, name, e) for (role, name, _, _), e in zip(candidates, efficiencies)]


def efficiency_ratios(rows: list[Row]) -> dict[str, float]:
    """The ratios the project's targets are stated in, from one run's rows."""
    ms = {row.role: row.efficiency.latency.median_ms for row in rows}
    return {
        "fusing_speedup": ms["afd_unfused"] / ms["afd_fused"],
        "afd_overhead": ms["afd_fused"] / ms["backbone"],
        "plugged_overhead": ms["backbone_with_afd"] / ms["backbone"] - 1.0,
        **{f"{kind}_over_afd": ms[kind] / ms["afd_fused"] for kind in KINDS if kind in ms and kind != "afd"},
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table of `Row.to_dict()` rows (as stored in metrics/efficiency.json): params (M),
    MACs (G), CPU latency median and p90 (ms)."""
    lines = [
        "| method | params (M) | MACs (G) | CPU median (ms) | CPU p90 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['params'] / 1e6:.3f} | {row['macs'] / 1e9:.3f} | "
            f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} |"
        )
    return "\n".join(lines)


# On the device: whole classifiers (image in, logits out) lowered to ExecuTorch and timed there.
DEVICE_ROLES = {
    DIRECT_TEST: "backbone alone (DirectTest)",
    "afd": "backbone + AFD (fused)",
    "afd_unfused": "backbone + AFD (multi-branch)",
    **{kind.name: f"{kind.title} + backbone (JAR)" for kind in KINDS.values() if kind.plugs_in == BEFORE_BACKBONE},
}


def benchmark_executorch(
    programs: dict[str, torch.export.ExportedProgram],
    example: torch.Tensor,
    workdir,
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 20,
    progress=None,
) -> list[dict]:
    """Lower each classifier (by role, see DEVICE_ROLES) to an XNNPACK `.pte` in `workdir` and time
    it on this machine with ExecuTorch, interleaved, at a fixed thread count. One row per role:
    params, MACs, .pte size, median and p90 latency."""
    from pathlib import Path

    from afd.model.efficiency import count_macs, count_parameters, measure_call_latencies
    from afd.ops.export import executorch_threads, export_executorch, load_executorch

    workdir = Path(workdir)
    ptes, rows = {}, {}
    for role, program in programs.items():
        if progress is not None:
            progress(f"lowering {role} to ExecuTorch (XNNPACK)")
        ptes[role] = export_executorch(program, example, workdir / f"{role}.pte")
        module = program.module()
        rows[role] = {"role": role, "name": DEVICE_ROLES.get(role, role), "params": count_parameters(module),
                      "macs": count_macs(module, (example,)), "pte_mb": ptes[role].stat().st_size / 1e6}
    inputs = [example.contiguous()]
    with executorch_threads(threads):  # methods load and go inside: they keep the pool they were loaded with
        methods = [load_executorch(pte) for pte in ptes.values()]
        latencies = measure_call_latencies([lambda m=m: m.execute(inputs) for m in methods],
                                           threads, warmup, repeats)
        del methods
    return [{**rows[role], **latency.to_dict()} for role, latency in zip(ptes, latencies)]


def device_ratios(rows: list[dict]) -> dict[str, float]:
    """The on-device ratios, from one run's rows (whichever roles are there)."""
    ms = {row["role"]: row["median_ms"] for row in rows}
    ratios = {}
    if "afd" in ms and "afd_unfused" in ms:
        ratios["fusing_speedup"] = ms["afd_unfused"] / ms["afd"]
    if "afd" in ms and DIRECT_TEST in ms:
        ratios["afd_overhead"] = ms["afd"] / ms[DIRECT_TEST] - 1.0
    for kind in KINDS:
        if "afd" in ms and kind in ms and kind != "afd":
            ratios[f"{kind}_over_afd"] = ms[kind] / ms["afd"]
    return ratios
