"""What each backbone's inference form (`SplitBackbone.to_inference_form`) gains, in PyTorch and on
ExecuTorch: the forward time per image of each EfficientNet-Lite as built, with BatchNorm folded
only (`keep_padding=True`: what the register stage exports), and in the full inference form (BN
folded and the stride-2 "same" convolutions without a padded copy: what the evaluate stage runs),
in one run, with the predictions compared.

PyTorch: random 224x224 images in a batch of 20 (the evaluate stage's default), pinned CPU numerics
and `numerics.threads`, channels-last, as `afd.model.evaluate` runs. ExecuTorch: each form lowered to
XNNPACK, batch 1, one thread (as the device benchmark), interleaved repeats, median.

    python benches/inference_form.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from afd.model.backbones import EFFICIENTNET_LITE_VARIANTS, build_backbone
from afd.model.determinism import pin_cpu_numerics
from afd.ops.export import executorch_threads, export_executorch, load_executorch
from afd.ops.params import load_params

FORMS = ("as built", "BN folded", "inference form")


def build(name: str, form: str):
    backbone = build_backbone(name)
    if form != "as built":
        backbone.to_inference_form(keep_padding=form == "BN folded")
    return backbone


def eager_ms(backbone, images: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    backbone = backbone.to(memory_format=torch.channels_last)
    classes = backbone(images).argmax(1)  # also the warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        backbone(images)
    return (time.perf_counter() - start) / repeats / len(images) * 1000, classes


def executorch_ms(programs: dict[str, Path], image: torch.Tensor, repeats: int) -> dict[str, float]:
    with executorch_threads(1):
        methods = {form: load_executorch(path) for form, path in programs.items()}
        for method in methods.values():
            method.execute([image])
        times = {form: [] for form in methods}
        for _ in range(repeats):
            for form, method in methods.items():
                start = time.perf_counter()
                method.execute([image])
                times[form].append((time.perf_counter() - start) * 1000)
        del methods  # before the thread pool they hold is replaced
    return {form: sorted(t)[len(t) // 2] for form, t in times.items()}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    pin_cpu_numerics(load_params()["numerics"]["threads"])
    images = torch.rand(20, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    print("| backbone | form | PyTorch (ms/image) | saved | ExecuTorch XNNPACK (ms) | saved | same top-1 |")
    print("|---|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in EFFICIENTNET_LITE_VARIANTS:
            name = f"efficientnet_lite{variant}"
            eager, classes, programs = {}, {}, {}
            for form in FORMS:
                backbone = build(name, form).eval()
                programs[form] = export_executorch(backbone, images[:1].contiguous(), Path(tmp) / f"{name}-{len(programs)}.pte")
                eager[form], classes[form] = eager_ms(backbone, images, args.repeats)
            device = executorch_ms(programs, images[:1].contiguous(), 3 * args.repeats)
            for form in FORMS:
                same = torch.equal(classes[form], classes["as built"])
                print(f"| {name} | {form} | {eager[form]:.1f} | {1 - eager[form] / eager['as built']:.0%} "
                      f"| {device[form]:.2f} | {1 - device[form] / device['as built']:.0%} | {same} |")


if __name__ == "__main__":
    main()
