"""The evaluation grid: method x set, four metrics per cell, averages over QFs and over CTs.

For every image the reference is the plain backbone on the *clean* image:
- top1:        accuracy against the label (only where labels exist);
- agreement:   top-1 agreement with the backbone's prediction on the clean image (label-free);
- kl:          KL(clean || compressed) between the two softmax outputs, mean over images;
- feature_mse: MSE between the method's feature at the tap and the clean image's feature.
The "clean" set runs each method on the clean images themselves: what the module costs on
uncompressed input (paper Table X).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

METRICS = ("top1", "agreement", "kl", "feature_mse")
SET_FAMILIES = ("jpeg", "multi", "avif")


def set_family(set_name: str) -> str:
    """"jpeg_q25" -> "jpeg", "multi_ct3" -> "multi", "clean" -> "clean"."""
    return set_name.split("_", 1)[0]


def set_level(set_name: str) -> int:
    """"jpeg_q25" -> 25, "multi_ct3" -> 3."""
    return int(set_name.rsplit("_", 1)[1].lstrip("qct"))


@dataclass
class _Sums:
    images: int = 0
    labelled: int = 0
    correct: int = 0
    agree: int = 0
    kl: float = 0.0
    feature_mse: float = 0.0

    def result(self) -> dict:
        out = {
            "agreement": self.agree / self.images,
            "kl": self.kl / self.images,
            "feature_mse": self.feature_mse / self.images,
        }
        if self.labelled:
            out["top1"] = self.correct / self.labelled
        return out


@dataclass
class Batch:
    clean: torch.Tensor  # (N, 3, H, W) in [0, 1]
    degraded: torch.Tensor  # the same images, compressed
    labels: list[int | None]  # ImageNet class per image, None where unknown


@torch.inference_mode()
def evaluate_set(
    backbone_classifier: nn.Module,
    methods: dict[str, nn.Module],
    batches: Iterable[Batch],
) -> dict[str, dict]:
    """Metrics of each method on one set. `backbone_classifier` is the plain backbone as a
    classifier (it gives the clean reference); every method exposes `enhanced_feature(images)`
    and finishes through `backbone.forward_from_tap(feature, tap)`."""
    sums = defaultdict(_Sums)
    for batch in batches:
        clean_feature = backbone_classifier.tap_feature(batch.clean)
        clean_log_probs = backbone_classifier.backbone.forward_from_tap(
            clean_feature, backbone_classifier.tap
        ).log_softmax(dim=1)
        clean_prediction = clean_log_probs.argmax(dim=1)
        labels = torch.tensor([-1 if label is None else label for label in batch.labels])
        for name, model in methods.items():
            feature = model.enhanced_feature(batch.degraded)
            log_probs = model.backbone.forward_from_tap(feature, model.tap).log_softmax(dim=1)
            prediction = log_probs.argmax(dim=1)
            s = sums[name]
            s.images += len(prediction)
            s.agree += int((prediction == clean_prediction).sum())
            s.labelled += int((labels >= 0).sum())
            s.correct += int(((prediction == labels) & (labels >= 0)).sum())
            s.kl += float(F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none").sum(dim=1).sum())
            s.feature_mse += float(((feature - clean_feature) ** 2).flatten(1).mean(dim=1).sum())
    return {name: s.result() for name, s in sums.items()}


def evaluate_grid(
    backbone_classifier: nn.Module,
    methods: dict[str, nn.Module],
    sets: dict[str, Iterable[Batch]],
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """{method: {set: metrics}} over every set (each an iterable of batches)."""
    grid: dict[str, dict[str, dict]] = {name: {} for name in methods}
    for set_name, batches in tqdm(sets.items(), desc="sets", disable=not progress):
        for method, metrics in evaluate_set(backbone_classifier, methods, batches).items():
            grid[method][set_name] = metrics
    return grid


def family_averages(grid: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """{method: {family: metric means over the family's sets}} (the tables' "Avg" rows)."""
    averages: dict[str, dict[str, dict]] = {}
    for method, by_set in grid.items():
        averages[method] = {}
        for family in SET_FAMILIES:
            cells = [metrics for name, metrics in by_set.items() if set_family(name) == family]
            if cells:
                averages[method][family] = {
                    metric: sum(c[metric] for c in cells) / len(cells) for metric in METRICS if metric in cells[0]
                }
    return averages
