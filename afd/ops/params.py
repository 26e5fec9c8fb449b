"""params.yaml: one typed schema for the whole file, and a record of which keys a process read.

`load_params` checks every key against `ParamsSchema` (pydantic): a wrong value, a missing or an
unknown key is a ConfigError naming its key path and what is allowed. Numbers are read as numbers
however YAML typed them (PyYAML reads `1e-4` as a string). The result is a plain mapping of the
file's own keys that notes each key read from it (`used_keys`), so a test can check that dvc.yaml
declares every parameter a stage really uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from afd.data.codecs import CODECS, EvalSet
from afd.data.images import GRID
from afd.errors import ConfigError, display_name
from afd.io import parse_yaml
from afd.model.afd_module import AFD_SIZES, FDM_SOURCES
from afd.model.determinism import AMP_DTYPES
from afd.model.methods import METHOD_KINDS
from afd.ops.layout import eval_sets

DEPLOY_FORMATS = ("executorch", "executorch_int8", "onnx")  # what `register` can attach (afd.ops.export)


# ---- the schema ---------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not silently ignored


Quality = Annotated[StrictInt, Field(ge=1, le=100)]
Count = Annotated[StrictInt, Field(ge=1)]
GridSize = Annotated[StrictInt, Field(ge=GRID, multiple_of=GRID)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # lax: "1e-4" (a YAML string) is 0.0001
NonEmpty = Annotated[str, Field(min_length=1)]


class Embedded(_Section):
    train: Annotated[list[NonEmpty], Field(min_length=1)]  # collections or sample photos (afd.data.samples)
    eval: Annotated[list[NonEmpty], Field(min_length=1)]
    view_sizes: list[Annotated[StrictInt, Field(ge=224, le=4096)]]  # empty: ImageNet-C's one view


class Sources(_Section):
    kind: Literal["embedded", "folders"]
    embedded: Embedded
    train_dir: NonEmpty | None = None
    eval_dir: NonEmpty | None = None
    imagenet_c_dir: NonEmpty | None = None
    max_eval_images: Annotated[StrictInt, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _folders_are_given(self):
        if self.kind == "folders":
            missing = [key for key in ("train_dir", "eval_dir") if not getattr(self, key)]
            if missing:
                raise ValueError(f"kind folders needs {' and '.join(missing)}: a folder path or s3:// URL")
        return self


class Patches(_Section):
    size: GridSize
    qualities: Annotated[list[Quality], Field(min_length=1)]


def _codec_sections(sections: dict) -> dict:
    """eval_sets: one section per codec of afd.data.codecs, each checked by the codec's own settings."""
    checked = {}
    for name, section in sections.items():
        if name not in CODECS:
            raise ValueError(f"{name!r} is not a codec; codecs: {', '.join(CODECS)}")
        try:
            checked[name] = CODECS[name].settings.model_validate(section).model_dump()
        except ValidationError as error:
            raise ValueError(f"{name}.{_describe(error)}") from None
    return checked


EvalSets = Annotated[dict[str, Any], Field(min_length=1), AfterValidator(_codec_sections)]


class Backbone(_Section):
    weights: NonEmpty | None = None  # None: the default (see afd.model.backbones)
    tap: NonEmpty | None = None  # None: the backbone's default tap


class MethodSpec(_Section):
    kind: Literal[METHOD_KINDS]  # type: ignore[valid-type]
    fdm_source: Literal[FDM_SOURCES] | None = None  # type: ignore[valid-type]
    lr_scale: Rate = 1.0
    seed_offset: Annotated[StrictInt, Field(ge=0)] = 0  # trained with seed + this: another initialisation
    tap: NonEmpty | None = None  # the backbone tap it plugs in at (default: backbones.<name>.tap or its default)
    title: NonEmpty | None = None  # in the report's tables (default: its kind's)

    @model_validator(mode="after")
    def _fdm_source_is_afds(self):
        if self.fdm_source is not None and self.kind != "afd":
            raise ValueError(f"fdm_source applies to kind afd only, not {self.kind}")
        return self


