"""Fuse a trained AFD-Module into its deploy form and prove, on given inputs, that nothing changed."""

from __future__ import annotations

import os

import torch

from afd.errors import AFDError
from afd.model.afd_module import AFDModule
from afd.model.repconv import is_reparameterized, reparameterize

# float32 sums of branches in another order: differences well under this are rounding, not error.
FUSE_TOLERANCE = 1e-4


@torch.no_grad()
def fuse_and_verify(
    module: AFDModule,
    feature: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    source: str | os.PathLike = "AFD-Module",
) -> tuple[AFDModule, float]:
    """Return (fused copy, max |fused - trained| relative to the output's scale).

    `feature` / `images` are the inputs to compare on (real evaluation features in the pipeline);
    without them a seeded random feature and image are used.
    """
    if not isinstance(module, AFDModule):
        raise AFDError(f"{source}: only an AFD-Module can be fused, and this is {type(module).__name__}")
    if is_reparameterized(module):
        raise AFDError(f"{source}: already fused")
    if feature is None or images is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(2, 3, 64, 64, generator=generator)
        feature = torch.randn(2, module.config.feature_channels, 32, 32, generator=generator)
    module = module.eval()
    fused = reparameterize(module).eval()
    expected = module(feature, images)
    scale = max(1.0, expected.abs().max().item())
    max_abs_diff = (fused(feature, images) - expected).abs().max().item() / scale
    if max_abs_diff > FUSE_TOLERANCE:
        raise AFDError(f"{source}: fused module differs from the trained one by {max_abs_diff:.2e}")
    return fused, max_abs_diff
