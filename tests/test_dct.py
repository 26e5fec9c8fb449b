import numpy as np
import pytest
import torch
from scipy.fft import dctn

from afd.errors import ConfigError
from afd.model.dct import (
    BlockDCT,
    ImageBlocks,
    LevelShiftedYCbCr,
    ShuffledBlockDCT,
    build_frequency_input,
    zigzag_order,
)


def reference_block_dct(images: torch.Tensor) -> np.ndarray:
    """Per-block scipy DCT of JPEG YCbCr computed independently in numpy, laid out as (N, 192, H/8, W/8)."""
    rgb = images.double().numpy() * 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    # JFIF: Cb = (B - Y) / 1.772 + 128, Cr = (R - Y) / 1.402 + 128; all level-shifted by -128
    ycbcr = np.stack([y - 128.0, (b - y) / 1.772, (r - y) / 1.402], axis=1)
    n, _, h, w = ycbcr.shape
    out = np.zeros((n, 192, h // 8, w // 8))
    order = zigzag_order()
    for i in range(h // 8):
        for j in range(w // 8):
            block = ycbcr[:, :, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8]
            spectrum = dctn(block, axes=(2, 3), norm="ortho")
            for k, (u, v) in enumerate(order):
                out[:, k::64, i, j] = spectrum[:, :, u, v]
    return out


def test_zigzag_is_the_jpeg_order():
    order = zigzag_order()
    assert order[:10] == [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
    assert order[-1] == (7, 7) and len(set(order)) == 64


@pytest.mark.parametrize("size", [(8, 8), (16, 24), (40, 32)])
def test_block_dct_matches_scipy_float32(size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    coefficients = BlockDCT()(images)
    assert coefficients.shape == (2, 192, size[0] // 8, size[1] // 8)
    assert np.abs(coefficients.numpy() - reference_block_dct(images)).max() < 1e-4


def test_block_dct_matches_scipy_float64_to_rounding():
    images = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    coefficients = BlockDCT()(images)
    assert np.abs(coefficients.numpy() - reference_block_dct(images)).max() < 1e-9


def test_dc_channel_of_a_flat_block_is_eight_times_the_level_shifted_value():
    images = torch.full((1, 3, 8, 8), 200 / 255.0)  # grey: Y = 200, Cb = Cr = 128
    coefficients = BlockDCT()(images)[0, :, 0, 0]
    assert coefficients[0].item() == pytest.approx(8 * (200 - 128), abs=1e-3)
    assert coefficients[1:].abs().max().item() < 1e-3  # no AC energy, no chroma


def test_each_block_is_transformed_on_its_own():
    images = torch.rand(1, 3, 16, 16)
    changed = images.clone()
    changed[:, :, 8:, 8:] = torch.rand(1, 3, 8, 8)
    a, b = BlockDCT()(images), BlockDCT()(changed)
    assert torch.equal(a[..., 0, 0], b[..., 0, 0]) and torch.equal(a[..., 0, 1], b[..., 0, 1])
    assert not torch.equal(a[..., 1, 1], b[..., 1, 1])


def test_image_blocks_are_the_level_shifted_pixels_of_each_block():
    images = torch.rand(1, 3, 16, 16)
    blocks = ImageBlocks()(images)
    ycbcr = LevelShiftedYCbCr()(images)
    assert blocks.shape == (1, 192, 2, 2)
    # channel c*64 + 8*row + col holds pixel (row, col) of colour channel c in each block
    assert torch.allclose(blocks[0, 64 + 8 * 3 + 5, 1, 0], ycbcr[0, 1, 8 + 3, 5])


def test_shuffled_dct_permutes_coefficients_per_block_deterministically():
    images = torch.rand(1, 3, 16, 16)
    plain = BlockDCT()(images)
    shuffled = ShuffledBlockDCT(seed=3)(images)
    again = ShuffledBlockDCT(seed=3)(images)
    other_seed = ShuffledBlockDCT(seed=4)(images)
    assert torch.equal(shuffled, again)
    assert not torch.equal(shuffled, other_seed)
    for i in range(2):
        for j in range(2):
            # same multiset of coefficients in each block, but in another order
            assert torch.equal(shuffled[0, :, i, j].sort().values, plain[0, :, i, j].sort().values)
            assert not torch.equal(shuffled[0, :, i, j], plain[0, :, i, j])
    # blocks get different permutations, so a channel no longer holds one frequency
    perm = ShuffledBlockDCT(seed=3).permutation(2, 2)
    assert not torch.equal(perm[:, 0], perm[:, 1])


def test_build_frequency_input_selects_variants_and_rejects_unknown():
    assert isinstance(build_frequency_input("dct"), BlockDCT)
    assert isinstance(build_frequency_input("image_blocks"), ImageBlocks)
    assert isinstance(build_frequency_input("shuffled_dct", seed=1), ShuffledBlockDCT)
    with pytest.raises(ConfigError, match="wavelet"):
        build_frequency_input("wavelet")


def test_sizes_off_the_8x8_grid_are_refused():
    with pytest.raises(ConfigError, match="multiple of 8"):
        BlockDCT()(torch.rand(1, 3, 20, 16))
