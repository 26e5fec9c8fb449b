"""The AFD-Module (Section III-B): FDE-Net estimates where features drift, FE-Net corrects them.

    feature ──► FE-Net (U-Net of RepConv) ──► residual ──┐
                                                        × FDM ──► + feature ──► de-drifted feature
    image ──► block DCT ──► FDE-Net (1x1 convs) ──► FDM ─┘

The Feature Drifting Map holds one value per 8x8 image block (or per block and channel), estimated
from that block's own DCT coefficients only (1x1 convs), then filled over the block's area at the
feature's resolution. It scales FE-Net's residual, so each block gets its own correction amplitude.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from afd.errors import ConfigError
from afd.model.dct import BLOCK, DCT_CHANNELS, build_frequency_input
from afd.model.repconv import RepConv

FDM_SOURCES = ("dct", "image_blocks", "shuffled_dct", "none")

# FE-Net widths by module size (a training profile's `afd_size`). "paper": the fused module costs
# what the paper's Table VII gives at ResNet-50's tap (0.11 M parameters, 0.36 GMACs on 64 x 112 x
# 112): 0.111 M and 0.357 G by afd.model.efficiency's counts. "small": 0.085 M and 0.19 G, for a 2-core CPU.
AFD_SIZES = {"small": (16, 32, 64), "paper": (26, 48, 56)}

# Level-shifted pixels lie in [-128, 127]; the orthonormal DCT keeps their energy, so dividing by
# 128 puts FDE-Net's input on a unit scale without learned normalisation.
_FREQUENCY_INPUT_SCALE = 1.0 / 128.0


@dataclass(frozen=True)
class AFDConfig:
    """Architecture of an AFD-Module; stored in every checkpoint so the module can be rebuilt.

    feature_channels: channels of the backbone feature at the tap.
    widths: FE-Net's channels at its three resolutions (full, 1/2, 1/4 of the feature's); AFD_SIZES
        names the ones the profiles use.
    fdm_source: FDE-Net input: "dct" (paper), "image_blocks", "shuffled_dct", or "none" (FE-Net alone).
    fdm_per_channel: one FDM value per block and feature channel instead of one per block.
    fde_hidden: widths of FDE-Net's two hidden 1x1 stages (the third stage outputs the FDM).
    shuffle_seed: seed of the "shuffled_dct" permutation.
    """

    feature_channels: int = 64
    widths: tuple[int, int, int] = field(default=AFD_SIZES["small"])
    fdm_source: str = "dct"
    fdm_per_channel: bool = False
    fde_hidden: tuple[int, int] = field(default=(32, 16))
    shuffle_seed: int = 0

    def __post_init__(self):
        if self.fdm_source not in FDM_SOURCES:
            raise ConfigError(f"unknown fdm_source {self.fdm_source!r}; choose one of {FDM_SOURCES}")
        if len(self.widths) != 3:
            raise ConfigError(f"AFD widths: one per FE-Net resolution (3), got {list(self.widths)}")
        if self.feature_channels < 1 or min(self.widths) < 1 or min(self.fde_hidden) < 1:
            raise ConfigError(f"AFD widths must be positive, got {self}")
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "fde_hidden", tuple(self.fde_hidden))

    def to_dict(self) -> dict:
        return asdict(self)


def fill_blocks(block_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Repeat each block's value over the area it covers in a feature map of `size`."""
    grid_h, grid_w = block_map.shape[-2:]
    if size[0] % grid_h or size[1] % grid_w:
        raise ConfigError(
            f"feature size {tuple(size)} is not a whole multiple of the {grid_h}x{grid_w} block grid; "
            f"AFD needs a tap whose stride divides {BLOCK}"
        )
    return F.interpolate(block_map, size=tuple(size), mode="nearest")


