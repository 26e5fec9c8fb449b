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
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

METRICS = ("top1", "agreement", "kl", "feature_mse")
SET_FAMILIES = ("jpeg", "multi", "avif")


def headline_metric(result: dict) -> str:
    """Top-1 accuracy where every evaluation image has a label, else the label-free agreement
    (a set with a few labelled photos reports their top-1 beside it, not instead of it)."""
    data = result["data"]
    return "top1" if data.get("labelled") and data["labelled"] == data["images"] else "agreement"


def set_family(set_name: str) -> str:
    """"jpeg_q25" -> "jpeg", "multi_ct3" -> "multi", "clean" -> "clean"."""
    return set_name.split("_", 1)[0]


def set_level(set_name: str) -> int:
    """"jpeg_q25" -> 25, "multi_ct3" -> 3."""
    return int(set_name.rsplit("_", 1)[1].lstrip("qct"))


@dataclass
class Outcomes:
    """Per-image results of one method on one set, in the set's image order: what the means and
    the significance tests (afd.significance) are computed from."""

    agree: list[bool] = field(default_factory=list)
    correct: list[bool | None] = field(default_factory=list)  # None: no label
    kl: list[float] = field(default_factory=list)
    feature_mse: list[float] = field(default_factory=list)

    def metrics(self) -> dict:
        images = len(self.agree)
        out = {"agreement": sum(self.agree) / images, "kl": sum(self.kl) / images,
               "feature_mse": sum(self.feature_mse) / images}
        labelled = [c for c in self.correct if c is not None]
        if labelled:
            out["top1"] = sum(labelled) / len(labelled)
        return out

    def record(self) -> dict:
        """Compact JSON: agree / correct as strings of 0, 1 (and - for no label)."""
        return {"agree": "".join("1" if a else "0" for a in self.agree),
                "correct": "".join("-" if c is None else "1" if c else "0" for c in self.correct),
                "kl": [round(v, 6) for v in self.kl]}


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
) -> dict[str, Outcomes]:
    """Per-image outcomes of each method on one set. `backbone_classifier` is the plain backbone as
    a classifier (it gives the clean reference, once per image for all methods); every method
    exposes `enhanced_feature(images)` and finishes through `backbone.forward_from_tap(feature, tap)`."""
    outcomes = defaultdict(Outcomes)
    for batch in batches:
        clean_feature = backbone_classifier.tap_feature(batch.clean)
        clean_log_probs = backbone_classifier.backbone.forward_from_tap(
            clean_feature, backbone_classifier.tap
        ).log_softmax(dim=1)
        clean_prediction = clean_log_probs.argmax(dim=1)
        for name, model in methods.items():
            feature = model.enhanced_feature(batch.degraded)
            log_probs = model.backbone.forward_from_tap(feature, model.tap).log_softmax(dim=1)
            prediction = log_probs.argmax(dim=1)
            o = outcomes[name]
            o.agree += (prediction == clean_prediction).tolist()
            o.correct += [None if label is None else int(p) == label for p, label in zip(prediction, batch.labels)]
            o.kl += F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none").sum(dim=1).tolist()
            o.feature_mse += ((feature - clean_feature) ** 2).flatten(1).mean(dim=1).tolist()
    return dict(outcomes)


def evaluate_grid(
    backbone_classifier: nn.Module,
    methods: dict[str, nn.Module],
    sets: dict[str, Iterable[Batch]],
    progress: bool = True,
) -> dict[str, dict[str, Outcomes]]:
    """{method: {set: outcomes}} over every set (each an iterable of batches)."""
    grid: dict[str, dict[str, Outcomes]] = {name: {} for name in methods}
    for set_name, batches in tqdm(sets.items(), desc="sets", disable=not progress):
        for method, outcomes in evaluate_set(backbone_classifier, methods, batches).items():
            grid[method][set_name] = outcomes
    return grid


def grid_metrics(grid: dict[str, dict[str, Outcomes]]) -> dict[str, dict[str, dict]]:
    """{method: {set: metric means}}."""
    return {method: {name: o.metrics() for name, o in by_set.items()} for method, by_set in grid.items()}


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
