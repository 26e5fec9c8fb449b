"""Fuse a trained AFD-Module into its deploy form, verified on real evaluation features
(params: methods.<method>, fuse.verify_set); the difference is recorded in metrics/fuse/."""

import mlflow
import torch

from afd.checkpoint import load_enhancer, save_enhancer
from afd.data import load_set
from afd.determinism import pin_cpu_numerics
from afd.efficiency import count_parameters
from afd.errors import ConfigError
from afd.fusing import fuse_and_verify
from afd.images import load_image, to_batch
from afd.io import write_json
from afd.layout import METRICS, backbone_from_params, eval_set, fused_model, trained_model
from afd.methods import Method
from afd.params import load_params
from afd.tracking import lineage_tags, tracked_run

from stage import stage_arguments, stage_main

VERIFY_IMAGES = 8


@stage_main
def main() -> None:
    args = stage_arguments(__doc__, backbone=True, method=True).parse_args()
    params = load_params(args.params)
    pin_cpu_numerics(params["numerics"]["threads"])
    if not Method.from_params(args.method, params["methods"]).fusable:
        raise ConfigError(f"params.yaml: fuse.methods lists {args.method!r}, which has no RepConv to fuse")
    source = trained_model(args.backbone, args.method)
    module, meta = load_enhancer(source)
    backbone, _ = backbone_from_params(params, args.backbone)

    # Real compressed evaluation images: the features the module really works on.
    verify_set = eval_set(params["fuse"]["verify_set"])  # among the evaluation sets: params.py checks
    files = load_set(verify_set)[:VERIFY_IMAGES]
    images = to_batch([load_image(path) for _, path in files])
    with torch.no_grad():
        feature = backbone.forward_to_tap(images, meta["tap"])
    fused, max_abs_diff = fuse_and_verify(module, feature, images, source=source)

    save_enhancer(fused, fused_model(args.backbone, args.method), {**meta, "fuse_max_abs_diff": max_abs_diff})
    summary = {
        "max_abs_diff": max_abs_diff,
        "verified_on_images": len(files),
        "params_trained": count_parameters(module),
        "params_fused": count_parameters(fused),
    }
    write_json(METRICS / "fuse" / args.backbone / f"{args.method}.json", summary)
    tags = {**lineage_tags(args.backbone, backbone.weights_file, [source, verify_set]),
            "stage": "fuse", "method": args.method}
    with tracked_run(f"fuse@{args.backbone}-{args.method}", {"verify_set": verify_set.name}, tags):
        mlflow.log_metrics(summary)
    print(f"{args.backbone}/{args.method}: fused, max |fused - trained| = {max_abs_diff:.2e} on {len(files)} images")


if __name__ == "__main__":
    main()
