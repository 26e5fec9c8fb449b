"""Confidence intervals and paired tests over photos, from per-image outcomes.

Views of one photo are not independent samples, so everything here resamples photos (a cluster
bootstrap): each resample draws the photos with replacement and takes every image of each drawn
photo. A difference between two methods is paired: both are measured on the same resampled images.
The paper reports none of this; it says which of its differences this data can tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean (or a mean difference) over images, with its bootstrap interval over photos."""

    value: float
    low: float
    high: float
    p_value: float  # two-sided, for "the true value is 0" (meaningful for differences)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at 1 - LEVEL)."""
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float) -> "Estimate":
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.p_value)


class PhotoBootstrap:
    """Resampling weights for images grouped by photo: one row per resample, one column per image
    (how many times the image's photo was drawn). Seeded: the same photos give the same intervals."""

    def __init__(self, photos: Sequence[str], resamples: int = RESAMPLES, seed: int = 0):
        names, index = np.unique(np.asarray(photos), return_inverse=True)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(names), size=(resamples, len(names)))
        counts = np.stack([np.bincount(row, minlength=len(names)) for row in draws]).astype(np.float64)
        self.weights = counts[:, index]  # (resamples, images)
        self.photos = len(names)

    def estimate(self, values: np.ndarray) -> Estimate:
        """`values`: (images,) or (sets, images), the same images in every set (a family average
        then resamples the photos once for all its sets)."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64)).mean(axis=0)
        resampled = self.weights @ values / self.weights.sum(axis=1)
        tail = (1 - LEVEL) / 2
        low, high = np.quantile(resampled, [tail, 1 - tail])
        p_value = min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))
        return Estimate(float(values.mean()), float(low), float(high), float(p_value))


def agreement_values(outcomes: dict, sets: Sequence[str]) -> np.ndarray:
    """(sets, images) of 0/1 agreement of one method (an `image_outcomes` entry) on `sets`."""
    return np.array([[c == "1" for c in outcomes[name]["agree"]] for name in sets], dtype=np.float64)


def correct_values(outcomes: dict, sets: Sequence[str]) -> np.ndarray:
    """(sets, labelled images) of 0/1 top-1 correctness, images without a label left out."""
    return np.array([[c == "1" for c in outcomes[name]["correct"] if c != "-"] for name in sets], dtype=np.float64)
