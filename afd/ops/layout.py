"""Where the pipeline's files live, and the backbones as params.yaml configures them.

The paths here are the ones dvc.yaml declares; stage scripts and flows take them from here, not from
literals. They are relative to the project directory (the one holding dvc.yaml).
"""

from __future__ import annotations

from pathlib import Path

from afd.data.codecs import CLEAN, CODECS, EvalSet
from afd.errors import ConfigError
from afd.model.backbones import SplitBackbone, build_backbone

PATCHES = Path("data/div2k_c")
EVAL = Path("data/eval")
MODELS = Path("models")
CHECKPOINTS = Path("checkpoints")  # resumable training state; not a DVC output
METRICS = Path("metrics")
PLOTS = Path("plots")
CELL_CACHE = Path(".afd-cache/cells")  # grid cells computed ahead of the evaluate stage (afd.ops.cells); not a DVC output
REPORT = Path("reports/report.md")  # its figures: reports/figures/


def patch_sets(params: dict) -> tuple[Path, dict[str, Path]]:
    """The clean DIV2K-C patches and their JPEG versions: (clean dir, {set name: dir})."""
    jpeg = CODECS["jpeg"]
    return PATCHES / CLEAN, {s.name: _set_dir(PATCHES, s) for s in map(jpeg.set, params["patches"]["qualities"])}


def eval_sets(params: dict) -> dict[str, Path]:
    """Every evaluation set by name, "clean" first, then each codec's in params.yaml's order."""
    sets = {CLEAN: EVAL / CLEAN}
    for codec_name, section in params["eval_sets"].items():
        sets |= {s.name: _set_dir(EVAL, s) for s in map(CODECS[codec_name].set, section["levels"])}
    return sets


def eval_set(name: str) -> Path:
    """The folder of the evaluation set `name` (one of `eval_sets`' keys)."""
    return EVAL / CLEAN if name == CLEAN else _set_dir(EVAL, EvalSet.parse(name))


def codec_sets(root: Path, codec_name: str) -> Path:
    """The folder that holds every set of a codec (one DVC output): data/eval/jpeg."""
    return root / codec_name


def _set_dir(root: Path, eval_set: EvalSet) -> Path:
    return codec_sets(root, eval_set.codec) / eval_set.name


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
