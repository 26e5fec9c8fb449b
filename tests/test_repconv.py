import copy

import pytest
import torch
from torch import nn

from afd.model.repconv import RepConv, is_reparameterized, reparameterize


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND clearly non-zero biases: the border trap of 1x1 -> 3x3 only shows then."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if name.endswith("bias") else 0.0))
    return module


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference, in units of 1e-5 of the output's scale (float32 has ~7 digits)."""
    scale = max(1.0, expected.abs().max().item() / 10)
    return (actual - expected).abs().max().item() / scale


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8), (13, 9), (32, 31)])
@pytest.mark.parametrize("channels", [(3, 4, None), (8, 8, 16), (6, 2, 3)])
def test_fused_block_equals_multi_branch_everywhere(size, channels):
    in_c, out_c, mid_c = channels
    block = randomize(RepConv(in_c, out_c, mid_c, act=False))
    fused = reparameterize(block)
    x = torch.randn(2, in_c, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = block(x), fused(x)
    assert actual.shape == expected.shape
    assert max_error(actual, expected) < 1e-5
    # the 1-pixel border ring on its own, where a zero-padded 1x1 -> 3x3 merge goes wrong
    ring = torch.ones(size, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert (actual - expected)[..., ring].abs().max().item() < 1e-4


@pytest.mark.parametrize("size", [(7, 7), (8, 9), (1, 2)])
def test_fused_strided_block_equals_multi_branch(size):
    block = randomize(RepConv(3, 5, stride=2, act=False))
    fused = reparameterize(block)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, actual = block(x), fused(x)
    assert actual.shape == expected.shape == (2, 5, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert max_error(actual, expected) < 1e-5


def test_fusing_is_exact_to_1e_5_at_unit_scale():
    block = RepConv(4, 4)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.rand(p.shape) * 0.2 + 0.05)  # positive biases everywhere
    x = torch.rand(1, 4, 9, 10)
    assert (block(x) - reparameterize(block)(x)).abs().max().item() < 1e-5


def test_zero_padded_1x1_to_3x3_merge_would_be_wrong_on_the_border():
    """Guard for the test above: it must be able to see the trap the block avoids."""
    block = randomize(RepConv(3, 3, act=False))
    branch = block.branch_1x1_3x3
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        naive = branch.conv3x3(nn.functional.pad(branch.conv1x1(x), [1, 1, 1, 1]))  # zero padding
        exact = branch(x)
    assert (naive - exact)[..., 0, :].abs().max() > 1e-2
    assert torch.allclose(naive[..., 1:-1, 1:-1], exact[..., 1:-1, 1:-1], atol=1e-5)


def test_deploy_form_is_one_3x3_conv_and_relu_is_kept():
    block = randomize(RepConv(4, 6))
    fused = reparameterize(block)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3)
    x = torch.randn(1, 4, 7, 7)
    assert fused(x).min() >= 0
    assert torch.allclose(fused(x), block(x), atol=1e-5)


def test_reparameterize_converts_every_block_in_any_model_and_keeps_the_original():
    model = nn.Sequential(RepConv(3, 8), nn.Sequential(RepConv(8, 8), nn.AvgPool2d(2)), RepConv(8, 2, act=False))
    randomize(model, seed=5)
    original_state = copy.deepcopy(model.state_dict())
    fused = reparameterize(model)
    assert is_reparameterized(fused) and not is_reparameterized(model)
    assert all(k in model.state_dict() for k in original_state)  # training model untouched
    assert not any("branch" in name for name, _ in fused.named_modules())
    x = torch.randn(2, 3, 16, 15)
    assert max_error(fused(x), model(x)) < 1e-5


def test_fused_block_can_be_rebuilt_from_its_state_dict():
    fused = reparameterize(randomize(RepConv(3, 5)))
    deploy = RepConv(3, 5, deploy=True)
    deploy.load_state_dict(fused.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(deploy(x), fused(x))
