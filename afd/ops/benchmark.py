"""The paper's efficiency comparison (Table VII) for one backbone and tap, measured in one run,
and the project's speed targets (`TARGETS`).

Rows in eager PyTorch: the backbone alone, the AFD-Module in its training (multi-branch) and fused
forms, the backbone with either plugged in, and a fresh module of every other method kind
(afd.model.methods: the DDP-style enhancer at the tap, ARCNN on the full image). Rows on
ExecuTorch (XNNPACK), what a phone runs: the whole classifiers, backbone alone and with the fused,
multi-branch and int8 AFD. On a machine with a GPU (`numerics.device`), the eager rows are also
timed there (runtime "cuda", each call waited for with `torch.cuda.synchronize`). Every latency
comes from the same process, thread count and input, with the repeats interleaved across rows and
runtimes, so the ratios between rows are meaningful even though the absolute times depend on the
machine. Eager models and inputs are channels-last (NHWC)
by default, the layout XNNPACK uses; on this CPU it also makes the fused AFD's small convolutions faster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from afd.errors import ConfigError
from afd.model.afd_module import AFD_SIZES, AFDConfig, AFDModule
from afd.model.backbones import build_backbone
from afd.model.classifier import EnhancedClassifier
from afd.model.determinism import describe_device
from afd.model.efficiency import Efficiency, count_macs, count_parameters, measure_call_latencies
from afd.model.methods import AT_TAP, BEFORE_BACKBONE, DIRECT_TEST, KINDS
from afd.model.repconv import is_reparameterized, reparameterize
from afd.ops.export import executorch_threads, export_executorch, in_processes, load_executorch, quantize_int8

EAGER, CUDA, EXECUTORCH = "eager", "cuda", "executorch"  # the runtimes a row can be timed on (eager: on the CPU)


@dataclass(frozen=True)
class Row:
    role: str  # backbone, afd_unfused, afd_fused, backbone_with_afd, afd_paper_*, or another method kind;
    # on ExecuTorch the DEVICE_ROLES (whole classifiers)
    name: str
    efficiency: Efficiency
    runtime: str = EAGER

    def to_dict(self) -> dict:
        return {"role": self.role, "name": self.name, "runtime": self.runtime, **self.efficiency.to_dict()}


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
    executorch_dir: str | Path | None = None,
    gpu: torch.device | None = None,
) -> list[Row]:
    """Measure every method of Table VII on one random image; `afd` defaults to an untrained module
    (timing does not depend on the weights). `progress(names)` is called before timing starts.
    With `executorch_dir`, the whole classifiers (backbone alone, with the fused, the multi-branch
    and the int8 AFD) are also lowered to ExecuTorch programs there; with `gpu`, every eager row is
    also run on that CUDA device. All are timed in the same run, interleaved with the eager ones."""
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
        ("backbone_with_afd_unfused", f"{backbone_name} + AFD (multi-branch)", EnhancedClassifier(backbone, afd, tap),
         (images,)),
        ("afd_paper_unfused", "AFD, paper size (multi-branch)", paper_size, (feature, images)),
        ("afd_paper_fused", "AFD, paper size (fused)", reparameterize(paper_size), (feature, images)),
        *((kind.name, kind.title, kind.new(channels, "small", "dct"),
           (feature, images) if kind.plugs_in == AT_TAP else (images,))
          for kind in KINDS.values() if not kind.fusable),  # the other kinds: the baselines
    ]
    eager = [(model.eval().to(memory_format=layout), inputs) for _, _, model, inputs in candidates]
    rows = [Row(role, name, Efficiency(count_parameters(model), count_macs(model, inputs), None))
            for (role, name, _, _), (model, inputs) in zip(candidates, eager)]
    calls = [functools.partial(model, *inputs) for model, inputs in eager]
    if gpu is not None:
        rows += [dataclasses.replace(row, runtime=CUDA) for row in rows[:len(eager)]]
        calls += [_synchronized(copy.deepcopy(model).to(gpu), [x.to(gpu) for x in inputs], gpu) for model, inputs in eager]
    ptes = {}
    if executorch_dir is not None:
        classifiers = deployed_classifiers(backbone, tap, afd, fused)
        if progress is not None:
            progress(f"lowering {', '.join(DEVICE_ROLES[role] for role in classifiers)} to ExecuTorch (XNNPACK)")
        ptes = lower_classifiers(classifiers, images.contiguous(), Path(executorch_dir))
        rows += [Row(role, DEVICE_ROLES[role], Efficiency(count_parameters(model), count_macs(model, (images,)), None),
                     EXECUTORCH) for role, model in classifiers.items()]
    if progress is not None:
        progress(", ".join(row.name for row in rows))
    inputs = [images.contiguous()]
    # ExecuTorch methods load and run inside the thread pool's block: they keep the pool they were loaded with
    with executorch_threads(threads) if ptes else contextlib.nullcontext(), torch.inference_mode():
        methods = [load_executorch(pte) for pte in ptes.values()]
        latencies = measure_call_latencies(calls + [lambda m=m: m.execute(inputs) for m in methods],
                                           threads, warmup, repeats)
        del methods
    return [dataclasses.replace(row, efficiency=dataclasses.replace(row.efficiency, latency=latency))
            for row, latency in zip(rows, latencies)]


def _synchronized(model: nn.Module, inputs: list[torch.Tensor], gpu: torch.device):
    """A call of `model` on the GPU that returns when the GPU has finished it (kernels run
    asynchronously: without the wait, a timer measures only the launch)."""

    def call():
        model(*inputs)
        torch.cuda.synchronize(gpu)

    return call


def lower_classifiers(classifiers: dict[str, nn.Module], example: torch.Tensor, folder: Path) -> dict[str, Path]:
    """{role: its `.pte` in `folder`}, lowered two at a time in processes of their own, the
    longest (int8) first."""
    calibration = torch.rand(8, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    order = sorted(classifiers, key=lambda role: role != "afd_int8")
    lowered = dict(zip(order, in_processes([
        functools.partial(lower_classifier, classifiers[role], example, folder / f"{role}.pte",
                          calibration if role == "afd_int8" else None) for role in order])))
    return {role: lowered[role] for role in classifiers}


def deployed_classifiers(backbone: nn.Module, tap: str, afd: AFDModule, fused: AFDModule) -> dict[str, nn.Module]:
    """The whole classifiers the device compares (DEVICE_ROLES but the JAR baselines), on the
    backbone's deployed form (BatchNorm folded, as registered); "afd_int8" is the fused one, to be
    quantized (`lower_classifier`)."""
    deployed = copy.deepcopy(backbone).to_inference_form(keep_padding=True)
    fused_classifier = EnhancedClassifier(deployed, fused, tap).eval()
    return {DIRECT_TEST: EnhancedClassifier(deployed, None, tap).eval(), "afd": fused_classifier,
            "afd_unfused": EnhancedClassifier(deployed, afd, tap).eval(), "afd_int8": fused_classifier}


def lower_classifier(model: nn.Module, example: torch.Tensor, path: Path, calibration: torch.Tensor | None = None) -> Path:
    """`model` as an ExecuTorch program at `path`, at `example`'s shape; quantized to int8 first when
    `calibration` images are given (the efficiency table calibrates on seeded random images: latency
    does not depend on the ranges; the registered int8 model is calibrated on training patches)."""
    return export_executorch(quantize_int8(model, calibration) if calibration is not None else model, example, path)


def efficiency_ratios(rows: list[Row]) -> dict[str, float]:
    """The ratios the project's targets are stated in, from one run's rows: in eager PyTorch on the
    CPU, (prefixed `cuda.`) the same on the GPU, and (prefixed `executorch.`) between the whole
    classifiers on ExecuTorch, where they were timed."""
    ratios = _eager_ratios({row.role: row.efficiency.latency.median_ms for row in rows if row.runtime == EAGER})
    on_gpu = {row.role: row.efficiency.latency.median_ms for row in rows if row.runtime == CUDA}
    if on_gpu:
        ratios.update({f"{CUDA}.{key}": value for key, value in _eager_ratios(on_gpu).items()})
    ratios.update({f"{EXECUTORCH}.{key}": value for key, value in device_ratios(
        [row.to_dict() for row in rows if row.runtime == EXECUTORCH]).items()})
    return ratios


def _eager_ratios(ms: dict[str, float]) -> dict[str, float]:
    return {
        "fusing_speedup": ms["afd_unfused"] / ms["afd_fused"],
        "afd_overhead": ms["afd_fused"] / ms["backbone"],
        "plugged_overhead": ms["backbone_with_afd"] / ms["backbone"] - 1.0,
        "plugged_fusing_speedup": ms["backbone_with_afd_unfused"] / ms["backbone_with_afd"],
        **{f"{kind}_over_afd": ms[kind] / ms["afd_fused"] for kind in KINDS if kind in ms and kind != "afd"},
    }


@dataclass(frozen=True)
class Target:
    """A speed target, stated as a bound on one of the ratios of one run."""

    ratio: str
    at_most: bool  # the ratio must stay at or below `bound` (else: at or above)
    bound: float
    meaning: str

    def verdict(self, ratios: dict[str, float]) -> str | None:
        """"met" or "missed by ..." for one run's ratios; None where the ratio was not measured."""
        if self.ratio not in ratios:
            return None
        value = ratios[self.ratio]
        if value <= self.bound if self.at_most else value >= self.bound:
            return f"{self.meaning}: met ({self.ratio} = {value:.3f})"
        by = value - self.bound if self.at_most else self.bound - value
        return f"{self.meaning}: missed by {by:.3f} ({self.ratio} = {value:.3f}, target {'<=' if self.at_most else '>='} {self.bound})"


