"""A frozen backbone with a trainable module in front of it or inside it.

The backbone is pre-trained and must never change: its parameters are frozen and it stays in eval
mode even when the wrapper is put in train mode, so its BatchNorm statistics never move.
"""

from __future__ import annotations

import torch
from torch import nn

from afd.errors import ConfigError
from afd.model.backbones import SplitBackbone


class _FrozenBackbone(nn.Module):
    """Holds `self.backbone` frozen and in eval mode; `train()` switches only the other modules.

    Subclasses say how the feature at `self.tap` is obtained (`enhanced_feature`); the rest of the
    backbone then finishes the forward pass from it.
    """

    def __init__(self, backbone: SplitBackbone, tap: str | None):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.tap = tap if tap is not None else backbone.default_tap
        backbone.tap_channels(self.tap)  # raises ConfigError for an unknown tap

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def tap_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The plain backbone's feature at the tap (the training target on clean images)."""
        return self.backbone.forward_to_tap(images, self.tap)

    def enhanced_feature(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from_tap(self.enhanced_feature(images), self.tap)


class EnhancedClassifier(_FrozenBackbone):
    """Backbone with an enhancer applied to its feature at a tap: enhancer(feature, images)."""

    def __init__(
        self, backbone: SplitBackbone, enhancer: nn.Module | None = None, tap: str | None = None
    ):
        super().__init__(backbone, tap)
        expected, available = getattr(enhancer, "feature_channels", None), backbone.tap_channels(self.tap)
        if expected is not None and expected != available:
            raise ConfigError(f"the {type(enhancer).__name__} takes {expected}-channel features, but "
                              f"{backbone.name}'s tap {self.tap!r} gives {available}")
        self.enhancer = enhancer

    def enhanced_feature(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.tap_feature(images)
        if self.enhancer is None:
            return feature
        return self.enhancer(feature, images)


class CascadeClassifier(_FrozenBackbone):
    """Pixel-domain baseline: restore the image (e.g. ARCNN), then classify it unchanged."""

    def __init__(self, restorer: nn.Module, backbone: SplitBackbone, tap: str | None = None):
        super().__init__(backbone, tap)
        self.restorer = restorer

    def enhanced_feature(self, images: torch.Tensor) -> torch.Tensor:
        """The tap feature of the restored image, comparable with the other methods' features."""
        return self.tap_feature(self.restorer(images).clamp(0, 1))
