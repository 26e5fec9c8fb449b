"""Saving and loading trained enhancers (AFD-Module, DDP, ARCNN) with what is needed to rebuild them.

A checkpoint is a plain dict loaded with `weights_only=True` (no pickled code runs on load):
    kind: "afd" | "ddp" | "arcnn"     config: constructor arguments     deploy: fused form or not
    state_dict: the weights           meta: free-form facts (backbone, tap, training step, ...)
Writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .afd_module import AFDConfig, AFDModule
from .baselines import ARCNN, DDPEnhancer
from .errors import AFDError, WeightsNotFoundError
from .io import atomic_torch_save
from .repconv import is_reparameterized

ENHANCER_KINDS = ("afd", "ddp", "arcnn")


def describe_enhancer(module: nn.Module) -> tuple[str, dict, bool]:
    """(kind, constructor config, deploy) of an enhancer."""
    if isinstance(module, AFDModule):
        return "afd", module.config.to_dict(), is_reparameterized(module)
    if isinstance(module, DDPEnhancer):
        return "ddp", {"feature_channels": module.feature_channels, "hidden": module.hidden}, False
    if isinstance(module, ARCNN):
        return "arcnn", {}, False
    raise AFDError(f"cannot checkpoint a {type(module).__name__}; expected one of {ENHANCER_KINDS}")


def build_enhancer(kind: str, config: dict, deploy: bool = False) -> nn.Module:
    if kind == "afd":
        return AFDModule(AFDConfig(**config), deploy=deploy)
    if kind == "ddp":
        return DDPEnhancer(**config)
    if kind == "arcnn":
        return ARCNN(**config)
    raise AFDError(f"unknown enhancer kind {kind!r}; expected one of {ENHANCER_KINDS}")


def save_enhancer(module: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    kind, config, deploy = describe_enhancer(module)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    checkpoint = {"kind": kind, "config": config, "deploy": deploy, "state_dict": state, "meta": meta or {}}
    atomic_torch_save(checkpoint, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, with clear errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise AFDError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    missing = {"kind", "config", "deploy", "state_dict"} - set(checkpoint if isinstance(checkpoint, dict) else ())
    if missing:
        raise AFDError(f"{path}: not an enhancer checkpoint (missing {sorted(missing)})")
    return checkpoint


def load_enhancer(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the enhancer saved at `path` (eval mode); returns (module, meta)."""
    checkpoint = read_checkpoint(path)
    try:
        module = build_enhancer(checkpoint["kind"], checkpoint["config"], checkpoint["deploy"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as error:
        raise AFDError(f"{path}: checkpoint does not match its architecture ({error})") from None
    return module.eval(), dict(checkpoint.get("meta", {}))
