"""What each stage of dvc.yaml does: one function per stage, called by its script in `stages/`
(which only parses the command line). Each reads params.yaml (as a dict), writes the outputs
dvc.yaml declares at the paths of `afd.ops.layout`, and tracks itself in MLflow through
`afd.ops.tracking`; the Prefect flows run these stages through DVC, so there is one way to run a step.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys

import torch

from afd.data.codecs import CODECS, EvalSet
from afd.data.images import load_image, to_batch
from afd.data.sets import (
    copy_imagenet_c,
    embedded_split,
    folder_photos,
    image_folder,
    load_set,
    make_compressed_sets,
    make_eval_clean,
    make_patches,
)
from afd.errors import ConfigError
from afd.io import atomic_write_text, write_json
from afd.model.checkpoint import load_enhancer, save_enhancer
from afd.model.determinism import pin_cpu_numerics, pin_numerics
from afd.model.efficiency import count_parameters
from afd.model.methods import Method
from afd.ops.layout import (
    CHECKPOINTS,
    EVAL,
    METRICS,
    PATCHES,
    PLOTS,
    REPORT,
    backbone_from_params,
    backbone_methods,
    codec_sets,
    eval_set,
    fused_model,
    patch_sets,
    trained_model,
)
from afd.ops.params import training_profile
from afd.ops.tracking import lineage_tags, log_artifact, log_artifacts, log_metrics, tracked_run

FUSE_VERIFY_IMAGES = 8  # real compressed evaluation images the fused module is checked on


# ---- data ---------------------------------------------------------------------------------------


def make_patch_set(params: dict) -> str:
    """DIV2K-C's clean patches: seeded random crops of the training photos."""
    sources = params["sources"]
    if sources["kind"] == "embedded":
        photos, source = embedded_split(sources["embedded"]["train"], sources["embedded"]["eval"])[0], "embedded"
    else:
        photos, source = folder_photos(sources["train_dir"]), sources["train_dir"]
    count = training_profile(params)["patch_count"]
    out = PATCHES / "clean"
    manifest = make_patches(photos, count, params["patches"]["size"], params["seed"], out, source)
    return f"{out}: {count} patches from {source}, {len(manifest['skipped'])} files skipped"


def compress_patches(params: dict) -> str:
    """DIV2K-C: the clean patches as JPEG at each training quality (patches.qualities)."""
    clean, sets = patch_sets(params)
    out = codec_sets(PATCHES, "jpeg")
    make_compressed_sets(clean, out, CODECS["jpeg"], params["patches"]["qualities"])
    return f"{out}: {', '.join(sets)}"


def make_eval_clean_set(params: dict) -> str:
    """The clean evaluation images: ImageNet-C preprocessing of the eval folder, or the embedded
    eval photos (several grid views each where sources.embedded.view_sizes asks)."""
    sources = params["sources"]
    if sources["kind"] == "embedded":
        photos = embedded_split(sources["embedded"]["train"], sources["embedded"]["eval"])[1]
        source, view_sizes = "embedded", sources["embedded"]["view_sizes"]
    else:
        photos, source, view_sizes = image_folder(sources["eval_dir"]), sources["eval_dir"], []
    out = EVAL / "clean"
    manifest = make_eval_clean(photos, out, view_sizes, sources["max_eval_images"], source)
    labelled = sum(record["label"] is not None for record in manifest["images"])
    return (f"{out}: {len(manifest['images'])} images ({labelled} labelled) from {source}, "
            f"{len(manifest['skipped'])} files skipped")


def compress_eval_sets(params: dict, codec_name: str) -> str:
    """One codec's evaluation sets: the clean evaluation images at each of its levels
    (eval_sets.<codec>), or for JPEG the released ImageNet-C files where sources.imagenet_c_dir
    names them."""
    if codec_name not in params["eval_sets"]:
        raise ConfigError(f"params.yaml: eval_sets has no codec {codec_name!r}; it has {sorted(params['eval_sets'])}")
    codec = CODECS[codec_name]
    settings = dict(params["eval_sets"][codec_name])
    levels = settings.pop("levels")
    clean, out = EVAL / "clean", codec_sets(EVAL, codec_name)
    imagenet_c_dir = params["sources"]["imagenet_c_dir"] if codec.imagenet_c_release else None
    if imagenet_c_dir:
        copy_imagenet_c(clean, out, levels, imagenet_c_dir)
        return f"{out}: the released ImageNet-C files at {levels}"
    make_compressed_sets(clean, out, codec, levels, params["seed"], **settings)
    return f"{out}: {codec_name} at {levels}"


