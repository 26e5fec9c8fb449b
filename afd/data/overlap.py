"""Shared content between two sets of photos: the same photo, or a crop of one, resized or
recompressed, on both sides of a train/eval split.

Each photo is described by ORB keypoints (scikit-image); a pair of photos shares content when
enough keypoint matches agree on one similarity transform (RANSAC), which a crop, a rescale or a
re-encode keeps and two different photos of the same kind of object do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from afd.data.sets import Photo, read_image

THUMBNAIL = 256  # longer side the keypoints are found at
KEYPOINTS = 200
MIN_INLIERS = 10  # copies gave 13 (a rescale) to 33 (a recompressed crop); no two default photos reach 6


@dataclass(frozen=True)
class Keypoints:
    positions: np.ndarray  # (K, 2) x, y
    descriptors: np.ndarray  # (K, 256) in {0, 1}, float32 (Hamming distance by matrix product)


@dataclass(frozen=True)
class SharedContent:
    first: str
    second: str
    inliers: int


def keypoints(photo: Photo) -> Keypoints:
    from skimage.feature import ORB

    image = read_image(photo.uri).convert("L")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(np.asarray(image, dtype=np.float64) / 255)
    except RuntimeError:  # a flat image has no keypoints, so it can share none
        return Keypoints(np.zeros((0, 2)), np.zeros((0, 256), np.float32))
    return Keypoints(orb.keypoints[:, ::-1].copy(), orb.descriptors.astype(np.float32))


class _KeypointBank:
    """One side's descriptors padded to KEYPOINTS each, built once and matched against every photo
    of the other side in one matrix product."""

    def __init__(self, keypoints: Sequence[Keypoints]):
        self.counts = [len(k.descriptors) for k in keypoints]
        self.descriptors = np.full((len(keypoints), KEYPOINTS, 256), 0.5, np.float32)  # 0.5: far from all
        for i, k in enumerate(keypoints):
            self.descriptors[i, :self.counts[i]] = k.descriptors
        self.ones = self.descriptors.sum(2)  # (photo, keypoint)

    def mutual_matches(self, mine: Keypoints, max_ratio: float = 0.8) -> list[np.ndarray]:
        """For each photo of the bank, (M, 2) indices of mutual nearest neighbours (by Hamming
        distance) of `mine` and its keypoints that pass the ratio test."""
        photos = len(self.counts)
        if len(mine.descriptors) < 2:
            return [np.zeros((0, 2), int) for _ in range(photos)]
        ones = mine.descriptors.sum(1)
        # Hamming distance of binary vectors: |a| + |b| - 2 a.b; (mine, photo, its keypoint)
        products = (mine.descriptors @ self.descriptors.reshape(-1, 256).T).reshape(len(ones), photos, KEYPOINTS)
        distance = ones[:, None, None] + self.ones[None] - 2 * products
        for i, count in enumerate(self.counts):
            distance[:, i, count:] = np.inf
        nearest = distance.argmin(2)  # (mine, photo)
        back = distance.argmin(0)  # (photo, its keypoint): the nearest among mine
        two = np.partition(distance, 1, axis=2)[:, :, :2]
        distinct = two[..., 0] < max_ratio * np.maximum(two[..., 1], 1e-9)
        result = []
        for i in range(photos):
            mutual = back[i][nearest[:, i]] == np.arange(len(ones))
            keep = np.flatnonzero(mutual & distinct[:, i] & np.isfinite(two[:, i, 0]))
            result.append(np.stack([keep, nearest[keep, i]], axis=1))
        return result


def _inliers(a: Keypoints, b: Keypoints, matches: np.ndarray) -> int:
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    model, inliers = ransac((a.positions[matches[:, 0]], b.positions[matches[:, 1]]), SimilarityTransform,
                            min_samples=3, residual_threshold=4, max_trials=200, rng=0)
    return 0 if inliers is None else int(inliers.sum())


def shared_content(first: Sequence[Photo], second: Sequence[Photo],
                   min_inliers: int = MIN_INLIERS) -> list[SharedContent]:
    """Every pair (one photo of each side) that shows the same content, most certain first."""
    second_keypoints = [keypoints(photo) for photo in tqdm(second, desc="keypoints", unit="photo")]
    bank = _KeypointBank(second_keypoints)
    found = []
    for photo in tqdm(first, desc="comparing", unit="photo"):
        mine = keypoints(photo)
        for other, theirs, matches in zip(second, second_keypoints, bank.mutual_matches(mine)):
            if len(matches) >= min_inliers:
                inliers = _inliers(mine, theirs, matches)
                if inliers >= min_inliers:
                    found.append(SharedContent(photo.name, other.name, inliers))
    return sorted(found, key=lambda pair: -pair.inliers)
