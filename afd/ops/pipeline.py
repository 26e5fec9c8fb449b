"""The pipeline's model steps, shared by the DVC stage scripts (`stages/`) and the Prefect flows
(`flows/`): loading a backbone's trained methods, evaluating, the evaluation record, registering.

Each step reads params.yaml (as a dict) and the project layout (`afd.ops.layout`), so a stage and a
flow that run the same step produce the same files, metrics and registry entries.
"""

from __future__ import annotations

import collections
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from afd.data.codecs import set_family
from afd.data.images import load_image, to_batch
from afd.data.sets import PairedImages, labels, load_set
from afd.io import file_md5
from afd.model.backbones import SplitBackbone
from afd.model.checkpoint import load_enhancer
from afd.model.classifier import EnhancedClassifier
from afd.model.determinism import pin_cpu_numerics
from afd.model.evaluate import Batch, Outcomes, evaluate_grid, family_averages, grid_metrics
from afd.model.methods import BEFORE_BACKBONE, DIRECT_TEST, KINDS, Method, method_titles, plug_in
from afd.ops.export import (
    DEPLOY_SUFFIXES,
    executorch_predictor,
    export_deploy_format,
    in_processes,
    save_program,
)
from afd.ops.layout import (
    backbone_from_params,
    backbone_methods,
    deployable_model,
    eval_sets,
    fused_model,
    patch_sets,
    trained_model,
)
from afd.ops.tracking import flatten, lineage_tags, log_dict, log_metrics, tracked_run

CHECK_IMAGES = 4  # clean evaluation images the exports are checked on


@dataclass
class TrainedMethods:
    backbone_name: str
    backbone: SplitBackbone
    tap: str
    classifiers: dict[str, nn.Module]  # DirectTest first, then each method by name
    model_files: list[Path]  # the deployable model file of each method


def trained_methods(params: dict, backbone_name: str, methods: list[str] | None = None) -> TrainedMethods:
    """DirectTest and each method (default: those trained for the backbone) as a classifier, from
    its deployable (fused where fusable) model file, on the backbone's inference form (BatchNorm
    folded, same padding without copies: `SplitBackbone.to_inference_form`)."""
    backbone, tap = backbone_from_params(params, backbone_name)
    backbone.to_inference_form()
    classifiers: dict[str, nn.Module] = {DIRECT_TEST: EnhancedClassifier(backbone, None, tap)}
    model_files = []
    for name in backbone_methods(params, backbone_name) if methods is None else methods:
        if name == DIRECT_TEST:
            continue
        method = Method.from_params(name, params["methods"])
        model_files.append(deployable_model(backbone_name, method))
        module, _ = load_enhancer(model_files[-1])
        classifiers[name] = method.classifier(backbone, module, method.tap_on(tap))
    return TrainedMethods(backbone_name, backbone, tap, classifiers, model_files)


class EvaluationSet:
    """One compressed set next to its clean version, as Batch objects read lazily from disk (a set
    never has to fit in memory); re-iterable."""

    def __init__(self, clean_dir: Path, set_dir: Path, batch_size: int):
        self.clean_dir, self.set_dir, self.batch_size = clean_dir, set_dir, batch_size
        self.labels = labels(clean_dir)

    def __iter__(self):
        loader = DataLoader(PairedImages(self.clean_dir, self.set_dir), batch_size=self.batch_size)
        for clean, degraded, ids in loader:
            yield Batch(clean, degraded, [self.labels[i] for i in ids])


def evaluation_sets(params: dict, names: list[str] | None = None) -> dict[str, EvaluationSet]:
    """The evaluation sets by name (default: all, "clean" first)."""
    sets = eval_sets(params)
    return {name: EvaluationSet(sets["clean"], sets[name], params["evaluate"]["batch_size"])
            for name in (names or sets)}


def grid_cells(params: dict, backbone_name: str) -> dict[str, list[str]]:
    """{set: the methods evaluated on it}: DirectTest and `train.methods` on every set; the study
    methods (on the study backbone) on the clean set and `evaluate.study_families` only."""
    headline = [DIRECT_TEST, *params["train"]["methods"]]
    every = [DIRECT_TEST, *backbone_methods(params, backbone_name)]
    families = params["evaluate"]["study_families"]
    return {name: every if name == "clean" or set_family(name) in families else headline
            for name in eval_sets(params)}