TARGETS = (
    Target("executorch.afd_overhead", True, 0.15, "the fused AFD adds at most 15% to the backbone on ExecuTorch"),
    Target("executorch.fusing_speedup", False, 1.5, "fusing makes the classifier at least 1.5x faster on ExecuTorch"),
    Target("executorch.int8_speedup", False, 1.5, "int8 is at least 1.5x faster than float on ExecuTorch"),
    Target("fusing_speedup", False, 2.0, "fusing makes AFD alone at least 2x faster in eager PyTorch"),
    Target("arcnn_over_afd", False, 3.0, "ARCNN is at least 3x slower than the fused AFD in eager PyTorch"),
)


def target_verdicts(ratios: dict[str, float]) -> list[str]:
    return [verdict for target in TARGETS if (verdict := target.verdict(ratios)) is not None]


def efficiency_record(rows: list[Row], setup: str, threads: int, gpu: torch.device | None = None) -> dict:
    """One run's measurements as metrics/efficiency.json keeps them (and `efficiency_markdown`
    renders them): the setup, where each runtime ran, the rows, their ratios and the targets' verdicts."""
    cpu = f"{platform.processor() or platform.machine()} CPU, {threads} thread(s)"
    runtimes = {row.runtime for row in rows}
    devices = {EAGER: cpu, **({CUDA: f"{describe_device(gpu)}, each call synchronised"} if CUDA in runtimes else {}),
               **({EXECUTORCH: f"{cpu}, XNNPACK"} if EXECUTORCH in runtimes else {})}
    ratios = efficiency_ratios(rows)
    return {"setup": setup, "devices": devices, "rows": [row.to_dict() for row in rows], "ratios": ratios,
            "targets": target_verdicts(ratios)}


