import pytest
import torch

from afd.errors import AFDError, ConfigError, WeightsNotFoundError
from afd.model.afd_module import AFDConfig, AFDModule, FDENet, fill_blocks
from afd.model.baselines import ARCNN, DDPEnhancer
from afd.model.checkpoint import load_enhancer, save_enhancer
from afd.model.dct import BlockDCT, ImageBlocks, ShuffledBlockDCT
from afd.model.efficiency import count_macs, count_parameters
from afd.model.repconv import RepConv, is_reparameterized, reparameterize


def trained_like(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (a fresh AFD is the identity, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return module


def inputs(channels=16, size=56, batch=2):
    generator = torch.Generator().manual_seed(1)
    feature = torch.randn(batch, channels, size // 2, size // 2, generator=generator)
    images = torch.rand(batch, 3, size, size, generator=generator)
    return feature, images


def test_untrained_module_is_the_identity():
    feature, images = inputs()
    module = AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32)))
    assert torch.equal(module(feature, images), feature)


def test_fdm_is_constant_over_each_block_and_varies_between_blocks():
    config = AFDConfig(feature_channels=16, widths=(8, 16, 32))
    fde = trained_like(FDENet(config))
    feature, images = inputs(size=64)
    assert fde(images).shape == (2, 1, 8, 8)  # one value per 8x8 block
    fdm = fill_blocks(fde(images), feature.shape[-2:])  # stride 2: each 8x8 block covers 4x4 feature pixels
    assert fdm.shape == (2, 1, 32, 32)
    blocks = fdm.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, 1, 8, 8, 4, 4)
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    assert blocks[..., 0, 0].std() > 0
    assert fdm.min() >= 0 and fdm.max() <= 1


def test_fdm_of_a_block_depends_only_on_that_block():
    fde = trained_like(FDENet(AFDConfig(feature_channels=16, widths=(8, 16, 32))))
    feature, images = inputs(size=32)
    changed = images.clone()
    changed[:, :, :8, :8] = 1 - changed[:, :, :8, :8]
    a, b = fde(images), fde(changed)
    assert not torch.equal(a[..., :1, :1], b[..., :1, :1])
    assert torch.equal(a[..., 1:, :], b[..., 1:, :]) and torch.equal(a[..., :, 1:], b[..., :, 1:])


def test_per_channel_fdm():
    fde = trained_like(FDENet(AFDConfig(feature_channels=16, widths=(8, 16, 32), fdm_per_channel=True)))
    fdm = fde(inputs()[1])
    assert fdm.shape == (2, 16, 7, 7) and not torch.equal(fdm[:, :1], fdm[:, 1:2])


@pytest.mark.parametrize(
    "source, expected", [("dct", BlockDCT), ("image_blocks", ImageBlocks), ("shuffled_dct", ShuffledBlockDCT)]
)
def test_fdm_source_variants_are_selectable(source, expected):
    module = AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32), fdm_source=source))
    assert isinstance(module.fde.frequency_input, expected)


def test_without_fdm_the_module_is_fe_net_alone():
    module = trained_like(AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32), fdm_source="none")))
    assert module.fde is None
    feature, images = inputs()
    assert torch.allclose(module(feature, images), feature + module.fe(feature))
    assert torch.equal(module(feature, images), module(feature, torch.rand_like(images)))


def test_fdm_guides_the_residual():
    module = trained_like(AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32))))
    feature, images = inputs()
    fdm = module.feature_drifting_map(feature, images)
    assert torch.allclose(module(feature, images), feature + fdm * module.fe(feature), atol=1e-6)
    assert not torch.equal(module(feature, images), module(feature, torch.rand_like(images)))


