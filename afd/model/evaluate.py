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
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from afd.data.codecs import CODECS, set_family

METRICS = ("top1", "agreement", "kl", "feature_mse")


def headline_metric(result: dict) -> str:
    """Top-1 accuracy where every evaluation image has a label, else the label-free agreement
    (a set with a few labelled photos reports their top-1 beside it, not instead of it)."""
    data = result["data"]
    return "top1" if data.get("labelled") and data["labelled"] == data["images"] else "agreement"


@dataclass
class Outcomes:
    """Per-image results of one method on one set, in the set's image order: what the means and
    the significance tests (afd.model.significance) are computed from."""

    agree: list[bool] = field(default_factory=list)
    correct: list[bool | None] = field(default_factory=list)  # None: no label
    kl: list[float] = field(default_factory=list)
    feature_mse: list[float] = field(default_factory=list)

    def add(self, log_probs: torch.Tensor, clean_log_probs: torch.Tensor, labels: list[int | None],
            feature_mse: torch.Tensor | None = None) -> None:
        """One batch: the method's log-probabilities against the clean reference's (and the
        per-image MSE of its feature at the tap, where it has one)."""
        prediction = log_probs.argmax(dim=1).cpu()
        self.agree += (prediction == clean_log_probs.argmax(dim=1).cpu()).tolist()
        self.correct += [None if label is None else int(p) == label for p, label in zip(prediction, labels)]
        self.kl += F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none").sum(dim=1).tolist()
        if feature_mse is not None:
            self.feature_mse += feature_mse.tolist()

    def metrics(self) -> dict:
        images = len(self.agree)
        out = {"agreement": sum(self.agree) / images, "kl": sum(self.kl) / images}
        if self.feature_mse:  # a whole program (evaluate_logits) gives logits only
            out["feature_mse"] = sum(self.feature_mse) / images
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


