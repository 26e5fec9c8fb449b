"""Train one method for one backbone on DIV2K-C (params: seed, profile, methods.<method>,
the profile's mix_clean and afd_size), and refuse it if it did not learn (train.max_loss_ratio, train.min_alive_fraction).

A killed run resumes from checkpoints/<backbone>/<method>/state.pt when re-run.
"""

import csv
import dataclasses
import io

import mlflow
import torch

from afd.checkpoint import save_enhancer
from afd.determinism import pin_cpu_numerics
from afd.io import atomic_write_text, write_json
from afd.layout import CHECKPOINTS, METRICS, PLOTS, backbone_from_params, patch_sets, trained_model
from afd.methods import Method
from afd.params import load_params, training_profile
from afd.tracking import lineage_tags, tracked_run
from afd.train import PatchPairs, TrainConfig, alive_fraction, check_learned, train

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    args = stage_arguments(__doc__, backbone=True, method=True).parse_args()
    params = load_params(args.params)
    numerics = pin_cpu_numerics(params["numerics"]["threads"])
    method = Method.from_params(args.method, params["methods"])
    seed = params["seed"] + method.seed_offset
    profile = training_profile(params)
    config = TrainConfig.from_profile(profile, seed).with_lr_scale(method.lr_scale)
    backbone, tap = backbone_from_params(params, args.backbone)
    tap = method.tap_on(tap)
    if not backbone.pretrained:
        print(f"warning: {args.backbone} has random weights; its results mean nothing")

    clean_dir, degraded_dirs = patch_sets(params)
    data = PatchPairs.from_sets(clean_dir, degraded_dirs, profile["mix_clean"])
    torch.manual_seed(seed)
    module = method.build(backbone, tap, profile["afd_size"])
    classifier = method.classifier(backbone, module, tap)
    identity = {"name": f"{args.backbone}/{args.method}", "method": dataclasses.asdict(method), "tap": tap,
                "weights": str(backbone.weights_file)}
    tags = {**lineage_tags(args.backbone, backbone.weights_file, [clean_dir, *degraded_dirs.values()]),
            "stage": "train", "method": args.method}
    run_params = {"method": params["methods"][args.method], "profile": params["profile"],
                  "training": dataclasses.asdict(config), "tap": tap, "mix_clean": profile["mix_clean"],
                  "afd_size": profile["afd_size"], "numerics": numerics}
    with tracked_run(f"train@{args.backbone}-{args.method}", run_params, tags):
        result = train(classifier, module, method.loss, method.identity_loss, data, config,
                       CHECKPOINTS / args.backbone / args.method / "state.pt", identity,
                       on_log=lambda step, loss: mlflow.log_metric("loss", loss, step=step))
        held_out = data.batch(config.iterations, config.seed, config.batch_size, config.crop)  # not trained on
        alive = alive_fraction(module, lambda: method.loss(classifier.eval(), *held_out))
        summary = {**result.summary(), "alive_fraction": alive, "lr": config.lr, "iterations": config.iterations}
        mlflow.log_metrics(summary)
        print(f"{args.backbone}/{args.method}: loss {summary['first_loss']:.4g} -> {summary['final_loss']:.4g} "
              f"(first and last tenth), {summary['loss_ratio']:.3f} of doing nothing's, {alive:.0%} of channels "
              f"alive, in {result.seconds:.0f} s (resumed from step {result.resumed_from})")
        # before any output is written: a method that did not learn must not reach the tables
        check_learned(args.method, summary["loss_ratio"], alive, params["train"]["max_loss_ratio"],
                      params["train"]["min_alive_fraction"])

        meta = {"backbone": args.backbone, "tap": tap, "method": args.method, "iterations": config.iterations}
        save_enhancer(module.eval(), trained_model(args.backbone, args.method), meta)
        curve_path = PLOTS / "train" / args.backbone / f"{args.method}.csv"
        curve = io.StringIO()
        csv.writer(curve).writerows([("step", "loss", "identity"),
                                     *((step, loss, identity) for (step, loss), (_, identity)
                                       in zip(result.losses, result.identity_losses))])
        atomic_write_text(curve_path, curve.getvalue())
        write_json(METRICS / "train" / args.backbone / f"{args.method}.json", summary)
        mlflow.log_artifact(str(curve_path))


if __name__ == "__main__":
    main()