def format_table(rows: list[dict]) -> str:
    """Markdown table of `Row.to_dict()` rows timed in one runtime (as stored in
    metrics/efficiency.json; the device benchmark's rows): params (M), MACs (G), latency median and p90 (ms)."""
    lines = [
        "| method | params (M) | MACs (G) | median (ms) | p90 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['params'] / 1e6:.3f} | {row['macs'] / 1e9:.3f} | "
            f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} |"
        )
    return "\n".join(lines)


def efficiency_markdown(measured: dict) -> str:
    """One backbone's entry of metrics/efficiency.json as Markdown: the setup and where each runtime
    ran, the whole classifiers in both CPU runtimes (when ExecuTorch was timed), each module alone
    (on the CPU, and on the GPU when there was one), the ratios and the targets met or missed."""
    rows, devices = measured["rows"], measured.get("devices", {})
    runtimes = {row["runtime"] for row in rows}
    parts = [measured["setup"]]
    if devices:
        parts.append("Measured on: " + "; ".join(f"{runtime}: {where}" for runtime, where in devices.items()) + ".")
    if EXECUTORCH in runtimes:
        parts += ["Whole classifiers, eager PyTorch and ExecuTorch (XNNPACK, what a phone runs):",
                  format_runtime_table(rows)]
    for runtime, title in ((EAGER, "eager PyTorch"), (CUDA, f"eager PyTorch on the GPU ({devices.get(CUDA, 'cuda')})")):
        if runtime in runtimes:
            parts += [f"Each module alone, {title}:", format_table([row for row in rows if row["runtime"] == runtime])]
    parts += ["Ratios from the same run: " + ", ".join(f"{k} = {v:.3f}" for k, v in measured["ratios"].items()) + ".",
              "Targets:\n" + "\n".join(f"- {verdict}" for verdict in measured["targets"])]
    return "\n\n".join(parts)


