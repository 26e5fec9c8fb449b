"""Efficiency table (paper Table VII) and the project's speed targets, measured in one run.

    python benches/efficiency.py [--threads 1] [--repeats 20]

ResNet-50 and RepVGG-A2 run with random weights here (timing does not depend on the weights);
EfficientNet-Lite0 with its real ImageNet weights.
"""

import argparse

import torch

from afd.ops.benchmark import compare_efficiency, efficiency_ratios, format_table

TARGETS = {
    "fusing_speedup": (">=", 2.0, "fusing makes AFD at least 2x faster"),
    "afd_overhead": ("<=", 0.10, "fused AFD costs at most 10% of the backbone"),
    "arcnn_over_afd": (">=", 3.0, "ARCNN at least 3x slower than fused AFD"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"])
    parser.add_argument("--channels-first", action="store_true", help="NCHW instead of channels-last")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.backbones:
        weights = None if name == "efficientnet_lite0" else "random"
        rows = compare_efficiency(
            name, weights=weights, threads=args.threads, repeats=args.repeats, channels_last=not args.channels_first
        )
        layout = "NCHW" if args.channels_first else "channels-last"
        print(f"\n## {name} at its default tap, 224x224, {layout}, {args.threads} thread(s), {args.repeats} repeats\n")
        print(format_table([row.to_dict() for row in rows]))
        print()
        for key, value in efficiency_ratios(rows).items():
            op, bound, meaning = TARGETS.get(key, (None, None, ""))
            verdict = ""
            if op is not None:
                met = value >= bound if op == ">=" else value <= bound
                verdict = f"  target {op} {bound}: {'met' if met else 'MISSED'} ({meaning})"
            print(f"{key:18s} {value:7.3f}{verdict}")


if __name__ == "__main__":
    main()