class CleanReference:
    """The plain backbone on the clean images: its log-probabilities and its feature at each tap,
    per batch. Every set pairs the same clean images in the same order, so a grid computes them
    once per image instead of once per set; kept up to `max_bytes`, recomputed beyond (an
    ImageNet-sized set)."""

    def __init__(self, backbone_classifier: nn.Module, max_bytes: int = 2 * 1024**3):
        self.classifier = backbone_classifier
        self.max_bytes, self.bytes = max_bytes, 0
        self.kept: dict[tuple[int, str], torch.Tensor] = {}
        # the last batch's values whatever `max_bytes` is: a batch computes each at most once
        self.current: tuple[int, torch.Tensor, dict[str, torch.Tensor]] | None = None

    def feature(self, index: int, images: torch.Tensor, tap: str) -> torch.Tensor:
        return self._get(index, images, tap, lambda: self.classifier.backbone.forward_to_tap(images, tap))

    def log_probs(self, index: int, images: torch.Tensor) -> torch.Tensor:
        tap = self.classifier.tap
        return self._get(index, images, "log_probs", lambda: self.classifier.backbone.forward_from_tap(
            self.feature(index, images, tap), tap).log_softmax(dim=1))

    def _get(self, index: int, images: torch.Tensor, what: str, compute) -> torch.Tensor:
        if self.current is None or self.current[0] != index or not torch.equal(self.current[1], images):
            self.current = (index, images, {})
        values = self.current[2]
        if what not in values:
            values[what] = self._kept_or_computed(index, images, what, compute)
        return values[what]

    def _kept_or_computed(self, index: int, images: torch.Tensor, what: str, compute) -> torch.Tensor:
        # Kept values are used only for the very images they were computed from.
        kept_images = self.kept.get((index, "images"))
        if kept_images is not None and not torch.equal(kept_images, images):
            return compute()
        if kept_images is None:
            self._keep((index, "images"), images)
        value = self.kept.get((index, what))
        if value is None:
            value = compute()
            self._keep((index, what), value)
        return value

    def _keep(self, key, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.bytes + size <= self.max_bytes:
            self.kept[key] = value
            self.bytes += size


@torch.inference_mode()
def evaluate_set(
    backbone_classifier: nn.Module,
    methods: dict[str, nn.Module],
    batches: Iterable[Batch],
    reference: CleanReference | None = None,
    device: torch.device = torch.device("cpu"),
) -> dict[str, Outcomes]:
    """Per-image outcomes of each method on one set, computed on `device`. `backbone_classifier` is
    the plain backbone as a classifier: it gives the clean reference (`reference` keeps it across
    sets); every method exposes `enhanced_feature(images)` and finishes through
    `backbone.forward_from_tap(feature, tap)`. Runs channels-last, the faster layout for these
    convolutions on a CPU (and for cuDNN's)."""
    reference = reference or CleanReference(backbone_classifier, max_bytes=0)
    for model in (backbone_classifier, *methods.values()):
        model.to(device, memory_format=torch.channels_last)
    outcomes = defaultdict(Outcomes)
    for index, batch in enumerate(batches):
        clean = batch.clean.to(device, memory_format=torch.channels_last)
        degraded = batch.degraded.to(device, memory_format=torch.channels_last)
        clean_log_probs = reference.log_probs(index, clean)
        for name, model in methods.items():
            target = reference.feature(index, clean, model.tap)  # methods may plug in at other taps
            feature = model.enhanced_feature(degraded)
            log_probs = model.backbone.forward_from_tap(feature, model.tap).log_softmax(dim=1)
            outcomes[name].add(log_probs, clean_log_probs, batch.labels, ((feature - target) ** 2).flatten(1).mean(dim=1))
    return dict(outcomes)


@torch.inference_mode()
def evaluate_logits(
    backbone_classifier: nn.Module, predict: Callable[[torch.Tensor], torch.Tensor], sets: dict[str, Iterable[Batch]]
) -> dict[str, Outcomes]:
    """{set: outcomes} of a whole classifier that gives only logits, such as a deployed program
    (`predict(images) -> logits`): agreement, top-1 and KL against the same clean reference as the
    grid; no feature at the tap."""
    reference = CleanReference(backbone_classifier)
    outcomes: dict[str, Outcomes] = {}
    for set_name, batches in tqdm(sets.items(), desc="sets", unit="set"):
        outcomes[set_name] = Outcomes()
        for index, batch in enumerate(batches):
            clean_log_probs = reference.log_probs(index, batch.clean.contiguous(memory_format=torch.channels_last))
            outcomes[set_name].add(predict(batch.degraded).log_softmax(dim=1), clean_log_probs, batch.labels)
    return outcomes


def evaluate_grid(
    backbone_classifier: nn.Module,
    methods: dict[str, nn.Module],
    sets: dict[str, Iterable[Batch]],
    cells: dict[str, list[str]] | None = None,
    progress: bool = True,
    device: torch.device = torch.device("cpu"),
) -> dict[str, dict[str, Outcomes]]:
    """{method: {set: outcomes}} over every set (each an iterable of batches of the same clean
    images), computed on `device`; `cells` ({set: method names}) limits which methods run on which
    set (default: all)."""
    reference = CleanReference(backbone_classifier)
    grid: dict[str, dict[str, Outcomes]] = {name: {} for name in methods}
    chosen_on = {name: {m: methods[m] for m in (cells[name] if cells else methods)} for name in sets}
    with tqdm(total=sum(map(len, chosen_on.values())), desc="grid cells", unit="cell", disable=not progress) as bar:
        for set_name, batches in sets.items():
            bar.set_postfix_str(set_name)
            for method, outcomes in evaluate_set(backbone_classifier, chosen_on[set_name], batches, reference,
                                                   device).items():
                grid[method][set_name] = outcomes
            bar.update(len(chosen_on[set_name]))
    return grid


def grid_metrics(grid: dict[str, dict[str, Outcomes]]) -> dict[str, dict[str, dict]]:
    """{method: {set: metric means}}."""
    return {method: {name: o.metrics() for name, o in by_set.items()} for method, by_set in grid.items()}


def family_averages(grid: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """{method: {family: metric means over the family's sets}} (the tables' "Avg" rows)."""
    averages: dict[str, dict[str, dict]] = {}
    for method, by_set in grid.items():
        averages[method] = {}
        for family in CODECS:
            cells = [metrics for name, metrics in by_set.items() if set_family(name) == family]
            if cells:
                averages[method][family] = {
                    metric: sum(c[metric] for c in cells) / len(cells) for metric in METRICS if metric in cells[0]
                }
    return averages
