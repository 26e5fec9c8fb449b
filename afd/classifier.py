"""A frozen backbone with a trainable module in front of it or inside it.

The backbone is pre-trained and must never change: its parameters are frozen and it stays in eval
mode even when the wrapper is put in train mode, so its BatchNorm statistics never move.
"""

from __future__ import annotations

import torch
from torch import nn

from afd.backbones import SplitBackbone


class _FrozenBackbone(nn.Module):
    """Holds `self.backbone` frozen and in eval mode; `train()` switches only the other modules."""

    def __init__(self, backbone: SplitBackbone):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self


class EnhancedClassifier(_FrozenBackbone):
    """Backbone with an enhancer applied to its feature at a tap: enhancer(feature, images)."""

    def __init__(
        self, backbone: SplitBackbone, enhancer: nn.Module | None = None, tap: str | None = None
    ):
        super().__init__(backbone)
        self.enhancer = enhancer
        self.tap = tap if tap is not None else backbone.default_tap
        backbone.tap_channels(self.tap)  # raises ConfigError for an unknown tap

    def tap_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_to_tap(images, self.tap)

    def enhanced_feature(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.tap_feature(images)
        if self.enhancer is None:
            return feature
        return self.enhancer(feature, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from_tap(self.enhanced_feature(images), self.tap)


class CascadeClassifier(_FrozenBackbone):
    """Pixel-domain baseline: restore the image (e.g. ARCNN), then classify it."""

    def __init__(self, restorer: nn.Module, backbone: SplitBackbone):
        super().__init__(backbone)
        self.restorer = restorer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.restorer(images).clamp(0, 1))
