"""Baselines of the paper's comparisons, trained later on the same patches as AFD.

- `ARCNN` (Dong et al., ICCV 2015): pixel-domain JPEG artifact removal, cascaded before the backbone
  (`classifier.CascadeClassifier`). 9x9/64 -> 7x7/32 -> 1x1/16 -> 5x5/3, ~0.12 M parameters and
  ~5.9 GMACs at 224x224, the figures of the paper's Table VII.
- `DDPEnhancer` (Wang et al., CVPR 2020, "deep degradation prior"): a plain feature enhancer at
  the same tap as AFD that sees the feature concatenated with the image resized to the feature's
  size. It has no frequency input and no block-wise map: the comparison isolates what FDE-Net adds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ARCNN(nn.Module):
    """Artifact-reduction CNN on RGB images in [0, 1].

    Predicts a residual added to the input (the original maps to the clean image directly); its
    last layer starts near zero (std 1e-3), so an untrained ARCNN is nearly the identity, as AFD
    is, and short training runs compare like with like (exactly zero would hold back every other
    layer's gradient at the start). PReLU, as in Fast AR-CNN (Dong et al., 2016), and a centred
    input: with ReLUs on [0, 1] inputs, a step large enough to learn in a short run killed its
    channels. Measured on the default patches, 300 steps (final loss over doing nothing's): ReLU,
    zero init, Adam 1e-4 0.98; PReLU, centred, zero init, 3e-4 0.938; this, 3e-4 0.926; 2e-3 diverges.
    """

    def __init__(self):
        super().__init__()
        self.extract = nn.Conv2d(3, 64, 9, padding=4)
        self.enhance = nn.Conv2d(64, 32, 7, padding=3)
        self.map = nn.Conv2d(32, 16, 1)
        self.reconstruct = nn.Conv2d(16, 3, 5, padding=2)
        self.extract_act, self.enhance_act, self.map_act = nn.PReLU(64), nn.PReLU(32), nn.PReLU(16)
        nn.init.normal_(self.reconstruct.weight, std=1e-3)
        nn.init.zeros_(self.reconstruct.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.extract_act(self.extract(images - 0.5))
        x = self.enhance_act(self.enhance(x))
        x = self.map_act(self.map(x))
        return images + self.reconstruct(x)


class DDPEnhancer(nn.Module):
    """Feature enhancer fed with [feature, image resized to the feature]; `forward(feature, images)`."""

    def __init__(self, feature_channels: int = 64, hidden: int = 64):
        super().__init__()
        self.feature_channels = feature_channels
        self.hidden = hidden
        self.body = nn.Sequential(
            nn.Conv2d(feature_channels + 3, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, feature_channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, feature: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(images, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        return feature + self.body(torch.cat([feature, resized], dim=1))