# ---- models -------------------------------------------------------------------------------------


def train_method(params: dict, backbone_name: str, method_name: str) -> str:
    """Train one method for one backbone on DIV2K-C and refuse it if it did not learn
    (train.max_loss_ratio, train.min_alive_fraction): its model, loss curve and summary."""
    from afd.model.train import PatchPairs, TrainConfig, alive_fraction, check_learned, train

    device, numerics = pin_numerics(params["numerics"]["threads"], params["numerics"]["device"])
    method = Method.from_params(method_name, params["methods"])
    seed = params["seed"] + method.seed_offset
    profile = training_profile(params)
    config = dataclasses.replace(TrainConfig.from_profile(profile, seed).with_lr_scale(method.lr_scale),
                                 amp=params["numerics"]["amp"])
    backbone, tap = backbone_from_params(params, backbone_name)
    tap = method.tap_on(tap)
    if not backbone.pretrained:
        print(f"warning: {backbone_name} has random weights; its results mean nothing")
    clean_dir, degraded_dirs = patch_sets(params)
    data = PatchPairs.from_sets(clean_dir, degraded_dirs, profile["mix_clean"])
    torch.manual_seed(seed)
    module = method.build(backbone, tap, profile["afd_size"])
    classifier = method.classifier(backbone, module, tap)
    identity = {"name": f"{backbone_name}/{method_name}", "method": dataclasses.asdict(method), "tap": tap,
                "weights": str(backbone.weights_file)}
    tags = {**lineage_tags(backbone_name, backbone.weights_file, [clean_dir, *degraded_dirs.values()]),
            "stage": "train", "method": method_name}
    run_params = {"method": params["methods"][method_name], "profile": params["profile"],
                  "training": dataclasses.asdict(config), "tap": tap, "mix_clean": profile["mix_clean"],
                  "afd_size": profile["afd_size"], "numerics": numerics}
    with tracked_run(f"train@{backbone_name}-{method_name}", run_params, tags):
        result = train(classifier, module, method.loss, method.identity_loss, data, config,
                       CHECKPOINTS / backbone_name / method_name / "state.pt", identity,
                       on_log=lambda step, loss: log_metrics({"loss": loss}, step=step), device=device)
        held_out = data.batch(config.iterations, config.seed, config.batch_size, config.crop)  # not trained on
        alive = alive_fraction(module, lambda: method.loss(classifier.eval(), *(t.to(device) for t in held_out)))
        classifier.cpu()  # saved, and read by every later stage, as CPU tensors
        summary = {**result.summary(), "alive_fraction": alive, "lr": config.lr, "iterations": config.iterations}
        log_metrics({**summary, **result.timing()})  # the timing is the run's, not in the md5-pinned metrics file
        # before any output is written: a method that did not learn must not reach the tables
        check_learned(method_name, summary["loss_ratio"], alive, params["train"]["max_loss_ratio"],
                      params["train"]["min_alive_fraction"])
        meta = {"backbone": backbone_name, "tap": tap, "method": method_name, "iterations": config.iterations}
        save_enhancer(module.eval(), trained_model(backbone_name, method_name), meta)
        curve_path = PLOTS / "train" / backbone_name / f"{method_name}.csv"
        curve = io.StringIO()
        csv.writer(curve).writerows([("step", "loss", "identity"),
                                     *((step, loss, identity) for (step, loss), (_, identity)
                                       in zip(result.losses, result.identity_losses))])
        atomic_write_text(curve_path, curve.getvalue())
        write_json(METRICS / "train" / backbone_name / f"{method_name}.json", summary)
        log_artifact(curve_path)
    return (f"{backbone_name}/{method_name}: loss {summary['first_loss']:.4g} -> {summary['final_loss']:.4g} "
            f"(first and last tenth), {summary['loss_ratio']:.3f} of doing nothing's, {alive:.0%} of channels "
            f"alive, in {result.seconds:.0f} s on {numerics['device']} (resumed from step {result.resumed_from})"
            + (f", {result.seconds_per_step:.3f} s/step: {result.projected_seconds:.0f} s projected for the whole run"
               if result.seconds_per_step else ""))


