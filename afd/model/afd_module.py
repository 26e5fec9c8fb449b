"""The AFD-Module (Section III-B): FDE-Net estimates where features drift, FE-Net corrects them.

    feature ──► FE-Net (U-Net of RepConv) ──► residual ──┐
                                                        × FDM ──► + feature ──► de-drifted feature
    image ──► block DCT ──► FDE-Net (1x1 convs) ──► FDM ─┘

The Feature Drifting Map holds one value per 8x8 image block (or per block and channel), estimated
from that block's own DCT coefficients only (1x1 convs). It scales FE-Net's residual over the
block's area, so each block gets its own correction amplitude.

Deploy form (`afd.model.repconv.reparameterize`): besides the RepConv blocks, FDE-Net's fixed
frequency front end and first 1x1 conv fold into one 8x8 stride-8 conv, and each nearest upsampling
becomes a 1x1 conv to 4x the channels and a pixel shuffle. The deploy form uses only ops that
mobile runtimes delegate (XNNPACK has no nearest upsampling), and computes the same values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from afd.errors import ConfigError
from afd.model.dct import BLOCK, DCT_CHANNELS, build_frequency_input, check_block_aligned
from afd.model.repconv import RepConv

FDM_SOURCES = ("dct", "image_blocks", "shuffled_dct", "none")

# FE-Net widths by module size (a training profile's `afd_size`). "paper": the fused module costs
# what the paper's Table VII gives at ResNet-50's tap (0.11 M parameters, 0.36 GMACs on 64 x 112 x
# 112): 0.111 M distinct weights and 0.365 G by afd.model.efficiency's counts (its deploy form
# stores 0.123 M: each upsampling's 1x1 weights four times). "small": 0.085 M and 0.19 G, for a 2-core CPU.
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


def _block_size(grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Feature pixels per block along each side, for a feature of `size` over a block `grid`."""
    if size[0] % grid[0] or size[1] % grid[1]:
        raise ConfigError(
            f"feature size {tuple(size)} is not a whole multiple of the {grid[0]}x{grid[1]} block grid; "
            f"AFD needs a tap whose stride divides {BLOCK}"
        )
    return size[0] // grid[0], size[1] // grid[1]


