"""The compared methods (paper Tables II, III, V) and the one registry of method kinds.

A method kind (`MethodKind`, listed in `KINDS`) is declared once: its module, how to build a fresh
one at a backbone's tap, how a checkpoint describes and rebuilds it, where it plugs in, whether it
fuses. Kinds:
- "afd": an AFD-Module at the tap (its `fdm_source` selects the paper's variants: dct = AFD,
  none = FE-Net alone, image_blocks = Table II, shuffled_dct = Table III);
- "ddp": the DDP-style feature enhancer at the same tap;
- "arcnn": ARCNN restoring the image before the unchanged backbone (pixel-domain JAR).
A method (`Method`) is a named, configured use of a kind, as params.yaml's `methods` section
declares it (with its title in tables). Checkpoints (afd.model.checkpoint), training, evaluation, the
efficiency table, the registry's comparison programs and the report all read these two.
"DirectTest" is no method at all: the backbone alone, the reference row of every table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from afd.errors import ConfigError
from afd.model.afd_module import AFD_SIZES, AFDConfig, AFDModule
from afd.model.backbones import SplitBackbone
from afd.model.baselines import ARCNN, DDPEnhancer
from afd.model.classifier import CascadeClassifier, EnhancedClassifier
from afd.model.repconv import is_reparameterized

DIRECT_TEST = "direct"
DIRECT_TEST_TITLE = "DirectTest"
AT_TAP, BEFORE_BACKBONE = "tap", "image"  # where a kind plugs in


@dataclass(frozen=True)
class MethodKind:
    name: str
    title: str  # in tables, for a method that has no title of its own
    module_type: type[nn.Module]
    plugs_in: str  # AT_TAP: enhances the backbone's feature; BEFORE_BACKBONE: restores the image
    new: Callable[[int, str, str], nn.Module]  # (tap channels, afd_size, fdm_source) -> fresh module
    config_of: Callable[[nn.Module], dict]  # a module's constructor arguments, for its checkpoint
    rebuild: Callable[[dict, bool], nn.Module]  # (config, deploy form?) -> module
    fusable: bool = False  # has RepConv blocks to re-parameterize

    def deploy_form(self, module: nn.Module) -> bool:
        return self.fusable and is_reparameterized(module)


KINDS: dict[str, MethodKind] = {kind.name: kind for kind in (
    MethodKind("afd", "AFD", AFDModule, AT_TAP,
               new=lambda channels, size, source: AFDModule(AFDConfig(feature_channels=channels,
                                                                      widths=AFD_SIZES[size], fdm_source=source)),
               config_of=lambda module: module.config.to_dict(),
               rebuild=lambda config, deploy: AFDModule(AFDConfig(**config), deploy=deploy),
               fusable=True),
    MethodKind("ddp", "DDP", DDPEnhancer, AT_TAP,
               new=lambda channels, size, source: DDPEnhancer(channels),
               config_of=lambda module: {"feature_channels": module.feature_channels, "hidden": module.hidden},
               rebuild=lambda config, deploy: DDPEnhancer(**config)),
    MethodKind("arcnn", "ARCNN", ARCNN, BEFORE_BACKBONE,
               new=lambda channels, size, source: ARCNN(),
               config_of=lambda module: {},
               rebuild=lambda config, deploy: ARCNN(**config)),
)}
METHOD_KINDS = tuple(KINDS)


def kind_of(module: nn.Module) -> MethodKind:
    """The kind whose module `module` is."""
    for kind in KINDS.values():
        if isinstance(module, kind.module_type):
            return kind
    raise ConfigError(f"a {type(module).__name__} is no method's module; kinds: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    fdm_source: str = "dct"
    lr_scale: float = 1.0  # times the profile's learning rates: each architecture needs its own step
    seed_offset: int = 0  # trained with the pipeline's seed + this: the same method, another initialisation
    tap: str | None = None  # where it plugs in; None: the backbone's configured tap (Table I varies it)
    title: str | None = None  # in tables; None: the kind's

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
        if kind not in KINDS:
            raise ConfigError(f"methods.{name}.kind must be one of {METHOD_KINDS}, got {kind!r}")
        return cls(name, kind, **{key: value for key, value in spec.items() if value is not None})

    @property
    def spec(self) -> MethodKind:
        return KINDS[self.kind]

    @property
    def fusable(self) -> bool:
        return self.spec.fusable

    @property
    def display_title(self) -> str:
        return self.title or self.spec.title

    def build(self, backbone: SplitBackbone, tap: str, afd_size: str = "small") -> nn.Module:
        """A fresh, untrained module (the identity until trained) for this backbone's tap;
        `afd_size` (afd.model.afd_module.AFD_SIZES) sizes an AFD-Module's FE-Net."""
        return self.spec.new(backbone.tap_channels(tap), afd_size, self.fdm_source)

    def classifier(self, backbone: SplitBackbone, module: nn.Module | None, tap: str) -> nn.Module:
        """Image in, logits out: the backbone with `module` plugged in where this method puts it."""
        return plug_in(self.spec, backbone, module, tap)

    def loss(self, classifier: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """Training loss; no labels anywhere. Feature methods: MSE to the clean image's feature at
        the tap. An image restorer (ARCNN) is trained as one: MSE to the clean image."""
        if self.spec.plugs_in == BEFORE_BACKBONE:
            return F.mse_loss(classifier.restorer(degraded), clean)
        with torch.no_grad():
            target = classifier.tap_feature(clean)
        return F.mse_loss(classifier.enhanced_feature(degraded), target)

    @torch.no_grad()
    def identity_loss(self, classifier: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """The loss of doing nothing on the same batch (the degraded feature, or for an image
        restorer the degraded image, as the prediction): what `loss` must end clearly below."""
        if self.spec.plugs_in == BEFORE_BACKBONE:
            return F.mse_loss(degraded, clean)
        return F.mse_loss(classifier.tap_feature(degraded), classifier.tap_feature(clean))


def plug_in(kind: MethodKind, backbone: SplitBackbone, module: nn.Module | None, tap: str) -> nn.Module:
    """Image in, logits out: `backbone` with `module` (of `kind`) where that kind plugs in."""
    if kind.plugs_in == BEFORE_BACKBONE:
        return CascadeClassifier(module, backbone, tap)
    return EnhancedClassifier(backbone, module, tap)


def method_titles(params: dict, names: list[str]) -> dict[str, str]:
    """{name: title in tables} for DirectTest and the methods `names`."""
    return {name: DIRECT_TEST_TITLE if name == DIRECT_TEST else Method.from_params(name, params["methods"]).display_title
            for name in names}
