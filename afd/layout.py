"""Where the pipeline's files live, and the backbones as params.yaml configures them.

The paths here are the ones dvc.yaml declares; stage scripts and flows take them from here, not from
literals. They are relative to the project directory (the one holding dvc.yaml).
"""

from __future__ import annotations

from pathlib import Path

from .backbones import SplitBackbone, build_backbone
from .errors import ConfigError

PATCHES = Path("data/div2k_c")
EVAL = Path("data/eval")
MODELS = Path("models")
CHECKPOINTS = Path("checkpoints")  # resumable training state; not a DVC output
METRICS = Path("metrics")
PLOTS = Path("plots")


def patch_sets(params: dict) -> tuple[Path, dict[str, Path]]:
    """The clean DIV2K-C patches and their JPEG versions: (clean dir, {set name: dir})."""
    return PATCHES / "clean", {f"jpeg_q{q}": PATCHES / f"jpeg_q{q}" for q in params["patches"]["qualities"]}


def eval_sets(params: dict) -> dict[str, Path]:
    """Every evaluation set by name, "clean" first, in params.yaml's order."""
    names = ["clean", *(f"jpeg_q{q}" for q in params["eval_sets"]["jpeg_qualities"]),
             *(f"multi_ct{t}" for t in params["eval_sets"]["compression_times"]),
             *(f"avif_q{q}" for q in params["eval_sets"]["avif_qualities"])]
    return {name: eval_set(name) for name in names}


def eval_set(name: str) -> Path:
    """The folder of the evaluation set `name` (one of `eval_sets`' keys)."""
    return EVAL / name


def model_dir(backbone: str, method: str) -> Path:
    return MODELS / backbone / method


def trained_model(backbone: str, method: str) -> Path:
    return model_dir(backbone, method) / "model.pt"


def fused_model(backbone: str, method: str) -> Path:
    return model_dir(backbone, method) / "fused.pt"


def deployable_model(backbone: str, method) -> Path:
    """What evaluation and deployment use: the fused form where the method has one."""
    return fused_model(backbone, method.name) if method.fusable else trained_model(backbone, method.name)


def backbone_from_params(params: dict, name: str) -> tuple[SplitBackbone, str]:
    """(backbone, tap) for `backbones.<name>` of params.yaml."""
    settings = params.get("backbones", {})
    if name not in settings:
        raise ConfigError(f"params.yaml: backbones.{name} is not configured; configured: {sorted(settings)}")
    weights = settings[name].get("weights")
    backbone = build_backbone(name, weights)
    tap = settings[name].get("tap") or backbone.default_tap
    backbone.tap_channels(tap)  # an unknown tap fails here, naming the valid ones
    return backbone, tap


def backbone_methods(params: dict, backbone: str, stage: str = "train") -> list[str]:
    """The methods trained (stage "train") or fused ("fuse") for `backbone`: `<stage>.methods`,
    plus `<stage>.study_methods` on train.study_backbone."""
    names = list(params[stage]["methods"])
    if backbone == params["train"]["study_backbone"]:
        names += params[stage]["study_methods"]
    return names


# dvc.yaml's stage names, for callers that run stages through DVC (the Prefect flows).
DATA_STAGES = ("patches", "div2k_c", "eval_clean", "eval_jpeg", "eval_multi", "eval_avif")


def train_stage(params: dict, backbone: str, method: str) -> str:
    if method in params["train"]["study_methods"]:
        return f"train_study@{method}"
    return f"train@{backbone}-{method}"


def fuse_stage(params: dict, backbone: str, method: str) -> str:
    if method in params["fuse"]["study_methods"]:
        return f"fuse_study@{method}"
    return f"fuse@{backbone}-{method}"
