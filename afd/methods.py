"""The compared methods (paper Tables II, III, V): what each trains and how it plugs into a backbone.

A method is named in params.yaml's `methods` section by its kind:
- "afd": an AFD-Module at the tap (its `fdm_source` selects the paper's variants: dct = AFD,
  none = FE-Net alone, image_blocks = Table II, shuffled_dct = Table III);
- "ddp": the DDP-style feature enhancer at the same tap;
- "arcnn": ARCNN restoring the image before the unchanged backbone (pixel-domain JAR).
"DirectTest" is no method at all: the backbone alone, the reference row of every table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .afd_module import AFD_SIZES, AFDConfig, AFDModule
from .backbones import SplitBackbone
from .baselines import ARCNN, DDPEnhancer
from .classifier import CascadeClassifier, EnhancedClassifier
from .errors import ConfigError

DIRECT_TEST = "direct"
METHOD_KINDS = ("afd", "ddp", "arcnn")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    fdm_source: str = "dct"
    lr_scale: float = 1.0  # times the profile's learning rates: each architecture needs its own step
    seed_offset: int = 0  # trained with the pipeline's seed + this: the same method, another initialisation
    tap: str | None = None  # where it plugs in; None: the backbone's configured tap (Table I varies it)

    def tap_on(self, backbone_tap: str) -> str:
        """The tap this method uses on a backbone configured with `backbone_tap`."""
        return self.tap or backbone_tap

    @classmethod
    def from_params(cls, name: str, methods: dict) -> "Method":
        """The method `name` as described in params.yaml's `methods` section."""
        if name not in methods:
            raise ConfigError(f"methods: unknown method {name!r}; defined: {sorted(methods)}")
        spec = dict(methods[name])
        kind = spec.pop("kind", None)
        if kind not in METHOD_KINDS:
            raise ConfigError(f"methods.{name}.kind must be one of {METHOD_KINDS}, got {kind!r}")
        return cls(name, kind, **spec)

    @property
    def fusable(self) -> bool:
        return self.kind == "afd"

    def build(self, backbone: SplitBackbone, tap: str, afd_size: str = "small") -> nn.Module:
        """A fresh, untrained module (the identity until trained) for this backbone's tap;
        `afd_size` (afd.afd_module.AFD_SIZES) sizes an AFD-Module's FE-Net."""
        channels = backbone.tap_channels(tap)
        if self.kind == "afd":
            return AFDModule(AFDConfig(feature_channels=channels, widths=AFD_SIZES[afd_size],
                                       fdm_source=self.fdm_source))
        if self.kind == "ddp":
            return DDPEnhancer(channels)
        return ARCNN()

    def classifier(self, backbone: SplitBackbone, module: nn.Module | None, tap: str) -> nn.Module:
        """Image in, logits out: the backbone with `module` plugged in where this method puts it."""
        if self.kind == "arcnn":
            return CascadeClassifier(module, backbone, tap)
        return EnhancedClassifier(backbone, module, tap)

    def loss(self, classifier: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """Training loss; no labels anywhere. Feature methods: MSE to the clean image's feature at
        the tap. ARCNN is a pixel-domain restorer and is trained as one: MSE to the clean image."""
        if self.kind == "arcnn":
            return F.mse_loss(classifier.restorer(degraded), clean)
        with torch.no_grad():
            target = classifier.tap_feature(clean)
        return F.mse_loss(classifier.enhanced_feature(degraded), target)

    @torch.no_grad()
    def identity_loss(self, classifier: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """The loss of doing nothing on the same batch (the degraded feature, or for ARCNN the
        degraded image, as the prediction): what `loss` must end clearly below."""
        if self.kind == "arcnn":
            return F.mse_loss(degraded, clean)
        return F.mse_loss(classifier.tap_feature(degraded), classifier.tap_feature(clean))
