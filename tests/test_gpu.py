"""The GPU paths: training, evaluation and the efficiency table on CUDA. Skipped without a GPU
(this project's CI has none); run them on a machine with one: `pytest tests/test_gpu.py`."""

import pytest
import torch

from afd.model.backbones import build_backbone
from afd.model.classifier import EnhancedClassifier
from afd.model.determinism import pin_numerics
from afd.model.evaluate import Batch, evaluate_set
from afd.model.methods import Method
from afd.model.train import PatchPairs, TrainConfig, train
from afd.ops.benchmark import CUDA, EAGER, compare_efficiency, efficiency_ratios

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible to PyTorch")

GPU = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def backbone():
    pin_numerics(torch.get_num_threads(), "cuda")  # cuDNN deterministic, no TF32, cuBLAS workspace
    return build_backbone("efficientnet_lite0")


def train_on_gpu(backbone, patch_files, state_path, amp="off"):
    torch.manual_seed(0)
    method = Method.from_params("afd", {"afd": {"kind": "afd", "fdm_source": "dct"}})
    module = method.build(backbone, backbone.default_tap)
    classifier = method.classifier(backbone, module, backbone.default_tap)
    config = TrainConfig(iterations=8, batch_size=2, crop=32, lr=1e-3, lr_drop_at=4, lr_after_drop=1e-4,
                         checkpoint_every=4, amp=amp)
    result = train(classifier, module, method.loss, method.identity_loss, PatchPairs(*patch_files), config,
                   state_path, identity={"name": "afd"}, progress=False, device=GPU)
    classifier.cpu()
    return module, result


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_training_on_the_gpu_is_deterministic_and_learns(amp, backbone, patch_files, tmp_path):
    first, result = train_on_gpu(backbone, patch_files, tmp_path / "a.pt", amp)
    second, _ = train_on_gpu(backbone, patch_files, tmp_path / "b.pt", amp)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.summary()["loss_ratio"] < 1.0 and result.seconds_per_step > 0


def test_evaluation_on_the_gpu_agrees_with_the_cpu(backbone):
    from afd.data.images import load_image, to_batch
    from afd.data.samples import sample_photos

    photos = [load_image(path).resize((224, 224)) for path in list(sample_photos().values())[:4]]
    clean = to_batch(photos)
    batches = [Batch(clean, (clean * 255).round() / 255, [None] * len(photos))]
    direct = EnhancedClassifier(backbone, None, backbone.default_tap).eval()
    on_cpu = evaluate_set(direct, {"direct": direct}, batches)["direct"]
    on_gpu = evaluate_set(direct, {"direct": direct}, batches, device=GPU)["direct"]
    direct.cpu()
    assert on_gpu.agree == on_cpu.agree
    assert on_gpu.kl == pytest.approx(on_cpu.kl, abs=1e-3)


def test_the_efficiency_table_gains_gpu_columns(backbone):
    rows = compare_efficiency("efficientnet_lite0", repeats=3, warmup=1, gpu=GPU)
    runtimes = [row.runtime for row in rows]
    assert runtimes.count(CUDA) == runtimes.count(EAGER) > 0
    assert all(row.efficiency.latency.median_ms > 0 for row in rows)
    ratios = efficiency_ratios(rows)
    assert "cuda.fusing_speedup" in ratios and "fusing_speedup" in ratios