# The eager rows that are whole classifiers, and their ExecuTorch role (DEVICE_ROLES).
_EAGER_CLASSIFIERS = {"backbone": DIRECT_TEST, "backbone_with_afd": "afd", "backbone_with_afd_unfused": "afd_unfused"}


def format_runtime_table(rows: list[dict]) -> str:
    """Markdown table of the whole classifiers in both runtimes of one run: eager PyTorch and
    ExecuTorch (XNNPACK) medians side by side, and each one's cost over the backbone alone."""
    eager = {_EAGER_CLASSIFIERS[row["role"]]: row for row in rows
             if row.get("runtime", EAGER) == EAGER and row["role"] in _EAGER_CLASSIFIERS}
    device = {row["role"]: row for row in rows if row.get("runtime") == EXECUTORCH}
    lines = ["| classifier | params (M) | MACs (G) | eager median (ms) | over backbone | "
             "ExecuTorch median (ms) | over backbone |", "|---|---:|---:|---:|---:|---:|---:|"]
    for role, row in device.items():
        cells = []
        for table in (eager, device):
            if role in table:
                ms, base = table[role]["median_ms"], table[DIRECT_TEST]["median_ms"]
                cells += [f"{ms:.2f}", f"{ms / base - 1:+.0%}"]
            else:
                cells += ["—", "—"]
        lines.append(f"| {row['name']} | {row['params'] / 1e6:.3f} | {row['macs'] / 1e9:.3f} | {' | '.join(cells)} |")
    return "\n".join(lines)


# On the device: whole classifiers (image in, logits out) lowered to ExecuTorch and timed there.
DEVICE_ROLES = {
    DIRECT_TEST: "backbone alone (DirectTest)",
    "afd": "backbone + AFD (fused)",
    "afd_unfused": "backbone + AFD (multi-branch)",
    "afd_int8": "backbone + AFD (fused, int8)",
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
    if "afd" in ms and "afd_int8" in ms:
        ratios["int8_speedup"] = ms["afd"] / ms["afd_int8"]
    for kind in KINDS:
        if "afd" in ms and kind in ms and kind != "afd":
            ratios[f"{kind}_over_afd"] = ms[kind] / ms["afd"]
    return ratios