class Train(_Section):
    backbones: Annotated[list[NonEmpty], Field(min_length=1)]
    methods: Annotated[list[NonEmpty], Field(min_length=1)]  # on every backbone
    study_backbone: NonEmpty  # the ablations, baselines and seeds of study_methods run on it only
    study_methods: list[NonEmpty]
    max_loss_ratio: Rate  # a method whose final loss is above this fraction of doing nothing's failed
    min_alive_fraction: Annotated[float, Field(ge=0, le=1)]


class SetSpec(_Section):
    """One evaluation set, as a value: a codec of eval_sets at one of its levels."""

    codec: NonEmpty
    level: StrictInt


class Fuse(_Section):
    methods: list[NonEmpty]  # of train.methods
    study_methods: list[NonEmpty]  # of train.study_methods
    verify_set: "SetSpec"  # the evaluation set whose features a fused module is checked on


class Profile(_Section):
    patch_count: Count
    iterations: Count
    batch_size: Count
    crop: GridSize
    lr: Rate
    lr_drop_at: Annotated[StrictInt, Field(ge=0)]
    lr_after_drop: Rate
    checkpoint_every: Count
    # Also draw clean patches as inputs (target: their own feature), so the module learns to leave
    # uncompressed features alone (paper Table X); not in the paper's recipe.
    mix_clean: StrictBool
    afd_size: Literal[tuple(AFD_SIZES)]  # type: ignore[valid-type]  # FE-Net widths (afd.model.afd_module)


class Evaluate(_Section):
    batch_size: Count
    # the study methods are evaluated on the clean images and these families' sets only (their
    # tables are JPEG tables); the headline methods and DirectTest on every set
    study_families: list[Literal[tuple(CODECS)]]  # type: ignore[valid-type]


class Register(_Section):
    deploy_formats: list[Literal[DEPLOY_FORMATS]]  # type: ignore[valid-type]
    int8_calibration_patches: Count  # training patches that calibrate the int8 program's ranges


class Efficiency(_Section):
    backbones: Annotated[list[NonEmpty], Field(min_length=1)]  # of train.backbones
    executorch: StrictBool  # also lower the whole classifiers to ExecuTorch and time them in the same run
    threads: Count
    warmup: Annotated[StrictInt, Field(ge=0)]
    repeats: Count


def _amp_off(value):
    return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class Numerics(_Section):
    threads: Count
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]  # afd.model.determinism.DEVICES
    amp: Annotated[Literal[tuple(AMP_DTYPES)], BeforeValidator(_amp_off)]  # type: ignore[valid-type]


class ParamsSchema(_Section):
    seed: Annotated[StrictInt, Field(ge=0)]
    numerics: Numerics
    sources: Sources
    patches: Patches
    eval_sets: EvalSets
    backbones: dict[str, Backbone]
    methods: dict[str, MethodSpec]
    train: Train
    fuse: Fuse
    profile: NonEmpty
    profiles: dict[str, Profile]
    evaluate: Evaluate
    register_: Register = Field(alias="register")  # `register` would shadow BaseModel.register
    efficiency: Efficiency

    @model_validator(mode="after")
    def _names_refer_to_defined_entries(self):
        def defined(key: str, names: list[str], among: dict | list, what: str) -> None:
            unknown = [name for name in names if name not in among]
            if unknown:
                raise ValueError(f"{key}: {', '.join(map(repr, unknown))} not among the {what} "
                                 f"({', '.join(among) or 'none'})")

        defined("profile", [self.profile], self.profiles, "profiles")
        defined("train.backbones", self.train.backbones, self.backbones, "backbones")
        defined("train.methods", self.train.methods, self.methods, "methods")
        defined("train.study_backbone", [self.train.study_backbone], self.train.backbones, "train.backbones")
        defined("efficiency.backbones", self.efficiency.backbones, self.train.backbones, "train.backbones")
        defined("train.study_methods", self.train.study_methods, self.methods, "methods")
        twice = sorted(set(self.train.methods) & set(self.train.study_methods))
        if twice:
            raise ValueError(f"train.study_methods: {', '.join(map(repr, twice))} already in train.methods")
        defined("fuse.methods", self.fuse.methods, self.train.methods, "train.methods")
        defined("fuse.study_methods", self.fuse.study_methods, self.train.study_methods, "train.study_methods")
        for key, names in (("fuse.methods", self.fuse.methods), ("fuse.study_methods", self.fuse.study_methods)):
            not_fusable = [name for name in names if self.methods[name].kind != "afd"]
            if not_fusable:
                raise ValueError(f"{key}: {', '.join(map(repr, not_fusable))} is not of kind afd: nothing to fuse")
        sets = eval_sets({"eval_sets": self.eval_sets})
        verify = self.fuse.verify_set
        if verify.codec not in CODECS or EvalSet(verify.codec, verify.level).name not in sets:
            raise ValueError(f"fuse.verify_set: {verify.codec} at {verify.level} is not an evaluation set "
                             f"({', '.join(list(sets)[1:])})")
        return self


