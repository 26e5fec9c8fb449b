"""The codecs: every lossy compression the pipeline applies, and the one registry of them.

A codec (`Codec`, listed in `CODECS`) is one object: how it encodes an 8-bit RGB image at a level,
the suffix of its files, how its levels are named and titled, and which settings it takes. An
evaluation set is a value, `EvalSet(codec, level)`, with one way to name it ("jpeg_q25",
"multi_ct3") and one way to parse the name back. Everything else (the data stages, the layout, the
params schema, the evaluation averages, the report's tables, the CLI) reads the registry, so adding
a codec is one `Codec` entry here plus its levels in params.yaml's `eval_sets`.

All encoders are deterministic and in memory; none resizes or crops, so the output keeps the
input's size and the codec's block grid.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Annotated, Callable, Sequence

from PIL import Image, features
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

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


# libwebp's lossy encoder, its settings pinned: Pillow's default method (speed/size trade-off) and
# no "exact" (which would keep the RGB of transparent pixels: our images have none).
_WEBP_SETTINGS = dict(method=4, lossless=False, exact=False)


def encode_webp(img: Image.Image, quality: int) -> bytes:
    """Lossy WebP file bytes from Pillow (libwebp, settings pinned) at `quality`."""
    _check_quality(quality)
    return _encode(img, format="WEBP", quality=quality, **_WEBP_SETTINGS)


# ---- the registry -------------------------------------------------------------------------------

Quality = Annotated[StrictInt, Field(ge=1, le=100)]


class CodecSettings(BaseModel):
    """A codec's section of params.yaml's `eval_sets`: its levels, plus the codec's own settings."""

    model_config = ConfigDict(extra="forbid")
    levels: Annotated[list[Quality], Field(min_length=1)]


class JpegSettings(CodecSettings):
    resave_q85: StrictBool = False  # save once more at quality 85, like the released ImageNet-C files


class MultiSettings(CodecSettings):
    levels: Annotated[list[Annotated[StrictInt, Field(ge=1, le=MAX_COMPRESSION_TIMES)]], Field(min_length=1)]
    qualities: Annotated[list[Quality], Field(min_length=1)] = list(IMAGENET_C_JPEG_QUALITIES)


# What an encoder returns: the file's bytes, and what to record about it (None: nothing).
Encoded = tuple[bytes, object]


@dataclass(frozen=True)
class Codec:
    name: str  # its key in params.yaml's eval_sets, and the prefix of its sets' names
    suffix: str  # of its files
    level_prefix: str  # in set names: jpeg_q25 ("q"), multi_ct3 ("ct")
    level_label: str  # a level's column head in tables: "QF", "CT"
    level_title: str  # what a level is, as the report's axis says it
    table_title: str  # the report's table of it
    encoder: Callable[..., Encoded]  # (image, level, seed, **settings) -> Encoded
    settings: type[CodecSettings] = CodecSettings
    harder_when_higher: bool = False  # quality levels: lower is harder; compression rounds: higher
    imagenet_c_release: bool = False  # the released ImageNet-C holds its files (sources.imagenet_c_dir)

    def encode(self, img: Image.Image, level: int, seed: int = 0, **settings) -> Encoded:
        """The file bytes of `img` at `level`, and what to record about them (or None). `seed`
        matters only to codecs that draw at random (multi); `settings`: the codec's own
        (its params section without `levels`)."""
        return self.encoder(img, level, seed, **settings)

    def degrade(self, img: Image.Image, level: int, seed: int = 0, **settings) -> Image.Image:
        """`img` encoded at `level` and decoded again."""
        return _decode(self.encode(img, level, seed, **settings)[0])

    def light_to_heavy(self, levels: Sequence[int]) -> list[int]:
        """`levels` from the lightest compression to the heaviest (the tables' row order)."""
        return sorted(levels, reverse=not self.harder_when_higher)

    def set(self, level: int) -> "EvalSet":
        return EvalSet(self.name, level)


def _jpeg(img, level, seed, resave_q85=False) -> Encoded:
    return encode_jpeg(img, level, resave_q85), None


def _multi(img, level, seed, qualities=IMAGENET_C_JPEG_QUALITIES) -> Encoded:
    data, used = multi_compress_jpeg(img, level, seed, qualities)
    return data, used  # the qualities of each round: qualities.json


def _avif(img, level, seed) -> Encoded:
    return encode_avif(img, level), None


def _webp(img, level, seed) -> Encoded:
    return encode_webp(img, level), None


CODECS: dict[str, Codec] = {codec.name: codec for codec in (
    Codec("jpeg", ".jpg", "q", "QF", "JPEG quality factor", "Table V: ImageNet-C-style JPEG", _jpeg,
          JpegSettings, imagenet_c_release=True),
    Codec("multi", ".jpg", "ct", "CT", "compression times (CT)", "Table VI: multiple JPEG compression", _multi,
          MultiSettings, harder_when_higher=True),
    Codec("avif", ".avif", "q", "quality", "AVIF quality", "Table IX: AVIF", _avif),
    Codec("webp", ".webp", "q", "quality", "WebP quality", "WebP (beyond the paper)", _webp),
)}
CLEAN = "clean"  # the uncompressed evaluation set, next to which every compressed set is read


def codec(name: str) -> Codec:
    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; valid: {', '.join(CODECS)}")
    return CODECS[name]


@dataclass(frozen=True, order=True)
class EvalSet:
    """One compressed set: a codec at a level. Its name is "<codec>_<prefix><level>"."""

    codec: str
    level: int

    @property
    def name(self) -> str:
        return f"{self.codec}_{CODECS[self.codec].level_prefix}{self.level}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> "EvalSet":
        """The set named `name` ("jpeg_q25"); a ConfigError for anything else ("clean" included)."""
        codec_name, _, level = name.partition("_")
        prefix = CODECS[codec_name].level_prefix if codec_name in CODECS else None
        if prefix is None or not level.startswith(prefix) or not level[len(prefix):].isdigit():
            raise ConfigError(f"{name!r} is not an evaluation set name (<codec>_<level>, codecs: "
                              f"{', '.join(f'{c.name}_{c.level_prefix}N' for c in CODECS.values())})")
        return cls(codec_name, int(level[len(prefix):]))


def set_family(name: str) -> str:
    """The codec of the set `name`, or "clean" for the clean set."""
    return CLEAN if name == CLEAN else EvalSet.parse(name).codec


# ---- single degradations (the CLI's `degrade`) --------------------------------------------------

_IMAGENET_C = {
    "imagenet_c_jpeg": lambda img, level, seed: imagenet_c_jpeg(img, level),
    "imagenet_c_jpeg_q85": lambda img, level, seed: imagenet_c_jpeg(img, level, resave_q85=True),
}
DEGRADATIONS = (*CODECS, *_IMAGENET_C)


def degrade(img: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """One degradation by name: a codec at `level` (a quality, or the rounds of multi, which alone
    uses `seed`), or ImageNet-C's JPEG at severity `level` (imagenet_c_jpeg[_q85])."""
    if kind in _IMAGENET_C:
        return _IMAGENET_C[kind](img, level, seed)
    if kind not in CODECS:
        raise ConfigError(f"unknown degradation {kind!r}; valid: {', '.join(DEGRADATIONS)}")
    return CODECS[kind].degrade(img, level, seed)
