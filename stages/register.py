"""Register the deployable classifier (backbone + fused AFD, image in, logits out) as
afd-<backbone> in the MLflow model registry, with ExecuTorch (.pte, XNNPACK) and ONNX exports
checked and attached, then apply the promotion gate (params: backbones.<backbone>)."""

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
from layout import METRICS, backbone_from_params, eval_sets, fused_model
from params import load_params, stage_main

from afd.checkpoint import load_enhancer
from afd.classifier import EnhancedClassifier
from afd.data import load_set
from afd.export import check_export, export_executorch, export_onnx, run_executorch, run_onnx
from afd.images import load_image, to_batch
from afd.io import write_json
from afd.registry import GateScores, register_classifier
from afd.tracking import flatten, lineage_tags, tracked_run

CHECK_IMAGES = 4


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    backbone, tap = backbone_from_params(params, args.backbone)
    model_file = fused_model(args.backbone, "afd")
    module, _ = load_enhancer(model_file)
    model = EnhancedClassifier(backbone, module, tap).eval()
    evaluation = json.loads((METRICS / "eval" / f"{args.backbone}.json").read_text())
    scores = GateScores.from_evaluation(evaluation)

    sets = eval_sets(params)
    images = to_batch([load_image(path) for _, path in load_set(sets["clean"])[:CHECK_IMAGES]])
    tags = {**lineage_tags(args.backbone, backbone.weights_file, [*sets.values(), model_file]),
            **{f"metric.{k}": f"{v:.6f}" for k, v in flatten(evaluation["averages"]["afd"]).items()}}
    with tempfile.TemporaryDirectory() as tmp, tracked_run(f"register@{args.backbone}", {"tap": tap},
                                                           {**tags, "stage": "register"}):
        pte, onnx = Path(tmp) / f"afd-{args.backbone}.pte", Path(tmp) / f"afd-{args.backbone}.onnx"
        export_executorch(model, images[:1], pte)
        export_onnx(model, images[:1], onnx)
        differences = {"pte_max_abs_diff": check_export(model, run_executorch, pte, images[:1]),
                       "onnx_max_abs_diff": check_export(model, run_onnx, onnx, images)}
        mlflow.log_metrics(differences)
        registration = register_classifier(model, args.backbone, images[:2], scores, tags,
                                           attachments={"deploy": pte, "deploy/onnx": onnx})
    write_json(METRICS / "register" / f"{args.backbone}.json", {
        "name": registration.name, "version": registration.version, "alias": registration.alias,
        "reason": registration.reason, **differences,
    })
    print(f"{registration.name} version {registration.version}: {registration.alias} ({registration.reason})")


if __name__ == "__main__":
    main()