@pytest.mark.parametrize("fdm_source", ["dct", "image_blocks", "shuffled_dct", "none"])
@pytest.mark.parametrize("size", [56, 72, 88])  # odd sizes inside the U-Net: 72 (36 -> 18 -> 9), 88 (44 -> 22 -> 11 -> 6)
def test_fused_module_equals_training_module(fdm_source, size):
    module = trained_like(AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32), fdm_source=fdm_source,
                                              fdm_per_channel=fdm_source == "image_blocks")))
    fused = reparameterize(module)
    assert is_reparameterized(fused) and not any(
        isinstance(m, RepConv) and m.reparam_conv is None for m in fused.modules()
    )
    assert not any(isinstance(m, torch.nn.Upsample) for m in fused.modules())
    if fdm_source in ("dct", "image_blocks"):  # the front end and the first 1x1 conv are one conv now
        assert fused.fde.frequency_input is None and fused.fde.stages[0].kernel_size == (8, 8)
    feature, images = inputs(size=size)
    with torch.no_grad():
        expected, actual = module(feature, images), fused(feature, images)
    assert (actual - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_fused_module_meets_the_paper_size_target_at_a_resnet50_tap():
    """Table VII: at most 0.11 M parameters and 0.36 GMACs at a 64 x 112 x 112 tap (224 input)."""
    fused = reparameterize(AFDModule(AFDConfig(feature_channels=64)))
    feature, images = torch.randn(1, 64, 112, 112), torch.rand(1, 3, 224, 224)
    assert count_parameters(fused) <= 110_000
    assert count_macs(fused, (feature, images)) <= 360_000_000
    unfused = AFDModule(AFDConfig(feature_channels=64))
    assert count_parameters(unfused) > count_parameters(fused)  # fusing really removes branches


def test_wrong_feature_channels_and_off_grid_features_are_clear_errors():
    module = AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32)))
    with pytest.raises(ConfigError, match="16-channel"):
        module(torch.randn(1, 8, 28, 28), torch.rand(1, 3, 56, 56))
    with pytest.raises(ConfigError, match="block grid"):
        fill_blocks(torch.rand(1, 1, 7, 7), (20, 20))
    with pytest.raises(ConfigError, match="fdm_source"):
        AFDConfig(fdm_source="wavelet")


def test_baselines_shapes_sizes_and_identity_at_start():
    images = torch.rand(1, 3, 32, 32)
    arcnn = ARCNN()  # its last layer starts near zero, not at zero (afd/model/baselines.py)
    assert not torch.equal(arcnn(images), images) and torch.allclose(arcnn(images), images, atol=1e-2)
    assert 100_000 < count_parameters(arcnn) < 130_000  # paper Table VII: 0.12 M
    feature = torch.randn(1, 64, 16, 16)
    ddp = DDPEnhancer(64)
    assert torch.equal(ddp(feature, images), feature)
    trained_like(ddp)
    assert ddp(feature, images).shape == feature.shape
    assert not torch.equal(ddp(feature, images), ddp(feature, torch.rand_like(images)))


@pytest.mark.parametrize("make", [
    lambda: trained_like(AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32), fdm_source="shuffled_dct", shuffle_seed=7))),
    lambda: reparameterize(trained_like(AFDModule(AFDConfig(feature_channels=16, widths=(8, 16, 32))))),
    lambda: trained_like(DDPEnhancer(16, hidden=8)),
])
def test_checkpoint_round_trip(tmp_path, make):
    module = make().eval()
    save_enhancer(module, tmp_path / "m.pt", meta={"backbone": "resnet50", "tap": "D2"})
    loaded, meta = load_enhancer(tmp_path / "m.pt")
    assert meta == {"backbone": "resnet50", "tap": "D2"}
    assert type(loaded) is type(module)
    feature, images = inputs()
    assert torch.equal(loaded(feature, images), module(feature, images))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # atomic write leaves no temp file


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.pt"):
        load_enhancer(tmp_path / "nowhere.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(AFDError, match="garbage.pt"):
        load_enhancer(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(1)}, foreign)
    with pytest.raises(AFDError, match="foreign.pt.*not an enhancer checkpoint"):
        load_enhancer(foreign)
