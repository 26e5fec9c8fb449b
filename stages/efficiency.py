"""Efficiency (paper Table VII) at each trained backbone's tap: params, MACs, CPU latency of the
backbone, AFD unfused and fused, DDP and ARCNN, measured in one run (params: efficiency).

The modules are built fresh: size and speed depend on the architecture, not on trained weights,
so this stage need not wait for (or re-run after) training."""

import platform

import mlflow
import torch

from afd.benchmark import compare_efficiency, efficiency_ratios
from afd.io import write_json
from afd.layout import METRICS, backbone_from_params
from afd.params import load_params
from afd.tracking import git_commit, tracked_run

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    args = stage_arguments(__doc__).parse_args()
    params = load_params(args.params)
    settings = params["efficiency"]
    results = {}
    for name in settings["backbones"]:
        _, tap = backbone_from_params(params, name)
        weights = params["backbones"][name].get("weights")
        rows = compare_efficiency(
            name, tap, weights, threads=settings["threads"], warmup=settings["warmup"],
            repeats=settings["repeats"], progress=lambda names: print(f"timing {names}"),
        )
        results[name] = {
            "setup": (f"One random 224x224 image, {settings['threads']} thread(s), channels-last, "
                      f"{settings['warmup']} warm-up runs, {settings['repeats']} interleaved repeats, "
                      f"on {platform.processor() or platform.machine()} with torch {torch.__version__}."),
            "rows": [row.to_dict() for row in rows],
            "ratios": efficiency_ratios(rows),
        }
    write_json(METRICS / "efficiency.json", results)
    with tracked_run("efficiency", settings, {"stage": "efficiency", "git_commit": git_commit()}):
        for name, measured in results.items():
            mlflow.log_metrics({f"{name}.{key}": value for key, value in measured["ratios"].items()})
            for row in measured["rows"]:
                mlflow.log_metrics({f"{name}.{row['role']}.{key}": row[key]
                                    for key in ("params", "macs", "median_ms", "p90_ms")})


if __name__ == "__main__":
    main()
