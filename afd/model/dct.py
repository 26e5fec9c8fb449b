"""Frequency front end of FDE-Net: JPEG-style 8x8 block DCT, rearranged by frequency.

An RGB image in [0, 1] becomes 192 channels at H/8 x W/8: for each of Y, Cb, Cr the 64 DCT
coefficients of every 8x8 block, "the same frequency of all blocks in one channel", in zig-zag
order. The DCT is a fixed `Conv2d(3, 192, 8, stride=8, groups=3)`, so it exports like any conv.

Two ablation inputs of the paper share the interface:
- `ImageBlocks` (Table II "image block"): the same level-shifted YCbCr pixels, space-to-depth, no DCT.
- `ShuffledBlockDCT` (Table III "shuffled"): the DCT coefficients of each block under a fixed,
  seeded random permutation drawn independently per block position, so a channel no longer holds
  one frequency. (A single permutation shared by all blocks would be a no-op for FDE-Net's 1x1
  convs: it only relabels their input weights.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from afd.errors import ConfigError

BLOCK = 8
COEFFS_PER_CHANNEL = BLOCK * BLOCK
DCT_CHANNELS = 3 * COEFFS_PER_CHANNEL

# JPEG (JFIF) full-range BT.601: Y = Kr R + Kg G + Kb B, Cb = (B - Y) / (2 (1 - Kb)) + 128,
# Cr = (R - Y) / (2 (1 - Kr)) + 128. The +128 chroma offset and the -128 level shift cancel for
# Cb and Cr, so the level-shifted transform is linear plus a -128 on Y only.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_RGB_TO_YCBCR = torch.tensor(
    [
        [_KR, _KG, _KB],
        [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
        [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
    ],
    dtype=torch.float64,
)
_LEVEL_SHIFTED_OFFSET = torch.tensor([-128.0, 0.0, 0.0], dtype=torch.float64)


def zigzag_order(n: int = BLOCK) -> list[tuple[int, int]]:
    """(row, col) frequency pairs of an n x n block in JPEG zig-zag order."""
    order = []
    for s in range(2 * n - 1):
        rows = range(max(0, s - n + 1), min(s, n - 1) + 1)
        # Odd anti-diagonals run down-left (row ascending), even ones up-right.
        rows = rows if s % 2 else reversed(rows)
        order.extend((r, s - r) for r in rows)
    return order


def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal DCT-II matrix C (n x n): coefficients = C @ x."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def dct_filters() -> torch.Tensor:
    """Conv weights (192, 1, 8, 8): one 2-D DCT basis function per output channel, zig-zag order.

    Kept in float64 and cast to the input's dtype, so a float64 forward is exact to rounding.
    """
    c = dct_matrix()
    basis = torch.stack([torch.outer(c[u], c[v]) for u, v in zigzag_order()])  # (64, 8, 8)
    return basis.repeat(3, 1, 1).unsqueeze(1)


class LevelShiftedYCbCr(nn.Module):
    """RGB in [0, 1] (N, 3, H, W) -> YCbCr on the 0..255 scale, level-shifted by -128: a fixed 1x1
    conv. Its constants are float64 buffers cast to the input's dtype, so a float64 forward is
    exact to rounding and an exported float32 program holds them as ordinary conv weights."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", (_RGB_TO_YCBCR * 255.0).view(3, 3, 1, 1), persistent=False)
        self.register_buffer("bias", _LEVEL_SHIFTED_OFFSET.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(images, self.weight.to(images.dtype), self.bias.to(images.dtype))


def check_block_aligned(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected RGB images of shape (N, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % BLOCK or w % BLOCK:
        raise ConfigError(
            f"image size {h}x{w} is not a multiple of {BLOCK}: the 8x8 blocks must line up with the "
            "JPEG encoder's grid, so crop or pad by multiples of 8 (never resize a compressed image)"
        )


class BlockDCT(nn.Module):
    """RGB [0, 1] -> (N, 192, H/8, W/8) orthonormal DCT coefficients of each 8x8 YCbCr block."""

    same_for_every_block = True  # an affine map of each block alone: FDE-Net can fold it (afd_module)

    def __init__(self):
        super().__init__()
        self.ycbcr = LevelShiftedYCbCr()
        self.register_buffer("filters", dct_filters(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_block_aligned(images)
        ycbcr = self.ycbcr(images)
        return F.conv2d(ycbcr, self.filters.to(ycbcr.dtype), stride=BLOCK, groups=3)


class ImageBlocks(nn.Module):
    """RGB [0, 1] -> (N, 192, H/8, W/8) raw level-shifted YCbCr pixels of each 8x8 block."""

    same_for_every_block = True

    def __init__(self):
        super().__init__()
        self.ycbcr = LevelShiftedYCbCr()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_block_aligned(images)
        return F.pixel_unshuffle(self.ycbcr(images), BLOCK)


class ShuffledBlockDCT(nn.Module):
    """Block DCT whose 192 coefficients are permuted by a fixed random permutation per block position."""

    same_for_every_block = False  # the permutation depends on where the block is

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.dct = BlockDCT()

    def permutation(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(192, grid_h * grid_w) source channel of each output channel at each block; depends only on
        the seed and the grid, so the same image size always gets the same shuffle."""
        generator = torch.Generator().manual_seed(self.seed)
        keys = torch.rand(grid_h * grid_w, DCT_CHANNELS, generator=generator)
        return keys.argsort(dim=1).t().contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coeffs = self.dct(images)
        n, c, gh, gw = coeffs.shape
        index = self.permutation(gh, gw).to(coeffs.device).expand(n, -1, -1)
        return coeffs.flatten(2).gather(1, index).view(n, c, gh, gw)


FREQUENCY_INPUTS = {
    "dct": BlockDCT,
    "image_blocks": ImageBlocks,
    "shuffled_dct": ShuffledBlockDCT,
}


def build_frequency_input(kind: str, seed: int = 0) -> nn.Module:
    """The FDE-Net input named `kind`: "dct" (the paper's), "image_blocks" or "shuffled_dct"."""
    if kind not in FREQUENCY_INPUTS:
        raise ConfigError(f"unknown FDM input {kind!r}; choose one of {sorted(FREQUENCY_INPUTS)}")
    if kind == "shuffled_dct":
        return ShuffledBlockDCT(seed)
    return FREQUENCY_INPUTS[kind]()