def fuse_method(params: dict, backbone_name: str, method_name: str) -> str:
    """Fuse a trained method's RepConv blocks into single convolutions, checked on the features
    of real compressed evaluation images (fuse.verify_set); the difference goes to metrics/fuse/."""
    from afd.model.fusing import fuse_and_verify

    pin_cpu_numerics(params["numerics"]["threads"])
    if not Method.from_params(method_name, params["methods"]).fusable:
        raise ConfigError(f"params.yaml: fuse lists {method_name!r}, which has no RepConv to fuse")
    source = trained_model(backbone_name, method_name)
    module, meta = load_enhancer(source)
    backbone, _ = backbone_from_params(params, backbone_name)
    verify_set = eval_set(EvalSet(**params["fuse"]["verify_set"]).name)  # an evaluation set: params.py checks
    files = load_set(verify_set)[:FUSE_VERIFY_IMAGES]
    images = to_batch([load_image(path) for _, path in files])
    with torch.no_grad():
        feature = backbone.forward_to_tap(images, meta["tap"])
    fused, max_abs_diff = fuse_and_verify(module, feature, images, source=source)
    save_enhancer(fused, fused_model(backbone_name, method_name), {**meta, "fuse_max_abs_diff": max_abs_diff})
    summary = {"max_abs_diff": max_abs_diff, "verified_on_images": len(files),
               "params_trained": count_parameters(module), "params_fused": count_parameters(fused)}
    write_json(METRICS / "fuse" / backbone_name / f"{method_name}.json", summary)
    tags = {**lineage_tags(backbone_name, backbone.weights_file, [source, verify_set]),
            "stage": "fuse", "method": method_name}
    with tracked_run(f"fuse@{backbone_name}-{method_name}", {"verify_set": verify_set.name}, tags):
        log_metrics(summary)
    return f"{backbone_name}/{method_name}: fused, max |fused - trained| = {max_abs_diff:.2e} on {len(files)} images"


# ---- evaluation, registration, efficiency, report -----------------------------------------------


def evaluate(params: dict, backbone_name: str) -> str:
    """The grid method x set of one backbone: metrics/eval/<backbone>.json (means and averages)
    and .images.json (per-image outcomes), logged to MLflow."""
    from afd.ops.pipeline import evaluate_backbone, evaluation_record, image_outcomes, log_evaluation, trained_methods

    device, _ = pin_numerics(params["numerics"]["threads"], params["numerics"]["device"])
    trained = trained_methods(params, backbone_name)
    outcomes = evaluate_backbone(params, trained, device)
    record = evaluation_record(params, trained, outcomes)
    write_json(METRICS / "eval" / f"{backbone_name}.images.json", image_outcomes(params, outcomes))
    write_json(METRICS / "eval" / f"{backbone_name}.json", record)
    log_evaluation(params, trained, record)
    return f"{backbone_name}: {len(record['methods'])} methods x {len(record['grid']['direct'])} sets evaluated"


def parallel_parts(params: dict, stage_name: str) -> list[list[str]]:
    """Commands that compute parts of a stage ahead, independently of each other, so that the stage
    then only assembles them (the retraining flow runs them in parallel first; `dvc repro` does
    without): an `evaluate@<backbone>` stage's grid cells, one process per method (afd.ops.cells)."""
    from afd.model.methods import DIRECT_TEST

    base, _, backbone_name = stage_name.partition("@")
    if base != "evaluate":
        return []
    return [[sys.executable, "-m", "afd.ops.cells", "--backbone", backbone_name, "--method", method]
            for method in [DIRECT_TEST, *backbone_methods(params, backbone_name)]]


