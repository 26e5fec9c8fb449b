"""Efficiency table (paper Table VII) and the project's speed targets (afd.ops.benchmark.TARGETS),
measured in one run, eager PyTorch and ExecuTorch (XNNPACK).

    python benches/efficiency.py [--threads 1] [--repeats 20] [--eager-only]

ResNet-50 and RepVGG-A2 run with random weights here (timing does not depend on the weights);
EfficientNet-Lite0 with its real ImageNet weights.
"""

import argparse
import tempfile

import torch

from afd.model.determinism import resolve_device
from afd.ops.benchmark import compare_efficiency, efficiency_markdown, efficiency_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--channels-first", action="store_true", help="NCHW instead of channels-last")
    parser.add_argument("--eager-only", action="store_true", help="skip the ExecuTorch (XNNPACK) programs")
    parser.add_argument("--device", default="auto", help="also time on this GPU: auto, cpu, cuda, cuda:N")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    gpu = device if device.type == "cuda" else None
    for name in args.backbones:
        weights = None if name == "efficientnet_lite0" else "random"
        with tempfile.TemporaryDirectory() as programs:
            rows = compare_efficiency(name, weights=weights, threads=args.threads, repeats=args.repeats,
                                      channels_last=not args.channels_first,
                                      executorch_dir=None if args.eager_only else programs, gpu=gpu)
        layout = "NCHW" if args.channels_first else "channels-last"
        setup = f"{name} at its default tap, 224x224, eager {layout}, {args.threads} thread(s), {args.repeats} repeats."
        print(f"\n## {name}\n")
        print(efficiency_markdown(efficiency_record(rows, setup, args.threads, gpu)))


if __name__ == "__main__":
    main()
