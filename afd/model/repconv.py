"""RepConv: the paper's three-branch block and its exact fusion into one 3x3 convolution.

Training form (Section III-C): (1x1 -> 3x3) + (3x3 -> 1x1) + (1x1), summed, then ReLU.
Deploy form: a single 3x3 conv + ReLU with the same output everywhere, borders included.

The one trap is the 1x1 -> 3x3 branch: a 3x3 conv that zero-pads its input would see 0 on the
border ring where the fused conv sees the 1x1's bias. So the 1x1's output is padded with its own
bias (Diverse Branch Block's "BNAndPad"), which makes the merged kernel exact on the border too.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

KernelAndBias = tuple[torch.Tensor, torch.Tensor]


def pad_1x1_to_3x3(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 kernel as the centre of a zero 3x3 kernel (Eq. 6)."""
    return F.pad(weight, [1, 1, 1, 1])


def merge_1x1_then_3x3(first: nn.Conv2d, second: nn.Conv2d) -> KernelAndBias:
    """Kernel of conv3x3(conv1x1(x)), exact when the intermediate is padded with first's bias."""
    weight = F.conv2d(second.weight, first.weight.permute(1, 0, 2, 3))
    bias = second.bias + second.weight.sum(dim=(2, 3)) @ first.bias
    return weight, bias


def merge_3x3_then_1x1(first: nn.Conv2d, second: nn.Conv2d) -> KernelAndBias:
    """Kernel of conv1x1(conv3x3(x)): the 1x1 recombines the 3x3's output channels."""
    mix = second.weight[:, :, 0, 0]
    weight = torch.einsum("od,dihw->oihw", mix, first.weight)
    bias = mix @ first.bias + second.bias
    return weight, bias


class Conv1x1Then3x3(nn.Module):
    """Branch 1: 1x1 then 3x3; the intermediate is padded with the 1x1's bias, not with zeros."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, mid_channels, 1)
        self.conv3x3 = nn.Conv2d(mid_channels, out_channels, 3, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.conv1x1.bias.view(1, -1, 1, 1)
        padded = F.pad(self.conv1x1(x) - bias, [1, 1, 1, 1]) + bias
        return self.conv3x3(padded)

    def fused_kernel(self) -> KernelAndBias:
        return merge_1x1_then_3x3(self.conv1x1, self.conv3x3)


class Conv3x3Then1x1(nn.Module):
    """Branch 2: 3x3 then 1x1."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv3x3 = nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1)
        self.conv1x1 = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(self.conv3x3(x))

    def fused_kernel(self) -> KernelAndBias:
        return merge_3x3_then_1x1(self.conv3x3, self.conv1x1)


class RepConv(nn.Module):
    """Three parallel branches summed, then ReLU; `reparameterize()` turns it into one 3x3 conv.

    Args:
        in_channels, out_channels: channels of the block.
        mid_channels: width inside the two serial branches (default: out_channels).
        stride: 1, or 2 to downsample (every branch, and so the fused conv, uses the same stride).
        act: apply ReLU after the sum (False for an output layer whose values may be negative).
        deploy: build the fused single-conv form directly (to load a fused checkpoint).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        stride: int = 1,
        act: bool = True,
        deploy: bool = False,
    ):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.act = nn.ReLU() if act else nn.Identity()
        if deploy:
            self.reparam_conv = self._single_conv()
        else:
            self.reparam_conv = None
            self.branch_1x1_3x3 = Conv1x1Then3x3(in_channels, mid_channels, out_channels, stride)
            self.branch_3x3_1x1 = Conv3x3Then1x1(in_channels, mid_channels, out_channels, stride)
            self.branch_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    @property
    def deployed(self) -> bool:
        return self.reparam_conv is not None

    def _single_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        return self.act(self.branch_1x1_3x3(x) + self.branch_3x3_1x1(x) + self.branch_1x1(x))

    @torch.no_grad()
    def fused_kernel(self) -> KernelAndBias:
        """The single 3x3 kernel and bias equal to the sum of the three branches (Eq. 7-8)."""
        w1, b1 = self.branch_1x1_3x3.fused_kernel()
        w2, b2 = self.branch_3x3_1x1.fused_kernel()
        return w1 + w2 + pad_1x1_to_3x3(self.branch_1x1.weight), b1 + b2 + self.branch_1x1.bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place: one 3x3 conv, branches removed."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused_kernel()
        self.reparam_conv = self._single_conv()
        self.reparam_conv.to(device=weight.device, dtype=weight.dtype)
        self.reparam_conv.weight.copy_(weight)
        self.reparam_conv.bias.copy_(bias)
        del self.branch_1x1_3x3, self.branch_3x3_1x1, self.branch_1x1


def _reparameterizable(model: nn.Module) -> list[nn.Module]:
    """The blocks of `model` that have a deploy form: a `deployed` flag and `reparameterize()` (RepConv,
    and the AFD-Module's FDE-Net and upsampling)."""
    return [m for m in model.modules() if hasattr(m, "deployed") and callable(getattr(m, "reparameterize", None))]


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Switch every block of `model` that has a deploy form to it; returns a model with no
    multi-branch block left.

    The training model is left untouched unless `inplace` is set.
    """
    model = model if inplace else copy.deepcopy(model)
    for module in _reparameterizable(model):
        module.reparameterize()
    return model


def is_reparameterized(model: nn.Module) -> bool:
    return all(m.deployed for m in _reparameterizable(model))
