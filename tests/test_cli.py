import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from afd.cli import app
from afd.data.images import load_image
from afd.data.samples import sample_photos
from afd.model.afd_module import AFDConfig, AFDModule
from afd.model.checkpoint import load_enhancer, save_enhancer
from afd.model.repconv import is_reparameterized

runner = CliRunner()


def trained_afd(channels=32):
    module = AFDModule(AFDConfig(feature_channels=channels, widths=(8, 16, 32)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return module


def test_classify_a_real_photo_in_a_fresh_process(tmp_path):
    coffee = sample_photos()["coffee"]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    result = subprocess.run(
        [sys.executable, "-m", "afd.cli", "classify", str(coffee), str(broken), "--top-k", "1"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1  # one bad file: reported, the good one still classified
    assert f"{coffee}: 967 espresso" in result.stdout
    assert "broken.jpg: not an image" in result.stderr
    assert "Traceback" not in result.stderr


def test_classify_with_an_enhancer_checkpoint(tmp_path):
    checkpoint = tmp_path / "afd.pt"
    save_enhancer(trained_afd(), checkpoint, meta={"backbone": "efficientnet_lite0", "tap": "stem"})
    coffee = sample_photos()["coffee"]
    result = runner.invoke(app, ["classify", str(coffee), "--enhancer", str(checkpoint), "--resize", "0"])
    assert result.exit_code == 0, result.output
    assert str(coffee) in result.output
    wrong = runner.invoke(app, ["classify", str(coffee), "--enhancer", str(checkpoint), "--backbone", "resnet50"])
    assert wrong.exit_code == 2 and "trained for backbone 'efficientnet_lite0'" in wrong.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "x.jpg", "--backbone", "vgg16"], "unknown backbone 'vgg16'"),
        (["classify", "x.jpg", "--backbone", "resnet50", "--weights", "missing.pth"], "missing.pth"),
        (["classify", "x.jpg", "--tap", "D9"], "unknown tap 'D9'"),
        (["classify", "x.jpg", "--enhancer", "nowhere.pt"], "nowhere.pt: checkpoint file not found"),
        (["degrade", "x.jpg", "out.png", "--kind", "webp"], "x.jpg"),
        (["fuse", "nowhere.pt", "out.pt"], "nowhere.pt"),
    ],
)
def test_input_errors_are_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_fuse_writes_an_equivalent_deploy_checkpoint(tmp_path):
    module = trained_afd()
    save_enhancer(module, tmp_path / "trained.pt", meta={"backbone": "efficientnet_lite0", "tap": "stem"})
    result = runner.invoke(app, ["fuse", str(tmp_path / "trained.pt"), str(tmp_path / "fused.pt")])
    assert result.exit_code == 0, result.output
    fused, meta = load_enhancer(tmp_path / "fused.pt")
    assert is_reparameterized(fused) and meta["backbone"] == "efficientnet_lite0"
    assert meta["fuse_max_abs_diff"] < 1e-4
    feature, images = torch.randn(1, 32, 40, 40), torch.rand(1, 3, 80, 80)
    assert torch.allclose(fused(feature, images), module(feature, images), atol=1e-4)
    again = runner.invoke(app, ["fuse", str(tmp_path / "fused.pt"), str(tmp_path / "twice.pt")])
    assert again.exit_code == 2 and "already fused" in again.output


def test_degrade_writes_a_lossy_png(tmp_path):
    source = tmp_path / "in.png"
    Image.open(sample_photos()["coffee"]).convert("RGB").crop((0, 0, 64, 64)).save(source)
    result = runner.invoke(app, ["degrade", str(source), str(tmp_path / "out.png"), "--kind", "jpeg", "--level", "7"])
    assert result.exit_code == 0, result.output
    before, after = load_image(source), load_image(tmp_path / "out.png")
    assert after.size == before.size and after.tobytes() != before.tobytes()


def test_degrade_writes_the_format_its_suffix_names_and_refuses_a_lossy_one(tmp_path):
    source = tmp_path / "in.png"
    Image.open(sample_photos()["coffee"]).convert("RGB").crop((0, 0, 64, 64)).save(source)
    result = runner.invoke(app, ["degrade", str(source), str(tmp_path / "out.bmp"), "--level", "7"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.bmp").format == "BMP"
    refused = runner.invoke(app, ["degrade", str(source), str(tmp_path / "out.jpg"), "--level", "7"])
    assert refused.exit_code == 2 and "out.jpg: .jpg is not a lossless image format" in refused.output
    assert not (tmp_path / "out.jpg").exists()


def test_classify_from_the_registry_without_a_tracking_server_names_it_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["classify", str(sample_photos()["coffee"]), "--model",
                                 "models:/afd-efficientnet_lite0@champion"])
    assert result.exit_code == 2, result.output
    assert "MLFLOW_TRACKING_URI is not set" in result.output and "sqlite:///mlflow.db" in result.output
    assert list(tmp_path.iterdir()) == []


def test_efficiency_prints_the_table_and_ratios():
    result = runner.invoke(app, ["efficiency", "--backbone", "resnet50", "--weights", "random", "--image-size", "64",
                                 "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "| AFD (fused) |" in result.output and "fusing_speedup = " in result.output
    assert "Measured on: eager: " in result.output and "CPU, 1 thread(s)" in result.output
    if not torch.cuda.is_available():
        assert "GPU" not in result.output  # no GPU column without one


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_a_gpu_that_is_not_there_is_one_line():
    result = runner.invoke(app, ["efficiency", "--backbone", "resnet50", "--weights", "random", "--device", "cuda"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no GPU is visible to PyTorch" in result.output
