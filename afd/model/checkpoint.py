"""Saving and loading trained enhancers (AFD-Module, DDP, ARCNN) with what is needed to rebuild them.

A checkpoint is a plain dict loaded with `weights_only=True` (no pickled code runs on load):
    kind: a method kind (afd.model.methods)  config: constructor arguments     deploy: fused form or not
    state_dict: the weights           meta: free-form facts (backbone, tap, training step, ...)
Writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from afd.errors import AFDError, ConfigError, WeightsNotFoundError, display_name, first_line
from afd.io import atomic_torch_save
from afd.model.methods import KINDS, METHOD_KINDS, kind_of


def describe_enhancer(module: nn.Module) -> tuple[str, dict, bool]:
    """(kind, constructor config, deploy) of an enhancer."""
    try:
        kind = kind_of(module)
    except ConfigError:
        raise AFDError(f"cannot checkpoint a {type(module).__name__}; expected one of {METHOD_KINDS}") from None
    return kind.name, kind.config_of(module), kind.deploy_form(module)


def build_enhancer(kind: str, config: dict, deploy: bool = False) -> nn.Module:
    if kind not in KINDS:
        raise AFDError(f"unknown enhancer kind {kind!r}; expected one of {METHOD_KINDS}")
    return KINDS[kind].rebuild(config, deploy)


def save_enhancer(module: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    kind, config, deploy = describe_enhancer(module)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    checkpoint = {"kind": kind, "config": config, "deploy": deploy, "state_dict": state, "meta": meta or {}}
    atomic_torch_save(checkpoint, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, with one-line errors for a missing, corrupt or foreign file."""
    path = Path(path)
    name = display_name(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{name}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise AFDError(f"{name}: not a readable checkpoint ({type(error).__name__}: {first_line(error)})") from None
    problem = _structure_problem(checkpoint)
    if problem:
        raise AFDError(f"{name}: not an enhancer checkpoint ({problem})")
    return checkpoint


def _structure_problem(checkpoint) -> str | None:
    """What is wrong with the shape of a loaded checkpoint, or None."""
    if not isinstance(checkpoint, dict):
        return f"a {type(checkpoint).__name__}, not a dict"
    missing = {"kind", "config", "deploy", "state_dict"} - set(checkpoint)
    if missing:
        return f"missing {sorted(missing)}"
    expected_types = {"kind": str, "config": dict, "deploy": bool, "state_dict": dict, "meta": dict}
    for key, expected in expected_types.items():
        if key in checkpoint and not isinstance(checkpoint[key], expected):
            return f"{key} is a {type(checkpoint[key]).__name__}, not a {expected.__name__}"
    if checkpoint["kind"] not in METHOD_KINDS:
        return f"unknown kind {checkpoint['kind']!r}; expected one of {METHOD_KINDS}"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint["state_dict"].items()):
        return "state_dict holds something other than named tensors"
    return None


def load_enhancer(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the enhancer saved at `path` (eval mode); returns (module, meta)."""
    checkpoint = read_checkpoint(path)
    name = display_name(path)
    try:
        module = build_enhancer(checkpoint["kind"], checkpoint["config"], checkpoint["deploy"])
    except (TypeError, ValueError, RuntimeError, AFDError) as error:
        raise AFDError(f"{name}: its {checkpoint['kind']} config cannot be built ({first_line(error)})") from None
    mismatch = _weights_mismatch(module.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise AFDError(f"{name}: its weights do not fit its {checkpoint['kind']} architecture ({mismatch})")
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), dict(checkpoint.get("meta", {}))


def _weights_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """One line on how `found` differs from the architecture's `expected` state dict, or None."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    resized = sorted(k for k in expected.keys() & found.keys() if expected[k].shape != found[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing, first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, first {unexpected[0]}")
    if resized:
        first = resized[0]
        problems.append(f"{len(resized)} of another shape, first {first}: "
                        f"{tuple(found[first].shape)} instead of {tuple(expected[first].shape)}")
    return "; ".join(problems) or None
