"""Evaluate the grid method x set for one backbone: DirectTest and every trained method on the
clean, JPEG, multi-compression and AVIF sets (params: eval_sets, train.methods, evaluate)."""

import argparse
import json

import mlflow
from layout import METRICS, backbone_from_params, deployable_model, eval_sets
from params import load_params, stage_main
from torch.utils.data import DataLoader

from afd.checkpoint import load_enhancer
from afd.classifier import EnhancedClassifier
from afd.data import PairedImages, labels
from afd.evaluate import Batch, evaluate_grid, family_averages
from afd.io import write_json
from afd.methods import DIRECT_TEST, Method
from afd.tracking import flatten, lineage_tags, tracked_run


def batches(clean_dir, set_dir, batch_size, image_labels):
    """The set as Batch objects, read lazily (a set never has to fit in memory)."""
    for clean, degraded, ids in DataLoader(PairedImages(clean_dir, set_dir), batch_size=batch_size):
        yield Batch(clean, degraded, [image_labels[i] for i in ids])


class LazySet:
    """Re-iterable: evaluate_set walks each set once, reading files as it goes."""

    def __init__(self, *args):
        self.args = args

    def __iter__(self):
        return batches(*self.args)


def describe_data(clean_dir) -> dict:
    manifest = json.loads((clean_dir / "manifest.json").read_text())
    images = manifest["images"]
    photos = sorted({record["photo"] for record in images})
    labelled = sum(record["label"] is not None for record in images)
    if manifest["source"] == "embedded":
        description = (f"{len(images)} views (Resize + 224 crops) of {len(photos)} embedded sample photos "
                       f"({', '.join(photos)}), no labels — a smoke test, not a benchmark")
    else:
        description = f"{len(images)} images of {manifest['source']} ({labelled} labelled)"
    return {"source": manifest["source"], "images": len(images), "photos": len(photos),
            "labelled": labelled, "description": description}


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    backbone, tap = backbone_from_params(params, args.backbone)
    direct = EnhancedClassifier(backbone, None, tap)
    methods, model_files = {DIRECT_TEST: direct}, []
    for name in params["train"]["methods"]:
        method = Method.from_params(name, params["methods"])
        model_files.append(deployable_model(args.backbone, method))
        module, _ = load_enhancer(model_files[-1])
        methods[name] = method.classifier(backbone, module, tap)

    sets = eval_sets(params)
    image_labels = labels(sets["clean"])
    batch_size = params["evaluate"]["batch_size"]
    grid = evaluate_grid(direct, methods, {
        name: LazySet(sets["clean"], directory, batch_size, image_labels) for name, directory in sets.items()
    })
    result = {
        "backbone": args.backbone,
        "tap": tap,
        "weights": str(backbone.weights_file or "random"),
        "pretrained": backbone.pretrained,
        "data": describe_data(sets["clean"]),
        "methods": list(methods),
        "grid": grid,
        "averages": family_averages(grid),
    }
    write_json(METRICS / "eval" / f"{args.backbone}.json", result)
    tags = {**lineage_tags(args.backbone, backbone.weights_file, [*sets.values(), *model_files]), "stage": "evaluate"}
    with tracked_run(f"evaluate@{args.backbone}", {"eval_sets": params["eval_sets"], "methods": list(methods)}, tags):
        mlflow.log_metrics(flatten({"grid": grid, "averages": result["averages"]}))
    print(f"{args.backbone}: {len(methods)} methods x {len(sets)} sets evaluated")


if __name__ == "__main__":
    main()
