"""Lossy degradations of 8-bit RGB images, in memory and deterministic: JPEG, ImageNet-C JPEG,
repeated JPEG (multi-compression) and AVIF.

None of them resizes or crops, so the output keeps the input's size and the codec's block grid.
"""

from __future__ import annotations

import io
import random
from typing import Callable, Sequence

from PIL import Image, features

from afd.errors import ConfigError

# Severity 1..5 (hendrycks/robustness, make_imagenet_c.py, jpeg_compression).
IMAGENET_C_JPEG_QUALITIES = (25, 18, 15, 10, 7)
# Multi-compression rounds (paper Table VI: 1..5). Past a few dozen rounds JPEG has long reached its
# fixed point; the bound keeps a typo (100000000) from running for days.
MAX_COMPRESSION_TIMES = 100

if not features.check("avif"):
    import pillow_avif  # noqa: F401  (registers the AVIF plugin on Pillow < 11.3)

# Every AVIF encoder setting that changes the bytes, pinned so results match across machines:
# the codec ("auto" could pick rav1e or SVT-AV1 where built in), Pillow's default speed and
# chroma subsampling, one thread (libaom's output may depend on the thread count), no tiling
# heuristic (it depends on the libavif version).
_AVIF_SETTINGS = dict(
    codec="aom", speed=6, subsampling="4:2:0", range="full", max_threads=1, autotiling=False
)


def _check_quality(quality: int) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality must be an integer in 1..100, got {quality!r}")


def _encode(img: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, **save_args)
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as decoded:
        return decoded.convert("RGB")


def encode_jpeg(img: Image.Image, quality: int, resave_q85: bool = False) -> bytes:
    """JPEG file bytes from Pillow at `quality` (default 4:2:0 chroma, as ImageNet-C).

    With `resave_q85` the decoded result is saved once more as JPEG quality 85, as the released
    ImageNet-C files were.
    """
    _check_quality(quality)
    data = _encode(img, format="JPEG", quality=quality)
    return _encode(_decode(data), format="JPEG", quality=85) if resave_q85 else data


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Encode as JPEG with Pillow at `quality` (default 4:2:0 chroma, as ImageNet-C), decode."""
    return _decode(encode_jpeg(img, quality))


def imagenet_c_jpeg(img: Image.Image, severity: int, resave_q85: bool = False) -> Image.Image:
    """ImageNet-C `jpeg_compression` at severity 1..5.

    The caller applies the ImageNet-C preprocessing first (images.resize_center_crop: Resize(256),
    CenterCrop(224)). With `resave_q85` the result is saved once more as JPEG quality 85, as the
    released ImageNet-C files were.
    """
    if isinstance(severity, bool) or severity not in range(1, len(IMAGENET_C_JPEG_QUALITIES) + 1):
        raise ConfigError(f"ImageNet-C severity must be 1..5, got {severity!r}")
    return _decode(encode_jpeg(img, IMAGENET_C_JPEG_QUALITIES[severity - 1], resave_q85))


def multi_compress_jpeg(
    img: Image.Image, times: int, seed: int, qualities: Sequence[int] = IMAGENET_C_JPEG_QUALITIES
) -> tuple[bytes, list[int]]:
    """The JPEG bytes of the last round of multi_compress, and the qualities used."""
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_COMPRESSION_TIMES:
        raise ConfigError(f"times (compression rounds) must be an integer in 1..{MAX_COMPRESSION_TIMES}, "
                          f"got {times!r}")
    if not qualities:
        raise ConfigError("qualities must not be empty")
    rng = random.Random(seed)
    used = [rng.choice(qualities) for _ in range(times)]
    for quality in used[:-1]:
        img = jpeg(img, quality)
    return encode_jpeg(img, used[-1]), used


def multi_compress(
    img: Image.Image, times: int, seed: int, qualities: Sequence[int] = IMAGENET_C_JPEG_QUALITIES
) -> tuple[Image.Image, list[int]]:
    """JPEG-compress `times` times (CT), each time at a quality drawn from `qualities` by `seed`.

    Returns the image and the qualities used. The image is never resized in between, so every round
    sees the same 8x8 grid. For one seed, the qualities of CT=k are the first k of CT=k+1.
    """
    data, used = multi_compress_jpeg(img, times, seed, qualities)
    return _decode(data), used


def encode_avif(img: Image.Image, quality: int) -> bytes:
    """AVIF file bytes from Pillow (libavif + libaom, settings pinned) at `quality`."""
    _check_quality(quality)
    return _encode(img, format="AVIF", quality=quality, **_AVIF_SETTINGS)


def avif(img: Image.Image, quality: int) -> Image.Image:
    """Encode as AVIF with Pillow (libavif + libaom, settings pinned) at `quality` and decode."""
    return _decode(encode_avif(img, quality))


_DEGRADATIONS: dict[str, Callable[[Image.Image, int, int], Image.Image]] = {
    "jpeg": lambda img, level, seed: jpeg(img, level),
    "imagenet_c_jpeg": lambda img, level, seed: imagenet_c_jpeg(img, level),
    "imagenet_c_jpeg_q85": lambda img, level, seed: imagenet_c_jpeg(img, level, resave_q85=True),
    "multi": lambda img, level, seed: multi_compress(img, level, seed)[0],
    "avif": lambda img, level, seed: avif(img, level),
}


def degrade(img: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """One entry point for the pipeline: `level` is the quality (jpeg, avif), the severity
    (imagenet_c_jpeg[_q85]) or the number of rounds (multi, which alone uses `seed`)."""
    if kind not in _DEGRADATIONS:
        raise ConfigError(f"unknown degradation {kind!r}; valid: {', '.join(_DEGRADATIONS)}")
    return _DEGRADATIONS[kind](img, level, seed)