class FDENet(nn.Module):
    """Feature Drifting Estimation: three stages of 1x1 convs over each block's coefficients."""

    def __init__(self, config: AFDConfig):
        super().__init__()
        hidden1, hidden2 = config.fde_hidden
        out_channels = config.feature_channels if config.fdm_per_channel else 1
        self.frequency_input = build_frequency_input(config.fdm_source, config.shuffle_seed)
        self.stages = nn.Sequential(
            nn.Conv2d(DCT_CHANNELS, hidden1, 1),
            nn.ReLU(),
            nn.Conv2d(hidden1, hidden2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden2, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, images: torch.Tensor, feature_size: tuple[int, int]) -> torch.Tensor:
        """Feature Drifting Map (N, 1 or C, *feature_size), constant over each 8x8 block's area."""
        coefficients = self.frequency_input(images) * _FREQUENCY_INPUT_SCALE
        return fill_blocks(self.stages(coefficients), feature_size)


class Up(nn.Module):
    """A 1x1 conv to the skip's channels, nearest upsampling to the skip's size, then the skip added.

    Projecting before upsampling equals the usual order exactly (a 1x1 conv commutes with nearest
    upsampling) and costs 4x fewer MACs.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.project(x), size=skip.shape[-2:], mode="nearest") + skip


class FENet(nn.Module):
    """Feature Enhancement: a small U-Net (two downs, two ups, additive skips) of RepConv blocks.

    It downsamples with stride-2 RepConv blocks (fused like any other), not with pooling layers.

    Returns the residual to add to the degraded feature. The output layer is U-Net's usual 1x1 conv
    (a 3x3 there would cost a third of the module's MACs); it starts at zero, so an untrained module
    is the identity and training starts from DirectTest.
    """

    def __init__(self, channels: int, widths: tuple[int, int, int], deploy: bool = False):
        super().__init__()
        w1, w2, w3 = widths
        self.head = nn.Conv2d(channels, w1, 1)
        self.enc1 = RepConv(w1, w1, deploy=deploy)
        self.enc2 = RepConv(w1, w2, stride=2, deploy=deploy)
        self.enc3 = RepConv(w2, w3, stride=2, deploy=deploy)
        self.bottleneck = RepConv(w3, w3, deploy=deploy)
        self.up2 = Up(w3, w2)
        self.dec2 = RepConv(w2, w2, deploy=deploy)
        self.up1 = Up(w2, w1)
        self.dec1 = RepConv(w1, w1, deploy=deploy)
        self.tail = nn.Conv2d(w1, channels, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        skip1 = self.enc1(self.head(feature))
        skip2 = self.enc2(skip1)
        deepest = self.bottleneck(self.enc3(skip2))
        x = self.dec2(self.up2(deepest, skip2))
        x = self.dec1(self.up1(x, skip1))
        return self.tail(x)


class AFDModule(nn.Module):
    """Adaptive Feature De-drifting: `forward(feature, images)` -> de-drifted feature.

    feature: the backbone's (degraded) feature at the tap, (N, C, h, w).
    images: the same (degraded) RGB images in [0, 1], (N, 3, H, W), H and W multiples of 8.
    """

    def __init__(self, config: AFDConfig | None = None, deploy: bool = False):
        super().__init__()
        self.config = config or AFDConfig()
        self.fe = FENet(self.config.feature_channels, self.config.widths, deploy=deploy)
        self.fde = FDENet(self.config) if self.config.fdm_source != "none" else None

    @property
    def feature_channels(self) -> int:
        return self.config.feature_channels

    def forward(self, feature: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if feature.shape[1] != self.config.feature_channels:
            raise ConfigError(
                f"AFD-Module built for {self.config.feature_channels}-channel features, "
                f"got {feature.shape[1]} channels"
            )
        residual = self.fe(feature)
        if self.fde is not None:
            residual = residual * self.fde(images, feature.shape[-2:])
        return feature + residual

    def feature_drifting_map(self, feature: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """The FDM used for `feature`, for inspection and figures; None without FDE-Net."""
        return None if self.fde is None else self.fde(images, feature.shape[-2:])