def register(params: dict, backbone_name: str) -> str:
    """Register backbone + fused AFD as afd-<backbone> with its deploy exports, and gate it on
    its evaluation (metrics/eval/<backbone>.json): metrics/register/<backbone>.json."""
    from afd.ops.pipeline import register_backbone

    pin_cpu_numerics(params["numerics"]["threads"])
    evaluation = json.loads((METRICS / "eval" / f"{backbone_name}.json").read_text())
    per_image = json.loads((METRICS / "eval" / f"{backbone_name}.images.json").read_text())
    receipt = register_backbone(params, backbone_name, evaluation, per_image)
    write_json(METRICS / "register" / f"{backbone_name}.json", receipt)
    return f"{receipt['name']} version {receipt['version']}: {receipt['alias']} ({receipt['reason']})"


def executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")


def measure_efficiency(params: dict) -> str:
    """Table VII at each of efficiency.backbones' taps, in eager PyTorch and on ExecuTorch, measured
    in one run: metrics/efficiency.json. The modules are built fresh: size and speed depend on the
    architecture, not on trained weights."""
    import tempfile

    from afd.model.determinism import resolve_device
    from afd.ops.benchmark import compare_efficiency, efficiency_record
    from afd.ops.tracking import git_commit

    settings = params["efficiency"]
    device = resolve_device(params["numerics"]["device"])  # a GPU adds its own columns; the CPU's are always timed
    gpu = device if device.type == "cuda" else None
    results = {}
    for name in settings["backbones"]:
        _, tap = backbone_from_params(params, name)
        weights = params["backbones"][name].get("weights")
        with tempfile.TemporaryDirectory(prefix="afd-efficiency-") as programs:
            rows = compare_efficiency(name, tap, weights, threads=settings["threads"], warmup=settings["warmup"],
                                      repeats=settings["repeats"], progress=lambda names: print(f"timing {names}"),
                                      executorch_dir=programs if settings["executorch"] else None, gpu=gpu)
        setup = (f"One random 224x224 image, {settings['threads']} thread(s), {settings['warmup']} warm-up runs, "
                 f"{settings['repeats']} repeats interleaved across every row: eager PyTorch (channels-last)"
                 + (" on the CPU and the GPU" if gpu else "")
                 + (f" and ExecuTorch {executorch_version()} with XNNPACK" if settings["executorch"] else "")
                 + f", torch {torch.__version__}.")
        results[name] = efficiency_record(rows, setup, settings["threads"], gpu)
    write_json(METRICS / "efficiency.json", results)
    with tracked_run("efficiency", settings, {"stage": "efficiency", "git_commit": git_commit()}):
        for name, measured in results.items():
            log_metrics({f"{name}.{key}": value for key, value in measured["ratios"].items()})
            for row in measured["rows"]:
                log_metrics({f"{name}.{row['runtime']}.{row['role']}.{key}": row[key]
                             for key in ("params", "macs", "median_ms", "p90_ms")})
    return f"{METRICS / 'efficiency.json'}: {', '.join(results)}"


def report(params: dict) -> str:
    """The Markdown report and its figures (reports/) from the metrics of every backbone."""
    from afd.ops.report import write_report
    from afd.ops.tracking import git_commit

    backbones = params["train"]["backbones"]
    results = [json.loads((METRICS / "eval" / f"{name}.json").read_text()) for name in backbones]
    images = {name: json.loads((METRICS / "eval" / f"{name}.images.json").read_text()) for name in backbones}
    training = {backbone: {method: json.loads((METRICS / "train" / backbone / f"{method}.json").read_text())
                           for method in backbone_methods(params, backbone)} for backbone in backbones}
    efficiency = json.loads((METRICS / "efficiency.json").read_text())
    write_report(results, images, training, efficiency, REPORT, REPORT.parent / "figures")
    with tracked_run("report", tags={"stage": "report", "git_commit": git_commit()}):
        log_artifacts(REPORT.parent, "report")
    return f"{REPORT}: written"