def evaluate_backbone(params: dict, trained: TrainedMethods,
                      device: torch.device = torch.device("cpu")) -> dict[str, dict[str, Outcomes]]:
    """The grid method x set of `grid_cells` (per-image outcomes): the cells computed ahead
    (afd.ops.cells) from their cache, the rest in one pass over each set on `device`."""
    from afd.ops.cells import CellCache

    cells = grid_cells(params, trained.backbone_name)
    cache = CellCache(params, trained.backbone_name, trained.backbone.weights_file, trained.tap, device)
    known = {(m, s): cache.load(m, s) for s, methods in cells.items() for m in methods}
    missing = {s: [m for m in methods if known[m, s] is None] for s, methods in cells.items()}
    missing = {s: methods for s, methods in missing.items() if methods}
    computed = evaluate_grid(trained.classifiers[DIRECT_TEST], trained.classifiers,
                             evaluation_sets(params, list(missing)), missing, device=device) if missing else {}
    grid: dict[str, dict[str, Outcomes]] = {name: {} for name in trained.classifiers}
    for set_name, methods in cells.items():  # sets in params.yaml's order, whichever way they came
        for method in methods:
            grid[method][set_name] = known[method, set_name] or computed[method][set_name]
    return grid


def describe_data(clean_dir: Path) -> dict:
    manifest = json.loads((clean_dir / "manifest.json").read_text())
    images = manifest["images"]
    photos = sorted({record["photo"] for record in images})
    labelled = sum(record["label"] is not None for record in images)
    if manifest["source"] == "embedded":
        origins = collections.Counter(provenance["origin"] for provenance in manifest.get("photos", {}).values())
        views = "one Resize(256) + CenterCrop(224) view" if len(images) == len(photos) else "several 224 views"
        description = (f"{len(images)} images ({views} each) of {len(photos)} real photos shipped in PyPI packages "
                       f"({', '.join(f'{n} from {origin}' for origin, n in sorted(origins.items()))}), "
                       f"{labelled} with an ImageNet label")
    else:
        description = f"{len(images)} images of {manifest['source']} ({labelled} labelled)"
    return {"source": manifest["source"], "images": len(images), "photos": len(photos),
            "labelled": labelled, "description": description}


def evaluation_record(params: dict, trained: TrainedMethods, outcomes: dict[str, dict[str, Outcomes]]) -> dict:
    """What metrics/eval/<backbone>.json holds: the grid of metric means, its family averages and
    what it was measured on. The weights are named by file name (their sha256 is in the lineage
    tags)."""
    grid = grid_metrics(outcomes)
    weights = trained.backbone.weights_file
    return {
        "backbone": trained.backbone_name,
        "tap": trained.tap,
        "weights": Path(weights).name if weights else "random",
        "pretrained": trained.backbone.pretrained,
        "native_resolution": trained.backbone.native_resolution,
        "data": describe_data(eval_sets(params)["clean"]),
        "methods": list(grid),
        "titles": method_titles(params, list(grid)),
        "kinds": {name: Method.from_params(name, params["methods"]).kind for name in grid if name != DIRECT_TEST},
        "taps": {name: classifier.tap for name, classifier in trained.classifiers.items()},
        "grid": grid,
        "averages": family_averages(grid),
    }


def image_outcomes(params: dict, outcomes: dict[str, dict[str, Outcomes]]) -> dict:
    """What metrics/eval/<backbone>.images.json holds: each evaluation image (id, photo, label)
    and, per method and set, its per-image outcomes in that order: what confidence intervals
    and paired tests resample (afd.model.significance)."""
    manifest = json.loads((eval_sets(params)["clean"] / "manifest.json").read_text())
    images = [{key: record[key] for key in ("id", "photo", "label")} for record in manifest["images"]]
    return {"images": images,
            "outcomes": {method: {name: o.record() for name, o in by_set.items()} for method, by_set in outcomes.items()}}