def fill_blocks(block_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Repeat each block's value over the area it covers in a feature map of `size` (for figures)."""
    _block_size(tuple(block_map.shape[-2:]), tuple(size))
    return F.interpolate(block_map, size=tuple(size), mode="nearest")


def scale_by_blocks(feature: torch.Tensor, block_map: torch.Tensor) -> torch.Tensor:
    """`feature * fill_blocks(block_map, feature's size)`, as a broadcast over a view that splits
    each side into (block, pixel in block): the same products, no upsampled copy of the map."""
    n, c, h, w = feature.shape
    grid_h, grid_w = block_map.shape[-2:]
    block_h, block_w = _block_size((grid_h, grid_w), (h, w))
    blocks = feature.reshape(n, c, grid_h, block_h, grid_w, block_w)
    scale = block_map.reshape(n, block_map.shape[1], grid_h, 1, grid_w, 1)
    return (blocks * scale).reshape(n, c, h, w)


class FDENet(nn.Module):
    """Feature Drifting Estimation: three stages of 1x1 convs over each block's coefficients.

    Deploy form: when the frequency input is the same affine map for every block (the DCT, the
    image-block ablation), it and the first 1x1 conv fold into one conv with an 8x8 kernel and
    stride 8 on the RGB image. The shuffled-DCT ablation depends on the block's position, so it
    keeps its training form.
    """

    def __init__(self, config: AFDConfig, deploy: bool = False):
        super().__init__()
        hidden1, hidden2 = config.fde_hidden
        out_channels = config.feature_channels if config.fdm_per_channel else 1
        self.frequency_input = build_frequency_input(config.fdm_source, config.shuffle_seed)
        first = nn.Conv2d(DCT_CHANNELS, hidden1, 1)
        if deploy and self.frequency_input.same_for_every_block:
            first, self.frequency_input = nn.Conv2d(3, hidden1, BLOCK, stride=BLOCK), None
        self.stages = nn.Sequential(
            first,
            nn.ReLU(),
            nn.Conv2d(hidden1, hidden2, 1),
            nn.ReLU(),
            nn.Conv2d(hidden2, out_channels, 1),
            nn.Sigmoid(),
        )

    @property
    def deployed(self) -> bool:
        return self.frequency_input is None or not self.frequency_input.same_for_every_block

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature Drifting Map at the block grid: (N, 1 or C, H/8, W/8)."""
        check_block_aligned(images)
        if self.frequency_input is None:
            return self.stages(images)
        return self.stages(self.frequency_input(images) * _FREQUENCY_INPUT_SCALE)

    @torch.no_grad()
    def folded_input_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 8x8 kernel and bias of `first 1x1 conv(scale * frequency input)` on one block, in
        float64. The input is affine and the same for every block, so its response to a black
        block and to each of the block's 192 unit pixels gives it exactly."""
        first = self.stages[0]
        pixels = 3 * BLOCK * BLOCK
        probes = torch.cat([torch.zeros(1, pixels), torch.eye(pixels)]).to(first.weight.device, torch.float64)
        responses = self.frequency_input(probes.view(-1, 3, BLOCK, BLOCK)).flatten(1) * _FREQUENCY_INPUT_SCALE
        offset, unit_responses = responses[0], responses[1:] - responses[0]  # (192 coefficients), (192 pixels, 192)
        mix = first.weight.to(torch.float64)[:, :, 0, 0]
        weight = (mix @ unit_responses.t()).view(-1, 3, BLOCK, BLOCK)
        return weight, first.bias.to(torch.float64) + mix @ offset

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (see the class docstring)."""
        if self.deployed:
            return
        weight, bias = self.folded_input_kernel()
        first = self.stages[0]
        folded = nn.Conv2d(3, first.out_channels, BLOCK, stride=BLOCK).to(device=first.weight.device,
                                                                         dtype=first.weight.dtype)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
        self.stages[0], self.frequency_input = folded, None


class Up(nn.Module):
    """A 1x1 conv to the skip's channels, nearest 2x upsampling (cropped to the skip's size), then
    the skip added.

    Projecting before upsampling equals the usual order exactly (a 1x1 conv commutes with nearest
    upsampling) and costs 4x fewer MACs. Deploy form: a 1x1 conv to 4x the channels, each output
    channel's weights repeated, and a pixel shuffle: the same dot products, in ops that XNNPACK runs.
    """

    def __init__(self, in_channels: int, out_channels: int, deploy: bool = False):
        super().__init__()
        self.deployed = deploy
        self.project = nn.Conv2d(in_channels, out_channels * (4 if deploy else 1), 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            upsampled = F.pixel_shuffle(self.project(x), 2)
        else:
            upsampled = F.interpolate(self.project(x), scale_factor=2, mode="nearest")
        height, width = skip.shape[-2:]
        if upsampled.shape[-2:] != skip.shape[-2:]:  # an odd skip: its half was rounded up
            upsampled = upsampled[..., :height, :width]
        return upsampled + skip

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place: each output channel's 1x1 weights and bias repeated
        for the four pixels a pixel shuffle spreads it over."""
        if self.deployed:
            return
        project = self.project
        self.project = nn.Conv2d(project.in_channels, 4 * project.out_channels, 1).to(
            device=project.weight.device, dtype=project.weight.dtype)
        self.project.weight.copy_(project.weight.repeat_interleave(4, dim=0))
        self.project.bias.copy_(project.bias.repeat_interleave(4))
        self.deployed = True


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
        self.up2 = Up(w3, w2, deploy=deploy)
        self.dec2 = RepConv(w2, w2, deploy=deploy)
        self.up1 = Up(w2, w1, deploy=deploy)
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
        self.fde = FDENet(self.config, deploy=deploy) if self.config.fdm_source != "none" else None

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
            residual = scale_by_blocks(residual, self.fde(images))
        return feature + residual

    def feature_drifting_map(self, feature: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """The FDM used for `feature`, for inspection and figures; None without FDE-Net."""
        return None if self.fde is None else fill_blocks(self.fde(images), feature.shape[-2:])
