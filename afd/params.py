"""params.yaml: loading it, and checking the keys the data stages use (stages and flows read it here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError

SOURCE_KINDS = ("embedded", "folders")
DEPLOY_FORMATS = ("executorch", "onnx")  # what `register` can attach, each checked against PyTorch


def load_params(path: str = "params.yaml") -> dict:
    """params.yaml as a dict, with the data stages' keys checked (ConfigError names the bad key)."""
    try:
        params = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(params).__name__}")
    _check_data_params(params, path)
    return params


def training_profile(params: dict) -> dict:
    """The training settings of the selected profile: params["profiles"][params["profile"]]."""
    profiles = params.get("profiles") or {}
    name = params.get("profile")
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(profiles) or 'none'}")
    return profiles[name]


def _check_data_params(params: dict, path: str) -> None:
    def value(key: str) -> Any:
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{path}: missing key {key}")
            node = node[part]
        return node

    def check(key: str, ok: Callable[[Any], bool], need: str) -> None:
        if not ok(value(key)):
            raise ConfigError(f"{path}: {key} must be {need}, got {value(key)!r}")

    def int_list(low: int, high: float = float("inf")) -> Callable[[Any], bool]:
        return lambda v: isinstance(v, list) and bool(v) and all(_int_in(x, low, high) for x in v)

    check("seed", lambda v: _int_in(v, 0), "an integer >= 0")
    check("sources.kind", lambda v: v in SOURCE_KINDS, f"one of {', '.join(SOURCE_KINDS)}")
    if value("sources.kind") == "folders":
        for key in ("sources.train_dir", "sources.eval_dir"):
            check(key, lambda v: isinstance(v, str) and v, "a folder path or s3:// URL")
    else:
        check("sources.embedded.eval_photos", lambda v: isinstance(v, list) and v and all(
            isinstance(x, str) for x in v), "a non-empty list of photo names")
        check("sources.embedded.view_sizes", int_list(224), "a non-empty list of integers >= 224")
    check("sources.imagenet_c_dir", lambda v: v is None or (isinstance(v, str) and v),
          "null or a folder path / s3:// URL")
    check("sources.max_eval_images", lambda v: _int_in(v, 0), "an integer >= 0 (0: all)")
    check("patches.size", lambda v: _int_in(v, 16) and v % 16 == 0, "a multiple of 16, >= 16")
    check("patches.qualities", int_list(1, 100), "a non-empty list of integers in 1..100")
    check("eval_sets.jpeg_qualities", int_list(1, 100), "a non-empty list of integers in 1..100")
    check("eval_sets.avif_qualities", int_list(1, 100), "a non-empty list of integers in 1..100")
    check("eval_sets.compression_times", int_list(1), "a non-empty list of integers >= 1")
    check("eval_sets.resave_q85", lambda v: isinstance(v, bool), "true or false")
    check("train.mix_clean", lambda v: isinstance(v, bool), "true or false")
    profile_key = f"profiles.{value('profile')}.patch_count"
    training_profile(params)  # the profile exists
    check(profile_key, lambda v: _int_in(v, 1), "an integer >= 1")
    check("register.deploy_formats", lambda v: isinstance(v, list) and all(x in DEPLOY_FORMATS for x in v),
          f"a list of formats among {', '.join(DEPLOY_FORMATS)}")


def _int_in(v: Any, low: float, high: float = float("inf")) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