def log_evaluation(params: dict, trained: TrainedMethods, record: dict) -> None:
    """The evaluation as an MLflow run: every cell and average as a metric, lineage as tags."""
    tags = {**lineage_tags(trained.backbone_name, trained.backbone.weights_file,
                           [*eval_sets(params).values(), *trained.model_files]), "stage": "evaluate"}
    with tracked_run(f"evaluate@{trained.backbone_name}", {"eval_sets": params["eval_sets"],
                                                           "methods": record["methods"]}, tags):
        log_metrics(flatten({"grid": record["grid"], "averages": record["averages"]}))
        log_dict(record, "evaluation.json")


def comparison_programs(params: dict, backbone_name: str, backbone: SplitBackbone, tap: str, example: torch.Tensor,
                        out_dir: Path) -> dict[str, Path]:
    """What the on-device benchmark compares the registered classifier with, as `.pt2` programs:
    the backbone alone, the backbone with the unfused (multi-branch) AFD, and each kind that
    restores the image before the backbone (JAR: ARCNN), trained where it was trained for this
    backbone, else untrained (latency does not depend on the weights)."""
    unfused, _ = load_enhancer(trained_model(backbone_name, "afd"))
    models = {DIRECT_TEST: EnhancedClassifier(backbone, None, tap),
              "afd_unfused": EnhancedClassifier(backbone, unfused, tap)}
    trained = [Method.from_params(name, params["methods"]) for name in backbone_methods(params, backbone_name)]
    for kind in (kind for kind in KINDS.values() if kind.plugs_in == BEFORE_BACKBONE):
        files = [trained_model(backbone_name, m.name) for m in trained if m.kind == kind.name]
        module = load_enhancer(files[0])[0] if files and files[0].exists() else kind.new(backbone.tap_channels(tap), "small", "dct")
        models[kind.name] = plug_in(kind, backbone, module, tap)
    return {role: save_program(model, example, out_dir / f"{role}.pt2") for role, model in models.items()}


def calibration_patches(params: dict, count: int) -> torch.Tensor:
    """`count` training patches (DIV2K-C, never an evaluation photo; fewer if there are not as many)
    for int8 calibration, taken in turn from the clean patches and each QF's, so the ranges cover
    what the model sees deployed."""
    clean_dir, compressed = patch_sets(params)
    folders = [load_set(folder) for folder in (clean_dir, *compressed.values())]
    in_turn = [items[i][1] for i in range(max(map(len, folders))) for items in folders if i < len(items)]
    return to_batch([load_image(path) for path in in_turn[:count]])


def int8_quality(params: dict, direct: nn.Module, pte: Path, evaluation: dict, per_image: dict) -> dict:
    """The int8 program's agreement and KL on the clean set and the JPEG family's sets, next to the
    float model's (from its evaluation), and the paired drop in agreement over the JPEG QFs with its
    95% interval over photos (points)."""
    from afd.data.codecs import CLEAN, CODECS
    from afd.model.evaluate import evaluate_logits, family_averages, grid_metrics
    from afd.model.significance import PhotoBootstrap, agreement_values

    jpeg = [name for name in eval_sets(params) if set_family(name) == CODECS["jpeg"].name]
    outcomes = evaluate_logits(direct, executorch_predictor(pte), evaluation_sets(params, [CLEAN, *jpeg]))
    grid = grid_metrics({"int8": outcomes})
    averages = family_averages(grid)["int8"]
    records = {"afd": per_image["outcomes"]["afd"], "int8": {name: o.record() for name, o in outcomes.items()}}
    drop = PhotoBootstrap([image["photo"] for image in per_image["images"]]).estimate(
        agreement_values(records["afd"], jpeg) - agreement_values(records["int8"], jpeg)).scaled(100)
    return {"int8": {"clean": grid["int8"][CLEAN], **averages},
            "float": {"clean": evaluation["grid"]["afd"][CLEAN], "jpeg": evaluation["averages"]["afd"]["jpeg"]},
            "agreement_drop_jpeg_points": {"value": drop.value, "low": drop.low, "high": drop.high}}


