"""What the evaluate stage gains from running each backbone in its inference form
(`SplitBackbone.to_inference_form`): the forward time per image of each EfficientNet-Lite as built,
with BatchNorm folded only, and in the full inference form (BN folded and the stride-2 "same"
convolutions without a padded copy), in one run, with the predictions compared.

Random 224x224 images in a batch of 20 (the evaluate stage's default), pinned CPU numerics and
`numerics.threads` as in the stage, channels-last as `afd.evaluate` runs.

    python benches/inference_form.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from afd.backbones import EFFICIENTNET_LITE_VARIANTS, build_backbone
from afd.determinism import pin_cpu_numerics
from afd.params import load_params


def build(name: str, form: str):
    backbone = build_backbone(name)
    if form == "BN folded":
        backbone.fold_batch_norm()
    elif form == "inference form":
        backbone.to_inference_form()
    return backbone.to(memory_format=torch.channels_last)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    pin_cpu_numerics(load_params()["numerics"]["threads"])
    images = torch.rand(20, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    print("| backbone | as built (ms/image) | BN folded | inference form | time saved | same top-1 |")
    print("|---|---:|---:|---:|---:|---|")
    for variant in EFFICIENTNET_LITE_VARIANTS:
        name = f"efficientnet_lite{variant}"
        times, classes = [], []
        for form in ("as built", "BN folded", "inference form"):
            backbone = build(name, form)
            classes.append(backbone(images).argmax(1))  # also the warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                backbone(images)
            times.append((time.perf_counter() - start) / args.repeats / len(images) * 1000)
        same = all(torch.equal(c, classes[0]) for c in classes)
        print(f"| {name} | {times[0]:.1f} | {times[1]:.1f} | {times[2]:.1f} | {1 - times[2] / times[0]:.0%} | {same} |")


if __name__ == "__main__":
    main()
