"""What the training and evaluation harness costs over the models themselves, measured in one run.

Training: steps per second of `afd.model.train.train` (batch drawing, the loss, doing nothing's loss,
logging, checkpointing) against the same model's pure forward + backward + Adam step on batches
prepared beforehand. Evaluation: images per second of `afd.model.evaluate.evaluate_set` (reading the set
from disk, the clean reference, the metrics) against the pure forward passes it needs on tensors
in memory. Needs the data of `dvc repro` (data/div2k_c, data/eval). Prints the ratios.

    python benches/harness.py [--method afd] [--steps 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from afd.model.classifier import EnhancedClassifier
from afd.model.determinism import pin_cpu_numerics
from afd.model.methods import DIRECT_TEST, Method
from afd.model.train import PatchPairs, TrainConfig, train
from afd.ops.layout import backbone_from_params, patch_sets
from afd.ops.params import load_params, training_profile
from afd.ops.pipeline import evaluation_sets


def training(params: dict, method: Method, steps: int) -> tuple[float, float]:
    """(harness seconds per step, pure seconds per step)."""
    profile = training_profile(params)
    config = TrainConfig.from_profile({**profile, "iterations": steps, "checkpoint_every": max(1, steps // 6)},
                                      params["seed"])
    backbone, tap = backbone_from_params(params, "efficientnet_lite0")
    tap = method.tap_on(tap)
    data = PatchPairs.from_sets(*patch_sets(params), profile["mix_clean"])

    def fresh():
        torch.manual_seed(0)
        module = method.build(backbone, tap, profile["afd_size"])
        return module, method.classifier(backbone, module, tap)

    module, classifier = fresh()
    with tempfile.TemporaryDirectory() as folder:
        result = train(classifier, module, method.loss, method.identity_loss, data, config,
                       Path(folder) / "state.pt", {"name": "bench"}, progress=False)
    harness = result.seconds / steps

    module, classifier = fresh()
    batches = [data.batch(step, 0, config.batch_size, config.crop) for step in range(steps)]
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    classifier.train()
    started = time.perf_counter()
    for clean, degraded_batch in batches:
        optimizer.zero_grad()
        method.loss(classifier, clean, degraded_batch).backward()
        optimizer.step()
    return harness, (time.perf_counter() - started) / steps


def evaluation(params: dict, method: Method, set_name: str) -> tuple[float, float]:
    """(harness seconds per image, pure seconds per image) for DirectTest + `method` on one set."""
    from afd.model.evaluate import evaluate_set

    backbone, tap = backbone_from_params(params, "efficientnet_lite0")
    backbone.to_inference_form()  # as the evaluate stage runs it (afd.ops.pipeline.trained_methods)
    module = method.build(backbone, method.tap_on(tap)).eval()
    models = {DIRECT_TEST: EnhancedClassifier(backbone, None, tap).eval(),
              method.name: method.classifier(backbone, module, method.tap_on(tap)).eval()}
    evaluation_set = evaluation_sets(params, [set_name])[set_name]
    images = sum(len(batch.clean) for batch in evaluation_set)
    started = time.perf_counter()
    evaluate_set(models[DIRECT_TEST], models, evaluation_set)
    harness = (time.perf_counter() - started) / images

    batches = [(batch.clean, batch.degraded) for batch in evaluation_set]
    started = time.perf_counter()
    with torch.inference_mode():
        for clean, degraded in batches:
            models[DIRECT_TEST](clean)
            for model in models.values():
                model(degraded)
    return harness, (time.perf_counter() - started) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="afd")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", default="jpeg_q10")
    args = parser.parse_args()
    params = load_params("params.yaml")
    pin_cpu_numerics(params["numerics"]["threads"])
    method = Method.from_params(args.method, params["methods"])
    harness, pure = training(params, method, args.steps)
    print(f"training {args.method} on efficientnet_lite0, {args.steps} steps: {1 / harness:.2f} steps/s in the "
          f"harness, {1 / pure:.2f} steps/s pure forward + backward + step: harness overhead {harness / pure - 1:+.0%}")
    harness, pure = evaluation(params, method, args.set)
    print(f"evaluating DirectTest + {args.method} on {args.set}: {1 / harness:.1f} images/s in the harness, "
          f"{1 / pure:.1f} images/s pure forward passes: harness overhead {harness / pure - 1:+.0%}")


if __name__ == "__main__":
    main()