# ---- loading ------------------------------------------------------------------------------------


def load_params(path: str = "params.yaml") -> dict:
    """params.yaml checked against ParamsSchema, as a mapping of the file's keys (values coerced
    to their types) that records which keys are read (`used_keys`)."""
    try:
        raw = parse_yaml(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{display_name(path)}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{display_name(path)}: not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{display_name(path)}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        schema = ParamsSchema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{display_name(path)}: {_describe(e)}") from None
    return _UsageRecorder(schema.model_dump(by_alias=True, exclude_unset=True), "", _USED)


def training_profile(params: dict) -> dict:
    """The training settings of the selected profile: params["profiles"][params["profile"]]."""
    return params["profiles"][params["profile"]]


def _describe(error: ValidationError) -> str:
    """The first problems of a ValidationError, one line: `key.path: what is wrong (got value)`."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-after"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{key}: missing")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif isinstance(item["input"], dict):  # a check across keys: its message says what
            problems.append(f"{key}: {message}" if key else message)
        else:
            problems.append(f"{key}: {message} (got {item['input']!r})"[:300])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


# ---- which keys were read -----------------------------------------------------------------------

_USED: set[str] = set()


def used_keys() -> list[str]:
    """The dotted params.yaml keys this process has read from any loaded params: a value read
    (`train.methods`), a key looked up (`backbones.x.tap`, present or not), or a whole section
    iterated (`methods`)."""
    return sorted(_USED)


class _UsageRecorder(dict):
    """A params.yaml section (a plain dict underneath) that notes in `used` each key read from it.
    Reaching a sub-section notes nothing by itself: only what is read from it."""

    def __init__(self, data=(), path: str = "", used: set[str] | None = None):
        # Defaults: libraries that rebuild a mapping as type(m)(items) (Prefect) get a working one.
        super().__init__(data)
        used = _USED if used is None else used
        self._path, self._used = path, used

    def _key(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def _note(self, key: str) -> None:
        self._used.add(key or "<all of params.yaml>")

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, dict):
            return _UsageRecorder(value, self._key(key), self._used)
        self._note(self._key(key))
        return value

    def get(self, key, default=None):
        if super().__contains__(key):
            return self[key]
        self._note(self._key(key))  # absent: the answer depends on the key staying absent
        return default

    def __contains__(self, key) -> bool:
        self._note(self._key(key))
        return super().__contains__(key)

    def _whole(self) -> None:
        self._note(self._path)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def __len__(self) -> int:
        self._whole()
        return super().__len__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return [(key, self[key]) for key in super().keys()]

    def values(self):
        self._whole()
        return [self[key] for key in super().keys()]

    def __reduce__(self):  # pickles (Prefect, Dask) as the plain dict it holds
        return dict, (dict.copy(self),)
