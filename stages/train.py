"""Train one method for one backbone on DIV2K-C (params: seed, profile, methods.<method>,
train.mix_clean).

A killed run resumes from checkpoints/<backbone>/<method>/state.pt when re-run.
"""

import csv
import dataclasses
import io

import mlflow
import torch

from afd.checkpoint import save_enhancer
from afd.data import load_set
from afd.determinism import pin_cpu_numerics
from afd.io import atomic_write_text, write_json
from afd.layout import CHECKPOINTS, METRICS, PLOTS, backbone_from_params, patch_sets, trained_model
from afd.methods import Method
from afd.params import load_params, training_profile
from afd.tracking import lineage_tags, tracked_run
from afd.train import PatchPairs, TrainConfig, train

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    args = stage_arguments(__doc__, backbone=True, method=True).parse_args()
    params = load_params(args.params)
    numerics = pin_cpu_numerics(params["numerics"]["threads"])
    method = Method.from_params(args.method, params["methods"])
    config = TrainConfig.from_profile(training_profile(params), params["seed"])
    backbone, tap = backbone_from_params(params, args.backbone)
    if not backbone.pretrained:
        print(f"warning: {args.backbone} has random weights; its results mean nothing")

    clean_dir, degraded_dirs = patch_sets(params)
    if params["train"]["mix_clean"]:
        degraded_dirs["clean"] = clean_dir
    data = PatchPairs(
        [path for _, path in load_set(clean_dir)],
        {name: [path for _, path in load_set(directory)] for name, directory in degraded_dirs.items()},
    )
    torch.manual_seed(params["seed"])
    module = method.build(backbone, tap)
    classifier = method.classifier(backbone, module, tap)
    identity = {"name": f"{args.backbone}/{args.method}", "method": dataclasses.asdict(method), "tap": tap,
                "weights": str(backbone.weights_file)}
    tags = {**lineage_tags(args.backbone, backbone.weights_file, [clean_dir, *degraded_dirs.values()]),
            "stage": "train", "method": args.method}
    run_params = {"method": params["methods"][args.method], "profile": params["profile"],
                  "training": dataclasses.asdict(config), "mix_clean": params["train"]["mix_clean"], "tap": tap,
                  "numerics": numerics}
    with tracked_run(f"train@{args.backbone}-{args.method}", run_params, tags):
        result = train(classifier, module, method.loss, data, config,
                       CHECKPOINTS / args.backbone / args.method / "state.pt", identity,
                       on_log=lambda step, loss: mlflow.log_metric("loss", loss, step=step))

        meta = {"backbone": args.backbone, "tap": tap, "method": args.method, "iterations": config.iterations}
        save_enhancer(module.eval(), trained_model(args.backbone, args.method), meta)
        curve_path = PLOTS / "train" / args.backbone / f"{args.method}.csv"
        curve = io.StringIO()
        csv.writer(curve).writerows([("step", "loss"), *result.losses])
        atomic_write_text(curve_path, curve.getvalue())
        # Batches mix qualities, so one logging window is noisy: compare the first and last tenths.
        tenth = max(1, len(result.losses) // 10)
        summary = {"first_loss": sum(loss for _, loss in result.losses[:tenth]) / tenth,
                   "final_loss": sum(loss for _, loss in result.losses[-tenth:]) / tenth,
                   "iterations": config.iterations}
        write_json(METRICS / "train" / args.backbone / f"{args.method}.json", summary)
        mlflow.log_metrics(summary)
        mlflow.log_artifact(str(curve_path))
    first, final = summary["first_loss"], summary["final_loss"]
    print(f"{args.backbone}/{args.method}: loss {first:.4g} -> {final:.4g} (first and last tenth) "
          f"in {result.seconds:.0f} s (resumed from step {result.resumed_from})")


if __name__ == "__main__":
    main()