def register_backbone(params: dict, backbone_name: str, evaluation: dict, per_image: dict) -> dict:
    """Register backbone (BatchNorm folded) + fused AFD as afd-<backbone> with its deploy exports (params
    register.deploy_formats, each checked against PyTorch; int8 by its agreement) and the benchmark's comparison
    programs, then apply the promotion gate to `evaluation` (an `evaluation_record`; `per_image`: its
    `image_outcomes`). Returns the receipt (name, version, alias, ...)."""
    from afd.ops.registry import MODEL_MD5_TAG, GateScores, champion_with_model, register_classifier

    model_file = fused_model(backbone_name, "afd")
    model_md5 = file_md5(model_file)
    unchanged = champion_with_model(backbone_name, model_md5)
    if unchanged:
        return {**unchanged, "new_version": False}
    backbone, tap = backbone_from_params(params, backbone_name)
    # BN folded: 3x faster to lower, as fast on XNNPACK. Padding kept: XNNPACK pads asymmetrically
    # itself, and EvenSameConv's larger kernels make its program slower (benches/inference_form.py).
    backbone.to_inference_form(keep_padding=True)
    module, _ = load_enhancer(model_file)
    model = EnhancedClassifier(backbone, module, tap).eval()
    scores = GateScores.from_evaluation(evaluation)

    sets = eval_sets(params)
    images = to_batch([load_image(path) for _, path in load_set(sets["clean"])[:CHECK_IMAGES]])
    tags = {**lineage_tags(backbone_name, backbone.weights_file, [*sets.values(), model_file]), MODEL_MD5_TAG: model_md5,
            **{f"metric.{k}": f"{v:.6f}" for k, v in flatten(evaluation["averages"]["afd"]).items()}}
    with tempfile.TemporaryDirectory() as tmp, tracked_run(f"register@{backbone_name}", {"tap": tap},
                                                           {**tags, "stage": "register"}):
        tmp = Path(tmp)
        settings = params["register"]
        formats = settings["deploy_formats"]
        (tmp / "benchmark").mkdir()
        files = {name: tmp / f"afd-{backbone_name}{DEPLOY_SUFFIXES[name]}" for name in formats}
        calibration = (calibration_patches(params, settings["int8_calibration_patches"])
                       if "executorch_int8" in formats else None)
        int8_program = tmp / "benchmark" / "afd_int8.pt2"  # the device times it too
        # the formats (each checked) are made two at a time, int8 (the longest) first; each process
        # pins numerics as this one did, so int8's calibration is the same wherever it runs
        order = sorted(formats, key=lambda name: name != "executorch_int8")
        built = dict(zip(order, in_processes(
            [functools.partial(export_deploy_format, name, model, images, files[name], calibration, int8_program)
             for name in order], initializer=pin_cpu_numerics, initargs=(params["numerics"]["threads"],))))
        deploy_files = [built[name][0] for name in formats]
        differences = {f"{'pte' if name == 'executorch' else name}_max_abs_diff": built[name][1]
                       for name in formats if built[name][1] is not None}
        int8 = {}
        if "executorch_int8" in formats:
            int8 = int8_quality(params, EnhancedClassifier(backbone, None, tap), files["executorch_int8"], evaluation,
                                per_image)
            tags |= {f"int8.metric.{family}.{metric}": f"{value:.6f}"
                     for family, metrics in int8["int8"].items() for metric, value in metrics.items()}
            tags["int8.agreement_drop_jpeg_points"] = f"{int8['agreement_drop_jpeg_points']['value']:.3f}"
        if differences:
            log_metrics(differences)
        comparison_programs(params, backbone_name, backbone, tap, images[:1], tmp / "benchmark")
        registration = register_classifier(model, backbone_name, images[:2], scores, tags, deploy_files,
                                           {"benchmark": tmp / "benchmark"})
    return {"name": registration.name, "version": registration.version, "alias": registration.alias,
            "reason": registration.reason, "run_id": registration.run_id, "new_version": True, **differences, **int8}
